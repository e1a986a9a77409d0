//! # rbee-queen
//!
//! `queen-rbee`: the daemon that runs rbee's package manager as jobs, streaming each job's
//! typed events over Server-Sent Events, with a token on every request but `/health`; and
//! [`client::QueenClient`], which `rbee` (or any program) uses to drive it.
//!
//! Not built yet: the hive registry and heartbeats, forwarding worker/model/inference
//! operations to hives, and `migrate`.
#![warn(missing_docs)]

pub mod api;
pub mod client;
/// The HTTP(S) client (re-exported from `rbee-http`).
pub mod http {
    pub use rbee_http::*;
}
mod server;

pub use server::{QueenConfig, Server, bind, ensure_token, state_dir};

/// The token file: `<state dir>/queen.token`.
pub fn token_path() -> std::path::PathBuf {
    state_dir().join("queen.token")
}
