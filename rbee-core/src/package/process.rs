//! Starting or stopping the hive daemons, and nothing else.

use super::{PackageError, SyncOutcome};
use std::collections::BTreeSet;

use super::uninstall::desired_for_uninstall;
use crate::artifact::ArtifactSource;
use crate::config::Config;
use crate::execute::{ExecuteOptions, Intent, OnEvent, execute};
use crate::fleet::{Connector, connect_fleet, observe_fleet};

/// Starts or stops the selected hives' daemons (and nothing else).
pub async fn process(
    config: &Config,
    source: &ArtifactSource,
    connector: &dyn Connector,
    only: Option<&BTreeSet<String>>,
    start: bool,
    options: &ExecuteOptions,
    on_event: OnEvent<'_>,
) -> Result<SyncOutcome, PackageError> {
    let _ = source.prepare(config).await;
    let desired = desired_for_uninstall(config, source)?;
    let connections = connect_fleet(config, connector, only).await;
    let actual = observe_fleet(config, &connections, options.step_timeout).await;
    let plan = crate::plan::plan_process(&desired, &actual, only, start);
    let intent = Intent::Process { start };
    let report = execute(&desired, &plan, &intent, &connections.transports, source, options, on_event).await;
    Ok(SyncOutcome { plan, report: Some(report) })
}
