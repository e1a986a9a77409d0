//! `rbee_http::serve` over real sockets: the header-read timeout, the connection cap, long
//! streams, the peer address and graceful shutdown. No assertion depends on the machine being
//! fast: deadlines are generous and only bound how long a test may hang.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rbee_http::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a step may take before the test fails: only reached when something is broken.
const HANG: Duration = Duration::from_secs(30);

fn router() -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/peer", get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }))
        .route("/stream/{n}/{every_ms}", get(stream))
}

/// `n` Server-Sent Events (`data: 0`, `data: 1`, …), `every_ms` apart; endless when `n` is 0.
async fn stream(Path((n, every_ms)): Path<(u64, u64)>) -> Response {
    let events = futures_util::stream::unfold(0u64, move |i| async move {
        if n != 0 && i >= n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(every_ms)).await;
        }
        Some((Ok::<_, Infallible>(format!("data: {i}\n\n")), i + 1))
    });
    ([("content-type", "text/event-stream")], Body::from_stream(events)).into_response()
}

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(limits: Limits) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(rbee_http::serve(listener, router(), shutdown, limits));
        Self { addr, stop: Some(stop), task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A GET on a fresh connection: its status.
    async fn get_status(&self, path: &str) -> u16 {
        let response = tokio::time::timeout(HANG, rbee_http::send("GET", &self.url(path), &[], Vec::new()))
            .await
            .unwrap_or_else(|_| panic!("GET {path} got no answer within {HANG:?}"))
            .unwrap();
        response.status().as_u16()
    }

    /// Signals shutdown and waits for `serve` to return.
    async fn shut_down(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let result = tokio::time::timeout(HANG, &mut self.task).await.expect("serve did not return after shutdown");
        result.unwrap().unwrap();
    }
}

/// Sends a keep-alive `GET path` on `stream` and reads the answer.
async fn request(stream: &mut TcpStream, path: &str) -> (u16, String) {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).await.unwrap();
    read_response(stream).await
}

/// Reads one answer with a `content-length` body: its status and body.
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head.get(9..12).and_then(|s| s.parse().ok()).expect("a status line");
            let length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            let body = end + 4;
            if buf.len() >= body + length {
                return (status, String::from_utf8_lossy(&buf[body..body + length]).into_owned());
            }
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the server closed the connection mid-answer: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the server closes `stream` (end of file or an error such as a reset).
async fn closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The test holds about a thousand sockets (both ends of 500 connections): raises the soft
/// open-files limit where it is lower, as far as the hard limit allows.
fn allow_open_files(wanted: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < wanted {
        setrlimit(Resource::RLIMIT_NOFILE, wanted.min(hard), hard).unwrap();
    }
}

/// The bug: 500 connections that sent half a request line were all still held 45 s later.
/// Now /health answers while they are open, and the server closes every one of them once
/// the header-read timeout has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_dropped_after_the_header_timeout_while_health_answers() {
    allow_open_files(4096);
    let timeout = Duration::from_secs(1);
    let server = Server::start(Limits { header_read_timeout: timeout, ..Limits::default() }).await;
    let mut half_open = Vec::new();
    for _ in 0..500 {
        let opened = Instant::now();
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(b"GET /heal").await.unwrap();
        half_open.push((opened, stream));
    }

    assert_eq!(server.get_status("/health").await, 200);

    // The server cannot have closed a connection sooner than the timeout after the client
    // opened it: those still that young must be open (a slow machine only checks fewer).
    let now = Instant::now();
    let mut young = 0;
    for (opened, stream) in &half_open {
        if now < *opened + timeout {
            young += 1;
            match stream.try_read(&mut [0u8; 64]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                other => panic!("a connection {:?} old, under the timeout, was answered: {other:?}", opened.elapsed()),
            }
        }
    }
    eprintln!("{young} of 500 half-open connections checked open after /health answered");

    let deadline = tokio::time::Instant::now() + timeout + HANG;
    for (i, (_, stream)) in half_open.iter_mut().enumerate() {
        if tokio::time::timeout_at(deadline, closed_by_server(stream)).await.is_err() {
            panic!("half-open connection {i} still open {:?} after the header timeout", timeout + HANG);
        }
    }

    assert_eq!(server.get_status("/health").await, 200);
    assert!(!server.task.is_finished());
    server.shut_down().await;
}

