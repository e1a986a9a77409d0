//! The executor: turns a [`Plan`] into reality.
//!
//! ```text
//!            ┌──────── up to max_concurrent_installs hives at once ────────┐
//! Plan ──▶   hive: lock ─▶ observe again ─▶ re-plan ─▶ waves of the DAG ─▶ unlock ──▶ SyncReport
//!            │            (another sync may have   [bin][bin][bin] (parallel)
//!            │             changed the host)        start / restart
//!            │                                      wait healthy
//!            └── every step: deadline, retries with backoff for transient failures only
//!                events ──▶ on_event callback (CLI renders, queen streams, tests collect)
//! ```
//!
//! One hive failing never stops the others. Re-planning under the lock is what makes two
//! concurrent syncs safe: the second one finds the host already converged.

mod engine_steps;
mod events;
mod steps;
pub mod systemd;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

pub use events::{HiveOutcome, HiveReport, Overall, SyncEvent, SyncEventKind, SyncReport, now_ms};
pub use steps::{InstallFault, StepError};

use crate::artifact::{ArtifactData, ArtifactError, ArtifactSource};
use crate::config::PackageSettings;
use crate::fleet::join_all;
use crate::layout::Layout;
use crate::plan::{Action, ActionKind, Binary, Change, HiveStatus, Plan, PlanOptions, plan, plan_uninstall};
use crate::state::{Actual, Artifact, Desired, DesiredHive, HiveState, Installed};
use crate::transport::Transport;

/// Limits and knobs of an execution.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExecuteOptions {
    /// Hives worked on at once.
    pub concurrency: usize,
    /// Deadline of each remote step (and of connecting).
    pub step_timeout: Duration,
    /// How long a started hive has to answer `/health`.
    pub health_timeout: Duration,
    /// Extra attempts for a step that failed transiently.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// How long to wait for another sync's lock on a host.
    pub lock_wait: Duration,
    /// A lock older than this is taken over (its holder died).
    pub lock_stale_after: Duration,
    /// Grace between SIGTERM and SIGKILL when stopping a hive.
    pub stop_grace: Duration,
    /// Test hooks by alias: break that hive's installs on purpose.
    pub faults: BTreeMap<String, InstallFault>,
    /// The queen a started hive reports to: its address, and each hive's credential and
    /// certificate, installed on the host before the hive starts. `None` (an in-process run)
    /// leaves whatever link the host has.
    pub link: Option<crate::link::LinkSpec>,
    /// How many running hives may be restarting at once during an upgrade (rolling batches).
    /// Hives that are not running (fresh installs) are not limited.
    pub max_unavailable: MaxUnavailable,
    /// Once this many hives failed or were rolled back, hives that would be restarted are left
    /// untouched ([`HiveOutcome::Held`]). `None`: never stop.
    pub max_failed: Option<usize>,
    /// Set to stop: no new step starts; running steps end on their deadlines (locally and on
    /// the host), locks are released, and each unfinished hive reports `cancelled`.
    pub cancel: Arc<std::sync::atomic::AtomicBool>,
}

impl ExecuteOptions {
    /// Options from `[package]` in rbee.conf.
    pub fn from_settings(p: &PackageSettings) -> Self {
        Self {
            concurrency: p.max_concurrent_installs.max(1),
            step_timeout: p.ssh_timeout,
            health_timeout: p.health_check_timeout,
            max_unavailable: p.max_unavailable,
            max_failed: p.max_failed,
            ..Self::default()
        }
    }
}

impl Default for ExecuteOptions {
    fn default() -> Self {
        Self {
            concurrency: 10,
            step_timeout: Duration::from_secs(30),
            health_timeout: Duration::from_secs(60),
            retries: 2,
            backoff: Duration::from_millis(500),
            lock_wait: Duration::from_secs(120),
            lock_stale_after: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
            faults: BTreeMap::new(),
            cancel: Arc::default(),
            link: None,
            max_unavailable: MaxUnavailable::default(),
            max_failed: None,
        }
    }
}

