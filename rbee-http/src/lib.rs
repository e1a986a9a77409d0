//! rbee's HTTP/1.1 client, over TCP or TLS: artifact and model downloads, and the calls
//! between queen, hives and workers; and [`require_token`], the bearer-token check of the
//! hive's and the workers' APIs. HTTPS uses rustls with the webpki root certificates,
//! plus the PEM certificates of `$SSL_CERT_FILE` when it is set (a private CA). It follows no
//! redirects. And [`serve()`], the HTTP server loop of the queen, the hive and the workers,
//! with a header-read timeout and a connection cap ([`Limits`]); [`serve_tls`] the same over
//! TLS; [`serve_auto`] both on one port (plain HTTP for loopback clients only). [`tls`]:
//! mutual TLS between the queen and its hives (a small CA, certificates, rustls
//! configurations), with [`send_with`] and [`send_with_name`] the client side.
#![warn(missing_docs)]

pub mod serve;
pub mod tls;
pub use serve::{Limits, plain_allowed, serve, serve_auto, serve_tls};

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rbee_core::artifact::HttpGet;
use tokio_rustls::rustls;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL cannot be used.
    #[error("bad URL {url}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Nothing accepts connections there (refused, no route, unknown host).
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// The system's answer.
        #[source]
        source: std::io::Error,
    },
    /// Connecting (TCP and TLS) took longer than [`CONNECT_TIMEOUT`].
    #[error("{url}: connecting timed out after {after:?}")]
    ConnectTimeout {
        /// The URL.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// The TLS handshake failed (an untrusted certificate, say).
    #[error("TLS with {host}: {source}")]
    Tls {
        /// The host.
        host: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The trust store could not be built (`$SSL_CERT_FILE`).
    #[error("trusted certificates: {0}")]
    TrustStore(String),
    /// HTTP itself failed (the connection closed mid-answer, a malformed answer).
    #[error("{url}: {source}")]
    Protocol {
        /// The URL.
        url: String,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// Reading an answer's body failed.
    #[error("reading the answer: {0}")]
    Body(#[source] hyper::Error),
    /// A non-2xx status where a body was wanted.
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// A line longer than the reader accepts.
    #[error("a line of the answer is longer than {max} bytes")]
    LineTooLong {
        /// The limit.
        max: usize,
    },
    /// No complete answer within the deadline.
    #[error("{url}: no answer within {after:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The deadline.
        after: Duration,
    },
}

impl HttpError {
    /// True when nothing could be reached at the address (as opposed to a bad URL, a TLS or
    /// protocol failure, or an error answer).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, HttpError::Connect { .. } | HttpError::ConnectTimeout { .. })
    }
}

/// A response whose body is read as it arrives.
pub type Response = hyper::Response<Incoming>;

/// How long connecting (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one request to `url` and returns the response once its head arrives; the body is
/// the caller's to read (see [`collect`] and [`Lines`]).
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<Response, HttpError> {
    request(None, None, method, url, headers, body).await
}

/// [`send`] over TLS with `tls` (as [`tls::client_config`] makes it): the server must present
/// a certificate that `tls` trusts and that names the URL's host (an IP address or a DNS
/// name) among its subject alternative names; `tls` presents its client certificate if it has
/// one. Only `https://` URLs: a plain `http://` one is refused ([`HttpError::BadUrl`]) rather
/// than sent without TLS.
///
/// Under TLS 1.3 a server that refuses the client's certificate (or the lack of one) says so
/// after the client's side of the handshake is done, so that refusal arrives as the request's
/// failure ([`HttpError::Protocol`] or [`HttpError::Tls`]).
pub async fn send_with(
    tls: &std::sync::Arc<rustls::ClientConfig>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Response, HttpError> {
    request(Some(tls), None, method, url, headers, body).await
}

/// [`send_with`], verifying the server by `server_name` instead of the URL's host: the
/// connection goes to the URL's host and port, but the TLS server name (sent as SNI, and
/// checked against the certificate's subject alternative names) is `server_name`, a DNS name
/// (`0123abcd.hive.rbee`, `queen.rbee`) or an IP address. So a peer is verified by the
/// identity it was issued, whatever address it is reached at. The request's `Host` header
/// is still the URL's. A `server_name` that is neither a DNS name nor an IP address is
/// refused ([`HttpError::BadUrl`]) before connecting.
pub async fn send_with_name(
    tls: &std::sync::Arc<rustls::ClientConfig>,
    server_name: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Response, HttpError> {
    request(Some(tls), Some(server_name), method, url, headers, body).await
}

async fn request(
    tls_config: Option<&std::sync::Arc<rustls::ClientConfig>>,
    server_name: Option<&str>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Response, HttpError> {
    let bad = |reason: String| HttpError::BadUrl { url: url.to_owned(), reason };
    let uri: hyper::Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| bad(e.to_string()))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("only http:// and https:// are supported".into())),
    };
    if tls_config.is_some() && !tls {
        return Err(bad("only https:// is sent with a TLS configuration".into()));
    }
    let host = uri.host().ok_or_else(|| bad("no host".into()))?.trim_matches(['[', ']']).to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    // Who the server must prove to be, and how errors name it.
    let (name, peer) = match server_name {
        Some(name) => (name.to_owned(), format!("{host} (as {name})")),
        None => (host.clone(), host.clone()),
    };
    let name = if tls {
        Some(rustls::pki_types::ServerName::try_from(name).map_err(|e| bad(format!("server name: {e}")))?)
    } else {
        None
    };
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|source| HttpError::Connect { url: url.to_owned(), source })?;
        let _ = tcp.set_nodelay(true);
        if let Some(name) = name {
            let connector = match tls_config {
                Some(config) => tokio_rustls::TlsConnector::from(config.clone()),
                None => tls_connector()?,
            };
            let stream = connector.connect(name, tcp).await.map_err(|source| HttpError::Tls { host: peer, source })?;
            handshake(stream, url).await
        } else {
            handshake(tcp, url).await
        }
    };
    let mut sender = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| HttpError::ConnectTimeout { url: url.to_owned(), after: CONNECT_TIMEOUT })??;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("{host}:{port}"))
        .header("user-agent", concat!("rbee/", env!("CARGO_PKG_VERSION")));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body))).map_err(|e| bad(e.to_string()))?;
    sender.send_request(request).await.map_err(|source| HttpError::Protocol { url: url.to_owned(), source })
}

