//! What a sync tells its caller as it runs ([`SyncEvent`]) and what it returns
//! ([`SyncReport`]).

use serde::{Deserialize, Serialize};

/// One thing that happened during a sync: which hive, when, and what ([`SyncEventKind`]).
/// On the wire the three are one flat object: `{"event": "step_started", "alias": …, "at_ms":
/// …, "step": …, …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SyncEvent {
    /// The hive.
    pub alias: String,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: SyncEventKind,
}

/// What a [`SyncEvent`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SyncEventKind {
    /// Work on a hive began (its lock is held from here to `HiveDone`).
    HiveStarted,
    /// A step began.
    StepStarted {
        /// The action id.
        step: String,
        /// What it does, in words.
        description: String,
    },
    /// Bytes of an upload have been sent.
    Progress {
        /// The action id.
        step: String,
        /// Sent so far.
        bytes: u64,
        /// Total.
        total: u64,
    },
    /// A step finished.
    StepFinished {
        /// The action id.
        step: String,
        /// How long it took.
        elapsed_ms: u64,
    },
    /// A step failed (and may be retried).
    StepFailed {
        /// The action id.
        step: String,
        /// Why.
        error: String,
        /// True if it will be tried again.
        will_retry: bool,
    },
    /// A hive is done, with its outcome.
    HiveDone {
        /// How it ended.
        outcome: HiveOutcome,
    },
}

impl SyncEvent {
    /// An event about `alias` at `at_ms`.
    pub fn new(alias: impl Into<String>, at_ms: u64, kind: SyncEventKind) -> Self {
        Self { alias: alias.into(), at_ms, kind }
    }

    /// The hive the event is about.
    pub fn alias(&self) -> &str {
        &self.alias
    }
}

/// How one hive's sync ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum HiveOutcome {
    /// Every step succeeded (`changed` is false when there was nothing to do).
    Ok {
        /// Something was done.
        changed: bool,
    },
    /// A step failed; later steps did not run.
    Failed {
        /// The action id.
        step: String,
        /// Why.
        reason: String,
    },
    /// The host could not be reached.
    Unreachable {
        /// Why.
        reason: String,
    },
    /// Not selected.
    Skipped,
    /// An upgrade failed its health check and the previous binaries were put back: the hive
    /// runs the old version again.
    RolledBack {
        /// The step that failed.
        step: String,
        /// Why, with the end of the new hive's log.
        reason: String,
        /// The version running again.
        version: String,
    },
    /// Not touched: `max_failed` hives had failed before its turn.
    Held {
        /// Why.
        reason: String,
    },
}

impl HiveOutcome {
    /// Failed, unreachable or rolled back.
    pub fn is_failure(&self) -> bool {
        matches!(self, HiveOutcome::Failed { .. } | HiveOutcome::Unreachable { .. } | HiveOutcome::RolledBack { .. })
    }
}

/// One hive in a [`SyncReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HiveReport {
    /// The hive.
    pub alias: String,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: HiveOutcome,
    /// Steps that completed, in order.
    pub steps_done: Vec<String>,
    /// Bytes uploaded to it.
    pub bytes_transferred: u64,
}

/// The result of a sync: every selected hive's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SyncReport {
    /// Per hive, by alias.
    pub hives: Vec<HiveReport>,
}

/// The overall result, which the CLI maps to its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overall {
    /// Every hive succeeded.
    Ok,
    /// Some succeeded, some failed.
    Partial,
    /// Every (non-skipped) hive failed.
    Failed,
}

impl SyncReport {
    /// Bytes uploaded in total.
    pub fn bytes_transferred(&self) -> u64 {
        self.hives.iter().map(|h| h.bytes_transferred).sum()
    }

    /// True when no hive changed.
    pub fn changed_nothing(&self) -> bool {
        self.hives.iter().all(|h| !matches!(h.outcome, HiveOutcome::Ok { changed: true }))
    }

    /// Aliases that failed or were unreachable.
    pub fn failed(&self) -> Vec<String> {
        self.hives.iter().filter(|h| h.outcome.is_failure()).map(|h| h.alias.clone()).collect()
    }

    /// Ok, partial or failed.
    pub fn overall(&self) -> Overall {
        let considered: Vec<_> = self.hives.iter().filter(|h| h.outcome != HiveOutcome::Skipped).collect();
        let failed = considered.iter().filter(|h| h.outcome.is_failure()).count();
        if failed == 0 {
            Overall::Ok
        } else if failed == considered.len() {
            Overall::Failed
        } else {
            Overall::Partial
        }
    }
}
