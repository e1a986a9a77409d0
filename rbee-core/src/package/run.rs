//! One entry point for every package operation, as the queen and `rbee --in-process` run it.

use super::{OperationResult, SyncOutcome, SyncRequest, save_last_run, select, status_with_lock, sync, uninstall};
use std::collections::BTreeMap;

use super::uninstall::without_artifacts;
use crate::artifact::ArtifactSource;
use crate::config::Config;
use crate::execute::{ExecuteOptions, Intent, OnEvent};
use crate::fleet::Connector;
use crate::plan::PlanOptions;

/// Makes the connector for an operation's config (so its `[ssh]` settings apply).
pub type ConnectFn = dyn Fn(&Config) -> std::sync::Arc<dyn Connector> + Send + Sync;

/// What a run may be told besides the operation.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct RunContext {
    /// Set to cancel (see [`ExecuteOptions::cancel`]).
    pub cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Test hooks by alias.
    pub faults: BTreeMap<String, crate::execute::InstallFault>,
    /// The queen started hives report to, and what it issues them (set when the queen runs
    /// the operation).
    pub link: Option<crate::link::LinkSpec>,
    /// The HTTP client for an `http://` artifact source.
    pub http: Option<std::sync::Arc<dyn crate::artifact::HttpGet>>,
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config, OperationResult> {
    crate::config::load(&crate::config::ConfigFiles::locate(path)).map_err(|e| match e {
        crate::config::ConfigError::Invalid(diagnostics) => {
            let n = diagnostics.len();
            OperationResult::Error {
                message: format!("the config has {n} problem{}", if n == 1 { "" } else { "s" }),
                diagnostics,
            }
        }
        other => OperationResult::error(other),
    })
}

/// Runs a package operation (sync, status, install, uninstall, validate) and returns its
/// result; other operations are not the package manager's and give an error result.
/// `connect` makes the connector for the operation's config (its `[ssh]` settings).
pub async fn run_operation(
    op: &rbee_proto::operation::Operation,
    connect: &ConnectFn,
    ctx: &RunContext,
    on_event: OnEvent<'_>,
) -> OperationResult {
    use rbee_proto::operation::Operation as Op;
    if let Err(removed) = op.check_supported() {
        return OperationResult::error(removed);
    }
    let config_path = match op {
        Op::PackageSync { config_path, .. }
        | Op::PackageStatus { config_path, .. }
        | Op::PackageInstall { config_path, .. }
        | Op::PackageUninstall { config_path, .. }
        | Op::PackageRollback { config_path, .. }
        | Op::PackageValidate { config_path } => config_path.as_deref(),
        Op::HiveStart { config_path, .. } | Op::HiveStop { config_path, .. } => config_path.as_deref(),
        _ => return OperationResult::error("this operation is not handled by the package manager"),
    };
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(result) => return result,
    };
    if let Op::PackageValidate { .. } = op {
        return OperationResult::Valid { hives: config.hives.iter().map(|h| h.alias.clone()).collect() };
    }
    let source = match ArtifactSource::from_config_with(&config, ctx.http.clone()) {
        Ok(s) => s,
        Err(e) => return OperationResult::error(e),
    };
    let connector = connect(&config);
    let connector = connector.as_ref();
    let mut options = ExecuteOptions::from_settings(&config.package);
    options.cancel = ctx.cancel.clone();
    options.faults = ctx.faults.clone();
    options.link = ctx.link.clone();
    let aliases = |list: &[String]| select(&config, list);
    // rbee.lock beside hives.conf: the queen and `rbee --in-process` find the same one.
    let lock = Some(crate::lock::lock_path(&crate::config::ConfigFiles::locate(config_path)));
    let result = match op {
        Op::PackageSync { dry_run, remove_extra, force, hive_aliases, batch, locked, .. } => {
            match aliases(hive_aliases) {
                Ok(only) => {
                    if let Some(n) = batch {
                        options.max_unavailable = crate::config::MaxUnavailable::Count(*n as usize);
                    }
                    let request = SyncRequest {
                        plan: PlanOptions { force: *force, remove_extra: *remove_extra, only },
                        dry_run: *dry_run,
                        lock,
                        locked: *locked,
                    };
                    sync(&config, &source, connector, &request, &options, on_event).await.map(OperationResult::Sync)
                }
                Err(e) => Err(e),
            }
        }
        Op::PackageInstall { force, hive_alias, .. } => {
            match aliases(&hive_alias.iter().cloned().collect::<Vec<_>>()) {
                Ok(only) => {
                    let request = SyncRequest {
                        plan: PlanOptions { force: *force, remove_extra: false, only },
                        dry_run: false,
                        lock,
                        locked: false,
                    };
                    sync(&config, &source, connector, &request, &options, on_event).await.map(OperationResult::Sync)
                }
                Err(e) => Err(e),
            }
        }
        Op::PackageStatus { hive_aliases, .. } => match aliases(hive_aliases) {
            Ok(only) => status_with_lock(&config, &source, connector, only.as_ref(), &options, lock.as_deref())
                .await
                .map(OperationResult::Status),
            Err(e) => Err(e),
        },
        Op::PackageUninstall { hive_alias, purge, .. } => {
            match aliases(&hive_alias.iter().cloned().collect::<Vec<_>>()) {
                Ok(only) => uninstall(&config, &source, connector, only.as_ref(), *purge, &options, on_event)
                    .await
                    .map(OperationResult::Sync),
                Err(e) => Err(e),
            }
        }
        Op::PackageRollback { hive_aliases, .. } => match aliases(hive_aliases) {
            Ok(only) => {
                without_artifacts(&config, &source, connector, only.as_ref(), Intent::Rollback, &options, on_event)
                    .await
                    .map(OperationResult::Sync)
            }
            Err(e) => Err(e),
        },
        Op::HiveStart { alias, .. } | Op::HiveStop { alias, .. } => match aliases(std::slice::from_ref(alias)) {
            Ok(only) => {
                let intent = Intent::Process { start: matches!(op, Op::HiveStart { .. }) };
                without_artifacts(&config, &source, connector, only.as_ref(), intent, &options, on_event)
                    .await
                    .map(OperationResult::Sync)
            }
            Err(e) => Err(e),
        },
        _ => unreachable!("filtered above"),
    };
    match result {
        Ok(result) => {
            if let OperationResult::Sync(SyncOutcome { report: Some(report), .. }) = &result
                && matches!(op, Op::PackageSync { .. } | Op::PackageInstall { .. })
                && let Err(e) = save_last_run(report)
            {
                return OperationResult::error(e);
            }
            result
        }
        Err(e) => OperationResult::error(e),
    }
}
