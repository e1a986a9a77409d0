//! rbee-hive: the daemon on every GPU host. It serves `GET /health` with its version and the
//! digest of its own binary (so a sync can tell a hive still running an old binary), writes
//! its pid file, stops gracefully on SIGTERM, requires its token (`~/.local/state/rbee/hive.token`,
//! which it makes itself when no sync installed one) on every other request but a worker's
//! heartbeat (which carries that worker's own token) and, when a queen installed its link
//! (`queen.link` + `hive.token`), sends the queen a heartbeat every few seconds (and at once
//! when a worker changes state) with its worker processes, models and GPUs (`nvidia-smi`, read
//! at most once a minute).
//!
//! ```text
//! GET  /health                              open
//! GET  /v1/capabilities                     CPU cores, RAM, GPUs (nvidia-smi)
//! GET  /v1/catalog                          installed worker types
//! POST /v1/operations                       a forwarded Operation → NDJSON HiveEvents, result last
//! POST /v1/workers/{id}/heartbeat           from the hive's workers, each with its own token
//! POST /v1/workers/{id}/chat/completions    proxied to the worker (OpenAI-compatible, streams)
//! GET  /metrics                             Prometheus: workers, GPUs, models (open when the
//!                                           queen's link says `metrics_public`)
//! GET  /v1/logs?worker=ID&tail=N&follow=true the hive's or a worker's log (NDJSON LogEvents)
//! ```
#![warn(missing_docs)]

pub mod capabilities;
pub mod catalog;
pub mod engines;
mod heartbeat;
mod logs;
mod metrics;
pub mod models;
pub mod ops;
mod probe;
pub mod secret;
pub mod tls;
pub mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router, routing::get};
use rbee_core::proto::hive::{HiveEvent, WorkerHeartbeat};
use rbee_core::proto::operation::Operation;

pub use heartbeat::{Heartbeat, QueenLink, load_link};
pub use probe::{ProbeError, probe};

/// The hive's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `GET /health` answers.
pub use rbee_core::proto::hive::HiveHealth as Health;

/// How to run a hive.
#[derive(Debug, Clone)]
pub struct HiveConfig {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Pid file written once listening, removed on graceful exit.
    pub pid_file: Option<PathBuf>,
    /// The hive's alias (sent in heartbeats).
    pub alias: Option<String>,
    /// The queen to report to, and the token both sides require.
    pub link: Option<QueenLink>,
    /// The home directory whose `~/.local/...` holds the worker catalog, models and state.
    pub home: PathBuf,
    /// How often workers send heartbeats.
    pub worker_heartbeat_ms: u64,
}

