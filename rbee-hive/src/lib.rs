//! rbee-hive: the daemon on every GPU host. This version serves `GET /health` with its
//! version and the digest of its own binary (so a sync can tell a hive still running an old
//! binary), writes its pid file, stops gracefully on SIGTERM and, when a queen installed its
//! link (`~/.local/state/rbee/queen.link` + `hive.token`), requires the token on every other
//! request and sends the queen a heartbeat every few seconds.
//!
//! `GET /v1/capabilities` reports CPU cores, RAM and GPUs (from `nvidia-smi`).
//!
//! Not built yet: worker processes, the worker catalog API, models, inference.
#![warn(missing_docs)]

pub mod capabilities;
mod heartbeat;
mod probe;

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::{Json, Router, routing::get};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use heartbeat::{Heartbeat, QueenLink};
pub use probe::probe;

/// The hive's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `GET /health` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok` when it answers.
    pub status: String,
    /// The hive's version.
    pub version: String,
    /// sha256 of the binary this process was started from.
    pub sha256: String,
    /// Process id.
    pub pid: u32,
}

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
    /// The worker catalog directory (listed in heartbeats).
    pub workers_dir: Option<PathBuf>,
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
}

fn own_digest() -> String {
    std::env::current_exe().and_then(std::fs::read).map(|bytes| hex::encode(Sha256::digest(&bytes))).unwrap_or_default()
}

/// The HTTP routes; with a token, everything but `/health` requires it.
pub fn router(health: Health, token: Option<String>) -> Router {
    let api = Router::new().route("/v1/capabilities", get(|| async { Json(capabilities::detect().await) }));
    let api = match token {
        Some(token) => api.route_layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let expected = format!("Bearer {token}");
                async move {
                    let ok =
                        req.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str());
                    if ok {
                        next.run(req).await
                    } else {
                        use axum::response::IntoResponse;
                        (axum::http::StatusCode::UNAUTHORIZED, "missing or wrong token").into_response()
                    }
                }
            },
        )),
        None => api,
    };
    Router::new().route("/health", get(move || std::future::ready(Json(health.clone())))).merge(api)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    config: HiveConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), HiveError> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| HiveError::Bind { addr: config.addr, source })?;
    let health = Health { status: "ok".into(), version: VERSION.into(), sha256: own_digest(), pid: std::process::id() };
    if let Some(path) = &config.pid_file {
        write_pid_file(path).map_err(|source| HiveError::PidFile { path: path.clone(), source })?;
    }
    let token = config.link.as_ref().map(|l| l.token.clone());
    if let (Some(link), Some(alias)) = (config.link.clone(), config.alias.clone()) {
        let beat = Heartbeat {
            alias,
            version: health.version.clone(),
            sha256: health.sha256.clone(),
            pid: health.pid,
            port: config.addr.port(),
            interval_ms: link.interval_ms,
            workers: Vec::new(),
            installed: Default::default(),
            home: String::new(),
        };
        tokio::spawn(heartbeat::run(link, beat, config.workers_dir.clone()));
    }
    let result = axum::serve(listener, router(health, token)).with_graceful_shutdown(shutdown).await;
    if let Some(path) = &config.pid_file {
        // Only remove the pid file if it is still ours (a newer hive may have replaced it).
        if std::fs::read_to_string(path).is_ok_and(|p| p.trim() == std::process::id().to_string()) {
            let _ = std::fs::remove_file(path);
        }
    }
    result.map_err(HiveError::Serve)
}

fn write_pid_file(path: &std::path::Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(tmp, path)
}