async fn handshake<S>(stream: S, url: &str) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| HttpError::Protocol { url: url.to_owned(), source })?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Puts `router` behind `Authorization: Bearer <token>` (401 without it); with no token,
/// leaves it open.
pub fn require_token(router: axum::Router, token: Option<String>) -> axum::Router {
    let Some(token) = token else { return router };
    router.route_layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
        let ok = rbee_core::proto::authorized(req.headers().get("authorization").and_then(|v| v.to_str().ok()), &token);
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

/// An error answer of rbee's daemons, one shape per API: the job API's
/// `{"error": "message"}`, or the OpenAI-compatible `{"error": {"message", "type"}}` of the
/// chat endpoints (when it has a `kind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: axum::http::StatusCode,
    /// What went wrong and what to do.
    pub message: String,
    /// The OpenAI error `type` (`not_found`, `hive_unavailable`, …) on chat endpoints.
    pub kind: Option<&'static str>,
}

impl ApiError {
    /// A job-API error.
    pub fn new(status: axum::http::StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind: None }
    }
    /// An OpenAI-style error of type `kind`.
    pub fn openai(status: axum::http::StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind: Some(kind) }
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let body = match self.kind {
            None => serde_json::json!({ "error": self.message }),
            Some(kind) => serde_json::json!({ "error": { "message": self.message, "type": kind } }),
        };
        (self.status, axum::Json(body)).into_response()
    }
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
pub async fn collect(response: Response) -> Result<Vec<u8>, HttpError> {
    Ok(response.into_body().collect().await.map_err(HttpError::Body)?.to_bytes().to_vec())
}

