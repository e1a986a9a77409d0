//! The package manager's operations — sync, status, install, uninstall — as library calls.
//! The CLI runs them in-process; the queen runs the same calls.
//!
//! ```text
//! Config ─resolve─▶ Desired ─┐
//!        ─connect─▶ transports ─observe─▶ Actual ─┴─ plan ─▶ Plan ─(dry run: stop)─▶ execute ─▶ SyncReport
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::artifact::{ArtifactError, ArtifactSource, resolve};
use crate::config::Config;
use crate::execute::{ExecuteOptions, Intent, OnEvent, SyncReport, execute};
use crate::fleet::{Connector, connect_fleet, observe_fleet};
use crate::plan::{ActionKind, HiveStatus, Plan, PlanOptions, plan, plan_uninstall};
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

/// Plan and, unless it is a dry run, its execution.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncOutcome {
    /// The plan made from the first observation.
    pub plan: Plan,
    /// What happened; `None` for a dry run.
    pub report: Option<SyncReport>,
}

impl SyncOutcome {
    /// The documented exit code: a dry run gives 0 (in sync), 2 (changes pending) or 1 (a
    /// hive could not be observed); a run gives 0 (all ok), 3 (partial) or 1 (all failed).
    pub fn exit_code(&self) -> u8 {
        match &self.report {
            None if self.plan.summary().unreachable > 0 => 1,
            None if self.plan.is_empty() => 0,
            None => 2,
            Some(report) => match report.overall() {
                crate::execute::Overall::Ok => 0,
                crate::execute::Overall::Partial => 3,
                crate::execute::Overall::Failed => 1,
            },
        }
    }
}

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
        sha256: String::new(),
        size: 0,
    });
    let mut desired = Desired::default();
    for h in &config.hives {
        desired.hives.insert(h.alias.clone(), crate::state::DesiredHive::for_config(h, stub.clone(), BTreeMap::new()));
    }
    Ok(desired)
}

/// One hive in a status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HiveStatusReport {
    /// The hive.
    pub alias: String,
    /// In sync, drift, not installed, or unreachable.
    #[serde(flatten)]
    pub state: DriftState,
    /// The hive answers `/health`.
    pub healthy: bool,
    /// Pid of the running hive.
    pub pid: Option<u32>,
    /// Installed files (`--verbose`): path → short digest and version.
    pub files: BTreeMap<String, String>,
}

/// Drift of one hive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DriftState {
    /// Matches the config.
    InSync,
    /// Nothing rbee installs is there.
    NotInstalled,
    /// Differs; each entry says what.
    Drift {
        /// What differs.
        differences: Vec<String>,
    },
    /// Could not be checked.
    Unreachable {
        /// Why.
        reason: String,
    },
    /// Not selected.
    Skipped,
}

/// Drift between the config and the hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Per hive, by alias.
    pub hives: Vec<HiveStatusReport>,
}

impl StatusReport {
    /// 0 in sync, 2 drift, 1 when a hive could not be checked.
    pub fn exit_code(&self) -> u8 {
        if self.hives.iter().any(|h| matches!(h.state, DriftState::Unreachable { .. })) {
            1
        } else if self.hives.iter().any(|h| matches!(h.state, DriftState::Drift { .. } | DriftState::NotInstalled)) {
            2
        } else {
            0
        }
    }
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
                    format!(
                        "{} (sha256:{})",
                        i.version.as_deref().unwrap_or("unknown version"),
                        crate::state::short(&i.sha256)
                    )
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
            crate::state::short(&from.sha256),
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

/// The result of a package operation, as the CLI renders it and the queen streams it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OperationResult {
    /// A sync, install or uninstall (with its plan and, unless a dry run, its report).
    Sync(SyncOutcome),
    /// A drift report.
    Status(StatusReport),
    /// The config is valid.
    Valid {
        /// Declared hives.
        hives: Vec<String>,
    },
    /// A hive's worker processes.
    Workers {
        /// The hive.
        hive: String,
        /// Its processes.
        workers: Vec<crate::hive_api::WorkerProcess>,
    },
    /// One worker process (spawned, inspected or stopped).
    Worker {
        /// The hive.
        hive: String,
        /// The process.
        worker: Box<crate::hive_api::WorkerProcess>,
    },
    /// A hive's worker catalog (the worker types installed on it).
    Catalog {
        /// The hive.
        hive: String,
        /// Worker types.
        workers: Vec<String>,
    },
    /// A hive's models.
    Models {
        /// The hive.
        hive: String,
        /// Its models.
        models: Vec<crate::hive_api::ModelInfo>,
    },
    /// One model (downloaded, inspected or deleted).
    Model {
        /// The hive.
        hive: String,
        /// The model.
        model: crate::hive_api::ModelInfo,
    },
    /// An inference's whole answer (its tokens streamed before).
    Inferred {
        /// The hive that ran it.
        hive: String,
        /// The worker that ran it.
        worker_id: String,
        /// The generated text.
        text: String,
    },
    /// The operation could not run.
    Error {
        /// What went wrong and what to do.
        message: String,
        /// Config problems, each with file:line:column.
        #[serde(default)]
        diagnostics: Vec<crate::config::Diagnostic>,
    },
}

impl OperationResult {
    /// The documented exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            OperationResult::Sync(o) => o.exit_code(),
            OperationResult::Status(s) => s.exit_code(),
            OperationResult::Valid { .. }
            | OperationResult::Workers { .. }
            | OperationResult::Worker { .. }
            | OperationResult::Catalog { .. }
            | OperationResult::Models { .. }
            | OperationResult::Model { .. }
            | OperationResult::Inferred { .. } => 0,
            OperationResult::Error { .. } => 1,
        }
    }

    /// An [`OperationResult::Error`] without diagnostics.
    pub fn error(e: impl std::fmt::Display) -> Self {
        OperationResult::Error { message: e.to_string(), diagnostics: Vec::new() }
    }
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
