//! The queen's HTTP surface: which path goes to which handler, and the token check in front of
//! all of them but `/health`, which must answer before a client has the token (to find out
//! whether a queen is running at all), and `/metrics` when `[queen] metrics_public` says a
//! scraper needs none.
//!
//! The handlers live with the state they serve (`jobs`, `registry`, `forward`, `chat`); this
//! file only owns what they share, [`Queen`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rbee_core::execute::now_ms;
use rbee_core::package::ConnectFn;
use rbee_http::ApiError;

use crate::api::QueenHealth;
use crate::chat::{Turns, chat_completions};
use crate::forward::hive_capabilities;
use crate::jobs::{Jobs, cancel, events, job_summary, list, submit};
use crate::registry::{Registry, heartbeat, hives};

/// How a queen runs.
#[derive(Clone)]
pub struct QueenConfig {
    /// Where to listen.
    pub addr: std::net::SocketAddr,
    /// The API token; requests without it get 401 (except `/health`).
    pub token: String,
    /// How jobs reach hosts: a connector for each job's config.
    pub connect: Arc<ConnectFn>,
    /// Interval of SSE keepalive comments.
    pub keepalive: Duration,
    /// How often hives started by this queen send heartbeats.
    pub heartbeat: Duration,
    /// The URL hives use to reach this queen; default `http://<addr>`.
    pub advertise_url: Option<String>,
    /// Replicas on a hive silent for this long are placed on other hives.
    pub reschedule_after: Duration,
    /// Where the queen keeps what must survive a restart (`deployments.json`); default: its
    /// state directory.
    pub state_dir: Option<std::path::PathBuf>,
    /// Serve `GET /metrics` without the token (`[queen] metrics_public`); the hives it starts
    /// are told the same.
    pub metrics_public: bool,
}

/// What every handler shares.
pub(crate) struct Queen {
    pub(crate) config: QueenConfig,
    /// The URL hives started by this queen report to.
    pub(crate) url: String,
    pub(crate) jobs: Jobs,
    pub(crate) registry: Registry,
    pub(crate) turns: Turns,
    pub(crate) deployments: Arc<crate::reconcile::Deployments>,
    pub(crate) metrics: Arc<crate::metrics::QueenMetrics>,
}

/// A bound, not yet serving, queen: `addr` is known (port 0 picks a free one).
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
}

impl Server {
    /// Serves until `shutdown` resolves, within the default [`rbee_http::Limits`] (header-read
    /// timeout, connection cap); handlers see the peer as `ConnectInfo<SocketAddr>`.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        rbee_http::serve(self.listener, self.router, shutdown, rbee_http::Limits::default()).await
    }
}

/// Binds the queen's API.
pub async fn bind(config: QueenConfig) -> std::io::Result<Server> {
    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    let addr = listener.local_addr()?;
    let url = config.advertise_url.clone().unwrap_or_else(|| format!("http://{addr}"));
    let heartbeat_ms = u64::try_from(config.heartbeat.as_millis()).unwrap_or(0);
    let state_dir = config.state_dir.clone().unwrap_or_else(crate::state::state_dir);
    let deployments = crate::reconcile::Deployments::open(state_dir.join("deployments.json"), config.reschedule_after)
        .map_err(std::io::Error::other)?;
    let queen = Arc::new(Queen {
        config,
        url,
        jobs: Jobs::default(),
        registry: Registry::new(now_ms(), heartbeat_ms),
        turns: Turns::default(),
        deployments: Arc::new(deployments),
        metrics: Arc::default(),
    });
    tokio::spawn(crate::reconcile::run(queen.clone()));
    let api = Router::new()
        .route("/v1/heartbeats", post(heartbeat))
        .route("/v1/hives", get(hives))
        .route("/v1/hives/{alias}/capabilities", get(hive_capabilities))
        .route("/v1/hives/{alias}/logs", get(crate::forward::hive_logs))
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(job_summary).delete(cancel))
        .route("/v1/jobs/{id}/events", get(events))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(crate::deploy_api::models))
        .route("/v1/deployments", get(crate::deploy_api::list).put(crate::deploy_api::apply))
        .route("/v1/deployments/{name}", get(crate::deploy_api::get_one))
        .route("/v1/deployments/{name}/rollback", post(crate::deploy_api::rollback))
        .route_layer(axum::middleware::from_fn_with_state(queen.clone(), auth));
    let mut metrics = Router::new().route("/metrics", get(crate::metrics::metrics));
    if !queen.config.metrics_public {
        metrics = metrics.route_layer(axum::middleware::from_fn_with_state(queen.clone(), auth));
    }
    let router = Router::new().route("/health", get(health)).merge(api).merge(metrics).with_state(queen);
    Ok(Server { listener, router, addr })
}

async fn auth(State(queen): State<Arc<Queen>>, request: Request, next: Next) -> Response {
    let given = request.headers().get("authorization").and_then(|v| v.to_str().ok());
    if !rbee_core::proto::authorized(given, &queen.config.token) {
        return ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong token").into_response();
    }
    next.run(request).await
}

async fn health() -> Json<QueenHealth> {
    Json(QueenHealth { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into(), pid: std::process::id() })
}
