//! `uninstall`: stop and remove what rbee installed; works without the artifacts.

use super::{PackageError, SyncOutcome};
use std::collections::{BTreeMap, BTreeSet};

use crate::artifact::{ArtifactSource, resolve};
use crate::config::Config;
use crate::execute::{ExecuteOptions, Intent, OnEvent, Planned, execute};
use crate::fleet::{Connector, connect_fleet, observe_fleet};
use crate::state::Desired;

/// Stops and removes what rbee installed on the selected hives.
pub async fn uninstall(
    config: &Config,
    source: &ArtifactSource,
    connector: &dyn Connector,
    only: Option<&BTreeSet<String>>,
    purge: bool,
    options: &ExecuteOptions,
    on_event: OnEvent<'_>,
) -> Result<SyncOutcome, PackageError> {
    without_artifacts(config, source, connector, only, Intent::Uninstall { purge }, options, on_event).await
}

/// The pipeline of the operations that must work when the artifacts are gone (uninstall,
/// start/stop): empty pins where the source cannot resolve, then observe, plan for `intent`
/// and execute.
pub(super) async fn without_artifacts(
    config: &Config,
    source: &ArtifactSource,
    connector: &dyn Connector,
    only: Option<&BTreeSet<String>>,
    intent: Intent,
    options: &ExecuteOptions,
    on_event: OnEvent<'_>,
) -> Result<SyncOutcome, PackageError> {
    let _ = source.prepare(config).await;
    let desired = desired_for_uninstall(config, source)?;
    let connections = connect_fleet(config, connector, only).await;
    let actual = observe_fleet(config, &connections, options.step_timeout).await;
    let planned = Planned::new(intent, &desired, &actual, only);
    let report = execute(&desired, &planned, &connections.transports, source, options, on_event).await;
    Ok(SyncOutcome::new(planned.plan, Some(report)))
}

/// Uninstalling must work even when the artifacts are gone: fall back to empty pins.
pub(super) fn desired_for_uninstall(config: &Config, source: &ArtifactSource) -> Result<Desired, PackageError> {
    if let Ok(d) = resolve(config, source) {
        return Ok(d);
    }
    let stub = std::sync::Arc::new(crate::state::Artifact {
        name: crate::layout::HIVE_BINARY.to_owned(),
        version: "unknown".to_owned(),
        sha256: rbee_proto::Sha256::from_bytes([0; 32]),
        size: 0,
    });
    let mut desired = Desired::default();
    for h in &config.hives {
        desired.hives.insert(
            h.alias.clone(),
            crate::state::DesiredHive::for_config(h, stub.clone(), BTreeMap::new(), BTreeMap::new()),
        );
    }
    Ok(desired)
}
