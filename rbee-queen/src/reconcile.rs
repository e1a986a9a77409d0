//! The reconciler: keeps every declared deployment served between syncs.
//!
//! ```text
//! timer (500 ms) ─┐                                  ┌─▶ hive: worker spawn (no wait) / delete / model download
//! heartbeat ──────┼─▶ views of the hives ─▶ decide() ┤
//! sync applies ───┘   + what is under way            └─▶ status (rbee deployment get, rbee status)
//! ```
//!
//! [`decide`](rbee_core::proto::deployment::decide) is pure; this file only gathers its
//! inputs, runs its actions through the hives' operation API and remembers what must survive a
//! restart (revisions, rollout, backoff) in `deployments.json` in the queen's directory, written
//! by rename. Replicas themselves are found again in the hives' heartbeats (each worker carries
//! its deployment label), so a restarted queen adopts them instead of starting them twice: it
//! decides nothing until the hives have had one heartbeat interval to report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rbee_core::locked as lock;
use std::time::Duration;

use rbee_core::execute::now_ms;
use rbee_core::package::OperationResult;
use rbee_core::proto::deployment::{
    Action, DeploymentMemory, DeploymentSpec, DeploymentStatus, HiveView, InFlight, Inputs, Phase, Reach, ReplicaLabel,
    StopReason, decide,
};
use rbee_core::proto::hive::WorkerProcess;
use rbee_core::proto::operation::Operation;
use serde::{Deserialize, Serialize};

use crate::routes::Queen;

/// How often the reconciler looks without being woken.
const TICK: Duration = Duration::from_millis(500);
/// How long a started worker counts as there before any heartbeat has shown it.
const PENDING_MS: u64 = 15_000;
/// How long a spawn or a stop may take on a hive.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped replica may take to go.
const STOP_GRACE_MS: u64 = 10_000;

/// What `deployments.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    deployments: Vec<DeploymentMemory>,
}

/// The reconciler's state, shared with the router and the HTTP handlers.
pub(crate) struct Deployments {
    /// What is remembered across restarts, by name.
    memory: Mutex<BTreeMap<String, DeploymentMemory>>,
    /// What is under way (stops, drains, downloads) and requests in flight per worker.
    in_flight: Mutex<InFlight>,
    /// Workers stopped, with when: they count as stopping until a heartbeat no longer lists
    /// them (or a while has passed), so one that a late report still shows is not acted on twice.
    stopped: Mutex<BTreeMap<(String, String), u64>>,
    /// Workers started and not yet seen in a heartbeat, by `(hive, id)`.
    pending: Mutex<BTreeMap<(String, String), (WorkerProcess, u64)>>,
    /// The last decision's statuses.
    status: Mutex<Vec<DeploymentStatus>>,
    /// Wakes the loop (a heartbeat with changed workers, an apply).
    pub(crate) wake: tokio::sync::Notify,
    /// Every action, in words, for syncs that wait on the reconciler.
    pub(crate) log: tokio::sync::broadcast::Sender<String>,
    /// Where the memory is kept.
    path: PathBuf,
    /// Replicas on a hive silent for this long are placed elsewhere.
    reschedule_after_ms: u64,
    /// Counts applies; a round records the count it started from in `decided`, so a sync knows
    /// when the statuses reflect what it applied.
    applied: std::sync::atomic::AtomicU64,
    decided: std::sync::atomic::AtomicU64,
}