pub use crate::config::MaxUnavailable;

pub use rbee_proto::hive::QueenLink;

/// What the execution is for; the hive is re-planned with it under its lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Make the hive match the config.
    Sync(PlanOptions),
    /// Remove what rbee installed.
    Uninstall {
        /// Also remove state.
        purge: bool,
    },
    /// Return hives to the binaries their last upgrade replaced.
    Rollback,
    /// Start (`true`) or stop the hive daemon only.
    Process {
        /// Start rather than stop.
        start: bool,
    },
}

impl Intent {
    /// The plan this intent makes of `desired` and `actual`, for the hives in `only` (all when
    /// `None`): once for the whole fleet before a run, and again for each hive under its lock.
    pub fn plan(&self, desired: &Desired, actual: &Actual, only: Option<&BTreeSet<String>>) -> Plan {
        match self {
            Intent::Sync(options) => plan(desired, actual, &PlanOptions { only: only.cloned(), ..options.clone() }),
            Intent::Uninstall { purge } => plan_uninstall(desired, actual, only, *purge),
            Intent::Process { start } => crate::plan::plan_process(desired, actual, only, *start),
            Intent::Rollback => crate::plan::plan_rollback(desired, actual, only),
        }
    }
}

/// What [`execute`] runs: a plan together with the intent that made it. The plan says which
/// hives have work (and why the others have none); under each hive's lock the intent makes
/// that hive's plan again from a fresh observation, so a plan made before another sync ran is
/// never replayed.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The intent.
    pub intent: Intent,
    /// Its plan of the fleet as observed before the run.
    pub plan: Plan,
}

impl Planned {
    /// Plans `intent` for `desired` and `actual` (the hives in `only`).
    pub fn new(intent: Intent, desired: &Desired, actual: &Actual, only: Option<&BTreeSet<String>>) -> Self {
        let plan = intent.plan(desired, actual, only);
        Self { intent, plan }
    }
}

/// Event sink.
pub type OnEvent<'a> = &'a (dyn Fn(SyncEvent) + Send + Sync);

/// Artifacts opened (verified, downloaded when from a URL) once per digest and shared by
/// every hive that installs them: a file is kept as its path, and streamed by each upload.
/// One cell per digest: hives wanting the same artifact wait for one fetch, while different
/// artifacts are fetched at the same time.
struct ArtifactCache<'a> {
    source: &'a ArtifactSource,
    bytes: std::sync::Mutex<BTreeMap<rbee_proto::Sha256, Arc<FetchCell>>>,
}

/// One artifact, opened at most once.
type FetchCell = tokio::sync::OnceCell<ArtifactData>;

impl ArtifactCache<'_> {
    async fn get(&self, artifact: &Artifact) -> Result<ArtifactData, ArtifactError> {
        let cell = self.bytes.lock().expect("artifact cache lock").entry(artifact.sha256.clone()).or_default().clone();
        cell.get_or_try_init(|| self.source.open(artifact)).await.cloned()
    }
}

