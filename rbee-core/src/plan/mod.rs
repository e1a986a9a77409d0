//! The planner: what must change so that the hosts match the config.
//!
//! ```text
//! Desired ─┐
//!          ├─ plan() ──▶ Plan: per hive, a DAG of Actions
//! Actual  ─┘   pure: no I/O, no clock, no randomness; BTreeMaps and stable ids
//!
//! one hive:  [hive binary] [worker a] [worker b] [remove c]
//!                     \         |         /
//!                      start / restart hive
//!                              |
//!                        wait until healthy
//! ```
//!
//! Invariant (checked by property tests): applying a plan to the actual state and planning
//! again gives an empty plan.

mod render;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::TransportKind;
use crate::layout::Layout;
use crate::state::{Actual, Artifact, Desired, DesiredHive, HiveState, Installed, Observed};

/// Knobs of a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Reinstall every binary and restart every hive even if in sync.
    pub force: bool,
    /// Remove workers that are installed but not declared.
    pub remove_extra: bool,
    /// Plan only these aliases; `None` means all.
    pub only: Option<BTreeSet<String>>,
}

/// What a binary action does to the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// One step on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Per hive, sorted by alias.
    pub hives: Vec<HivePlan>,
}

/// Counts for the summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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
                    ActionKind::InstallBinary { change: Change::Install, .. } => s.install += 1,
                    ActionKind::InstallBinary { .. } => s.upgrade += 1,
                    ActionKind::RemoveWorker { .. } | ActionKind::Uninstall { .. } => s.remove += 1,
                    ActionKind::StartHive { .. } => s.start += 1,
                    ActionKind::RestartHive { .. } => s.restart += 1,
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

/// The skeleton every planner shares: one [`HivePlan`] per desired hive, skipped when not
/// selected, unreachable when not observed; `plan_one` fills in a reachable hive's actions.
fn plan_each(
    desired: &Desired,
    actual: &Actual,
    only: Option<&BTreeSet<String>>,
    plan_one: impl Fn(&DesiredHive, &Observed, &mut HivePlan),
) -> Plan {
    let hives = desired
        .hives
        .values()
        .map(|want| {
            let mut hp = HivePlan {
                alias: want.alias.clone(),
                hostname: want.hostname.clone(),
                transport: want.transport,
                status: HiveStatus::InSync,
                actions: Vec::new(),
                notes: Vec::new(),
            };
            if only.is_some_and(|only| !only.contains(&want.alias)) {
                hp.status = HiveStatus::Skipped;
                return hp;
            }
            match actual.hives.get(&want.alias) {
                None => hp.status = HiveStatus::Unreachable { reason: "not observed".to_owned() },
                Some(HiveState::Unreachable { reason }) => {
                    hp.status = HiveStatus::Unreachable { reason: reason.clone() };
                }
                Some(HiveState::Reachable(have)) => {
                    plan_one(want, have, &mut hp);
                    if !hp.actions.is_empty() {
                        hp.status = HiveStatus::Changes;
                    }
                }
            }
            hp
        })
        .collect();
    Plan { hives }
}

/// Plans a sync: what makes `actual` match `desired`.
pub fn plan(desired: &Desired, actual: &Actual, options: &PlanOptions) -> Plan {
    plan_each(desired, actual, options.only.as_ref(), |want, have, hp| plan_hive(want, have, options, hp))
}

fn binary_change(want: &Artifact, have: Option<&Installed>, force: bool) -> Option<Change> {
    match have {
        None => Some(Change::Install),
        Some(have) if have.sha256 != want.sha256 => Some(Change::Upgrade { from: have.clone() }),
        Some(_) if force => Some(Change::Reinstall),
        Some(_) => None,
    }
}

