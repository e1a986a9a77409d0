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
//! - **HTTPS** ([`serve_tls`]): the same loop behind a [`TlsAcceptor`]. The TLS handshake
//!   happens in the connection's slot and is bounded by [`Limits::tls_handshake_timeout`], so
//!   a client that connects and sends nothing (or stalls mid-handshake) cannot hold a slot;
//!   the header-read timeout then applies as over plain HTTP. A failed handshake (no client
//!   certificate where one is required, an untrusted one) closes the connection.
//!
//! - **Both on one port** ([`serve_auto`]): each connection is told apart by its first byte
//!   (`0x16` opens a TLS handshake record), read within the shorter of
//!   [`Limits::header_read_timeout`] and [`Limits::tls_handshake_timeout`] in the connection's
//!   slot. TLS connections are served as by [`serve_tls`]. Plain HTTP is served only to
//!   loopback peers ([`plain_allowed`]): the operator's CLI, the workers on the same host, a
//!   local health probe. Any other peer speaking plain HTTP gets `426 Upgrade Required` with
//!   `{"error": "this port requires TLS (https://)"}` and the connection is closed; its
//!   request never reaches the router.
//!
//! Every request carries its peer's address as
//! [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo), as with
//! `Router::into_make_service_with_connect_info::<SocketAddr>()`; over TLS, when the client
//! presented a certificate, also its [`PeerIdentity`] (an extension and an extractor).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::tls::{PeerIdentity, TlsAcceptor};

/// How long the server waits after a failed `accept` (out of file descriptors, say) before it
/// accepts again.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// At the connection cap, the server says so at most this often.
const CAP_LOG_EVERY: Duration = Duration::from_secs(60);

/// The first byte of a TLS connection: the content type of a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What [`serve_auto`] answers a plain-HTTP client that is not on a loopback address.
const TLS_REQUIRED: &str = "this port requires TLS (https://)";

/// The longest a refused plain-HTTP connection is kept to deliver its answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// How much of a refused client's request is read (and dropped) so that closing the
/// connection does not reset it before the client has read the answer.
const REFUSAL_DRAIN: usize = 1 << 20;

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
    /// Over TLS ([`serve_tls`], [`serve_auto`]), a connection whose handshake has not
    /// completed within this long (from when it was accepted) is closed. Default 10 s. Unused
    /// over plain HTTP.
    pub tls_handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(5),
            tls_handshake_timeout: Duration::from_secs(10),
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
    serve_with(listener, Transport::Plain, router, shutdown, limits).await
}

/// [`serve()`] over TLS: each accepted connection first completes a handshake with `tls`
/// (an [`Arc<rustls::ServerConfig>`](crate::tls::rustls::ServerConfig), such as
/// [`tls::server_config`](crate::tls::server_config) makes, or a [`TlsAcceptor`]) within
/// [`Limits::tls_handshake_timeout`], in its connection slot; then it is served as over plain
/// HTTP, every request carrying the client's [`PeerIdentity`] when it presented a
/// certificate.
pub async fn serve_tls(
    listener: TcpListener,
    tls: impl Into<TlsAcceptor>,
    router: Router,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) -> std::io::Result<()> {
    serve_with(listener, Transport::Tls(tls.into()), router, shutdown, limits).await
}

/// Plain HTTP and TLS on one port. Without `tls`, exactly [`serve()`]. With it, each
/// connection's first byte, awaited within the shorter of [`Limits::header_read_timeout`] and
/// [`Limits::tls_handshake_timeout`] in the connection's slot, tells which it is:
///
/// - a TLS handshake: served as by [`serve_tls`] (the handshake bounded by
///   [`Limits::tls_handshake_timeout`] from when the connection was accepted), each request
///   carrying the client's [`PeerIdentity`] when it presented a certificate;
/// - plain HTTP from a loopback address ([`plain_allowed`]): served as by [`serve()`];
/// - plain HTTP from any other address: answered `426 Upgrade Required` with the JSON body
///   `{"error": "this port requires TLS (https://)"}`, then closed, without reaching
///   `router`.
///
/// Every request carries its peer's [`ConnectInfo<SocketAddr>`], whichever the kind.
pub async fn serve_auto(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) -> std::io::Result<()> {
    let transport = match tls {
        Some(acceptor) => Transport::Auto(acceptor),
        None => Transport::Plain,
    };
    serve_with(listener, transport, router, shutdown, limits).await
}

/// Whether [`serve_auto`] serves plain HTTP to a peer at `peer`: only on a loopback address
/// (`127.0.0.0/8`, `::1`, or `::ffff:127.x.y.z`, an IPv4 loopback address mapped to IPv6), that
/// is, from the same host.
pub fn plain_allowed(peer: IpAddr) -> bool {
    peer.to_canonical().is_loopback()
}

/// How connections are spoken to.
#[derive(Clone)]
enum Transport {
    /// Plain HTTP.
    Plain,
    /// TLS, then HTTP.
    Tls(TlsAcceptor),
    /// TLS or, from loopback peers only, plain HTTP: decided by the first byte.
    Auto(TlsAcceptor),
}

