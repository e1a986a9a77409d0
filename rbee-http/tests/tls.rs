//! Mutual TLS over real sockets: `rbee_http::serve_tls` with certificates from
//! `rbee_http::tls::Ca`, called with `rbee_http::send_with`. Who may connect (a client
//! certificate from the CA, and only that), what the client checks (the CA and the address
//! in the server's certificate), what handlers see (the client's common name), and that a
//! silent client cannot hold a connection slot past the handshake timeout. Deadlines are
//! generous and only bound how long a test may hang.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rbee_http::tls::{self, Ca, Usage, rustls};
use rbee_http::{HttpError, Limits};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

mod support;
use support::{DAY, HANG, chain, new_ca, router};

struct Server {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// An HTTPS server on 127.0.0.1 with `config`.
    async fn start(config: Arc<rustls::ServerConfig>, limits: Limits) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let served = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(rbee_http::serve_tls(listener, config, router(served.clone()), shutdown, limits));
        Self { addr, served, stop: Some(stop), task }
    }

    /// A server on 127.0.0.1 whose certificate, from `ca`, names `sans`, and that requires
    /// client certificates from `client_ca`.
    async fn with_cert(ca: &Ca, sans: &[&str], client_ca: &Ca) -> Self {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let cert = ca.issue("hive-test", &sans, 90 * DAY, Usage::Server).unwrap();
        let config = tls::server_config(&cert.cert_pem, &cert.key_pem, Some(client_ca.cert_pem())).unwrap();
        Self::start(config, Limits::default()).await
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// A GET with `client`: its status and body.
    async fn get(&self, client: &Arc<rustls::ClientConfig>, path: &str) -> Result<(u16, String), HttpError> {
        fetch(client, &self.url(path)).await
    }

    /// Signals shutdown and waits for `serve_tls` to return.
    async fn shut_down(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let result = tokio::time::timeout(HANG, &mut self.task).await.expect("serve_tls did not return after shutdown");
        result.unwrap().unwrap();
    }
}

