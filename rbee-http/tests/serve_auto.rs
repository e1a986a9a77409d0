//! `rbee_http::serve_auto` over real sockets: TLS and plain HTTP on one port, plain HTTP only
//! from loopback addresses; and `rbee_http::send_with_name`, which verifies a server by a
//! name that is not the URL's host. The tests that need a peer on a non-loopback address use
//! one of this machine's own, and are skipped (with a note) when it has none. Deadlines are
//! generous and only bound how long a test may hang.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rbee_http::tls::{self, Ca, TlsAcceptor, Usage, rustls};
use rbee_http::{HttpError, Limits};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

mod support;
use support::{DAY, HANG, chain, new_ca, router};

struct Server {
    port: u16,
    served: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// `serve_auto` on `bind` (port chosen by the system) with `tls`.
    async fn start(bind: IpAddr, tls: Option<TlsAcceptor>, limits: Limits) -> Self {
        let listener = TcpListener::bind((bind, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let served = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(rbee_http::serve_auto(listener, tls, router(served.clone()), shutdown, limits));
        Self { port, served, stop: Some(stop), task }
    }

    /// Signals shutdown and waits for `serve_auto` to return.
    async fn shut_down(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let result =
            tokio::time::timeout(HANG, &mut self.task).await.expect("serve_auto did not return after shutdown");
        result.unwrap().unwrap();
    }
}

/// A server configuration whose certificate, from `ca`, names `sans`, requiring client
/// certificates from `ca`.
fn server_config(ca: &Ca, sans: &[&str]) -> Arc<rustls::ServerConfig> {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let cert = ca.issue("hive-test", &sans, 90 * DAY, Usage::Server).unwrap();
    tls::server_config(&cert.cert_pem, &cert.key_pem, Some(ca.cert_pem())).unwrap()
}

/// A client trusting `ca`, presenting a client certificate for `name` from it.
fn client(ca: &Ca, name: &str) -> Arc<rustls::ClientConfig> {
    let cert = ca.issue(name, &[], 90 * DAY, Usage::Client).unwrap();
    tls::client_config(ca.cert_pem(), Some((&cert.cert_pem, &cert.key_pem))).unwrap()
}

/// The status and body of a GET: plain with `send` without `tls`, else with `send_with`.
async fn fetch(tls: Option<&Arc<rustls::ClientConfig>>, url: &str) -> Result<(u16, String), HttpError> {
    let work = async {
        let response = match tls {
            Some(tls) => rbee_http::send_with(tls, "GET", url, &[], Vec::new()).await?,
            None => rbee_http::send("GET", url, &[], Vec::new()).await?,
        };
        let status = response.status().as_u16();
        let body = rbee_http::collect(response).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(HANG, work).await.unwrap_or_else(|_| panic!("GET {url} got no answer within {HANG:?}"))
}

/// An IPv4 address of this machine that is not a loopback one and that a server can listen
/// on, if it has one: the source address of its route to a documentation address (no
/// packet is sent), else the first global address `ip -4 -o addr` lists.
fn non_loopback_ipv4() -> Option<Ipv4Addr> {
    let usable =
        |ip: Ipv4Addr| !ip.is_loopback() && !ip.is_unspecified() && std::net::TcpListener::bind((ip, 0)).is_ok();
    for target in ["192.0.2.1:9", "198.51.100.1:9", "203.0.113.1:9", "10.255.255.1:9"] {
        let Ok(socket) = std::net::UdpSocket::bind("0.0.0.0:0") else { continue };
        if socket.connect(target).is_err() {
            continue;
        }
        if let Ok(SocketAddr::V4(local)) = socket.local_addr()
            && usable(*local.ip())
        {
            return Some(*local.ip());
        }
    }
    let listed = std::process::Command::new("ip").args(["-4", "-o", "addr"]).output().ok()?;
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|word| *word == "inet")?;
            words.next()?.split('/').next()?.parse::<Ipv4Addr>().ok()
        })
        .find(|ip| usable(*ip))
}

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// On 127.0.0.1 with TLS: plain HTTP from 127.0.0.1 is served (no identity), TLS with a
/// client certificate is served with it, both with their peer address; a TLS client without
/// a certificate is still refused.
#[tokio::test]
async fn one_port_serves_plain_http_from_loopback_and_tls() {
    let (_dir, ca) = new_ca();
    let config = server_config(&ca, &["127.0.0.1"]);
    let server = Server::start(LOOPBACK, Some(config.into()), Limits::default()).await;
    let plain = format!("http://127.0.0.1:{}", server.port);
    let https = format!("https://127.0.0.1:{}", server.port);
    let queen = client(&ca, "queen");

    assert_eq!(fetch(None, &format!("{plain}/maybe")).await.unwrap(), (200, "none".into()));
    let (status, peer) = fetch(None, &format!("{plain}/peer")).await.unwrap();
    assert_eq!(status, 200);
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    assert_eq!(fetch(Some(&queen), &format!("{https}/maybe")).await.unwrap(), (200, "queen".into()));
    let (status, peer) = fetch(Some(&queen), &format!("{https}/peer")).await.unwrap();
    assert_eq!(status, 200);
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    assert_eq!(server.served.load(Ordering::SeqCst), 4);

    let anonymous = tls::client_config(ca.cert_pem(), None).unwrap();
    let refused = fetch(Some(&anonymous), &format!("{https}/maybe")).await.expect_err("served without a certificate");
    assert!(matches!(refused, HttpError::Tls { .. } | HttpError::Protocol { .. }), "{refused:?}");
    assert_eq!(server.served.load(Ordering::SeqCst), 4);
    server.shut_down().await;
}