fn plan_hive(want: &DesiredHive, have: &Observed, options: &PlanOptions, hp: &mut HivePlan) {
    let alias = &want.alias;
    let id = |step: &str| format!("{alias}/{step}");
    let mut binaries = Vec::with_capacity(want.workers.len() + 1);
    let mut hive_binary_changes = false;

    // An attached hive runs inside the queen: no hive binary to install.
    let hive_change =
        if want.attached { None } else { binary_change(&want.hive, have.hive_binary.as_ref(), options.force) };
    if let Some(change) = hive_change {
        hive_binary_changes = true;
        binaries.push(Action {
            id: id("hive-binary"),
            kind: ActionKind::InstallBinary { binary: Binary::Hive, change, artifact: want.hive.clone() },
            depends_on: Vec::new(),
        });
    }
    for (kind, artifact) in &want.workers {
        if let Some(change) = binary_change(artifact, have.workers.get(kind), options.force) {
            binaries.push(Action {
                id: format!("{alias}/worker/{kind}"),
                kind: ActionKind::InstallBinary {
                    binary: Binary::Worker(kind.clone()),
                    change,
                    artifact: artifact.clone(),
                },
                depends_on: Vec::new(),
            });
        }
    }
    for (kind, installed) in &have.workers {
        if want.workers.contains_key(kind) {
            continue;
        }
        if options.remove_extra {
            binaries.push(Action {
                id: format!("{alias}/remove-worker/{kind}"),
                kind: ActionKind::RemoveWorker { worker: kind.clone(), installed: installed.clone() },
                depends_on: Vec::new(),
            });
        } else {
            hp.notes
                .push(format!("worker {kind} is installed but not declared; kept (use --remove-extra to remove it)"));
        }
    }

    let binary_ids: Vec<String> = binaries.iter().map(|a| a.id.clone()).collect();
    hp.actions = binaries;
    if want.attached {
        hp.notes.push(
            "attached hive: it runs inside the queen (mode = \"attached-hive\"); only its workers are installed"
                .to_owned(),
        );
        return;
    }
    hp.actions.reserve_exact(2);

    let port = want.hive_port;
    let restart_reason = if !have.running {
        None
    } else if hive_binary_changes {
        Some(if options.force { RestartReason::Forced } else { RestartReason::BinaryUpgraded })
    } else if have.running_sha256.as_deref().is_some_and(|sha| sha != want.hive.sha256) {
        Some(RestartReason::StaleBinary)
    } else if !have.healthy {
        Some(RestartReason::Unhealthy)
    } else if options.force {
        Some(RestartReason::Forced)
    } else {
        None
    };
    let process = match (have.running, restart_reason) {
        (false, _) if want.auto_start => Some(ActionKind::StartHive { port }),
        (true, Some(reason)) => Some(ActionKind::RestartHive { port, reason }),
        _ => None,
    };
    if let Some(kind) = process {
        let step = if matches!(kind, ActionKind::StartHive { .. }) { "start" } else { "restart" };
        hp.actions.push(Action { id: id(step), kind, depends_on: binary_ids });
        hp.actions.push(Action {
            id: id("wait-healthy"),
            kind: ActionKind::WaitHealthy { port },
            depends_on: vec![id(step)],
        });
    } else if have.running && !want.auto_start {
        hp.notes.push("auto_start = false: the running hive is left running".to_owned());
    }
}

/// Plans an uninstall of the selected hives: stop each hive, then remove what rbee installed
/// (and with `purge`, rbee's state). Hosts with nothing installed are in sync.
pub fn plan_uninstall(desired: &Desired, actual: &Actual, only: Option<&BTreeSet<String>>, purge: bool) -> Plan {
    plan_each(desired, actual, only, |want, have, hp| {
        let id = |step: &str| format!("{}/{step}", want.alias);
        let mut deps = Vec::new();
        if have.running {
            hp.actions.push(Action { id: id("stop"), kind: ActionKind::StopHive, depends_on: Vec::new() });
            deps.push(id("stop"));
        }
        if have.hive_binary.is_some() || !have.workers.is_empty() || purge {
            hp.actions.push(Action { id: id("uninstall"), kind: ActionKind::Uninstall { purge }, depends_on: deps });
        }
    })
}

/// Plans starting (`start = true`) or stopping the selected hives' daemons, nothing else. A
/// hive whose binary is not installed cannot be started: it is reported unreachable with the
/// reason, so the user runs `rbee sync` first.
pub fn plan_process(desired: &Desired, actual: &Actual, only: Option<&BTreeSet<String>>, start: bool) -> Plan {
    plan_each(desired, actual, only, |want, have, hp| {
        let id = |step: &str| format!("{}/{step}", want.alias);
        let port = want.hive_port;
        if want.attached {
            let reason = "this hive runs inside the queen (mode = \"attached-hive\"): it starts and stops with the queen (`rbee queen start|stop`)";
            hp.status = HiveStatus::Unreachable { reason: reason.to_owned() };
        } else if start && have.hive_binary.is_none() {
            hp.status = HiveStatus::Unreachable { reason: "rbee-hive is not installed: run `rbee sync`".to_owned() };
        } else if start && !(have.running && have.healthy) {
            let (step, kind) = if have.running {
                ("restart", ActionKind::RestartHive { port, reason: RestartReason::Unhealthy })
            } else {
                ("start", ActionKind::StartHive { port })
            };
            hp.actions.push(Action { id: id(step), kind, depends_on: Vec::new() });
            hp.actions.push(Action {
                id: id("wait-healthy"),
                kind: ActionKind::WaitHealthy { port },
                depends_on: vec![id(step)],
            });
        } else if !start && have.running {
            hp.actions.push(Action { id: id("stop"), kind: ActionKind::StopHive, depends_on: Vec::new() });
        }
    })
}
