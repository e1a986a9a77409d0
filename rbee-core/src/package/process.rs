//! Starting or stopping the hive daemons, and nothing else.

use super::{PackageError, SyncOutcome};
use std::collections::BTreeSet;

use super::uninstall::without_artifacts;
use crate::artifact::ArtifactSource;
use crate::config::Config;
use crate::execute::{ExecuteOptions, Intent, OnEvent};
use crate::fleet::Connector;

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
    without_artifacts(config, source, connector, only, Intent::Process { start }, options, on_event).await
}
