//! A plan: per hive, a DAG of actions that make the host match the config. Made by
//! `rbee_core::plan::plan` (pure); shown by `--dry-run`, streamed in a job's result, executed by
//! `rbee_core::execute`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::TransportKind;
use crate::engine::{EngineChange, EngineInstall};
use crate::layout::Layout;
use crate::state::{Artifact, Installed};

/// What a binary action does to the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// Not installed yet.
    Install,
    /// Installed with another digest.
    Upgrade {
        /// What is there now.
        from: Installed,
    },
    /// Installed and identical; reinstalled because of `--force`.
    Reinstall,
}

/// Which binary.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "binary", content = "worker", rename_all = "snake_case")]
pub enum Binary {
    /// The hive daemon.
    Hive,
    /// A worker of this type.
    Worker(String),
}

impl Binary {
    /// Its path on the host.
    pub fn path(&self) -> String {
        match self {
            Binary::Hive => Layout::hive_binary(),
            Binary::Worker(kind) => Layout::worker_binary(kind),
        }
    }
}

/// Why a running hive is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RestartReason {
    /// Its binary is being replaced.
    BinaryUpgraded,
    /// It runs a binary other than the installed one.
    StaleBinary,
    /// It is running but does not answer `/health`.
    Unhealthy,
    /// `--force`.
    Forced,
    /// Its link to the queen is not the one wanted: it is linked again (new credential,
    /// certificate, queen address) and restarted; its workers keep running.
    Relink(LinkDrift),
}

/// How a hive's link to the queen differs from the one wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LinkDrift {
    /// It has no link (started without a queen, e.g. by `rbee sync --in-process`, or by an
    /// older rbee that gave hives the queen's own token).
    NotLinked,
    /// It reports to another queen address.
    OtherQueen,
    /// Its credential is not the one this queen issues it (another queen's, or one from
    /// before `rbee queen rotate-credentials`).
    Credential,
    /// It has no TLS certificate, or one from another CA.
    Certificate,
    /// Its certificate expires soon.
    CertificateExpiring,
}

/// One step on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ActionKind {
    /// Put a binary in place atomically.
    InstallBinary {
        /// Which.
        binary: Binary,
        /// Install, upgrade or reinstall.
        #[serde(flatten)]
        change: Change,
        /// What goes there.
        artifact: Arc<Artifact>,
    },
    /// Remove a worker binary that is not declared.
    RemoveWorker {
        /// Its type.
        worker: String,
        /// What is there.
        installed: Installed,
    },
    /// Install (or repair, or check) the engine of a worker type.
    InstallEngine {
        /// The worker type.
        worker: String,
        /// Why.
        change: EngineChange,
        /// What goes there.
        engine: EngineInstall,
    },
    /// Put back the binaries the last upgrade replaced, restart the hive on them and wait
    /// until it answers `/health` (`rbee rollback`).
    Rollback {
        /// File names restored (`rbee-hive`, `rbee-worker-<type>`).
        binaries: Vec<String>,
        /// The hive binary restored.
        to: Installed,
        /// The hive's port.
        port: u16,
    },
    /// Start the hive daemon.
    StartHive {
        /// Its port.
        port: u16,
    },
    /// Restart the running hive daemon.
    RestartHive {
        /// Its port.
        port: u16,
        /// Why.
        reason: RestartReason,
    },
    /// Stop the hive daemon.
    StopHive,
    /// Poll the hive until it answers `/health`.
    WaitHealthy {
        /// Its port.
        port: u16,
    },
    /// Remove everything rbee installed on the host.
    Uninstall {
        /// Also remove rbee's state (logs, manifest, models).
        purge: bool,
    },
}

/// An action with its place in the DAG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Action {
    /// Stable id: `<alias>/<step>`.
    pub id: String,
    /// What to do.
    #[serde(flatten)]
    pub kind: ActionKind,
    /// Ids (of the same hive) that must finish first.
    pub depends_on: Vec<String>,
}

/// What the plan says about one hive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum HiveStatus {
    /// Actions to run.
    Changes,
    /// Nothing to do.
    InSync,
    /// Could not be observed; nothing can be planned.
    Unreachable {
        /// Why.
        reason: String,
    },
    /// Not selected by `--hive`.
    Skipped,
}

/// The plan of one hive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HivePlan {
    /// Alias.
    pub alias: String,
    /// Hostname (for display).
    pub hostname: String,
    /// How it is reached.
    pub transport: TransportKind,
    /// Outcome of planning.
    #[serde(flatten)]
    pub status: HiveStatus,
    /// Steps, in a topological order.
    pub actions: Vec<Action>,
    /// Things the user should know that are not actions (e.g. undeclared workers kept).
    pub notes: Vec<String>,
}

/// A whole plan: one entry per declared hive, by alias.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Plan {
    /// Per hive, sorted by alias.
    pub hives: Vec<HivePlan>,
}

/// Counts for the summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Summary {
    /// New binaries.
    pub install: usize,
    /// Replaced binaries (upgrades and forced reinstalls).
    pub upgrade: usize,
    /// Removed workers and uninstalled hives.
    pub remove: usize,
    /// Hives started.
    pub start: usize,
    /// Hives restarted.
    pub restart: usize,
    /// Hives stopped.
    pub stop: usize,
    /// Hives with nothing to do.
    pub in_sync: usize,
    /// Hives that could not be observed.
    pub unreachable: usize,
    /// Hives not selected.
    pub skipped: usize,
}

impl Plan {
    /// True when no hive has an action.
    pub fn is_empty(&self) -> bool {
        self.hives.iter().all(|h| h.actions.is_empty())
    }

    /// The plan of one hive.
    pub fn hive(&self, alias: &str) -> Option<&HivePlan> {
        self.hives.iter().find(|h| h.alias == alias)
    }

    /// Counts by kind of change.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for hive in &self.hives {
            match hive.status {
                HiveStatus::InSync => s.in_sync += 1,
                HiveStatus::Unreachable { .. } => s.unreachable += 1,
                HiveStatus::Skipped => s.skipped += 1,
                HiveStatus::Changes => {}
            }
            for action in &hive.actions {
                match &action.kind {
                    ActionKind::InstallBinary { change: Change::Install, .. }
                    | ActionKind::InstallEngine { change: EngineChange::Install, .. } => s.install += 1,
                    ActionKind::InstallBinary { .. } | ActionKind::InstallEngine { .. } => s.upgrade += 1,
                    ActionKind::RemoveWorker { .. } | ActionKind::Uninstall { .. } => s.remove += 1,
                    ActionKind::StartHive { .. } => s.start += 1,
                    ActionKind::RestartHive { .. } => s.restart += 1,
                    ActionKind::Rollback { binaries, .. } => s.upgrade += binaries.len(),
                    ActionKind::StopHive => s.stop += 1,
                    ActionKind::WaitHealthy { .. } => {}
                }
            }
        }
        s
    }

    /// Renders the plan as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "hives": self.hives, "summary": self.summary() })
    }
}