/// Executes `plan`. `transports` holds a transport for each reachable hive.
pub async fn execute(
    desired: &Desired,
    planned: &Planned,
    transports: &BTreeMap<String, Arc<dyn Transport>>,
    source: &ArtifactSource,
    options: &ExecuteOptions,
    on_event: OnEvent<'_>,
) -> SyncReport {
    let cache = ArtifactCache { source, bytes: std::sync::Mutex::new(BTreeMap::new()) };
    let permits = Semaphore::new(options.concurrency.max(1));
    let restarts = planned.plan.hives.iter().filter(|hp| restarts_a_running_hive(hp)).count();
    let restart_permits = Semaphore::new(options.max_unavailable.of(restarts));
    let failures = std::sync::atomic::AtomicUsize::new(0);
    let owner = steps::lock_owner();
    let intent = &planned.intent;
    let tasks = planned.plan.hives.iter().map(|hp| {
        let (cache, permits, owner, restart_permits, failures) =
            (&cache, &permits, &owner, &restart_permits, &failures);
        async move {
            let early = match &hp.status {
                HiveStatus::Skipped => Some(HiveOutcome::Skipped),
                HiveStatus::Unreachable { reason } => Some(HiveOutcome::Unreachable { reason: reason.clone() }),
                HiveStatus::InSync => Some(HiveOutcome::Ok { changed: false }),
                HiveStatus::Changes => None,
            };
            if let Some(outcome) = early {
                return done(on_event, &hp.alias, outcome, Vec::new(), 0);
            }
            let (Some(want), Some(transport)) = (desired.hives.get(&hp.alias), transports.get(&hp.alias)) else {
                let reason = "no transport to this host".to_owned();
                return done(on_event, &hp.alias, HiveOutcome::Unreachable { reason }, Vec::new(), 0);
            };
            // A rolling batch: at most `max_unavailable` running hives are being upgraded at
            // once, and none is started after `max_failed` failures.
            let _restart_permit = if restarts_a_running_hive(hp) {
                let permit = restart_permits.acquire().await.expect("semaphore never closed");
                let failed = failures.load(Ordering::Relaxed);
                if let Some(max) = options.max_failed.filter(|max| failed >= *max) {
                    let reason = format!("{failed} hive(s) failed before its turn (max_failed = {max})");
                    return done(on_event, &hp.alias, HiveOutcome::Held { reason }, Vec::new(), 0);
                }
                Some(permit)
            } else {
                None
            };
            let _permit = permits.acquire().await.expect("semaphore never closed");
            if options.cancel.load(Ordering::Relaxed) {
                let outcome = HiveOutcome::Failed { step: format!("{}/lock", hp.alias), reason: "cancelled".into() };
                return done(on_event, &hp.alias, outcome, Vec::new(), 0);
            }
            let run = HiveRun {
                want,
                t: transport.as_ref(),
                options,
                on_event,
                cache,
                bytes: AtomicU64::new(0),
                steps_done: std::sync::Mutex::new(Vec::new()),
                owner,
                unlocked: std::sync::atomic::AtomicBool::new(false),
            };
            let outcome = run.run(intent).await;
            if outcome.is_failure() {
                failures.fetch_add(1, Ordering::Relaxed);
            }
            let steps = run.steps_done.lock().expect("steps lock").clone();
            done(on_event, &hp.alias, outcome, steps, run.bytes.load(Ordering::Relaxed))
        }
    });
    SyncReport { hives: join_all(tasks).await }
}

/// An action as its step describes it: its plan line without the change mark.
fn description(action: &Action) -> String {
    let text = action.kind.to_string();
    text.trim_start_matches(['+', '~', '-', ' ']).split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What the hive binary was before this run replaced it, when it did.
fn upgraded_hive<'p>(actions: &'p [Action], finished: &BTreeSet<String>) -> Option<&'p Installed> {
    actions.iter().find_map(|a| match &a.kind {
        ActionKind::InstallBinary { binary: Binary::Hive, change: Change::Upgrade { from }, .. }
            if finished.contains(&a.id) =>
        {
            Some(from)
        }
        _ => None,
    })
}

/// The plan restarts a hive that runs now: while it does, the hive does not serve.
fn restarts_a_running_hive(hp: &crate::plan::HivePlan) -> bool {
    hp.actions.iter().any(|a| matches!(a.kind, ActionKind::RestartHive { .. }))
}

fn done(on_event: OnEvent<'_>, alias: &str, outcome: HiveOutcome, steps_done: Vec<String>, bytes: u64) -> HiveReport {
    on_event(SyncEvent::new(alias, now_ms(), SyncEventKind::HiveDone { outcome: outcome.clone() }));
    HiveReport { alias: alias.to_owned(), outcome, steps_done, bytes_transferred: bytes }
}

struct HiveRun<'a> {
    want: &'a DesiredHive,
    t: &'a dyn Transport,
    options: &'a ExecuteOptions,
    on_event: OnEvent<'a>,
    cache: &'a ArtifactCache<'a>,
    bytes: AtomicU64,
    steps_done: std::sync::Mutex<Vec<String>>,
    /// This sync's lock owner, and whether the last step already released the lock.
    owner: &'a str,
    unlocked: std::sync::atomic::AtomicBool,
}

