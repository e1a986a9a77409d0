//! What an operation returns: the last event of a job's stream and of a hive's answer, and
//! what `rbee` renders (and maps to its exit code).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::exit;
use crate::plan::Plan;
use crate::report::SyncReport;

/// Plan and, unless it is a dry run, its execution.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SyncOutcome {
    /// The plan made from the first observation.
    pub plan: Plan,
    /// What happened; `None` for a dry run.
    pub report: Option<SyncReport>,
    /// What the queen's reconciler does (a dry run) or did (a run) to the deployments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployment_steps: Vec<crate::deployment::Action>,
    /// The deployments after the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<crate::deployment::DeploymentStatus>,
    /// How rbee.lock changes (a dry run) or changed (a run), one line each, e.g. `rbee-hive
    /// latest 0.1.0 -> 0.2.0 (sha256:…)`, `added …`, `removed …`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lock_changes: Vec<String>,
}

impl SyncOutcome {
    /// A plan and its report, before anything about deployments is known.
    pub fn new(plan: Plan, report: Option<SyncReport>) -> Self {
        Self { plan, report, deployment_steps: Vec::new(), deployments: Vec::new(), lock_changes: Vec::new() }
    }

    /// The documented exit code: a dry run gives 0 (in sync), 2 (changes pending) or 1 (a
    /// hive could not be observed); a run gives 0 (all ok), 3 (partial) or 1 (all failed).
    /// Changes to rbee.lock alone (one written for a fleet already in sync) are not pending
    /// changes: the code is about the hosts.
    pub fn exit_code(&self) -> u8 {
        let deployments_ready = self.deployments.iter().all(|d| d.is_ready());
        match &self.report {
            None if self.plan.summary().unreachable > 0 => exit::ERROR,
            None if self.plan.is_empty() && self.deployment_steps.is_empty() => exit::OK,
            None => exit::DRIFT,
            Some(report) => match report.overall() {
                crate::report::Overall::Ok if !deployments_ready => exit::PARTIAL,
                crate::report::Overall::Ok => exit::OK,
                crate::report::Overall::Partial => exit::PARTIAL,
                crate::report::Overall::Failed => exit::ERROR,
            },
        }
    }
}

/// One hive in a status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HiveStatusReport {
    /// The hive.
    pub alias: String,
    /// In sync, drift, not installed, or unreachable.
    #[serde(flatten)]
    pub state: DriftState,
    /// The hive answers `/health`.
    pub healthy: bool,
    /// Pid of the running hive.
    pub pid: Option<u32>,
    /// What keeps the hive running (`--verbose`): systemd or a detached process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<crate::state::Supervisor>,
    /// Installed files (`--verbose`): path → short digest and version.
    pub files: BTreeMap<String, String>,
}

/// Drift of one hive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DriftState {
    /// Matches the config.
    InSync,
    /// Nothing rbee installs is there.
    NotInstalled,
    /// Differs; each entry says what.
    Drift {
        /// What differs.
        differences: Vec<String>,
    },
    /// Could not be checked.
    Unreachable {
        /// Why.
        reason: String,
    },
    /// Not selected.
    Skipped,
}

/// Drift between the config and the hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StatusReport {
    /// Per hive, by alias.
    pub hives: Vec<HiveStatusReport>,
    /// Per declared deployment (from the queen).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<crate::deployment::DeploymentStatus>,
}

impl StatusReport {
    /// 0 in sync, 2 drift, 1 when a hive could not be checked.
    pub fn exit_code(&self) -> u8 {
        if self.hives.iter().any(|h| matches!(h.state, DriftState::Unreachable { .. })) {
            exit::ERROR
        } else if self.hives.iter().any(|h| matches!(h.state, DriftState::Drift { .. } | DriftState::NotInstalled))
            || self.deployments.iter().any(|d| !d.is_ready())
        {
            exit::DRIFT
        } else {
            exit::OK
        }
    }
}

/// The result of a package operation, as the CLI renders it and the queen streams it.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum OperationResult {
    /// A sync, install or uninstall (with its plan and, unless a dry run, its report).
    Sync(SyncOutcome),
    /// A drift report.
    Status(StatusReport),
    /// The config is valid.
    Valid {
        /// Declared hives.
        hives: Vec<String>,
    },
    /// A hive's worker processes.
    Workers {
        /// The hive.
        hive: String,
        /// Its processes.
        workers: Vec<crate::hive::WorkerProcess>,
    },
    /// One worker process (spawned, inspected or stopped).
    Worker {
        /// The hive.
        hive: String,
        /// The process.
        worker: Box<crate::hive::WorkerProcess>,
    },
    /// A hive's worker catalog (the worker types installed on it).
    Catalog {
        /// The hive.
        hive: String,
        /// Worker types.
        workers: Vec<String>,
    },
    /// A hive's models.
    Models {
        /// The hive.
        hive: String,
        /// Its models.
        models: Vec<crate::hive::ModelInfo>,
    },
    /// One model (downloaded, inspected or deleted).
    Model {
        /// The hive.
        hive: String,
        /// The model.
        model: crate::hive::ModelInfo,
    },
    /// An inference's whole answer (its tokens streamed before).
    Inferred {
        /// The hive that ran it.
        hive: String,
        /// The worker that ran it.
        worker_id: String,
        /// The generated text.
        text: String,
    },
    /// The operation could not run.
    Error {
        /// What went wrong and what to do.
        message: String,
        /// Config problems, each with file:line:column.
        #[serde(default)]
        diagnostics: Vec<crate::config::Diagnostic>,
    },
}

impl OperationResult {
    /// The documented exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            OperationResult::Sync(o) => o.exit_code(),
            OperationResult::Status(s) => s.exit_code(),
            OperationResult::Valid { .. }
            | OperationResult::Workers { .. }
            | OperationResult::Worker { .. }
            | OperationResult::Catalog { .. }
            | OperationResult::Models { .. }
            | OperationResult::Model { .. }
            | OperationResult::Inferred { .. } => exit::OK,
            OperationResult::Error { .. } => exit::ERROR,
        }
    }

    /// An [`OperationResult::Error`] without diagnostics.
    pub fn error(e: impl std::fmt::Display) -> Self {
        OperationResult::Error { message: e.to_string(), diagnostics: Vec::new() }
    }
}
