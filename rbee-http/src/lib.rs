//! rbee's HTTP/1.1 client, over TCP or TLS: artifact and model downloads, and the calls
//! between queen, hives and workers; and [`require_token`], the bearer-token check of the
//! hive's and the workers' APIs. HTTPS uses rustls with the webpki root certificates,
//! plus the PEM certificates of `$SSL_CERT_FILE` when it is set (a private CA). It follows no
//! redirects.
#![warn(missing_docs)]

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rbee_core::artifact::HttpGet;
use tokio_rustls::rustls;

/// A response whose body is read as it arrives.
pub type Response = hyper::Response<Incoming>;

/// How long connecting (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one request to `url` and returns the response once its head arrives; the body is
/// the caller's to read (see [`collect`] and [`Lines`]).
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<Response, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("{url}: only http:// and https:// are supported")),
    };
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?.trim_matches(['[', ']']).to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        if tls {
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let stream = tls_connector()?.connect(name, tcp).await.map_err(|e| format!("TLS with {host}: {e}"))?;
            handshake(stream).await
        } else {
            handshake(tcp).await
        }
    };
    let mut sender = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("{url}: connecting timed out after {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("{host}:{port}"))
        .header("user-agent", concat!("rbee/", env!("CARGO_PKG_VERSION")));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
    sender.send_request(request).await.map_err(|e| format!("{url}: {e}"))
}

async fn handshake<S>(stream: S) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Puts `router` behind `Authorization: Bearer <token>` (401 without it); with no token,
/// leaves it open.
pub fn require_token(router: axum::Router, token: Option<String>) -> axum::Router {
    let Some(token) = token else { return router };
    let expected = format!("Bearer {token}");
    router.route_layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
        let ok = req.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str());
        async move {
            if ok {
                next.run(req).await
            } else {
                use axum::response::IntoResponse;
                (axum::http::StatusCode::UNAUTHORIZED, "missing or wrong token").into_response()
            }
        }
    }))
}

/// A response made ready to be passed on by a proxy: status, headers and streaming body kept,
/// the hop-by-hop headers of this connection removed.
pub fn passthrough(mut response: Response) -> Response {
    for name in ["connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"] {
        response.headers_mut().remove(name);
    }
    response
}

/// Reads a whole body.
pub async fn collect(response: Response) -> Result<Vec<u8>, String> {
    Ok(response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes().to_vec())
}

/// A body read line by line (NDJSON, Server-Sent Events).
pub struct Lines {
    body: Incoming,
    buf: Vec<u8>,
    ended: bool,
}

impl Lines {
    /// Reads `response`'s body as lines.
    pub fn new(response: Response) -> Self {
        Self { body: response.into_body(), buf: Vec::new(), ended: false }
    }

    /// The next line without its `\n` (or `\r\n`); `None` at the end of the body.
    pub async fn next_line(&mut self) -> Result<Option<String>, String> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            if self.ended {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let line = String::from_utf8_lossy(&self.buf).into_owned();
                self.buf.clear();
                return Ok(Some(line));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buf.extend_from_slice(data);
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => self.ended = true,
            }
        }
    }
}

/// HTTP(S) `GET`s of whole bodies, with a deadline: the artifact sources' client.
#[derive(Debug, Clone)]
pub struct HyperGet {
    /// Deadline of one request, body included.
    pub timeout: Duration,
}

impl Default for HyperGet {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(300) }
    }
}

#[async_trait::async_trait]
impl HttpGet for HyperGet {
    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let work = async {
            let response = send("GET", url, &[], Vec::new()).await?;
            let status = response.status();
            let body = collect(response).await?;
            if status.is_success() { Ok(body) } else { Err(format!("{url} answered {status}")) }
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| format!("{url}: no answer within {:?}", self.timeout))?
    }
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = std::env::var_os("SSL_CERT_FILE") {
        let pem = std::fs::read(&path).map_err(|e| format!("SSL_CERT_FILE {}: {e}", path.to_string_lossy()))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("SSL_CERT_FILE: {e}"))?;
            roots.add(cert).map_err(|e| format!("SSL_CERT_FILE: {e}"))?;
        }
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
}