/// Why the hive could not run.
#[derive(Debug, thiserror::Error)]
pub enum HiveError {
    /// Binding the port failed.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing the pid file failed.
    #[error("cannot write pid file {path}")]
    PidFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server failed")]
    Serve(#[source] std::io::Error),
    /// The TLS identity a sync installed cannot be used.
    #[error("the TLS identity cannot be used ({0}): run `rbee sync` to install a new one")]
    Tls(String),
    /// The hive's token could not be read, nor made.
    #[error("cannot read or create the hive's token {path}")]
    Token {
        /// `hive.token`.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The token the hive requires: the one in its queen link, or else its own `hive.token`,
/// made when absent (a hive never serves its API without one).
fn api_token(config: &HiveConfig) -> Result<String, HiveError> {
    if let Some(link) = &config.link {
        return Ok(link.token.clone());
    }
    let state = config.home.join(rbee_core::layout::Layout::STATE_DIR);
    secret::hive_token(&state).map_err(|source| HiveError::Token { path: state.join(secret::HIVE_TOKEN_FILE), source })
}

/// The digest of this process's binary (all zeros if it cannot be read: it then matches no
/// artifact, and a sync restarts the hive).
fn own_digest() -> rbee_core::Sha256 {
    std::env::current_exe()
        .and_then(std::fs::read)
        .map_or_else(|_| rbee_core::Sha256::from_bytes([0; 32]), |bytes| rbee_core::artifact::sha256_of(&bytes))
}

/// The HTTP routes: `/health` is open; a worker's heartbeat requires that worker's own token;
/// with a token, everything else requires it.
pub fn router(health: Health, token: Option<String>, hive: Arc<ops::Hive>) -> Router {
    let api = Router::new()
        .route(
            "/v1/capabilities",
            get(|State(hive): State<Arc<ops::Hive>>| async move { Json(capabilities::detect(&hive.home).await) }),
        )
        .route("/v1/catalog", get(|State(hive): State<Arc<ops::Hive>>| async move { Json(hive.catalog()) }))
        .route("/v1/operations", post(operation))
        .route("/v1/workers/{id}/chat/completions", post(worker_chat))
        .route("/v1/logs", get(logs::logs))
        .with_state(hive.clone());
    let api = rbee_http::require_token(api, token);
    // Not behind the hive's token: each worker authenticates with its own.
    let workers = Router::new().route("/v1/workers/{id}/heartbeat", post(worker_heartbeat)).with_state(hive);
    Router::new().route("/health", get(move || std::future::ready(Json(health.clone())))).merge(api).merge(workers)
}

/// How many events of one operation wait for a slow reader; progress beyond it is dropped
/// (the next one says where it is), never the result.
const OPERATION_EVENTS: usize = 1024;

/// Runs a forwarded operation; answers newline-delimited JSON [`HiveEvent`]s, the result last.
/// If the caller goes away the operation is dropped (a download keeps its partial file). A
/// caller that reads slower than the operation reports holds at most [`OPERATION_EVENTS`]
/// events in the hive's memory.
async fn operation(State(hive): State<Arc<ops::Hive>>, Json(op): Json<Operation>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<HiveEvent>(OPERATION_EVENTS);
    tokio::spawn(async move {
        let emit_tx = tx.clone();
        let emit = move |event: HiveEvent| {
            let _ = emit_tx.try_send(event);
        };
        tokio::select! {
            result = ops::handle(&hive, op, &emit) => { let _ = tx.send(HiveEvent::Result { result }).await; }
            () = tx.closed() => {}
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(hyper::body::Bytes::from(line)), rx))
    });
    ([("content-type", "application/x-ndjson")], axum::body::Body::from_stream(stream)).into_response()
}

/// A worker's heartbeat, with that worker's own token (compared in constant time). An unknown
/// id is 404, before any check, so that a worker its hive no longer manages stops.
async fn worker_heartbeat(
    State(hive): State<Arc<ops::Hive>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    match hive.workers.authorized(&id, authorization) {
        None => return StatusCode::NOT_FOUND,
        Some(false) => return StatusCode::UNAUTHORIZED,
        Some(true) => {}
    }
    let Ok(beat) = serde_json::from_slice::<WorkerHeartbeat>(&body) else { return StatusCode::BAD_REQUEST };
    if hive.workers.heartbeat(&id, beat.status == "ready") { StatusCode::NO_CONTENT } else { StatusCode::NOT_FOUND }
}

/// Proxies an OpenAI chat-completions request to a worker, streaming its answer back.
async fn worker_chat(State(hive): State<Arc<ops::Hive>>, Path(id): Path<String>, body: axum::body::Bytes) -> Response {
    match ops::send_chat(&hive, &id, body.to_vec()).await {
        Ok(response) => rbee_http::passthrough(response).map(axum::body::Body::new),
        Err(e) => {
            rbee_http::ApiError::openai(StatusCode::BAD_GATEWAY, "worker_unavailable", e.to_string()).into_response()
        }
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    config: HiveConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), HiveError> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| HiveError::Bind { addr: config.addr, source })?;
    // A linked hive has the TLS identity its sync installed; without one (not linked, or
    // run inside the queen) it serves plain HTTP.
    let tls = match config.link.as_ref().and_then(|_| tls::load(&config.home)) {
        Some(Ok(tls)) => Some(tls),
        Some(Err(reason)) => return Err(HiveError::Tls(reason)),
        None => None,
    };
    let link_state = config.link.as_ref().map(|l| rbee_core::proto::hive::LinkState {
        queen_url: l.url.clone(),
        credential: rbee_core::credentials::credential_digest(&l.token),
        tls: tls.as_ref().map(|t| t.state.clone()),
    });
    let health = Health {
        status: "ok".into(),
        version: VERSION.into(),
        sha256: own_digest(),
        pid: std::process::id(),
        link: link_state,
    };
    if let Some(path) = &config.pid_file {
        rbee_core::pidfile::write(path).map_err(|source| HiveError::PidFile { path: path.clone(), source })?;
    }
    let token = Some(api_token(&config)?);
    let layout = |rel: &str| config.home.join(rel);
    let hive_ip = if config.addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { config.addr.ip().to_string() };
    let hive_ip = if hive_ip.contains(':') { format!("[{hive_ip}]") } else { hive_ip };
    let workers = workers::Workers::open(workers::WorkerSettings {
        home: config.home.clone(),
        catalog_dir: layout(rbee_core::layout::Layout::WORKERS_DIR),
        registry_dir: layout(&rbee_core::layout::Layout::worker_registry_dir()),
        models_dir: layout(rbee_core::layout::Layout::MODELS_DIR),
        hive_url: format!("http://{hive_ip}:{}", config.addr.port()),
        hive_port: config.addr.port(),
        token: token.clone(),
        heartbeat_ms: config.worker_heartbeat_ms,
    });
    let hive = Arc::new(ops::Hive {
        home: config.home.clone(),
        alias: config.alias.clone().unwrap_or_else(|| "localhost".into()),
        catalog: std::sync::Mutex::new(workers.scan_catalog()),
        workers,
        models_dir: layout(rbee_core::layout::Layout::MODELS_DIR),
    });
    if let (Some(link), Some(alias)) = (config.link.clone(), config.alias.clone()) {
        let beat = Heartbeat {
            tls: tls.is_some(),
            alias,
            version: health.version.clone(),
            sha256: health.sha256.clone(),
            pid: health.pid,
            port: config.addr.port(),
            interval_ms: link.interval_ms,
            workers: Vec::new(),
            installed: Default::default(),
            home: config.home.to_string_lossy().into_owned(),
            processes: Vec::new(),
            gpus: Vec::new(),
            models: Vec::new(),
        };
        tokio::spawn(heartbeat::run(
            link,
            tls.clone(),
            beat,
            hive.clone(),
            config.home.join(rbee_core::layout::Layout::installed_dir()),
        ));
    }
    let metrics_token = token.clone().filter(|_| !config.link.as_ref().is_some_and(|l| l.metrics_public));
    let app = router(health, token, hive.clone()).merge(metrics::router(hive, metrics_token));
    let acceptor = tls.map(|t| t.acceptor);
    let result = rbee_http::serve_auto(listener, acceptor, app, shutdown, rbee_http::Limits::default()).await;
    if let Some(path) = &config.pid_file {
        // Only if it is still ours: a newer hive may have replaced it.
        rbee_core::pidfile::remove_if_own(path);
    }
    result.map_err(HiveError::Serve)
}