/// On all addresses with TLS: plain HTTP from 127.0.0.1 is served; plain HTTP from a
/// non-loopback address of this machine is answered 426 with a JSON error and never reaches
/// the router, while TLS from that address is served.
#[tokio::test]
async fn plain_http_from_a_non_loopback_address_is_told_to_use_tls() {
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("skipped: this machine has no non-loopback IPv4 address to connect from");
        return;
    };
    let (_dir, ca) = new_ca();
    let config = server_config(&ca, &[&ip.to_string()]);
    let server = Server::start(IpAddr::V4(Ipv4Addr::UNSPECIFIED), Some(config.into()), Limits::default()).await;
    let queen = client(&ca, "queen");

    let (status, peer) = fetch(None, &format!("http://127.0.0.1:{}/peer", server.port)).await.unwrap();
    assert_eq!(status, 200);
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    assert_eq!(server.served.load(Ordering::SeqCst), 1);

    for _ in 0..3 {
        let (status, body) = fetch(None, &format!("http://{ip}:{}/peer", server.port)).await.unwrap();
        assert_eq!(status, 426, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body, serde_json::json!({ "error": "this port requires TLS (https://)" }));
    }
    // A request with a body (read and dropped) is refused the same way.
    let response = tokio::time::timeout(
        HANG,
        rbee_http::send("POST", &format!("http://{ip}:{}/peer", server.port), &[], vec![b'x'; 200_000]),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), 426);
    assert_eq!(server.served.load(Ordering::SeqCst), 1, "a refused request reached the router");

    let (status, peer) = fetch(Some(&queen), &format!("https://{ip}:{}/peer", server.port)).await.unwrap();
    assert_eq!(status, 200);
    assert!(peer.starts_with(&format!("{ip}:")), "{peer}");
    assert_eq!(
        fetch(Some(&queen), &format!("https://{ip}:{}/maybe", server.port)).await.unwrap(),
        (200, "queen".into())
    );
    server.shut_down().await;
}