/// Why the deployments file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}; move it aside to start without the deployments' history", .path.display())]
pub(crate) struct LoadError {
    path: PathBuf,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl Deployments {
    /// The reconciler's state, with what a previous queen remembered in `path`.
    pub(crate) fn open(path: PathBuf, reschedule_after: Duration) -> Result<Self, LoadError> {
        let saved: Saved = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| LoadError { path: path.clone(), source: e.into() })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(LoadError { path, source: e.into() }),
        };
        let memory = saved.deployments.into_iter().map(|d| (d.current.spec.name.clone(), d)).collect();
        Ok(Self {
            memory: Mutex::new(memory),
            in_flight: Mutex::new(InFlight::default()),
            pending: Mutex::new(BTreeMap::new()),
            stopped: Mutex::new(BTreeMap::new()),
            status: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            log: tokio::sync::broadcast::channel(1024).0,
            path,
            reschedule_after_ms: u64::try_from(reschedule_after.as_millis()).unwrap_or(u64::MAX),
            applied: Default::default(),
            decided: Default::default(),
        })
    }

    fn save(&self, memory: &BTreeMap<String, DeploymentMemory>) {
        let saved = Saved { deployments: memory.values().cloned().collect() };
        let result = serde_json::to_vec_pretty(&saved).map_err(std::io::Error::other).and_then(|bytes| {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            rbee_core::fsio::write_atomic(&self.path, &bytes, 0o600)
        });
        if let Err(e) = result {
            tracing::error!("cannot write {}: {e}", self.path.display());
        }
    }

    fn say(&self, deployment: &str, hive: Option<&str>, line: String) {
        tracing::info!(deployment, hive, "{line}");
        let _ = self.log.send(line);
    }

    /// Makes the config's deployments the desired ones: new revisions for changed specs, and
    /// deployments that are no longer declared forgotten (their replicas are then stopped).
    /// Returns what changed, in words, and the apply's generation (see [`Self::decided_since`]).
    pub(crate) fn apply(&self, specs: Vec<DeploymentSpec>) -> (Vec<String>, u64) {
        let mut memory = lock(&self.memory);
        let changes = merge(&mut memory, specs);
        self.save(&memory);
        drop(memory);
        let generation = self.applied.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        (changes, generation)
    }

    /// True once a round has decided with everything applied up to `generation`.
    pub(crate) fn decided_since(&self, generation: u64) -> bool {
        self.decided.load(Ordering::SeqCst) >= generation
    }

    /// `rbee deployment rollback`.
    pub(crate) fn rollback(&self, name: &str) -> Result<u64, String> {
        let mut memory = lock(&self.memory);
        let Some(m) = memory.get_mut(name) else { return Err(self.unknown(name, &memory)) };
        let revision = m.rollback()?;
        self.save(&memory);
        drop(memory);
        self.say(name, None, format!("{name}: rolling back: revision {revision} has the previous spec"));
        self.wake.notify_one();
        Ok(revision)
    }

    fn unknown(&self, name: &str, memory: &BTreeMap<String, DeploymentMemory>) -> String {
        let known: Vec<&str> = memory.keys().map(String::as_str).collect();
        let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
        format!("no deployment {name} (deployments: {known}); declare it in hives.conf and run `rbee sync`")
    }

    /// Every deployment's status, as last decided.
    pub(crate) fn statuses(&self) -> Vec<DeploymentStatus> {
        lock(&self.status).clone()
    }

    /// One deployment's status.
    pub(crate) fn status_of(&self, name: &str) -> Result<DeploymentStatus, String> {
        self.statuses().into_iter().find(|s| s.name == name).ok_or_else(|| self.unknown(name, &lock(&self.memory)))
    }

    /// True if a deployment by this name is declared.
    pub(crate) fn is_declared(&self, name: &str) -> bool {
        lock(&self.memory).contains_key(name)
    }

    /// A worker's requests in flight, or `None` when the router must not send it new ones
    /// (it is draining or stopping).
    pub(crate) fn load(&self, hive: &str, worker: &str) -> Option<u64> {
        let flight = lock(&self.in_flight);
        let key = (hive.to_owned(), worker.to_owned());
        if flight.draining.contains_key(&key) || flight.stopping.contains(&key) {
            return None;
        }
        Some(flight.requests.get(&key).copied().unwrap_or(0))
    }

    /// Counts a request on a worker until the guard is dropped.
    pub(crate) fn begin_request(self: &Arc<Self>, hive: &str, worker: &str) -> RequestGuard {
        let key = (hive.to_owned(), worker.to_owned());
        *lock(&self.in_flight).requests.entry(key.clone()).or_default() += 1;
        RequestGuard { deployments: self.clone(), key }
    }

    /// Requests in flight per worker, `(hive, worker id)`; workers with none are absent.
    pub(crate) fn requests_in_flight(&self) -> BTreeMap<(String, String), u64> {
        lock(&self.in_flight).requests.clone()
    }

    /// What `rbee sync --dry-run` would see the reconciler do if `specs` were applied now.
    pub(crate) fn preview(&self, queen: &Queen, specs: &[DeploymentSpec]) -> Vec<Action> {
        let mut memory = lock(&self.memory).clone();
        merge(&mut memory, specs.to_vec());
        let deployments: Vec<DeploymentMemory> = memory.into_values().collect();
        let hives = self.views(queen, &deployments);
        let flight = self.flight();
        let decision = decide(Inputs {
            deployments: &deployments,
            hives: &hives,
            in_flight: &flight,
            now_ms: now_ms(),
            reschedule_after_ms: self.reschedule_after_ms,
        });
        // A rollout finishing is bookkeeping, not a change to the fleet.
        decision.actions.into_iter().filter(|a| !matches!(a, Action::RolloutDone { .. })).collect()
    }

    /// The hives as `decide` sees them: every hive in the registry, and every hive a deployment
    /// may use that has not reported yet; workers just started and not yet reported included.
    fn views(&self, queen: &Queen, deployments: &[DeploymentMemory]) -> Vec<HiveView> {
        let now = now_ms();
        let mut views: Vec<HiveView> = queen
            .registry
            .entries(now)
            .into_iter()
            .map(|entry| {
                let beat = entry.heartbeat;
                HiveView {
                    alias: beat.alias,
                    reach: if entry.stale { Reach::Silent { ms: entry.age_ms, never: false } } else { Reach::Fresh },
                    worker_types: beat.workers,
                    gpus: beat.gpus,
                    processes: beat.processes,
                    models: beat.models.into_iter().map(|m| (m.name, m.sha256)).collect(),
                    installed: beat.installed,
                }
            })
            .collect();
        let silent_since_start = now.saturating_sub(queen.registry.started_ms());
        for alias in deployments.iter().flat_map(|d| d.current.spec.hives.iter()) {
            if !views.iter().any(|v| &v.alias == alias) {
                views.push(HiveView {
                    alias: alias.clone(),
                    reach: Reach::Silent { ms: silent_since_start, never: true },
                    worker_types: Vec::new(),
                    gpus: Vec::new(),
                    processes: Vec::new(),
                    models: BTreeMap::new(),
                    installed: BTreeMap::new(),
                });
            }
        }
        let mut stopped = lock(&self.stopped);
        stopped.retain(|(hive, id), at| {
            let listed = views.iter().any(|v| &v.alias == hive && v.processes.iter().any(|p| &p.id == id));
            listed && now.saturating_sub(*at) < PENDING_MS
        });
        drop(stopped);
        let mut pending = lock(&self.pending);
        pending.retain(|(hive, id), (process, at)| {
            let Some(view) = views.iter_mut().find(|v| &v.alias == hive) else { return false };
            if view.processes.iter().any(|p| &p.id == id) || now.saturating_sub(*at) > PENDING_MS {
                return false;
            }
            view.processes.push(process.clone());
            true
        });
        views
    }

    /// What is under way, with recently stopped workers counted as stopping.
    fn flight(&self) -> InFlight {
        let mut flight = lock(&self.in_flight).clone();
        flight.stopping.extend(lock(&self.stopped).keys().cloned());
        flight
    }

    fn with_memory<R>(&self, name: &str, f: impl FnOnce(&mut DeploymentMemory) -> R) -> Option<R> {
        let mut memory = lock(&self.memory);
        let result = memory.get_mut(name).map(f);
        if result.is_some() {
            self.save(&memory);
        }
        result
    }
}

