//! What the executor tells its caller, and what it returns.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the timestamps of events, jobs, heartbeats and worker
/// processes (stamped on every event so that a reader can see which steps overlapped).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub use rbee_proto::report::{HiveOutcome, HiveReport, Overall, SyncEvent, SyncEventKind, SyncReport};
