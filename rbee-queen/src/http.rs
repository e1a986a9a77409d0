//! [`HyperGet`]: the HTTP(S) client for artifact sources. HTTPS uses rustls with the
//! webpki root certificates, plus the PEM certificates of `$SSL_CERT_FILE` when it is set (a
//! private CA).

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rbee_core::artifact::HttpGet;

/// HTTP/1.1 `GET`s over TCP or TLS, with a deadline; follows no redirects.
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
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{url}: only http:// and https:// are supported")),
        };
        let host = uri.host().ok_or_else(|| format!("{url}: no host"))?.trim_matches(['[', ']']).to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let work = async {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
            let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
            if tls {
                let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
                let stream = tls_connector()?.connect(name, tcp).await.map_err(|e| format!("TLS with {host}: {e}"))?;
                request(stream, &host, port, &path, url).await
            } else {
                request(tcp, &host, port, &path, url).await
            }
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| format!("{url}: no answer within {:?}", self.timeout))?
    }
}

use tokio_rustls::rustls;

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

async fn request<S>(stream: S, host: &str, port: u16, path: &str, url: &str) -> Result<Vec<u8>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", format!("{host}:{port}"))
        .header("user-agent", concat!("rbee/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status();
    let body = res.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if status.is_success() { Ok(body.to_vec()) } else { Err(format!("{url} answered {status}")) }
}