async fn fetch(client: &Arc<rustls::ClientConfig>, url: &str) -> Result<(u16, String), HttpError> {
    let work = async {
        let response = rbee_http::send_with(client, "GET", url, &[], Vec::new()).await?;
        let status = response.status().as_u16();
        let body = rbee_http::collect(response).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(HANG, work).await.unwrap_or_else(|_| panic!("GET {url} got no answer within {HANG:?}"))
}

/// A client trusting `ca`, presenting a client certificate for `name` issued by `issuer`.
fn client(ca: &Ca, issuer: &Ca, name: &str, usage: Usage) -> Arc<rustls::ClientConfig> {
    let cert = issuer.issue(name, &[], 90 * DAY, usage).unwrap();
    tls::client_config(ca.cert_pem(), Some((&cert.cert_pem, &cert.key_pem))).unwrap()
}

#[tokio::test]
async fn a_client_with_a_certificate_from_the_ca_is_served_and_seen_by_its_name() {
    let (_dir, ca) = new_ca();
    let server = Server::with_cert(&ca, &["127.0.0.1"], &ca).await;
    let queen = client(&ca, &ca, "queen", Usage::Client);
    assert_eq!(server.get(&queen, "/whoami").await.unwrap(), (200, "queen".into()));
    assert_eq!(server.get(&queen, "/maybe").await.unwrap(), (200, "queen".into()));
    let (status, peer) = server.get(&queen, "/peer").await.unwrap();
    assert_eq!(status, 200);
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    // A certificate for both uses works as a client's too.
    let both = client(&ca, &ca, "hive-b", Usage::Both);
    assert_eq!(server.get(&both, "/whoami").await.unwrap(), (200, "hive-b".into()));
    assert_eq!(server.served.load(Ordering::SeqCst), 4);

    // The ordinary client (web roots) does not trust the private CA.
    let plain = rbee_http::send("GET", &server.url("/whoami"), &[], Vec::new()).await;
    assert!(matches!(plain, Err(HttpError::Tls { .. })), "{plain:?}");
    // A TLS configuration is never used to send plain HTTP.
    let downgrade = rbee_http::send_with(&queen, "GET", &format!("http://{}/", server.addr), &[], Vec::new()).await;
    assert!(matches!(downgrade, Err(HttpError::BadUrl { .. })), "{downgrade:?}");
    server.shut_down().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let (_dir, ca) = new_ca();
    let server = Server::with_cert(&ca, &["127.0.0.1"], &ca).await;
    let anonymous = tls::client_config(ca.cert_pem(), None).unwrap();
    let refused = server.get(&anonymous, "/maybe").await.expect_err("served without a client certificate");
    eprintln!("refused: {}", chain(&refused));
    assert!(matches!(refused, HttpError::Tls { .. } | HttpError::Protocol { .. }), "{refused:?}");
    assert_eq!(server.served.load(Ordering::SeqCst), 0);
    server.shut_down().await;
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let (_dir, ca) = new_ca();
    let (_other_dir, other) = new_ca();
    let server = Server::with_cert(&ca, &["127.0.0.1"], &ca).await;
    let stranger = client(&ca, &other, "queen", Usage::Client);
    let refused = server.get(&stranger, "/maybe").await.expect_err("served a client certificate of another CA");
    eprintln!("refused: {}", chain(&refused));
    assert!(matches!(refused, HttpError::Tls { .. } | HttpError::Protocol { .. }), "{refused:?}");
    assert_eq!(server.served.load(Ordering::SeqCst), 0);
    server.shut_down().await;
}

/// A server certificate (server use only) cannot authenticate a client, even from the CA.
#[tokio::test]
async fn a_server_certificate_does_not_pass_as_a_client_certificate() {
    let (_dir, ca) = new_ca();
    let server = Server::with_cert(&ca, &["127.0.0.1"], &ca).await;
    let impostor = client(&ca, &ca, "queen", Usage::Server);
    let refused = server.get(&impostor, "/maybe").await.expect_err("served a server certificate as a client's");
    eprintln!("refused: {}", chain(&refused));
    assert_eq!(server.served.load(Ordering::SeqCst), 0);
    server.shut_down().await;
}

#[tokio::test]
async fn the_client_refuses_a_server_certificate_from_another_ca() {
    let (_dir, ca) = new_ca();
    let (_other_dir, other) = new_ca();
    let server = Server::with_cert(&other, &["127.0.0.1"], &ca).await;
    let queen = client(&ca, &ca, "queen", Usage::Client);
    let refused = server.get(&queen, "/whoami").await.expect_err("trusted a server certificate of another CA");
    let text = chain(&refused);
    assert!(matches!(refused, HttpError::Tls { .. }), "{text}");
    assert!(text.contains("UnknownIssuer") || text.contains("BadSignature"), "{text}");
    assert_eq!(server.served.load(Ordering::SeqCst), 0);
    server.shut_down().await;
}

#[tokio::test]
async fn the_client_refuses_a_certificate_for_another_address() {
    let (_dir, ca) = new_ca();
    let server = Server::with_cert(&ca, &["127.0.0.2", "gpu-1.lan"], &ca).await;
    let queen = client(&ca, &ca, "queen", Usage::Client);
    let refused = server.get(&queen, "/whoami").await.expect_err("trusted a certificate for another address");
    let text = chain(&refused);
    assert!(matches!(refused, HttpError::Tls { .. }), "{text}");
    assert!(text.contains("not valid for name"), "{text}");
    assert_eq!(server.served.load(Ordering::SeqCst), 0);
    server.shut_down().await;
}

/// A DNS name in the certificate matches a URL with that host name.
#[tokio::test]
async fn a_dns_name_in_the_certificate_matches_the_url_host() {
    let (_dir, ca) = new_ca();
    let server = Server::with_cert(&ca, &["localhost"], &ca).await;
    let queen = client(&ca, &ca, "queen", Usage::Client);
    let url = format!("https://localhost:{}/whoami", server.addr.port());
    assert_eq!(fetch(&queen, &url).await.unwrap(), (200, "queen".into()));
    // The same server by its address: not a name its certificate has.
    assert!(matches!(server.get(&queen, "/whoami").await, Err(HttpError::Tls { .. })));
    server.shut_down().await;
}

/// Without a client CA the server asks for no certificate; handlers see no identity and
/// `PeerIdentity` answers 401. A plain HTTP server behaves the same.
#[tokio::test]
async fn without_client_certificates_handlers_see_no_identity() {
    let (_dir, ca) = new_ca();
    let cert = ca.issue("hive-test", &["127.0.0.1".into()], DAY, Usage::Server).unwrap();
    let config = tls::server_config(&cert.cert_pem, &cert.key_pem, None).unwrap();
    let server = Server::start(config, Limits::default()).await;
    let anonymous = tls::client_config(ca.cert_pem(), None).unwrap();
    assert_eq!(server.get(&anonymous, "/maybe").await.unwrap(), (200, "none".into()));
    assert_eq!(server.get(&anonymous, "/whoami").await.unwrap().0, 401);
    server.shut_down().await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(rbee_http::serve(
        listener,
        router(Arc::default()),
        async move {
            let _ = stopped.await;
        },
        Limits::default(),
    ));
    let response = rbee_http::send("GET", &format!("http://{addr}/whoami"), &[], Vec::new()).await.unwrap();
    assert_eq!(response.status(), 401);
    let _ = stop.send(());
    tokio::time::timeout(HANG, task).await.unwrap().unwrap().unwrap();
}

/// With one connection slot, a client that connects and sends nothing holds it only until the
/// handshake timeout (the header-read timeout is far longer): then it is closed, and a client
/// waiting in the backlog is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_timeout_frees_the_slot_of_a_silent_client() {
    let (_dir, ca) = new_ca();
    let cert = ca.issue("hive-test", &["127.0.0.1".into()], DAY, Usage::Server).unwrap();
    let config = tls::server_config(&cert.cert_pem, &cert.key_pem, Some(ca.cert_pem())).unwrap();
    let timeout = Duration::from_millis(700);
    let limits = Limits {
        max_connections: 1,
        header_read_timeout: Duration::from_secs(120),
        tls_handshake_timeout: timeout,
        ..Limits::default()
    };
    let server = Server::start(config, limits).await;
    let queen = client(&ca, &ca, "queen", Usage::Client);

    let opened = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // The well-behaved client waits for the slot, then is served.
    assert_eq!(server.get(&queen, "/whoami").await.unwrap(), (200, "queen".into()));
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
    assert_eq!(server.get(&queen, "/whoami").await.unwrap(), (200, "queen".into()));
    server.shut_down().await;
}