/// Makes `specs` the desired deployments in `memory`: a new revision for each changed spec, a
/// first one for each new name, and the others forgotten. Returns what changed, in words.
fn merge(memory: &mut BTreeMap<String, DeploymentMemory>, specs: Vec<DeploymentSpec>) -> Vec<String> {
    let mut changes = Vec::new();
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    for spec in specs {
        match memory.get_mut(&spec.name) {
            Some(m) => {
                let before = m.current.number;
                if m.apply(spec) {
                    changes.push(format!(
                        "{}: revision {} replaces revision {before}",
                        m.current.spec.name, m.current.number
                    ));
                }
            }
            None => {
                changes.push(format!("{}: declared (revision 1)", spec.name));
                memory.insert(spec.name.clone(), DeploymentMemory::new(spec));
            }
        }
    }
    let gone: Vec<String> = memory.keys().filter(|n| !names.contains(n)).cloned().collect();
    for name in gone {
        memory.remove(&name);
        changes.push(format!("{name}: no longer declared; its replicas will be stopped"));
    }
    changes
}

/// Counts one request in flight on a worker while it lives.
pub(crate) struct RequestGuard {
    deployments: Arc<Deployments>,
    key: (String, String),
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut flight = lock(&self.deployments.in_flight);
        if let Some(n) = flight.requests.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                flight.requests.remove(&self.key);
            }
        }
        drop(flight);
        self.deployments.wake.notify_one();
    }
}

