//! `sync`: resolve, connect, observe, plan and (unless a dry run) execute.

use super::{PackageError, SyncOutcome};

use crate::artifact::{ArtifactSource, resolve};
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
}

/// Resolves, connects, observes, plans and (unless dry run) executes.
pub async fn sync(
    config: &Config,
    source: &ArtifactSource,
    connector: &dyn Connector,
    request: &SyncRequest,
    options: &ExecuteOptions,
    on_event: OnEvent<'_>,
) -> Result<SyncOutcome, PackageError> {
    source.prepare(config).await?;
    let desired = resolve(config, source)?;
    let connections = connect_fleet(config, connector, request.plan.only.as_ref()).await;
    let actual = observe_fleet(config, &connections, options.step_timeout).await;
    let planned = Planned::new(Intent::Sync(request.plan.clone()), &desired, &actual, request.plan.only.as_ref());
    if request.dry_run {
        return Ok(SyncOutcome::new(planned.plan, None));
    }
    let report = execute(&desired, &planned, &connections.transports, source, options, on_event).await;
    Ok(SyncOutcome::new(planned.plan, Some(report)))
}