/// The CA is kept: a second load gives it back (same certificate, same key: what the first
/// issued, the second's trust accepts), in a directory of mode 0700 with the key 0600 and no
/// other file.
#[tokio::test]
async fn the_ca_is_kept_private_and_loads_back_the_same() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("state").join("ca");
    let first = Ca::load_or_create(&dir).unwrap();
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(tls::CA_KEY_FILE)), 0o600);
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, [tls::CA_KEY_FILE, tls::CA_CERT_FILE]);
    let key = std::fs::read(dir.join(tls::CA_KEY_FILE)).unwrap();

    let second = Ca::load_or_create(&dir).unwrap();
    assert_eq!(second.cert_pem(), first.cert_pem());
    assert_eq!(std::fs::read(dir.join(tls::CA_KEY_FILE)).unwrap(), key, "the key was rewritten");
    assert_eq!(tls::fingerprint(second.cert_pem()).unwrap(), tls::fingerprint(first.cert_pem()).unwrap());
    assert!(tls::not_after(first.cert_pem()).unwrap() > SystemTime::now() + 5 * 365 * DAY);

    // Certificates from the reloaded CA are trusted by what trusts the first.
    let server = Server::with_cert(&second, &["127.0.0.1"], &first).await;
    let queen = client(&first, &second, "queen", Usage::Client);
    assert_eq!(server.get(&queen, "/whoami").await.unwrap(), (200, "queen".into()));
    server.shut_down().await;
}

#[tokio::test]
async fn not_after_reads_back_what_was_issued() {
    let (_dir, ca) = new_ca();
    for valid_for in [Duration::from_secs(3600), 90 * DAY, 400 * DAY] {
        let issued = ca.issue("hive", &["10.1.2.3".into()], valid_for, Usage::Both).unwrap();
        assert_eq!(tls::not_after(&issued.cert_pem).unwrap(), issued.not_after);
        let left = issued.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(left <= valid_for && left + Duration::from_secs(60) > valid_for, "{left:?} of {valid_for:?}");
    }
}
