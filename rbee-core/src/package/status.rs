//! `status`: how each hive differs from the config (drift), observed or pure.

use super::{DriftState, HiveStatusReport, PackageError, StatusReport};
use std::collections::{BTreeMap, BTreeSet};

use crate::artifact::ArtifactSource;
use crate::config::Config;
use crate::execute::ExecuteOptions;
use crate::fleet::{Connector, connect_fleet, observe_fleet};
use crate::plan::{ActionKind, HiveStatus, PlanOptions, plan};
use crate::state::{Actual, Desired, HiveState};

/// Observes the selected hives and says how each differs from the config.
pub async fn status(
    config: &Config,
    source: &ArtifactSource,
    connector: &dyn Connector,
    only: Option<&BTreeSet<String>>,
    options: &ExecuteOptions,
) -> Result<StatusReport, PackageError> {
    status_with_lock(config, source, connector, only, options, None).await
}

/// Like [`status`], the artifacts pinned by the rbee.lock at `lock` (read, never written).
pub async fn status_with_lock(
    config: &Config,
    source: &ArtifactSource,
    connector: &dyn Connector,
    only: Option<&BTreeSet<String>>,
    options: &ExecuteOptions,
    lock: Option<&std::path::Path>,
) -> Result<StatusReport, PackageError> {
    let mut desired = crate::lock::resolve_with_lock(config, source, lock, false).await?.desired;
    desired.link_to(options.link.as_ref(), crate::execute::now_ms());
    let connections = connect_fleet(config, connector, only).await;
    let actual = observe_fleet(config, &connections, options.step_timeout).await;
    Ok(drift(&desired, &actual, &PlanOptions { only: only.cloned(), ..PlanOptions::default() }))
}

/// The drift report for an observed fleet (pure).
pub fn drift(desired: &Desired, actual: &Actual, options: &PlanOptions) -> StatusReport {
    let p = plan(desired, actual, options);
    let hives = p
        .hives
        .iter()
        .map(|hp| {
            let observed = match actual.hives.get(&hp.alias) {
                Some(HiveState::Reachable(o)) => Some(o),
                _ => None,
            };
            let state = match &hp.status {
                HiveStatus::Skipped => DriftState::Skipped,
                HiveStatus::Unreachable { reason } => DriftState::Unreachable { reason: reason.clone() },
                HiveStatus::InSync => DriftState::InSync,
                HiveStatus::Changes
                    if observed
                        .is_some_and(|o| o.hive_binary.is_none() && o.workers.is_empty() && o.engines.is_empty()) =>
                {
                    DriftState::NotInstalled
                }
                HiveStatus::Changes => {
                    DriftState::Drift { differences: hp.actions.iter().filter_map(|a| difference(&a.kind)).collect() }
                }
            };
            let mut files = BTreeMap::new();
            if let Some(o) = observed {
                let describe = |i: &crate::state::Installed| {
                    format!("{} (sha256:{})", i.version.as_deref().unwrap_or("unknown version"), i.sha256.short())
                };
                if let Some(h) = &o.hive_binary {
                    files.insert(crate::layout::Layout::hive_binary(), describe(h));
                }
                for (kind, w) in &o.workers {
                    files.insert(crate::layout::Layout::worker_binary(kind), describe(w));
                }
                for (kind, e) in &o.engines {
                    let state = e.problem.as_ref().map(|p| format!(": {p}")).unwrap_or_default();
                    files.insert(format!("engine {kind}"), format!("{} ({}){state}", e.version, e.program));
                }
            }
            HiveStatusReport {
                alias: hp.alias.clone(),
                state,
                healthy: observed.is_some_and(|o| o.healthy),
                pid: observed.and_then(|o| o.pid),
                supervisor: observed.and_then(|o| o.supervisor),
                files,
            }
        })
        .collect();
    StatusReport { hives, deployments: Vec::new() }
}

fn difference(kind: &ActionKind) -> Option<String> {
    use crate::plan::{Binary, Change};
    Some(match kind {
        ActionKind::InstallBinary { binary, change: Change::Install, artifact } => {
            format!("{binary} missing (want {})", artifact.version)
        }
        ActionKind::InstallBinary { binary, change: Change::Upgrade { from }, artifact } => format!(
            "{binary} is {} (sha256:{}), want {} (sha256:{})",
            from.version.as_deref().unwrap_or("an unknown version"),
            from.sha256.short(),
            artifact.version,
            artifact.short_digest()
        ),
        ActionKind::InstallBinary { change: Change::Reinstall, .. } => return None,
        ActionKind::InstallEngine { worker, change, engine } => {
            use rbee_proto::engine::{EngineChange, EngineInstall};
            let want = match engine {
                EngineInstall::Unavailable { reason } => format!("cannot be installed: {reason}"),
                other => format!("want {}", other.describe()),
            };
            match change {
                EngineChange::Install => format!("engine {worker} missing ({want})"),
                EngineChange::Replace { from } => format!("engine {worker} is {}, {want}", from.version),
                EngineChange::Repair { problem } => format!("engine {worker}: {problem} ({want})"),
                EngineChange::Reinstall => return None,
            }
        }
        ActionKind::RemoveWorker { worker, .. } => {
            format!("worker {worker} installed but not declared")
        }
        ActionKind::StartHive { .. } => "hive not running".to_owned(),
        ActionKind::RestartHive { reason, .. } => format!("hive running but {reason}"),
        ActionKind::StopHive
        | ActionKind::WaitHealthy { .. }
        | ActionKind::Uninstall { .. }
        | ActionKind::Rollback { .. } => {
            return None;
        }
    })
    .map(|s| s.replace(&format!("{} ", Binary::Hive), "hive binary "))
}