/// Runs the reconciler until the process ends.
pub(crate) async fn run(queen: Arc<Queen>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = queen.deployments.wake.notified() => {}
        }
        // Hives that reported to a previous queen are still finding this one: deciding now
        // would start replicas that already run.
        if queen.registry.warming_up(now_ms()) {
            continue;
        }
        tick(&queen).await;
    }
}

/// One round: decide, then act.
pub(crate) async fn tick(queen: &Arc<Queen>) {
    let deployments = &queen.deployments;
    let generation = deployments.applied.load(Ordering::SeqCst);
    let memory: Vec<DeploymentMemory> = lock(&deployments.memory).values().cloned().collect();
    // With no deployment and no replica anywhere there is nothing to decide: a large fleet's
    // heartbeats are not copied twice a second to learn it.
    if memory.is_empty() && !queen.registry.any_replica() {
        lock(&deployments.status).clear();
        deployments.decided.fetch_max(generation, Ordering::SeqCst);
        return;
    }
    let hives = deployments.views(queen, &memory);
    let flight = deployments.flight();
    let now = now_ms();
    let decision = decide(Inputs {
        deployments: &memory,
        hives: &hives,
        in_flight: &flight,
        now_ms: now,
        reschedule_after_ms: deployments.reschedule_after_ms,
    });
    // A deployment whose replicas are all ready has no failures in a row any more.
    for status in &decision.status {
        if status.phase == Phase::Ready && memory.iter().any(|m| m.current.spec.name == status.name && m.failures > 0) {
            deployments.with_memory(&status.name, |m| {
                m.failures = 0;
                m.next_attempt_ms = 0;
            });
        }
    }
    *lock(&deployments.status) = decision.status;
    for action in decision.actions {
        act(queen, &memory, &hives, action).await;
    }
    deployments.decided.fetch_max(generation, Ordering::SeqCst);
}

fn spec_of<'a>(memory: &'a [DeploymentMemory], name: &str) -> Option<&'a DeploymentMemory> {
    memory.iter().find(|m| m.current.spec.name == name)
}

