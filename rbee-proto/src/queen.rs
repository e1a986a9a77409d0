//! The queen's wire types (keeper ↔ queen), shared by server and client.

use crate::report::SyncEvent;
use crate::result::OperationResult;
use serde::{Deserialize, Serialize};

/// Answer to `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Submitted {
    /// The job's id.
    pub job_id: String,
    /// Where its events stream (Server-Sent Events).
    pub events_url: String,
}

/// One event of a job's stream. `seq` counts from 0 with no gaps, so a reader can tell a
/// lost or reordered event.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobEvent {
    /// Position in the job's stream.
    pub seq: u64,
    /// What happened.
    #[serde(flatten)]
    pub body: JobEventBody,
}

/// What a job event carries.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobEventBody {
    /// An executor event.
    Sync {
        /// The event.
        event: SyncEvent,
    },
    /// A log line.
    Log {
        /// The line.
        message: String,
    },
    /// An event of a hive running a forwarded operation (progress, tokens, log lines).
    Hive {
        /// The hive.
        hive: String,
        /// What it sent.
        event: crate::hive::HiveEvent,
    },
    /// The final event: the job's result and exit code. The stream ends after it.
    Result {
        /// The documented exit code.
        exit_code: u8,
        /// The result.
        result: OperationResult,
    },
}

/// A job in `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobSummary {
    /// Id.
    pub job_id: String,
    /// The operation's wire name.
    pub operation: String,
    /// `running`, `done` or `cancelled`.
    pub state: String,
    /// The exit code once done.
    pub exit_code: Option<u8>,
    /// Submitted at (ms since the epoch).
    pub submitted_ms: u64,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QueenHealth {
    /// `ok`.
    pub status: String,
    /// Version.
    pub version: String,
    /// Process id.
    pub pid: u32,
}

pub use crate::operation::Heartbeat;

/// A hive in the registry (`GET /v1/hives`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HiveEntry {
    /// Its last heartbeat.
    #[serde(flatten)]
    pub heartbeat: Heartbeat,
    /// Milliseconds since that heartbeat.
    pub age_ms: u64,
    /// True after three missed beats.
    pub stale: bool,
    /// The address its heartbeats come from.
    pub address: String,
}
