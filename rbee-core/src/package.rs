//! The package manager's operations — sync, status, install, uninstall — as library calls.
//! The CLI runs them in-process; the queen runs the same calls.
//!
//! ```text
//! Config ─resolve─▶ Desired ─┐
//!        ─connect─▶ transports ─observe─▶ Actual ─┴─ plan ─▶ Plan ─(dry run: stop)─▶ execute ─▶ SyncReport
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::artifact::{ArtifactError, ArtifactSource, resolve};
use crate::config::Config;
use crate::execute::{ExecuteOptions, Intent, OnEvent, SyncReport, execute};
use crate::fleet::{Connector, connect_fleet, observe_fleet};
use crate::plan::{ActionKind, HiveStatus, PlanOptions, plan, plan_uninstall};
use crate::state::{Actual, Desired, HiveState};

/// Why an operation could not run at all (per-hive failures are in the report instead).
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// `--hive` named a hive that is not declared.
    #[error("no hive {alias:?} in hives.conf (declared: {declared})")]
    UnknownHive {
        /// The alias given.
        alias: String,
        /// The aliases declared.
        declared: String,
    },
    /// Artifacts could not be resolved.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// The last run's state could not be read or written.
    #[error("last run state {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Checks `--hive` aliases against the config; `None` when none were given.
pub fn select(config: &Config, aliases: &[String]) -> Result<Option<BTreeSet<String>>, PackageError> {
    if aliases.is_empty() {
        return Ok(None);
    }
    for alias in aliases {
        if config.hive(alias).is_none() {
            let declared: Vec<&str> = config.hives.iter().map(|h| h.alias.as_str()).collect();
            return Err(PackageError::UnknownHive { alias: alias.clone(), declared: declared.join(", ") });
        }
    }
    Ok(Some(aliases.iter().cloned().collect()))
}

pub use rbee_proto::result::{DriftState, HiveStatusReport, OperationResult, StatusReport, SyncOutcome};

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
    let plan = plan(&desired, &actual, &request.plan);
    if request.dry_run {
        return Ok(SyncOutcome { plan, report: None });
    }
    let intent = Intent::Sync(request.plan.clone());
    let report = execute(&desired, &plan, &intent, &connections.transports, source, options, on_event).await;
    Ok(SyncOutcome { plan, report: Some(report) })
}

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
    let _ = source.prepare(config).await; // uninstalling works without the source
    let desired = desired_for_uninstall(config, source)?;
    let connections = connect_fleet(config, connector, only).await;
    let actual = observe_fleet(config, &connections, options.step_timeout).await;
    let plan = plan_uninstall(&desired, &actual, only, purge);
    let intent = Intent::Uninstall { purge };
    let report = execute(&desired, &plan, &intent, &connections.transports, source, options, on_event).await;
    Ok(SyncOutcome { plan, report: Some(report) })
}

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

/// Uninstalling must work even when the artifacts are gone: fall back to empty pins.
fn desired_for_uninstall(config: &Config, source: &ArtifactSource) -> Result<Desired, PackageError> {
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
        desired.hives.insert(h.alias.clone(), crate::state::DesiredHive::for_config(h, stub.clone(), BTreeMap::new()));
    }
    Ok(desired)
}

/// Observes the selected hives and says how each differs from the config.
pub async fn status(
    config: &Config,
    source: &ArtifactSource,
    connector: &dyn Connector,
    only: Option<&BTreeSet<String>>,
    options: &ExecuteOptions,
) -> Result<StatusReport, PackageError> {
    source.prepare(config).await?;
    let desired = resolve(config, source)?;
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
                HiveStatus::Changes if observed.is_some_and(|o| o.hive_binary.is_none() && o.workers.is_empty()) => {
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
            }
            HiveStatusReport {
                alias: hp.alias.clone(),
                state,
                healthy: observed.is_some_and(|o| o.healthy),
                pid: observed.and_then(|o| o.pid),
                files,
            }
        })
        .collect();
    StatusReport { hives }
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
        ActionKind::RemoveWorker { worker, .. } => {
            format!("worker {worker} installed but not declared")
        }
        ActionKind::StartHive { .. } => "hive not running".to_owned(),
        ActionKind::RestartHive { reason, .. } => format!("hive running but {reason}"),
        ActionKind::StopHive | ActionKind::WaitHealthy { .. } | ActionKind::Uninstall { .. } => {
            return None;
        }
    })
    .map(|s| s.replace(&format!("{} ", Binary::Hive), "hive binary "))
}