/// The longest line [`Lines`] accepts: a job's result (a plan and report of a large fleet) is
/// one line, so this is generous; it only stops a peer that never sends a newline.
pub const MAX_LINE: usize = 64 << 20;

/// A body read line by line (NDJSON, Server-Sent Events).
pub struct Lines {
    body: Incoming,
    buf: LineBuf,
    ended: bool,
}

/// Bytes cut into lines. Remembers how far it has looked for a newline, so a long line that
/// arrives in many pieces is scanned once (rescanning from the start made one 16 MiB line
/// cost the queen a minute of CPU).
#[derive(Debug, Default)]
pub(crate) struct LineBuf {
    bytes: Vec<u8>,
    scanned: usize,
    /// How many bytes were looked at for a newline in all (tests check it grows linearly).
    #[cfg(test)]
    examined: usize,
}

impl LineBuf {
    pub(crate) fn push(&mut self, data: &[u8]) -> Result<(), HttpError> {
        if self.bytes.len() + data.len() > MAX_LINE
            && !data.contains(&b'\n')
            && !self.bytes[self.scanned..].contains(&b'\n')
        {
            return Err(HttpError::LineTooLong { max: MAX_LINE });
        }
        self.bytes.extend_from_slice(data);
        Ok(())
    }

    /// The next complete line, without its `\n` or `\r\n`.
    pub(crate) fn line(&mut self) -> Option<String> {
        let unscanned = &self.bytes[self.scanned..];
        let found = unscanned.iter().position(|b| *b == b'\n');
        #[cfg(test)]
        {
            self.examined += found.map_or(unscanned.len(), |at| at + 1);
        }
        let end = self.scanned + found?;
        let mut line: Vec<u8> = self.bytes.drain(..=end).collect();
        self.scanned = 0;
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Some(String::from_utf8_lossy(&line).into_owned())
    }

    /// Marks everything held as scanned (no newline in it).
    fn scanned_all(&mut self) {
        self.scanned = self.bytes.len();
    }

    /// What is left at the end of the body, as a last line.
    fn rest(&mut self) -> Option<String> {
        (!self.bytes.is_empty()).then(|| {
            self.scanned = 0;
            String::from_utf8_lossy(&std::mem::take(&mut self.bytes)).into_owned()
        })
    }
}

impl Lines {
    /// Reads `response`'s body as lines.
    pub fn new(response: Response) -> Self {
        Self { body: response.into_body(), buf: LineBuf::default(), ended: false }
    }

