//! The worker contract's server side, shared by every worker: argument and environment
//! handling, `GET /health`, the token on the API, heartbeats to the hive, and
//! `POST /v1/chat/completions` handed to a [`Backend`]. See `docs/worker-contract.md`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rbee_core::proto::hive::WorkerHeartbeat;

use crate::WorkerArgs;

/// Why the contract server stopped. Launchers print only `Display`, so each variant carries its
/// source's text too; the source stays attached for callers that inspect it.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The worker's port could not be bound.
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Listen {
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("{0}")]
    Serve(#[source] std::io::Error),
    /// The hive answered three heartbeats in a row with 404: it does not manage this worker.
    #[error("the hive at {hive} does not know worker {worker_id}: stopping")]
    Disowned {
        /// The hive's URL.
        hive: String,
        /// This worker.
        worker_id: String,
    },
    /// The heartbeat task panicked or was cancelled.
    #[error("{0}")]
    Heartbeats(#[source] tokio::task::JoinError),
}

/// What serves the contract's API behind a worker: an engine it bridges to, or (in tests) a
/// deterministic fixture.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// True once the model is loaded and requests can be served.
    async fn ready(&self) -> bool;
    /// Answers an OpenAI chat-completions request body (streaming when it asks to).
    async fn chat(&self, body: Bytes) -> Response;
}

/// The environment a hive passes besides the arguments.
#[derive(Debug, Clone, Default)]
pub struct WorkerEnv {
    /// `RBEE_WORKER_TOKEN`: required on the API and sent with heartbeats.
    pub token: Option<String>,
    /// `RBEE_HEARTBEAT_MS`: how often to beat (default 2000).
    pub heartbeat_ms: u64,
}

impl WorkerEnv {
    /// Reads the environment.
    pub fn from_env() -> Self {
        Self {
            token: std::env::var("RBEE_WORKER_TOKEN").ok().filter(|t| !t.is_empty()),
            heartbeat_ms: std::env::var("RBEE_HEARTBEAT_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
        }
    }
}

struct Shared {
    args: WorkerArgs,
    backend: Arc<dyn Backend>,
}

/// The contract's routes.
pub fn router(args: WorkerArgs, env: &WorkerEnv, backend: Arc<dyn Backend>) -> Router {
    let shared = Arc::new(Shared { args, backend });
    let api = Router::new().route("/v1/chat/completions", post(chat)).with_state(shared.clone());
    let api = rbee_http::require_token(api, env.token.clone());
    Router::new().route("/health", get(health)).with_state(shared).merge(api)
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let ready = shared.backend.ready().await;
    let body = serde_json::json!({
        "status": if ready { "ok" } else { "loading" },
        "worker_id": shared.args.worker_id,
        "model": shared.args.model,
    });
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body)).into_response()
}

async fn chat(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    if !shared.backend.ready().await {
        return rbee_http::ApiError::openai(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the model is still loading",
        )
        .into_response();
    }
    shared.backend.chat(body).await
}

/// Sends a heartbeat to the hive every interval while the process lives. Returns (the
/// reason) only when the hive disowns the worker: three `404`s in a row mean it does not
/// know this worker (any more), and a worker nobody manages should not keep a GPU.
async fn heartbeats(args: WorkerArgs, env: WorkerEnv, backend: Arc<dyn Backend>) -> ContractError {
    let Some(hive) = args.hive_url.clone() else { return std::future::pending().await };
    let mut disowned = 0;
    let url = format!("{}/v1/workers/{}/heartbeat", hive.trim_end_matches('/'), args.worker_id);
    let bearer = env.token.as_deref().map(rbee_core::proto::bearer);
    let interval = Duration::from_millis(env.heartbeat_ms.max(50));
    loop {
        let ready = backend.ready().await;
        let status = if ready { "ready" } else { "loading" };
        let beat = WorkerHeartbeat { worker_id: args.worker_id.clone(), status: status.into() };
        let mut headers = vec![("content-type", "application/json")];
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        let body = serde_json::to_vec(&beat).unwrap_or_default();
        match rbee_http::send("POST", &url, &headers, body).await {
            Ok(r) if r.status().is_success() => disowned = 0,
            Ok(r) if r.status() == 404 => {
                disowned += 1;
                if disowned >= 3 {
                    return ContractError::Disowned { hive, worker_id: args.worker_id };
                }
            }
            Ok(r) => tracing::warn!(worker = %args.worker_id, "heartbeat to {hive} answered {}", r.status()),
            Err(e) => tracing::warn!(worker = %args.worker_id, "heartbeat to {hive} failed: {e}"),
        }
        // While loading, look again soon so the hive learns of readiness at once.
        tokio::time::sleep(if ready { interval } else { interval.min(Duration::from_millis(100)) }).await;
    }
}

/// Serves the contract on `127.0.0.1:<port>` and beats to the hive until `shutdown`, or
/// until the hive disowns the worker (an error).
pub async fn serve(
    args: WorkerArgs,
    env: WorkerEnv,
    backend: Arc<dyn Backend>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ContractError> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(|source| ContractError::Listen { port: args.port, source })?;
    let mut beats = tokio::spawn(heartbeats(args.clone(), env.clone(), backend.clone()));
    let server = rbee_http::serve(listener, router(args, &env, backend), shutdown, rbee_http::Limits::default());
    tokio::select! {
        result = server => {
            beats.abort();
            result.map_err(ContractError::Serve)
        }
        disowned = &mut beats => Err(disowned.unwrap_or_else(ContractError::Heartbeats)),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// One chunk of an OpenAI streaming answer, as a Server-Sent Events frame.
pub fn sse_chunk(id: &str, model: &str, content: Option<&str>, finish: Option<&str>) -> String {
    let delta = match content {
        Some(text) => serde_json::json!({"content": text}),
        None => serde_json::json!({}),
    };
    let chunk = serde_json::json!({
        "id": id,
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    format!("data: {chunk}\n\n")
}