async fn act(queen: &Arc<Queen>, memory: &[DeploymentMemory], hives: &[HiveView], action: Action) {
    let deployments = &queen.deployments;
    let line = action.to_string();
    queen.metrics.action(&action);
    let (d, h) = (action.deployment().to_owned(), action.hive().map(str::to_owned));
    let say = |line: String| deployments.say(&d, h.as_deref(), line);
    match action {
        Action::Start { deployment, hive, device, .. } => {
            let Some(m) = spec_of(memory, &deployment) else { return };
            let spec = &m.current.spec;
            say(line);
            let op = Operation::WorkerSpawn {
                hive_alias: hive.clone(),
                worker_type: spec.worker.clone(),
                model: spec.model_arg(),
                device,
                ready_timeout_ms: Some(spec.ready_timeout_ms),
                args: spec.args.clone(),
                replica: Some(ReplicaLabel {
                    deployment: deployment.clone(),
                    spec_hash: spec.spec_hash(),
                    // What the hive reported installed: after a sync installs another version,
                    // this replica is replaced.
                    worker_version: hives
                        .iter()
                        .find(|h| h.alias == hive)
                        .and_then(|h| h.installed.get(&spec.worker).cloned()),
                }),
                no_wait: true,
            };
            match call(queen, &hive, &op, CALL_TIMEOUT).await {
                OperationResult::Worker { worker, .. } => {
                    lock(&deployments.pending).insert((hive, worker.id.clone()), (*worker, now_ms()));
                }
                OperationResult::Error { message, .. } => {
                    say(format!("{hive}: cannot start a replica of {deployment}: {message}"));
                    deployments.with_memory(&deployment, |m| m.fail(now_ms(), message, false));
                }
                other => say(format!("{hive}: unexpected answer to a spawn: {other:?}")),
            }
        }
        Action::Clear { deployment, hive, worker_id, exit } => {
            say(line);
            deployments.with_memory(&deployment, |m| m.fail(now_ms(), exit, true));
            stop(queen, hive, worker_id, 0, None);
        }
        Action::Drain { hive, worker_id, .. } => {
            say(line);
            lock(&deployments.in_flight).draining.insert((hive, worker_id), now_ms());
        }
        Action::Stop { deployment, hive, worker_id, reason } => {
            say(line);
            let failure = (reason == StopReason::NotReady).then(|| {
                let secs = spec_of(memory, &deployment).map_or(0, |m| m.current.spec.ready_timeout_ms / 1000);
                (deployment, format!("{worker_id} on {hive} was not ready within {secs}s"))
            });
            stop(queen, hive, worker_id, STOP_GRACE_MS, failure);
        }
        Action::Download { deployment, hive, source, sha256, name } => {
            say(line);
            let key = (deployment.clone(), hive.clone());
            lock(&deployments.in_flight).downloading.insert(key.clone());
            let queen = queen.clone();
            tokio::spawn(async move {
                let op = Operation::ModelDownload { hive_alias: hive.clone(), source, sha256, name: Some(name) };
                // A model of many GiB takes its time; the hive reports progress, not this call.
                let result = call(&queen, &hive, &op, Duration::from_secs(24 * 3600)).await;
                let deployments = &queen.deployments;
                if let OperationResult::Error { message, .. } = result {
                    deployments.say(
                        &deployment,
                        Some(&hive),
                        format!("{hive}: model download for {deployment} failed: {message}"),
                    );
                    deployments.with_memory(&deployment, |m| m.fail(now_ms(), format!("download: {message}"), false));
                }
                lock(&deployments.in_flight).downloading.remove(&key);
                deployments.wake.notify_one();
            });
        }
        Action::RolloutFailed { deployment, reason } => {
            say(line);
            deployments.with_memory(&deployment, |m| m.roll_back_failed(reason));
            deployments.wake.notify_one();
        }
        Action::RolloutDone { deployment } => {
            say(line);
            deployments.with_memory(&deployment, |m| m.rollout = None);
        }
    }
}

/// Stops a worker in the background; it counts as stopping (not serving, not counted) until
/// its hive confirms. `failure` is recorded against its deployment once it is gone.
fn stop(queen: &Arc<Queen>, hive: String, worker_id: String, grace_ms: u64, failure: Option<(String, String)>) {
    let deployments = &queen.deployments;
    let key = (hive.clone(), worker_id.clone());
    if !lock(&deployments.in_flight).stopping.insert(key.clone()) {
        return;
    }
    let queen = queen.clone();
    tokio::spawn(async move {
        let op = Operation::WorkerProcessDelete {
            hive_alias: hive.clone(),
            worker_id: worker_id.clone(),
            grace_ms: Some(grace_ms),
        };
        let result = call(&queen, &hive, &op, CALL_TIMEOUT).await;
        let deployments = &queen.deployments;
        if let OperationResult::Error { message, .. } = &result {
            let deployment = failure.as_ref().map_or("", |(d, _)| d.as_str());
            deployments.say(deployment, Some(&hive), format!("{hive}: stopping {worker_id}: {message}"));
        }
        if let Some((deployment, why)) = failure {
            deployments.with_memory(&deployment, |m| m.fail(now_ms(), why, false));
        }
        lock(&deployments.stopped).insert(key.clone(), now_ms());
        let mut flight = lock(&deployments.in_flight);
        flight.stopping.remove(&key);
        flight.draining.remove(&key);
        drop(flight);
        deployments.wake.notify_one();
    });
}

/// Runs an operation on a hive (fresh or not: a stale hive may still answer a stop).
async fn call(queen: &Queen, hive: &str, op: &Operation, timeout: Duration) -> OperationResult {
    let Some(addr) = queen.registry.addr(hive) else {
        return OperationResult::error(format!("hive {hive} has not reported to this queen"));
    };
    let never = AtomicBool::new(false);
    let call = crate::forward::run_on_hive(queen, hive, addr, op, &|_| {}, &never);
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => OperationResult::error(format!("hive {hive} did not answer within {}s", timeout.as_secs())),
    }
}
