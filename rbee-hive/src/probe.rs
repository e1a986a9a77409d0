//! `rbee-hive probe`: asks a hive on this host for `/health`. The sync observer runs it on the
//! host, so health checks need no open port between the operator and the host.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// GETs `http://127.0.0.1:{port}/health` and returns the body, or why not.
pub async fn probe(port: u16, deadline: Duration) -> Result<String, String> {
    let work = async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("nothing answers on 127.0.0.1:{port}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get("/health")
            .header("host", format!("127.0.0.1:{port}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status();
        let body = res.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let body = String::from_utf8_lossy(&body).trim().to_owned();
        if status.is_success() { Ok(body) } else { Err(format!("/health answered {status}: {body}")) }
    };
    tokio::time::timeout(deadline, work)
        .await
        .unwrap_or_else(|_| Err(format!("/health on port {port} did not answer within {}ms", deadline.as_millis())))
}