/// With a cap of N, N idle keep-alive connections (complete requests, answered) fill the
/// server: the next connection waits, unanswered but not refused, and is served once they
/// close; the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_new_connections_wait_and_are_served_once_one_closes() {
    const CAP: usize = 4;
    let limits = Limits { max_connections: CAP, header_read_timeout: Duration::from_secs(120), ..Limits::default() };
    let server = Server::start(limits).await;
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        assert_eq!(request(&mut stream, "/health").await, (200, "ok".into()));
        held.push(stream);
    }
    // Keep-alive works: a second request on each.
    for stream in &mut held {
        assert_eq!(request(stream, "/health").await, (200, "ok".into()));
    }

    let mut waiting = TcpStream::connect(server.addr).await.expect("connecting waits in the backlog, not refused");
    waiting.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
    // Never answered while the cap is taken, so waiting a little cannot flake.
    let early = tokio::time::timeout(Duration::from_millis(500), read_response(&mut waiting)).await;
    assert!(early.is_err(), "a connection past the cap was served: {early:?}");
    assert!(!server.task.is_finished());

    drop(held);
    let answer = tokio::time::timeout(HANG, read_response(&mut waiting)).await.expect("not served after the cap freed");
    assert_eq!(answer, (200, "ok".into()));
    drop(waiting);
    for _ in 0..2 * CAP {
        assert_eq!(server.get_status("/health").await, 200);
    }
    server.shut_down().await;
}

/// The header timeout bounds reading a request's headers, not the answer: an SSE stream that
/// lasts several timeouts arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_the_header_timeout_is_not_cut() {
    let timeout = Duration::from_secs(1);
    let server = Server::start(Limits { header_read_timeout: timeout, ..Limits::default() }).await;
    let started = Instant::now();
    let response = rbee_http::send("GET", &server.url("/stream/8/400"), &[], Vec::new()).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut lines = rbee_http::Lines::new(response);
    let mut events = Vec::new();
    while let Some(line) = tokio::time::timeout(HANG, lines.next_line()).await.expect("the stream stalled").unwrap() {
        if let Some(data) = line.strip_prefix("data: ") {
            events.push(data.to_owned());
        }
    }
    assert_eq!(events, (0..8).map(|i| i.to_string()).collect::<Vec<_>>());
    assert!(started.elapsed() > timeout * 2, "the stream was meant to outlast the timeout");
    server.shut_down().await;
}

/// Handlers still get the peer's address, as with `into_make_service_with_connect_info`.
#[tokio::test]
async fn handlers_see_the_peer_address() {
    let server = Server::start(Limits::default()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    assert_eq!(request(&mut stream, "/peer").await, (200, local.to_string()));
    drop(stream);
    server.shut_down().await;
}

/// On shutdown a request in flight finishes, then the listener is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_request_in_flight_finish_and_stops_accepting() {
    let server = Server::start(Limits::default()).await;
    let addr = server.addr;
    let response = rbee_http::send("GET", &server.url("/stream/5/200"), &[], Vec::new()).await.unwrap();
    let mut lines = rbee_http::Lines::new(response);
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("data: 0"));
    let reader = tokio::spawn(async move {
        let mut events = 1;
        while let Some(line) = lines.next_line().await.unwrap() {
            events += usize::from(line.starts_with("data: "));
        }
        events
    });
    server.shut_down().await;
    assert_eq!(tokio::time::timeout(HANG, reader).await.unwrap().unwrap(), 5);
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
}

/// A request still going [`Limits::shutdown_grace`] after shutdown does not keep the server up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_a_request_still_going_after_the_grace() {
    let limits = Limits { shutdown_grace: Duration::from_millis(500), ..Limits::default() };
    let server = Server::start(limits).await;
    let response = rbee_http::send("GET", &server.url("/stream/0/100"), &[], Vec::new()).await.unwrap();
    let mut lines = rbee_http::Lines::new(response);
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("data: 0"));
    server.shut_down().await;
    let ended = tokio::time::timeout(HANG, async {
        loop {
            match lines.next_line().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the endless stream was not cut");
}
