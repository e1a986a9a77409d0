//! The HTTP/1.1 server loop of the queen, the hive and the workers' contract servers:
//! [`serve`] in place of `axum::serve`, with [`Limits`] that a misbehaving or hostile client
//! cannot get around.
//!
//! - **Header-read timeout.** A connection that has not sent a request's complete headers
//!   within [`Limits::header_read_timeout`] is closed. On a keep-alive connection the same
//!   limit applies to waiting for the next request (hyper's HTTP/1 semantics), so an idle
//!   keep-alive connection is closed after it too. It never applies to request or response
//!   bodies: an SSE stream or a slow upload lasts as long as it lasts.
//! - **Connection cap.** At most [`Limits::max_connections`] connections are served at once.
//!   At the cap the server stops accepting until one closes: new connections wait in the
//!   kernel's listen backlog (and are served in turn) instead of each costing a file
//!   descriptor. Accepting and closing at once would instead still spend descriptors and
//!   turn away the connections a moment later that would have been served.
//! - **Accept errors** (`EMFILE`, `ENFILE`, a connection reset before it was accepted) never
//!   end the server: it logs, waits [`ACCEPT_ERROR_PAUSE`] and accepts again.
//! - **Graceful shutdown.** When the shutdown future resolves the listener is closed, idle
//!   connections are closed, and requests in flight may finish within
//!   [`Limits::shutdown_grace`]; connections still busy after it are cut.
//!
//! Every request carries its peer's address as
//! [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo), as with
//! `Router::into_make_service_with_connect_info::<SocketAddr>()`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

/// How long the server waits after a failed `accept` (out of file descriptors, say) before it
/// accepts again.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// At the connection cap, the server says so at most this often.
const CAP_LOG_EVERY: Duration = Duration::from_secs(60);

/// What a server allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A connection that has not sent a request's complete headers within this long is closed;
    /// on a keep-alive connection, also the longest wait for the next request. Default 10 s.
    pub header_read_timeout: Duration,
    /// At most this many connections are served at once; more wait in the listen backlog
    /// until one closes. Default 1024; 0 counts as 1.
    pub max_connections: usize,
    /// After shutdown, how long requests in flight may take to finish before their
    /// connections are cut. Default 5 s (within the 10 s a hive gets between SIGTERM and
    /// SIGKILL).
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, within `limits` (see the
/// [module](self) documentation). Returns once the listener is closed and every connection
/// has finished or been cut after [`Limits::shutdown_grace`].
///
/// Accept errors are logged and retried, never returned: the result is `Ok` today, and is a
/// `Result` so that callers keep their error path should a fatal error appear.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) -> std::io::Result<()> {
    let max = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max));
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    // Tells connections to finish their current request and close.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut failed_accepts: u64 = 0;
    let mut cap_logged: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        // Finished connections, reaped here so the set stays within the cap (plus those that
        // finished since the last accept).
        while connections.try_join_next().is_some() {}
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if cap_logged.is_none_or(|at| at.elapsed() >= CAP_LOG_EVERY) {
                    cap_logged = Some(Instant::now());
                    log(format_args!("{max} connections open, the limit; new ones wait until one closes"));
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        // Never closed: this function owns the semaphore.
                        Err(_) => break,
                    },
                }
            }
        };
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // A connection reset before it was accepted: take the next one.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                drop(permit);
                if failed_accepts == 0 {
                    log(format_args!("cannot accept connections ({e}); trying again every {ACCEPT_ERROR_PAUSE:?}"));
                }
                failed_accepts += 1;
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
                continue;
            }
        };
        if failed_accepts > 0 {
            log(format_args!("accepting connections again, after {failed_accepts} failed attempt(s)"));
            failed_accepts = 0;
        }
        connections.spawn(connection(builder.clone(), stream, peer, router.clone(), permit, stop_rx.clone()));
    }
    drop(listener);
    stop_tx.send_replace(true);
    let drained =
        tokio::time::timeout(limits.shutdown_grace, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        log(format_args!(
            "{} connection(s) still busy {:?} after shutdown; closing them",
            connections.len(),
            limits.shutdown_grace
        ));
        connections.shutdown().await;
    }
    Ok(())
}

/// Serves one connection; its slot frees when it ends.
async fn connection(
    builder: http1::Builder,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let _permit = permit;
    let router = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        hyper::service::Service::call(&router, request)
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        // A client gone away, a malformed request, the header timeout: nothing to report.
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|stop| *stop) => {}
    }
    // Closes the connection if idle; else after the response in flight.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Errors about one connection, not the listener: accept the next one at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// A line on stderr, as the daemons log, prefixed with the program's name.
fn log(message: std::fmt::Arguments<'_>) {
    let program = std::env::args_os()
        .next()
        .and_then(|arg0| std::path::Path::new(&arg0).file_name().map(|name| name.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "rbee".into());
    eprintln!("{program}: {message}");
}
