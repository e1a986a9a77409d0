//! `sync`: resolve, connect, observe, plan and (unless a dry run) execute.

use super::{PackageError, SyncOutcome};

use crate::artifact::{ArtifactError, ArtifactSource};
use crate::config::Config;
use crate::execute::{ExecuteOptions, Intent, OnEvent, Planned, execute};
use crate::fleet::{Connector, connect_fleet, observe_fleet};
use crate::plan::PlanOptions;

/// What to sync.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    /// Planner options (force, remove_extra, only).
    pub plan: PlanOptions,
    /// Plan only.
    pub dry_run: bool,
    /// rbee.lock ([`crate::lock::lock_path`]); `None`: no lock is read or written.
    pub lock: Option<std::path::PathBuf>,
    /// Refuse any artifact the lock does not pin (`rbee sync --locked`); the lock is not written.
    pub locked: bool,
}

/// Resolves (through the lock, if the request names one), connects, observes, plans and
/// (unless dry run) writes the lock where it changed and executes.
pub async fn sync(
    config: &Config,
    source: &ArtifactSource,
    connector: &dyn Connector,
    request: &SyncRequest,
    options: &ExecuteOptions,
    on_event: OnEvent<'_>,
) -> Result<SyncOutcome, PackageError> {
    let resolved = crate::lock::resolve_with_lock(config, source, request.lock.as_deref(), request.locked).await?;
    let mut desired = resolved.desired;
    desired.link_to(options.link.as_ref(), crate::execute::now_ms());
    let connections = connect_fleet(config, connector, request.plan.only.as_ref()).await;
    let actual = observe_fleet(config, &connections, options.step_timeout).await;
    let planned = Planned::new(Intent::Sync(request.plan.clone()), &desired, &actual, request.plan.only.as_ref());
    let lock_changes = resolved.changes;
    if request.dry_run {
        return Ok(SyncOutcome { lock_changes, ..SyncOutcome::new(planned.plan, None) });
    }
    if let (Some(lock), Some(path)) = (&resolved.new_lock, &request.lock) {
        lock.write(path).map_err(ArtifactError::from)?;
    }
    let report = execute(&desired, &planned, &connections.transports, source, options, on_event).await;
    Ok(SyncOutcome { lock_changes, ..SyncOutcome::new(planned.plan, Some(report)) })
}
