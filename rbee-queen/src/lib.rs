//! # rbee-queen
//!
//! `queen-rbee`: the daemon that runs rbee's package manager as jobs, streaming each job's
//! typed events over Server-Sent Events, with a token on every request but `/health`; and
//! [`client::QueenClient`], which `rbee` (or any program) uses to drive it.
//!
//! It keeps a registry of hives from their heartbeats, forwards worker, model and inference
//! operations to the hive concerned (the hive's events join the job's stream), serves an
//! OpenAI-compatible `POST /v1/chat/completions` routed to a ready worker, and in
//! `attached-hive` mode runs its own host's hive in-process.
#![warn(missing_docs)]

/// The queen's wire types (defined in `rbee-proto`).
pub mod api {
    pub use rbee_core::proto::queen::*;
}
pub mod client;
/// The HTTP(S) client (re-exported from `rbee-http`).
pub mod http {
    pub use rbee_http::*;
}
mod chat;
mod deploy_api;
mod deploy_sync;
mod forward;
mod jobs;
mod metrics;
mod reconcile;
mod registry;
mod routes;
pub mod state;
pub mod trust;

pub use routes::{QueenConfig, Server, bind};
pub use state::{ensure_token, state_dir, token_path};
