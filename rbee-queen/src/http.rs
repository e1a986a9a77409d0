//! [`HyperGet`]: the HTTP client for `http://` artifact sources.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rbee_core::artifact::HttpGet;

/// Plain HTTP/1.1 `GET`s with a deadline; follows no redirects.
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
        if uri.scheme_str() != Some("http") {
            return Err(format!("{url}: only http:// is supported"));
        }
        let host = uri.host().ok_or_else(|| format!("{url}: no host"))?.to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let work = async {
            let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let req = hyper::Request::get(path)
                .header("host", format!("{host}:{port}"))
                .header("user-agent", concat!("rbee/", env!("CARGO_PKG_VERSION")))
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = res.status();
            let body = res.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            if status.is_success() { Ok(body.to_vec()) } else { Err(format!("{url} answered {status}")) }
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| format!("{url}: no answer within {:?}", self.timeout))?
    }
}