/// Without TLS, `serve_auto` is `serve`: plain HTTP from anywhere, the loopback address and
/// (when this machine has one) a non-loopback one.
#[tokio::test]
async fn without_tls_plain_http_is_served_from_anywhere() {
    let server = Server::start(IpAddr::V4(Ipv4Addr::UNSPECIFIED), None, Limits::default()).await;
    assert_eq!(fetch(None, &format!("http://127.0.0.1:{}/maybe", server.port)).await.unwrap(), (200, "none".into()));
    match non_loopback_ipv4() {
        Some(ip) => {
            let (status, peer) = fetch(None, &format!("http://{ip}:{}/peer", server.port)).await.unwrap();
            assert_eq!(status, 200);
            assert!(peer.starts_with(&format!("{ip}:")), "{peer}");
        }
        None => eprintln!("skipped the non-loopback half: this machine has no non-loopback IPv4 address"),
    }
    server.shut_down().await;
}

/// With one connection slot, a client that connects and sends nothing holds it only until
/// the first byte's deadline (the shorter of the two timeouts); a client waiting in the
/// backlog is then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_frees_its_slot_after_the_deadline() {
    let (_dir, ca) = new_ca();
    let config = server_config(&ca, &["127.0.0.1"]);
    let timeout = Duration::from_millis(700);
    let limits = Limits {
        max_connections: 1,
        header_read_timeout: Duration::from_secs(120),
        tls_handshake_timeout: timeout,
        ..Limits::default()
    };
    let server = Server::start(LOOPBACK, Some(config.into()), limits).await;
    let opened = Instant::now();
    let mut silent = TcpStream::connect((LOOPBACK, server.port)).await.unwrap();
    assert_eq!(fetch(None, &format!("http://127.0.0.1:{}/maybe", server.port)).await.unwrap(), (200, "none".into()));
    let closed = tokio::time::timeout(HANG, async {
        let mut buf = [0u8; 64];
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the silent connection is still open");
    assert!(opened.elapsed() >= timeout, "closed after {:?}, before the timeout", opened.elapsed());
    server.shut_down().await;
}

/// `send_with_name` connects to the URL's address but verifies the server by the name given:
/// a certificate naming only `x.hive.rbee` is accepted at `https://127.0.0.1:PORT` under that
/// name, and refused under another name or by the URL's host.
#[tokio::test]
async fn send_with_name_verifies_the_given_name_not_the_url_host() {
    let (_dir, ca) = new_ca();
    let config = server_config(&ca, &["x.hive.rbee"]);
    let server = Server::start(LOOPBACK, Some(config.into()), Limits::default()).await;
    let queen = client(&ca, "queen");
    let url = format!("https://127.0.0.1:{}/maybe", server.port);
    let send = |name: &'static str| {
        let (queen, url) = (queen.clone(), url.clone());
        async move {
            let work = rbee_http::send_with_name(&queen, name, "GET", &url, &[], Vec::new());
            tokio::time::timeout(HANG, work).await.expect("no answer")
        }
    };

    let response = send("x.hive.rbee").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(rbee_http::collect(response).await.unwrap(), b"queen");

    let refused = send("y.hive.rbee").await.expect_err("trusted a certificate for another name");
    let text = chain(&refused);
    assert!(matches!(refused, HttpError::Tls { .. }), "{text}");
    assert!(text.contains("not valid for name"), "{text}");
    assert!(text.contains("y.hive.rbee"), "{text}");
    // By the URL's host, as `send_with` verifies: not a name the certificate has.
    let refused = fetch(Some(&queen), &url).await.expect_err("trusted a certificate without the URL's host");
    assert!(matches!(refused, HttpError::Tls { .. }), "{refused:?}");
    // A name that is neither a DNS name nor an IP address is refused before connecting.
    let bad = send("not a name").await.expect_err("accepted a malformed server name");
    assert!(matches!(bad, HttpError::BadUrl { .. }), "{bad:?}");
    // Never plain HTTP with a TLS configuration.
    let plain = rbee_http::send_with_name(
        &queen,
        "x.hive.rbee",
        "GET",
        &format!("http://127.0.0.1:{}/maybe", server.port),
        &[],
        Vec::new(),
    )
    .await;
    assert!(matches!(plain, Err(HttpError::BadUrl { .. })), "{plain:?}");
    assert_eq!(server.served.load(Ordering::SeqCst), 1);
    server.shut_down().await;
}