async fn serve_with(
    listener: TcpListener,
    transport: Transport,
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
        connections.spawn(connection(
            builder.clone(),
            stream,
            peer,
            transport.clone(),
            limits,
            router.clone(),
            permit,
            stop_rx.clone(),
        ));
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

/// Serves one connection as `transport` says: after its TLS handshake (bounded by
/// [`Limits::tls_handshake_timeout`]) when it is TLS; for [`Transport::Auto`], after reading
/// its first byte. Its slot frees when it ends.
#[allow(clippy::too_many_arguments)]
async fn connection(
    builder: http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    limits: Limits,
    router: Router,
    permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let _permit = permit;
    let accepted = Instant::now();
    let acceptor = match transport {
        Transport::Plain => return serve_http(builder, stream, peer, None, router, stop).await,
        Transport::Tls(acceptor) => acceptor,
        Transport::Auto(acceptor) => {
            let wait = limits.header_read_timeout.min(limits.tls_handshake_timeout);
            let mut first = [0u8; 1];
            let peeked = tokio::select! {
                peeked = tokio::time::timeout(wait, stream.peek(&mut first)) => peeked,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            match peeked {
                Ok(Ok(1..)) if first[0] == TLS_HANDSHAKE_RECORD => acceptor,
                Ok(Ok(1..)) if plain_allowed(peer.ip()) => {
                    return serve_http(builder, stream, peer, None, router, stop).await;
                }
                Ok(Ok(1..)) => return refuse_plain(stream, peer, limits.header_read_timeout).await,
                // Closed before sending anything, or failed.
                Ok(Ok(0) | Err(_)) => return,
                Err(_) => {
                    tracing::debug!("{peer} sent nothing within {wait:?}; closing");
                    return;
                }
            }
        }
    };
    let timeout = limits.tls_handshake_timeout;
    let left = timeout.saturating_sub(accepted.elapsed());
    let stream = tokio::select! {
        handshake = tokio::time::timeout(left, acceptor.accept(stream)) => match handshake {
            Ok(Ok(stream)) => stream,
            // Untrusted or missing client certificates, scanners, clients gone away: the
            // client learns why from the alert; nothing worth a warning here.
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake with {peer} failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake with {peer} not done within {timeout:?}; closing");
                return;
            }
        },
        _ = stop.wait_for(|stop| *stop) => return,
    };
    let identity = stream.get_ref().1.peer_certificates().and_then(|certs| certs.first()).and_then(|der| {
        PeerIdentity::from_der(der)
            .inspect_err(|e| tracing::debug!("the certificate of {peer} cannot be read: {e}"))
            .ok()
    });
    serve_http(builder, stream, peer, identity, router, stop).await;
}

/// Answers a plain-HTTP client that must use TLS: `426 Upgrade Required` and a JSON error,
/// then closes. The answer goes out at once; what the client sends meanwhile is read and
/// dropped (a little, briefly: at most `within`, [`REFUSAL_LINGER`]) so that the close
/// does not reset the connection before the client has read the answer.
async fn refuse_plain(mut stream: TcpStream, peer: SocketAddr, within: Duration) {
    tracing::debug!("plain HTTP from {peer}, not a loopback address: answering that TLS is required");
    let body = serde_json::json!({ "error": TLS_REQUIRED }).to_string();
    let answer = format!(
        "HTTP/1.1 426 Upgrade Required\r\nupgrade: TLS/1.3\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN {
            match stream.read(&mut buf).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(within.min(REFUSAL_LINGER), answer).await;
}

/// Serves HTTP/1.1 on one connection (plain or after its TLS handshake) until it ends or the
/// server stops.
async fn serve_http<S>(
    builder: http1::Builder,
    stream: S,
    peer: SocketAddr,
    identity: Option<PeerIdentity>,
    router: Router,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let router = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        if let Some(identity) = &identity {
            request.extensions_mut().insert(identity.clone());
        }
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

/// A warning in the daemon's log.
fn log(message: std::fmt::Arguments<'_>) {
    tracing::warn!("{message}");
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn plain_http_is_allowed_from_loopback_addresses_only() {
        let allowed = ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "::ffff:127.0.0.1", "::ffff:127.1.2.3"];
        for ip in allowed {
            assert!(plain_allowed(ip.parse().unwrap()), "{ip} refused");
        }
        let refused = [
            "0.0.0.0",
            "10.0.0.7",
            "192.168.1.2",
            "128.0.0.1",
            "126.255.255.255",
            "255.255.255.255",
            "::",
            "::2",
            "fe80::1",
            "fd00::1",
            "2001:db8::1",
            "::ffff:10.0.0.7",
            "::ffff:0.0.0.0",
            // IPv4-compatible (deprecated), not IPv4-mapped: not the IPv4 loopback address.
            "::127.0.0.1",
            "64:ff9b::7f00:1",
        ];
        for ip in refused {
            assert!(!plain_allowed(ip.parse().unwrap()), "{ip} allowed");
        }
        assert!(plain_allowed(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(plain_allowed(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped())));
        assert!(plain_allowed(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(!plain_allowed(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
    }
}
