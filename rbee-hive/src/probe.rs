//! `rbee-hive probe`: asks a hive on this host for `/health`. The sync observer runs it on the
//! host, so health checks need no open port between the operator and the host.

use std::time::Duration;

/// GETs `http://127.0.0.1:{port}/health` and returns the body, or why not.
pub async fn probe(port: u16, deadline: Duration) -> Result<String, String> {
    let work = async {
        let url = format!("http://127.0.0.1:{port}/health");
        let res = rbee_http::send("GET", &url, &[], Vec::new())
            .await
            .map_err(|e| format!("nothing answers on 127.0.0.1:{port}: {e}"))?;
        let status = res.status();
        let body = rbee_http::collect(res).await.map_err(|e| e.to_string())?;
        let body = String::from_utf8_lossy(&body).trim().to_owned();
        if status.is_success() { Ok(body) } else { Err(format!("/health answered {status}: {body}")) }
    };
    tokio::time::timeout(deadline, work)
        .await
        .unwrap_or_else(|_| Err(format!("/health on port {port} did not answer within {}ms", deadline.as_millis())))
}