    /// The next line without its `\n` (or `\r\n`); `None` at the end of the body. A line
    /// longer than [`MAX_LINE`] is an error.
    pub async fn next_line(&mut self) -> Result<Option<String>, HttpError> {
        loop {
            if let Some(line) = self.buf.line() {
                return Ok(Some(line));
            }
            self.buf.scanned_all();
            if self.ended {
                return Ok(self.buf.rest());
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buf.push(data)?;
                    }
                }
                Some(Err(e)) => return Err(HttpError::Body(e)),
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
    async fn get(&self, url: &str) -> Result<Vec<u8>, rbee_core::artifact::HttpGetError> {
        let work = async {
            let response = send("GET", url, &[], Vec::new()).await?;
            let status = response.status();
            let body = collect(response).await?;
            if status.is_success() {
                Ok(body)
            } else {
                Err(HttpError::Status { url: url.to_owned(), status: status.as_u16() })
            }
        };
        let answer = tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(HttpError::Timeout { url: url.to_owned(), after: self.timeout }));
        answer.map_err(Into::into)
    }
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector, HttpError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = std::env::var_os("SSL_CERT_FILE") {
        let bad =
            |e: &dyn std::fmt::Display| HttpError::TrustStore(format!("SSL_CERT_FILE {}: {e}", path.to_string_lossy()));
        let pem = std::fs::read(&path).map_err(|e| bad(&e))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| bad(&e))?;
            roots.add(cert).map_err(|e| bad(&e))?;
        }
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::TrustStore(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_arrive_whole_whatever_the_pieces() {
        let mut buf = LineBuf::default();
        for piece in ["da", "ta: one\r", "\ntwo\nthr", "ee"] {
            buf.push(piece.as_bytes()).unwrap();
        }
        assert_eq!(buf.line().as_deref(), Some("data: one"));
        assert_eq!(buf.line().as_deref(), Some("two"));
        assert_eq!(buf.line(), None);
        buf.scanned_all();
        assert_eq!(buf.rest().as_deref(), Some("three"));
    }

    /// One long line in many small pieces is scanned once: each piece is looked at when it
    /// arrives, not again with every later piece.
    #[test]
    fn a_long_line_in_small_pieces_is_scanned_once() {
        let mut buf = LineBuf::default();
        let piece = vec![b'x'; 4096];
        for _ in 0..4096 {
            buf.push(&piece).unwrap();
            assert_eq!(buf.line(), None);
            buf.scanned_all();
            assert_eq!(buf.scanned, buf.bytes.len());
        }
        buf.push(b"\n").unwrap();
        assert_eq!(buf.line().map(|l| l.len()), Some(4096 * 4096));
        // Each byte looked at once: scanning from the start each time would be 4096 × 2048
        // pieces' worth (34 G bytes).
        assert_eq!(buf.examined, 4096 * 4096 + 1);
    }

    proptest::proptest! {
        /// NDJSON and Server-Sent Events bodies in any pieces: the lines that come out are the
        /// body split at `\n` (a `\r` before it dropped, bytes that are not UTF-8 replaced),
        /// then what is left at the end, however the body was cut into frames. Each line read
        /// as a hive's NDJSON event or as an SSE `data:` field never panics.
        #[test]
        fn fuzz_lines_of_any_body_in_any_pieces(
            pieces in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::prop_oneof![
                        3 => proptest::sample::select(&b"\n\r{}\":,adt \xc3\xa9\xff"[..]),
                        1 => proptest::arbitrary::any::<u8>(),
                    ],
                    0..40,
                ),
                0..12,
            )
        ) {
            let mut buf = LineBuf::default();
            let mut got = Vec::new();
            for piece in &pieces {
                buf.push(piece).unwrap();
                while let Some(line) = buf.line() {
                    got.push(line);
                }
                buf.scanned_all();
            }
            got.extend(buf.rest());
            let body = pieces.concat();
            let mut want: Vec<String> = Vec::new();
            let mut parts: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
            let last = parts.pop().unwrap_or_default();
            for part in parts {
                let part = part.strip_suffix(b"\r").unwrap_or(part);
                want.push(String::from_utf8_lossy(part).into_owned());
            }
            if !last.is_empty() {
                want.push(String::from_utf8_lossy(last).into_owned());
            }
            proptest::prop_assert_eq!(&got, &want);
            for line in &got {
                let _ = serde_json::from_str::<rbee_core::proto::hive::HiveEvent>(line);
                if let Some(data) = line.strip_prefix("data:") {
                    let _ = serde_json::from_str::<rbee_core::proto::queen::JobEvent>(data.trim_start());
                }
            }
        }
    }

    #[test]
    fn a_line_without_end_is_refused_past_the_cap() {
        let mut buf = LineBuf::default();
        let piece = vec![b'x'; 1 << 20];
        let mut refused = false;
        for _ in 0..(MAX_LINE >> 20) + 2 {
            if buf.push(&piece).is_err() {
                refused = true;
                break;
            }
            buf.scanned_all();
        }
        assert!(refused, "a line longer than MAX_LINE was accepted");
    }
}
