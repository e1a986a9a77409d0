//! A client for the queen's job API: submit an [`Operation`], stream its typed events,
//! cancel it. Programs drive a running queen with this instead of shelling out to `rbee`.

use std::net::SocketAddr;

use http_body_util::BodyExt;
use rbee_core::proto::operation::Operation;

use crate::api::{JobEvent, JobSummary, QueenHealth, Submitted};

/// Why a request to the queen failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing answers at the address.
    #[error("no queen answers at {addr}: {reason}")]
    Unreachable {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The request failed for another reason than an absent queen (a TLS or protocol error).
    #[error("request to the queen failed: {0}")]
    Http(#[source] rbee_http::HttpError),
    /// The token was refused.
    #[error("the queen at {0} refused the token (401): check ~/.local/state/rbee-queen/queen.token")]
    Unauthorized(SocketAddr),
    /// The queen answered with an error.
    #[error("the queen answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Its body.
        body: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from the queen: {0}")]
    Protocol(String),
    /// The queen stopped sending: no answer, or no event and no keepalive, for too long.
    #[error(
        "the queen at {addr} sent nothing for {}s ({what}): is it still running? (`rbee queen status`)",
        after.as_secs()
    )]
    Silent {
        /// The address.
        addr: SocketAddr,
        /// What was awaited.
        what: &'static str,
        /// How long.
        after: std::time::Duration,
    },
}

/// How long the client waits for an answer, and between two lines of an event stream (the
/// queen sends a keepalive comment every 10 s, so a live stream is never this quiet).
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A connection-per-request client of one queen.
#[derive(Debug, Clone)]
pub struct QueenClient {
    addr: SocketAddr,
    token: String,
    idle: std::time::Duration,
}

impl QueenClient {
    /// A client for the queen at `addr`, using `token`.
    pub fn new(addr: SocketAddr, token: impl Into<String>) -> Self {
        Self { addr, token: token.into(), idle: IDLE_TIMEOUT }
    }

    /// With another idle timeout than [`IDLE_TIMEOUT`].
    pub fn with_idle_timeout(self, idle: std::time::Duration) -> Self {
        Self { idle, ..self }
    }

    fn silent(&self, what: &'static str) -> ClientError {
        ClientError::Silent { addr: self.addr, what, after: self.idle }
    }

    async fn send(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<rbee_http::Response, ClientError> {
        let url = format!("http://{}{path}", self.addr);
        let bearer = rbee_core::proto::bearer(&self.token);
        let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
        let sent = tokio::time::timeout(self.idle, rbee_http::send(method, &url, &headers, body.unwrap_or_default()));
        let response = sent.await.map_err(|_| self.silent("waiting for an answer"))?.map_err(|e| {
            if e.is_unreachable() {
                ClientError::Unreachable { addr: self.addr, reason: e.to_string() }
            } else {
                ClientError::Http(e)
            }
        })?;
        if response.status() == hyper::StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized(self.addr));
        }
        Ok(response)
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let bytes = self.bytes(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// A successful answer's body, unparsed; an error answer as [`ClientError::Status`].
    async fn bytes(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<hyper::body::Bytes, ClientError> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| ClientError::Protocol(e.to_string()))?.to_bytes();
        if !status.is_success() {
            let body = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Status { status: status.as_u16(), body });
        }
        Ok(bytes)
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<QueenHealth, ClientError> {
        self.json("GET", "/health", None).await
    }

    /// Submits an operation.
    pub async fn submit(&self, operation: &Operation) -> Result<Submitted, ClientError> {
        let body = serde_json::to_vec(operation).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.json("POST", "/v1/jobs", Some(body)).await
    }

    /// Recent jobs.
    pub async fn jobs(&self) -> Result<Vec<JobSummary>, ClientError> {
        self.json("GET", "/v1/jobs", None).await
    }

    /// The hive registry.
    pub async fn hives(&self) -> Result<Vec<crate::api::HiveEntry>, ClientError> {
        self.json("GET", "/v1/hives", None).await
    }

    /// `GET /v1/hives` as the queen wrote it: a JSON array of
    /// [`HiveEntry`](crate::api::HiveEntry), unparsed (for a large fleet, to pass on or to read
    /// only some fields of); with `table`, of only the fields `rbee hive list` shows (alias,
    /// version, pid, port, workers, processes, age_ms, stale).
    pub async fn hives_json(&self, table: bool) -> Result<hyper::body::Bytes, ClientError> {
        self.bytes("GET", if table { "/v1/hives?fields=table" } else { "/v1/hives" }, None).await
    }

    /// A hive's capabilities (CPU, RAM, GPUs), asked of the hive through the queen.
    pub async fn hive_capabilities(&self, alias: &str) -> Result<rbee_core::proto::hive::Capabilities, ClientError> {
        self.json("GET", &format!("/v1/hives/{alias}/capabilities"), None).await
    }

    /// Every deployment's status.
    pub async fn deployments(&self) -> Result<Vec<rbee_core::proto::deployment::DeploymentStatus>, ClientError> {
        self.json("GET", "/v1/deployments", None).await
    }

    /// Makes `specs` the desired deployments (`PUT /v1/deployments`); returns what changed.
    pub async fn apply_deployments(
        &self,
        specs: &[rbee_core::proto::deployment::DeploymentSpec],
    ) -> Result<Vec<String>, ClientError> {
        let body = serde_json::to_vec(specs).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let answer: serde_json::Value = self.json("PUT", "/v1/deployments", Some(body)).await?;
        Ok(answer["changes"].as_array().into_iter().flatten().filter_map(|c| c.as_str().map(str::to_owned)).collect())
    }

