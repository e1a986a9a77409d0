//! # rbee-proto
//!
//! Every message that crosses a process boundary in rbee, defined once: what `rbee` sends the
//! queen ([`operation::Operation`]), what a job streams back ([`queen::JobEvent`]: sync
//! events, hive events, the [`result::OperationResult`]), what a hive answers and sends
//! ([`hive::HiveHealth`], [`operation::Heartbeat`], [`hive::HiveEvent`], worker and model
//! records), plans and reports, the files a sync leaves on a host ([`layout::Layout`],
//! [`hive::InstallRecord`], [`hive::QueenLink`]) and the exit codes.
//!
//! Plain data with serde and schemars, no runtime: a program that only talks to a queen or a
//! hive needs nothing else (as kube-core holds Kubernetes' types without a client).
#![warn(missing_docs)]

pub mod config;
pub mod digest;
pub mod exit;
pub mod hive;
pub mod layout;
pub mod operation;
pub mod plan;
mod plan_render;
pub mod queen;
pub mod report;
pub mod result;
pub mod state;

pub use digest::{DigestError, Sha256};

/// The `authorization` header value for a token: `Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}