/// Where the last sync's report is kept: `last-sync.json` in the queen's state directory
/// ([`crate::layout::queen_state_dir`]).
pub fn last_run_path() -> PathBuf {
    crate::layout::queen_state_dir().join("last-sync.json")
}

/// Saves a report for `--retry-failed`.
pub fn save_last_run(report: &SyncReport) -> Result<(), PackageError> {
    let path = last_run_path();
    let err = |e: std::io::Error| PackageError::State { path: path.clone(), reason: e.to_string() };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(report).unwrap_or_default()).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)
}

/// The hives that failed or were unreachable in the last saved run.
pub fn last_failed() -> Result<BTreeSet<String>, PackageError> {
    let path = last_run_path();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| PackageError::State { path: path.clone(), reason: format!("{e}; run `rbee sync` first") })?;
    let report: SyncReport =
        serde_json::from_str(&text).map_err(|e| PackageError::State { path: path.clone(), reason: e.to_string() })?;
    Ok(report.failed().into_iter().collect())
}

/// Makes the connector for an operation's config (so its `[ssh]` settings apply).
pub type ConnectFn = dyn Fn(&Config) -> std::sync::Arc<dyn Connector> + Send + Sync;

/// What a run may be told besides the operation.
#[derive(Clone, Default)]
pub struct RunContext {
    /// Set to cancel (see [`ExecuteOptions::cancel`]).
    pub cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Test hooks by alias.
    pub faults: BTreeMap<String, crate::execute::InstallFault>,
    /// The queen started hives report to (set when the queen runs the operation).
    pub queen_link: Option<crate::execute::QueenLink>,
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
    op: &crate::operation::Operation,
    connect: &ConnectFn,
    ctx: &RunContext,
    on_event: OnEvent<'_>,
) -> OperationResult {
    use crate::operation::Operation as Op;
    if let Err(removed) = op.check_supported() {
        return OperationResult::error(removed);
    }
    let config_path = match op {
        Op::PackageSync { config_path, .. }
        | Op::PackageStatus { config_path, .. }
        | Op::PackageInstall { config_path, .. }
        | Op::PackageUninstall { config_path, .. }
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
    options.queen_link = ctx.queen_link.clone();
    let aliases = |list: &[String]| select(&config, list);
    let result = match op {
        Op::PackageSync { dry_run, remove_extra, force, hive_aliases, .. } => match aliases(hive_aliases) {
            Ok(only) => {
                let request = SyncRequest {
                    plan: PlanOptions { force: *force, remove_extra: *remove_extra, only },
                    dry_run: *dry_run,
                };
                sync(&config, &source, connector, &request, &options, on_event).await.map(OperationResult::Sync)
            }
            Err(e) => Err(e),
        },
        Op::PackageInstall { force, hive_alias, .. } => {
            match aliases(&hive_alias.iter().cloned().collect::<Vec<_>>()) {
                Ok(only) => {
                    let request =
                        SyncRequest { plan: PlanOptions { force: *force, remove_extra: false, only }, dry_run: false };
                    sync(&config, &source, connector, &request, &options, on_event).await.map(OperationResult::Sync)
                }
                Err(e) => Err(e),
            }
        }
        Op::PackageStatus { hive_aliases, .. } => match aliases(hive_aliases) {
            Ok(only) => status(&config, &source, connector, only.as_ref(), &options).await.map(OperationResult::Status),
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
        Op::HiveStart { alias, .. } | Op::HiveStop { alias, .. } => match aliases(std::slice::from_ref(alias)) {
            Ok(only) => {
                let start = matches!(op, Op::HiveStart { .. });
                process(&config, &source, connector, only.as_ref(), start, &options, on_event)
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
