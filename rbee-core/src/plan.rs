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

pub use rbee_proto::plan::{Action, ActionKind, Binary, Change, HivePlan, HiveStatus, Plan, RestartReason, Summary};

use crate::state::{Actual, Artifact, Desired, DesiredHive, HiveState, Installed, InstalledEngine, Observed};
use rbee_proto::engine::EngineChange;
use std::collections::BTreeSet;

/// Knobs of a plan. Built from `PlanOptions::default()` and the `with_*` methods, so that new
/// knobs do not break callers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlanOptions {
    /// Reinstall every binary and restart every hive even if in sync.
    pub force: bool,
    /// Remove workers that are installed but not declared.
    pub remove_extra: bool,
    /// Plan only these aliases; `None` means all.
    pub only: Option<BTreeSet<String>>,
}

impl PlanOptions {
    /// With `force`: reinstall every binary and restart every hive.
    pub fn with_force(self, force: bool) -> Self {
        Self { force, ..self }
    }
    /// With `remove_extra`: remove undeclared workers.
    pub fn with_remove_extra(self, remove_extra: bool) -> Self {
        Self { remove_extra, ..self }
    }
    /// Only these hives (`None`: all).
    pub fn with_only(self, only: Option<BTreeSet<String>>) -> Self {
        Self { only, ..self }
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

    plan_engines(want, have, options.force, &mut binaries);
    let engine_notes = have
        .engines
        .keys()
        .filter(|kind| !want.engines.contains_key(*kind))
        .map(|kind| format!("engine {kind} is installed but no declared worker uses it; kept"));
    hp.notes.extend(engine_notes);

    let binary_ids: Vec<String> =
        binaries.iter().filter(|a| matches!(a.kind, ActionKind::InstallBinary { .. })).map(|a| a.id.clone()).collect();
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
    } else if have.running_sha256.as_ref().is_some_and(|sha| *sha != want.hive.sha256) {
        Some(RestartReason::StaleBinary)
    } else if !have.healthy {
        Some(RestartReason::Unhealthy)
    } else if let Some(drift) = want.link.as_ref().and_then(|w| crate::link::drift(w, have.link.as_deref())) {
        Some(RestartReason::Relink(drift))
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

/// One action per managed engine that is missing, another than declared, or broken. An
/// engine does not need the hive restarted: the hive reads its record at each spawn.
fn plan_engines(want: &DesiredHive, have: &Observed, force: bool, actions: &mut Vec<Action>) {
    for (kind, engine) in &want.engines {
        let install = engine.pick(kind, have.gpu);
        let change = match have.engines.get(kind) {
            None => EngineChange::Install,
            Some(e) if e.id != install.id() => EngineChange::Replace { from: e.clone() },
            Some(InstalledEngine { problem: Some(problem), .. }) => EngineChange::Repair { problem: problem.clone() },
            Some(_) if force => EngineChange::Reinstall,
            Some(_) => continue,
        };
        actions.push(Action {
            id: format!("{}/engine/{kind}", want.alias),
            kind: ActionKind::InstallEngine { worker: kind.clone(), change, engine: install },
            depends_on: Vec::new(),
        });
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
        if have.hive_binary.is_some() || !have.workers.is_empty() || !have.engines.is_empty() || purge {
            hp.actions.push(Action { id: id("uninstall"), kind: ActionKind::Uninstall { purge }, depends_on: deps });
        }
    })
}

/// Plans `rbee rollback`: each selected hive that keeps the binaries its last upgrade
/// replaced gets them back, restarted and health-checked; the others are in sync (with a note).
pub(crate) fn plan_rollback(desired: &Desired, actual: &Actual, only: Option<&BTreeSet<String>>) -> Plan {
    plan_each(desired, actual, only, |want, have, hp| match have.previous.get(crate::layout::HIVE_BINARY) {
        Some(to) if !want.attached => hp.actions.push(Action {
            id: format!("{}/rollback", want.alias),
            kind: ActionKind::Rollback {
                binaries: have.previous.keys().cloned().collect(),
                to: to.clone(),
                port: want.hive_port,
            },
            depends_on: Vec::new(),
        }),
        _ => hp.notes.push("no previous rbee-hive is kept on this host: nothing to roll back to".to_owned()),
    })
}

/// Plans starting (`start = true`) or stopping the selected hives' daemons, nothing else. A
/// hive whose binary is not installed cannot be started: it is reported unreachable with the
/// reason, so the user runs `rbee sync` first.
pub(crate) fn plan_process(desired: &Desired, actual: &Actual, only: Option<&BTreeSet<String>>, start: bool) -> Plan {
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
