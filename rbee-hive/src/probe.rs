//! `rbee-hive probe`: asks a hive on this host for `/health`. The sync observer runs it on the
//! host, so health checks need no open port between the operator and the host.

use std::time::Duration;

/// Why the hive on this host did not answer `/health` well. `rbee-hive probe` prints only
/// `Display`, so each variant carries its source's text too; the source stays attached.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing accepted the request.
    #[error("nothing answers on 127.0.0.1:{port}: {source}")]
    Unreachable {
        /// The port asked.
        port: u16,
        /// Why.
        #[source]
        source: rbee_http::HttpError,
    },
    /// The answer's body could not be read.
    #[error("{0}")]
    Body(#[source] rbee_http::HttpError),
    /// `/health` answered with an error status.
    #[error("/health answered {status}: {body}")]
    Status {
        /// The status.
        status: hyper::StatusCode,
        /// The answer's body, trimmed.
        body: String,
    },
    /// No complete answer before the deadline.
    #[error("/health on port {port} did not answer within {ms}ms")]
    Timeout {
        /// The port asked.
        port: u16,
        /// The deadline, in milliseconds.
        ms: u128,
    },
}

/// GETs `http://127.0.0.1:{port}/health` and returns the body, or why not.
pub async fn probe(port: u16, deadline: Duration) -> Result<String, ProbeError> {
    let work = async {
        let url = format!("http://127.0.0.1:{port}/health");
        let res = rbee_http::send("GET", &url, &[], Vec::new())
            .await
            .map_err(|source| ProbeError::Unreachable { port, source })?;
        let status = res.status();
        let body = rbee_http::collect(res).await.map_err(ProbeError::Body)?;
        let body = String::from_utf8_lossy(&body).trim().to_owned();
        if status.is_success() { Ok(body) } else { Err(ProbeError::Status { status, body }) }
    };
    tokio::time::timeout(deadline, work)
        .await
        .unwrap_or_else(|_| Err(ProbeError::Timeout { port, ms: deadline.as_millis() }))
}