impl HiveRun<'_> {
    fn alias(&self) -> &str {
        &self.want.alias
    }

    async fn run(&self, intent: &Intent) -> HiveOutcome {
        let owner = self.owner;
        (self.on_event)(SyncEvent::new(self.alias(), now_ms(), SyncEventKind::HiveStarted));
        let o = self.options;
        let lock_id = format!("{}/lock", self.alias());
        // The host is looked at again once locked (another sync may have changed it), in the
        // same command that takes the lock.
        let observe = crate::observe::observe_command(self.want.hive_port, o.step_timeout).argv;
        let observed = std::sync::Mutex::new(None);
        if let Err(e) = self
            .step(&lock_id, "take the sync lock", || async {
                let out =
                    steps::lock(self.t, owner, &observe, o.lock_wait, o.lock_stale_after, o.step_timeout, &o.cancel)
                        .await?;
                *crate::locked(&observed) = Some(out);
                Ok(())
            })
            .await
        {
            return if e.is_transient() {
                HiveOutcome::Unreachable { reason: e.to_string() }
            } else {
                HiveOutcome::Failed { step: lock_id, reason: e.to_string() }
            };
        }
        // Refresh the lock while working, so that only a dead holder's lock goes stale.
        let refresher = async {
            loop {
                tokio::time::sleep(o.lock_stale_after / 4).await;
                let _ = steps::refresh_lock(self.t, owner, o.step_timeout).await;
            }
        };
        let observed = crate::locked(&observed).take().map_or_else(
            || HiveState::Unreachable { reason: "the host was not observed under the lock".into() },
            |out| crate::observe::observation(self.t, Ok(out)),
        );
        let outcome = tokio::select! {
            outcome = self.locked(intent, observed) => outcome,
            never = refresher => never,
        };
        // Best effort: a lock left behind is taken over once stale, and the next sync says so.
        if !self.unlocked.load(Ordering::Relaxed) {
            let _ = steps::unlock(self.t, owner, o.step_timeout).await;
        }
        if matches!(intent, Intent::Uninstall { purge: true }) {
            let _ = steps::remove_empty_state_dir(self.t, o.step_timeout).await;
        }
        outcome
    }

    async fn locked(&self, intent: &Intent, observed: HiveState) -> HiveOutcome {
        if let HiveState::Unreachable { reason } = &observed {
            return HiveOutcome::Unreachable { reason: reason.clone() };
        }
        let desired = Desired { hives: BTreeMap::from([(self.alias().to_owned(), self.want.clone())]) };
        let actual = Actual { hives: BTreeMap::from([(self.alias().to_owned(), observed)]) };
        let fresh = intent.plan(&desired, &actual, None);
        let Some(hp) = fresh.hives.into_iter().next() else {
            return HiveOutcome::Ok { changed: false };
        };
        if hp.actions.is_empty() {
            return HiveOutcome::Ok { changed: false };
        }
        let mut finished: BTreeSet<String> = BTreeSet::new();
        let mut pending: Vec<&Action> = hp.actions.iter().collect();
        while !pending.is_empty() {
            if self.options.cancel.load(Ordering::Relaxed) {
                return HiveOutcome::Failed { step: pending[0].id.clone(), reason: "cancelled".into() };
            }
            let (ready, rest): (Vec<&Action>, Vec<&Action>) =
                pending.into_iter().partition(|a| a.depends_on.iter().all(|d| finished.contains(d)));
            if ready.is_empty() {
                return HiveOutcome::Failed { step: rest[0].id.clone(), reason: "dependency cycle in plan".into() };
            }
            // The hive's very last step releases the lock in its own command when it succeeds.
            let last = rest.is_empty() && ready.len() == 1;
            // A wave's binaries go to the host in one command; its other actions each in theirs.
            let (installs, others): (Vec<&Action>, Vec<&Action>) =
                ready.iter().partition(|a| matches!(a.kind, ActionKind::InstallBinary { .. }));
            let (mut results, rest_results) = tokio::join!(
                self.install_binaries(&installs),
                join_all(others.iter().map(|a| async move { (*a, self.action(a, last).await) }))
            );
            results.extend(rest_results);
            for (action, result) in results {
                match result {
                    Ok(()) => {
                        finished.insert(action.id.clone());
                    }
                    Err(e) => {
                        let starting = matches!(
                            action.kind,
                            ActionKind::StartHive { .. }
                                | ActionKind::RestartHive { .. }
                                | ActionKind::WaitHealthy { .. }
                        );
                        if let (true, Some(from)) = (starting, upgraded_hive(&hp.actions, &finished)) {
                            return self.roll_back(&hp.actions, &finished, from, &action.id, &e).await;
                        }
                        return HiveOutcome::Failed { step: action.id.clone(), reason: e.to_string() };
                    }
                }
            }
            pending = rest;
        }
        HiveOutcome::Ok { changed: true }
    }

    /// An upgraded hive did not start or become healthy: put back the binaries this run
    /// replaced (kept on the host by the install), restart the old hive and wait for it.
    async fn roll_back(
        &self,
        actions: &[Action],
        finished: &BTreeSet<String>,
        from: &Installed,
        failed: &str,
        error: &StepError,
    ) -> HiveOutcome {
        let port = self.want.hive_port;
        let mut targets = vec![Layout::hive_binary()];
        for a in actions.iter().filter(|a| finished.contains(&a.id)) {
            if let ActionKind::InstallBinary { binary: Binary::Worker(kind), change: Change::Upgrade { .. }, .. } =
                &a.kind
            {
                targets.push(Layout::worker_binary(kind));
            }
        }
        let version = from.version.clone().unwrap_or_else(|| format!("sha256:{}", from.sha256.short()));
        let id = format!("{}/rollback", self.alias());
        let rolled = self
            .step(&id, &format!("roll back to rbee-hive {version}"), || {
                self.restore_and_restart(&targets, port, &from.sha256)
            })
            .await;
        let new = &self.want.hive.version;
        match rolled {
            Ok(()) => HiveOutcome::RolledBack {
                step: failed.to_owned(),
                reason: format!(
                    "rbee-hive {new} did not start or answer /health: {error}. Rolled back: pin a version in hives.conf or fix the release (the next sync tries {new} again)"
                ),
                version,
            },
            Err(e) => HiveOutcome::Failed {
                step: id,
                reason: format!("rbee-hive {new} failed ({error}) and rolling back to {version} failed too: {e}"),
            },
        }
    }

    /// Puts back the kept previous binaries `targets`, restarts the hive on them and waits
    /// until it answers `/health` with `want`: an automatic rollback and `rbee rollback` alike.
    async fn restore_and_restart(
        &self,
        targets: &[String],
        port: u16,
        want: &rbee_proto::Sha256,
    ) -> Result<(), StepError> {
        let o = self.options;
        steps::restore_previous(self.t, targets, o.step_timeout).await?;
        steps::stop_hive(self.t, o.stop_grace, o.step_timeout).await?;
        steps::start_hive(self.t, port, self.alias(), None, o.step_timeout).await?;
        steps::wait_healthy(self.t, port, want, o.health_timeout, None).await.map(drop)
    }

    /// Runs one step with events and retries for transient failures.
    async fn step<F, Fut>(&self, id: &str, description: &str, mut f: F) -> Result<(), StepError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), StepError>>,
    {
        let once = || {
            let work = f();
            async move { work.await.map_err(|e| (0, e)) }
        };
        self.steps(&[(id, description)], once).await.map_err(|(_, e)| e)
    }

    /// Runs steps that are done together (by one command) with the events of each, and retries
    /// for transient failures: `f` fails with the place of the step that failed, and each other
    /// step is reported failed with it.
    async fn steps<F, Fut>(&self, steps: &[(&str, &str)], mut f: F) -> Result<(), (usize, StepError)>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), (usize, StepError)>>,
    {
        let alias = self.alias().to_owned();
        let emit = |kind| (self.on_event)(SyncEvent::new(&alias, now_ms(), kind));
        for (id, description) in steps {
            emit(SyncEventKind::StepStarted { step: (*id).to_owned(), description: (*description).to_owned() });
        }
        let started = Instant::now();
        let mut backoff = self.options.backoff;
        let mut attempt = 0;
        loop {
            match f().await {
                Ok(()) => {
                    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    for (id, _) in steps {
                        emit(SyncEventKind::StepFinished { step: (*id).to_owned(), elapsed_ms });
                        self.steps_done.lock().expect("steps lock").push((*id).to_owned());
                    }
                    return Ok(());
                }
                Err((failed, e)) => {
                    let will_retry = e.is_transient() && attempt < self.options.retries;
                    for (i, (id, _)) in steps.iter().enumerate() {
                        let error = if i == failed {
                            e.to_string()
                        } else {
                            format!("done together with {}, which failed: {e}", steps[failed.min(steps.len() - 1)].0)
                        };
                        emit(SyncEventKind::StepFailed { step: (*id).to_owned(), error, will_retry });
                    }
                    if !will_retry {
                        return Err((failed, e));
                    }
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    }

    /// The binaries of one wave, installed by one command (one stream of all their bytes):
    /// each keeps its own step, events and progress. The result of each action, the failed one
    /// first (the others did not happen without it).
    async fn install_binaries<'p>(&self, actions: &[&'p Action]) -> Vec<(&'p Action, Result<(), StepError>)> {
        if actions.is_empty() {
            return Vec::new();
        }
        let o = self.options;
        // The failed action first, then the others, which were not installed without it.
        let failed_first = |failed: &'p Action, e: StepError| {
            let mut results = vec![(failed, Err(e))];
            for a in actions.iter().filter(|a| a.id != failed.id) {
                results.push((*a, Err(StepError::Failed(format!("not installed: {} failed", failed.id)))));
            }
            results
        };
        let mut files = Vec::new();
        for a in actions {
            let ActionKind::InstallBinary { binary, artifact, .. } = &a.kind else { continue };
            match self.cache.get(artifact).await {
                Ok(data) => files.push((artifact, data, binary.path())),
                Err(e) => return failed_first(a, StepError::Failed(e.to_string())),
            }
        }
        let installs: Vec<steps::BinaryInstall<'_>> = files
            .iter()
            .map(|(artifact, data, target)| steps::BinaryInstall { artifact, data: data.upload_data(), target })
            .collect();
        let sizes: Vec<u64> = installs.iter().map(|f| f.data.len()).collect();
        let total: u64 = sizes.iter().sum();
        // Allow for slow links: the deadline grows with the size (1 MiB/s floor).
        let deadline = o.step_timeout + Duration::from_secs(total >> 20);
        let fault = o.faults.get(self.alias()).copied();
        let descriptions: Vec<String> = actions.iter().map(|a| description(a)).collect();
        let steps: Vec<(&str, &str)> =
            actions.iter().zip(&descriptions).map(|(a, d)| (a.id.as_str(), d.as_str())).collect();
        // The stream's bytes so far, told as each file's own progress.
        let sent_before = AtomicU64::new(0);
        let progress = |sent: u64| {
            let prev = sent_before.swap(sent, Ordering::Relaxed);
            self.bytes.fetch_add(sent.saturating_sub(prev), Ordering::Relaxed);
            let mut start = 0;
            for (a, len) in actions.iter().zip(&sizes) {
                let end = start + len;
                // Each file whose bytes this report moved: the one being sent, and any finished since.
                if sent > start && prev < end {
                    self.progress(&a.id, sent.min(end) - start, *len);
                }
                start = end;
            }
        };
        let outcome = self
            .steps(&steps, || {
                sent_before.store(0, Ordering::Relaxed);
                let installs = &installs;
                let progress = &progress;
                async move {
                    steps::install_binaries(self.t, installs, deadline, progress, fault)
                        .await
                        .map_err(|f| (f.index, f.error))
                }
            })
            .await;
        match outcome {
            Ok(()) => actions.iter().map(|a| (*a, Ok(()))).collect(),
            Err((failed, e)) => failed_first(actions[failed.min(actions.len() - 1)], e),
        }
    }

    /// Reports `sent` of `total` bytes of step `id`.
    fn progress(&self, id: &str, sent: u64, total: u64) {
        let kind = SyncEventKind::Progress { step: id.to_owned(), bytes: sent, total };
        (self.on_event)(SyncEvent::new(self.alias(), now_ms(), kind));
    }

    /// Runs `action`; `last`: nothing runs after it on this hive.
    async fn action(&self, action: &Action, last: bool) -> Result<(), StepError> {
        let o = self.options;
        let description = description(action);
        match &action.kind {
            ActionKind::InstallBinary { .. } => {
                let mut results = self.install_binaries(&[action]).await;
                results.pop().map_or(Ok(()), |(_, result)| result)
            }
            ActionKind::InstallEngine { worker, engine, .. } => {
                let mut files = Vec::new();
                for artifact in engine_steps::engine_artifacts(engine) {
                    files.push(self.cache.get(artifact).await.map_err(|e| StepError::Failed(e.to_string()))?);
                }
                let total: u64 = files.iter().map(ArtifactData::len).sum();
                let deadline = o.step_timeout + Duration::from_secs(total >> 20);
                let progress = |sent: u64| self.progress(&action.id, sent, total);
                self.step(&action.id, &description, || async {
                    let data: Vec<_> = files.iter().map(ArtifactData::upload_data).collect();
                    engine_steps::install_engine(self.t, worker, engine, &data, deadline, &progress).await?;
                    self.bytes.fetch_add(total, Ordering::Relaxed);
                    Ok(())
                })
                .await
            }
            ActionKind::RemoveWorker { worker, .. } => {
                let target = Layout::worker_binary(worker);
                self.step(&action.id, &description, || steps::remove_file(self.t, &target, o.step_timeout)).await
            }
            ActionKind::Rollback { binaries, to, port } => {
                let targets: Vec<String> = binaries
                    .iter()
                    .map(|name| match name.strip_prefix(crate::layout::WORKER_PREFIX) {
                        Some(kind) => Layout::worker_binary(kind),
                        None => Layout::hive_binary(),
                    })
                    .collect();
                self.step(&action.id, &description, || self.restore_and_restart(&targets, *port, &to.sha256)).await
            }
            // The link to the queen is written by the command that starts the hive.
            ActionKind::StartHive { port } => {
                self.step(&action.id, &description, || async {
                    let link = steps::link_payload(o.link.as_ref(), self.alias())?;
                    steps::start_hive(self.t, *port, self.alias(), link.as_ref(), o.step_timeout).await
                })
                .await
            }
            ActionKind::RestartHive { port, .. } => {
                self.step(&action.id, &description, || async {
                    let link = steps::link_payload(o.link.as_ref(), self.alias())?;
                    steps::stop_hive(self.t, o.stop_grace, o.step_timeout).await?;
                    steps::start_hive(self.t, *port, self.alias(), link.as_ref(), o.step_timeout).await
                })
                .await
            }
            ActionKind::StopHive => {
                self.step(&action.id, &description, || steps::stop_hive(self.t, o.stop_grace, o.step_timeout)).await
            }
            ActionKind::WaitHealthy { port } => {
                let release = last.then_some(self.owner);
                self.step(&action.id, &description, || async move {
                    let released =
                        steps::wait_healthy(self.t, *port, &self.want.hive.sha256, o.health_timeout, release).await?;
                    if released == steps::Released::Lock {
                        self.unlocked.store(true, Ordering::Relaxed);
                    }
                    Ok(())
                })
                .await
            }
            ActionKind::Uninstall { purge } => {
                self.step(&action.id, &description, || steps::uninstall(self.t, *purge, o.stop_grace, o.step_timeout))
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests;