    /// One deployment's status.
    pub async fn deployment(&self, name: &str) -> Result<rbee_core::proto::deployment::DeploymentStatus, ClientError> {
        self.json("GET", &format!("/v1/deployments/{name}"), None).await
    }

    /// Rolls a deployment back to its previous revision; returns the new revision's number.
    pub async fn rollback(&self, name: &str) -> Result<u64, ClientError> {
        let answer: serde_json::Value = self.json("POST", &format!("/v1/deployments/{name}/rollback"), None).await?;
        answer["revision"].as_u64().ok_or_else(|| ClientError::Protocol(format!("unexpected answer: {answer}")))
    }

    /// Reads a hive's or a worker's log through the queen: each line to `on_line`, until the
    /// tail is sent (or, with `follow`, until the stream ends or `on_line` returns false).
    /// Keepalives reset the idle timeout and are not passed on.
    pub async fn logs(
        &self,
        alias: &str,
        query: &rbee_core::proto::hive::LogQuery,
        mut on_line: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        use rbee_core::proto::hive::LogEvent;
        let path = format!("/v1/hives/{}/logs?{}", rbee_core::proto::hive::percent_encode(alias), query.to_query());
        let response = self.send("GET", &path, None).await?;
        let status = response.status();
        if !status.is_success() {
            let bytes =
                response.into_body().collect().await.map_err(|e| ClientError::Protocol(e.to_string()))?.to_bytes();
            let body = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Status { status: status.as_u16(), body });
        }
        let mut lines = rbee_http::Lines::new(response);
        loop {
            let line = tokio::time::timeout(self.idle, lines.next_line())
                .await
                .map_err(|_| self.silent("waiting for the log's next line"))?
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let Some(line) = line else { return Ok(()) };
            if line.is_empty() {
                continue;
            }
            match serde_json::from_str::<LogEvent>(&line).map_err(|e| ClientError::Protocol(e.to_string()))? {
                LogEvent::Line { text } => {
                    if !on_line(&text) {
                        return Ok(());
                    }
                }
                LogEvent::Rotated | LogEvent::Keepalive => {}
            }
        }
    }

    /// A new hive key: every hive's credential changes (`rbee queen rotate-credentials`).
    pub async fn rotate_credentials(&self) -> Result<(), ClientError> {
        let response = self.send("POST", "/v1/credentials/rotate", None).await?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| ClientError::Protocol(e.to_string()))?.to_bytes();
        if status.is_success() {
            Ok(())
        } else {
            Err(ClientError::Status { status: status.as_u16(), body: String::from_utf8_lossy(&body).into_owned() })
        }
    }

    /// Asks the queen to cancel a job.
    pub async fn cancel(&self, job_id: &str) -> Result<JobSummary, ClientError> {
        self.json("DELETE", &format!("/v1/jobs/{job_id}"), None).await
    }

    /// Streams a job's events (from the first) to `on_event` until its result event, which is
    /// returned. Fails if the stream ends without one.
    pub async fn stream(&self, job_id: &str, mut on_event: impl FnMut(&JobEvent)) -> Result<JobEvent, ClientError> {
        let response = self.send("GET", &format!("/v1/jobs/{job_id}/events"), None).await?;
        if !response.status().is_success() {
            return Err(ClientError::Status { status: response.status().as_u16(), body: String::new() });
        }
        // Server-Sent Events: `data:` lines up to an empty line make one event; comments
        // (keepalives) and other fields are skipped.
        let mut lines = rbee_http::Lines::new(response);
        let mut data = String::new();
        let mut expected = 0u64;
        loop {
            let line = tokio::time::timeout(self.idle, lines.next_line())
                .await
                .map_err(|_| self.silent("waiting for the job's next event"))?
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let Some(line) = line else { break };
            if let Some(part) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(part.strip_prefix(' ').unwrap_or(part));
                continue;
            }
            if !line.is_empty() || data.is_empty() {
                continue;
            }
            let event: JobEvent = serde_json::from_str(&data).map_err(|e| ClientError::Protocol(e.to_string()))?;
            data.clear();
            if event.seq != expected {
                return Err(ClientError::Protocol(format!("event {} arrived where {expected} was due", event.seq)));
            }
            expected += 1;
            on_event(&event);
            if matches!(event.body, crate::api::JobEventBody::Result { .. }) {
                return Ok(event);
            }
        }
        Err(ClientError::Protocol("the event stream ended without a result".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// A server that accepts and answers with `head` (or nothing), then stays silent.
    async fn stalled(head: Option<&'static str>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                if let Some(head) = head {
                    let _ = socket.write_all(head.as_bytes()).await;
                }
                held.push(socket);
            }
        });
        addr
    }

    /// A queen that hangs (a stopped process, a wedged host) used to hang `rbee` for ever.
    #[tokio::test]
    async fn a_queen_that_stops_answering_is_an_error_not_a_hang() {
        let idle = Duration::from_millis(300);
        let client = QueenClient::new(stalled(None).await, "t").with_idle_timeout(idle);
        let err = client.health().await.unwrap_err();
        assert!(matches!(err, ClientError::Silent { what: "waiting for an answer", .. }), "{err}");

        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n: keepalive\n\n";
        let client = QueenClient::new(stalled(Some(head)).await, "t").with_idle_timeout(idle);
        let started = std::time::Instant::now();
        let err = client.stream("j1", |_| {}).await.unwrap_err();
        assert!(matches!(err, ClientError::Silent { what: "waiting for the job's next event", .. }), "{err}");
        assert!(err.to_string().contains("rbee queen status"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
