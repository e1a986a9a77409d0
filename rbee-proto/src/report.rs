//! What a sync tells its caller as it runs ([`SyncEvent`]) and what it returns
//! ([`SyncReport`]).

use serde::{Deserialize, Serialize};

/// One thing that happened during a sync. Every event names its hive and carries a timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SyncEvent {
    /// Work on a hive began (its lock is held from here to `HiveDone`).
    HiveStarted {
        /// The hive.
        alias: String,
        /// When.
        at_ms: u64,
    },
    /// A step began.
    StepStarted {
        /// The hive.
        alias: String,
        /// The action id.
        step: String,
        /// What it does, in words.
        description: String,
        /// When.
        at_ms: u64,
    },
    /// Bytes of an upload have been sent.
    Progress {
        /// The hive.
        alias: String,
        /// The action id.
        step: String,
        /// Sent so far.
        bytes: u64,
        /// Total.
        total: u64,
        /// When.
        at_ms: u64,
    },
    /// A step finished.
    StepFinished {
        /// The hive.
        alias: String,
        /// The action id.
        step: String,
        /// How long it took.
        elapsed_ms: u64,
        /// When.
        at_ms: u64,
    },
    /// A step failed (and may be retried).
    StepFailed {
        /// The hive.
        alias: String,
        /// The action id.
        step: String,
        /// Why.
        error: String,
        /// True if it will be tried again.
        will_retry: bool,
        /// When.
        at_ms: u64,
    },
    /// A hive is done, with its outcome.
    HiveDone {
        /// The hive.
        alias: String,
        /// How it ended.
        outcome: HiveOutcome,
        /// When.
        at_ms: u64,
    },
}

impl SyncEvent {
    /// The hive the event is about.
    pub fn alias(&self) -> &str {
        match self {
            SyncEvent::HiveStarted { alias, .. }
            | SyncEvent::StepStarted { alias, .. }
            | SyncEvent::Progress { alias, .. }
            | SyncEvent::StepFinished { alias, .. }
            | SyncEvent::StepFailed { alias, .. }
            | SyncEvent::HiveDone { alias, .. } => alias,
        }
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
}

impl HiveOutcome {
    /// Failed or unreachable.
    pub fn is_failure(&self) -> bool {
        matches!(self, HiveOutcome::Failed { .. } | HiveOutcome::Unreachable { .. })
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
