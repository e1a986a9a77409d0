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
    /// The most heartbeats a second asked of the whole fleet: a larger fleet is told a longer
    /// interval than `heartbeat` ([`rbee_core::proto::operation::HeartbeatAck`]).
    pub max_heartbeats_per_second: u32,
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
    /// Hive credentials, the CA, the TLS configs.
    pub(crate) trust: Arc<crate::trust::Trust>,
}

impl Queen {
    /// How the hives a sync starts are linked to this queen: its URL as hives reach it (https:
    /// hives verify it by the CA), their credentials and certificates.
    pub(crate) fn link_spec(&self) -> rbee_core::link::LinkSpec {
        rbee_core::link::LinkSpec {
            queen: rbee_core::proto::hive::QueenLink {
                url: https(&self.url),
                interval_ms: u64::try_from(self.config.heartbeat.as_millis()).unwrap_or(5000),
                metrics_public: self.config.metrics_public,
                token: String::new(),
            },
            issuer: self.trust.issuer(),
        }
    }
}

/// `url` with the https scheme.
pub(crate) fn https(url: &str) -> String {
    match url.strip_prefix("http://") {
        Some(rest) => format!("https://{rest}"),
        None => url.to_owned(),
    }
}

/// A bound, not yet serving, queen: `addr` is known (port 0 picks a free one).
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    trust: Arc<crate::trust::Trust>,
}

impl Server {
    /// Serves until `shutdown` resolves, within the default [`rbee_http::Limits`] (header-read
    /// timeout, connection cap); handlers see the peer as `ConnectInfo<SocketAddr>`. TLS (hives,
    /// with their certificates) and plain HTTP (local clients only) share the port.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let tls = Some(self.trust.acceptor.clone());
        rbee_http::serve_auto(self.listener, tls, self.router, shutdown, rbee_http::Limits::default()).await
    }

    /// Hive `alias`'s credential (for the hive this queen runs itself, attached-hive mode).
    pub fn hive_credential(&self, alias: &str) -> String {
        self.trust.credential(alias)
    }
}

/// Binds the queen's API.
pub async fn bind(config: QueenConfig) -> std::io::Result<Server> {
    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    let addr = listener.local_addr()?;
    let url = config.advertise_url.clone().unwrap_or_else(|| format!("http://{addr}"));
    let heartbeat_ms = u64::try_from(config.heartbeat.as_millis()).unwrap_or(0);
    let registry = Registry::new(now_ms(), heartbeat_ms).with_pacing(config.max_heartbeats_per_second);
    let state_dir = config.state_dir.clone().unwrap_or_else(crate::state::state_dir);
    let deployments = crate::reconcile::Deployments::open(state_dir.join("deployments.json"), config.reschedule_after)
        .map_err(std::io::Error::other)?;
    let trust = Arc::new(crate::trust::Trust::open(&state_dir).map_err(std::io::Error::other)?);
    let queen = Arc::new(Queen {
        config,
        url,
        jobs: Jobs::default(),
        registry,
        turns: Turns::default(),
        deployments: Arc::new(deployments),
        metrics: Arc::default(),
        trust: trust.clone(),
    });
    tokio::spawn(crate::reconcile::run(queen.clone()));
    let api = Router::new()
        .route("/v1/hives", get(hives))
        .route("/v1/credentials/rotate", post(rotate))
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
    // Heartbeats carry the hive's own credential, checked against the alias they name.
    let router = Router::new()
        .route("/health", get(health))
        .route("/v1/heartbeats", post(heartbeat))
        .merge(api)
        .merge(metrics)
        .with_state(queen);
    Ok(Server { listener, router, addr, trust })
}

async fn auth(State(queen): State<Arc<Queen>>, request: Request, next: Next) -> Response {
    let given = request.headers().get("authorization").and_then(|v| v.to_str().ok());
    if !rbee_core::proto::authorized(given, &queen.config.token) {
        return ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong token").into_response();
    }
    next.run(request).await
}

/// `POST /v1/credentials/rotate`: a new hive key; every hive is linked again by the next sync.
async fn rotate(State(queen): State<Arc<Queen>>) -> Response {
    match queen.trust.rotate() {
        Ok(()) => {
            tracing::warn!("hive credentials rotated: hives are refused until `rbee sync` links them again");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn health() -> Json<QueenHealth> {
    Json(QueenHealth { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into(), pid: std::process::id() })
}
