//! Deployments: models the fleet keeps serving. A [`DeploymentSpec`] is what `[[deployment]]`
//! in hives.conf declares; [`decide`] is the one pure function that turns the specs, what the
//! hives report and what the queen remembers into [`Action`]s and [`DeploymentStatus`]es.
//! `rbee sync --dry-run` shows its actions as the plan's deployment steps; the queen's
//! reconciler runs them, on a timer and whenever a hive reports a change.
//!
//! Replicas are not remembered by the queen: each worker process carries its
//! [`ReplicaLabel`] (deployment and spec hash) in the hive's registry, so a restarted queen finds
//! them in the first heartbeats. What the queen keeps ([`DeploymentMemory`]: revisions, rollout,
//! backoff) is small and goes to one file.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::Sha256;
use crate::hive::{Gpu, WorkerProcess, WorkerState};

/// How long a new replica may take to become ready by default (engines load big models slowly).
pub const DEFAULT_READY_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// How long a replaced replica may finish its in-flight requests by default.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 30 * 1000;
/// How long a hive may be silent before its replicas are placed elsewhere, by default.
pub const DEFAULT_RESCHEDULE_AFTER_MS: u64 = 60 * 1000;
/// The first restart delay after a failure; it doubles with each consecutive failure.
pub const BACKOFF_FIRST_MS: u64 = 1000;
/// The longest restart delay.
pub const BACKOFF_CAP_MS: u64 = 5 * 60 * 1000;
/// Consecutive failures after which a deployment is in `crash-loop` (and a rollout stops).
pub const CRASH_LOOP_FAILURES: u32 = 3;

/// The restart delay after `failures` consecutive failures: 1 s, 2 s, 4 s, … up to 5 min.
pub fn backoff_ms(failures: u32) -> u64 {
    if failures == 0 {
        return 0;
    }
    BACKOFF_FIRST_MS.saturating_mul(1u64 << (failures - 1).min(20)).min(BACKOFF_CAP_MS)
}

/// Where a deployment's replicas run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Device {
    /// On CPU.
    Cpu,
    /// On any free GPU.
    AnyCuda,
    /// On this GPU.
    Cuda(u32),
}

impl Device {
    /// `cpu`, `cuda` or `cuda:N`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cpu" => Some(Device::Cpu),
            "cuda" => Some(Device::AnyCuda),
            _ => text.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Device::Cuda),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::AnyCuda => f.write_str("cuda"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Device::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not cpu, cuda or cuda:N")))
    }
}

impl schemars::JsonSchema for Device {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Device".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": "^(cpu|cuda|cuda:[0-9]+)$"})
    }
}

/// A declared deployment, as the config resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeploymentSpec {
    /// Its name: the `model` clients send.
    pub name: String,
    /// An `http(s)://` URL, or an absolute path on the hive host.
    pub model: String,
    /// The model's digest (required for a URL).
    pub sha256: Option<Sha256>,
    /// The worker type.
    pub worker: String,
    /// How many replicas serve it.
    pub replicas: u32,
    /// The hives it may use, in config order (the config resolves "every hive with that worker
    /// type" into this list).
    pub hives: Vec<String>,
    /// Where each replica runs.
    pub device: Device,
    /// A GPU must have this much memory free.
    pub gpu_memory_mib: Option<u64>,
    /// Replicas may share a GPU (with each other and with other deployments).
    pub share_gpu: bool,
    /// Arguments for the engine (argv, never a shell).
    pub args: Vec<String>,
    /// A new replica that is not ready within this long has failed.
    pub ready_timeout_ms: u64,
    /// A replaced replica may finish its in-flight requests for this long.
    pub drain_timeout_ms: u64,
}

impl DeploymentSpec {
    /// The checks a spec that did not come through the config loader must pass: a name with
    /// the alias rules, a model that is a URL with a digest or an absolute path, at least one
    /// replica and one hive, and engine arguments without control characters.
    pub fn check(&self) -> Result<(), String> {
        let name_ok = self.name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && self.name.len() <= 64
            && self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !name_ok {
            return Err("the name must match [a-z0-9][a-z0-9._-]* (at most 64 characters)".into());
        }
        if self.is_url() && self.sha256.is_none() {
            return Err("a model URL needs its sha256".into());
        }
        if !self.is_url() && !self.model.starts_with('/') {
            return Err("the model must be an http(s) URL or an absolute path".into());
        }
        if self.replicas == 0 || self.hives.is_empty() || self.worker.is_empty() {
            return Err("it needs a worker type, at least one replica and at least one hive".into());
        }
        let text = [&self.model, &self.worker].into_iter().chain(self.hives.iter()).chain(self.args.iter());
        if text.into_iter().any(|t| t.chars().any(char::is_control)) {
            return Err("no value may contain a control character".into());
        }
        Ok(())
    }

    /// True when the model is downloaded from a URL.
    pub fn is_url(&self) -> bool {
        self.model.starts_with("http://") || self.model.starts_with("https://")
    }

    /// A digest of everything that needs a new replica when it changes (model, digest, worker
    /// type, device, GPU needs, engine arguments), as 16 hex digits. Replica count, hives and
    /// timeouts are not in it: changing them moves or adds replicas without replacing them.
    pub fn spec_hash(&self) -> String {
        let canonical = serde_json::json!([
            self.model,
            self.sha256,
            self.worker,
            self.device,
            self.gpu_memory_mib,
            self.share_gpu,
            self.args,
        ]);
        // FNV-1a: stable across builds and platforms; this names a spec, it guards nothing.
        let hash = canonical
            .to_string()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        format!("{hash:016x}")
    }

    /// The file the model becomes in a hive's models directory, when rbee fetches it (a URL, or a
    /// host path with a digest to check): `None` for a host path used where it is.
    pub fn model_file(&self) -> Option<String> {
        if !self.is_url() && self.sha256.is_none() {
            return None;
        }
        let path = self.model.split(['?', '#']).next().unwrap_or_default();
        let last = path.rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or("model");
        Some(last.to_owned())
    }

    /// What the worker is given as its model: the models-directory file, or the host path.
    pub fn model_arg(&self) -> String {
        self.model_file().unwrap_or_else(|| self.model.clone())
    }
}

/// What a worker process started for a deployment carries, so anyone reading a hive's workers
/// knows which replica it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReplicaLabel {
    /// The deployment.
    pub deployment: String,
    /// The [`DeploymentSpec::spec_hash`] it was started from.
    pub spec_hash: String,
    /// The version of the worker type installed on its hive when it started: after a sync
    /// installs another version, the replica is replaced like one of an older revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_version: Option<String>,
}

/// One revision of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Revision {
    /// Counts from 1.
    pub number: u64,
    /// The spec.
    pub spec: DeploymentSpec,
}

/// A rollout in progress: replicas of `from` are being replaced by the current revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Rollout {
    /// The revision being replaced.
    pub from: u64,
}

/// What the queen remembers of a deployment (on disk, so a restart keeps it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeploymentMemory {
    /// The revision the reconciler makes true.
    pub current: Revision,
    /// Earlier revisions, newest last (a few).
    #[serde(default)]
    pub history: Vec<Revision>,
    /// A rollout in progress.
    #[serde(default)]
    pub rollout: Option<Rollout>,
    /// Why the last rollout failed (cleared by the next apply).
    #[serde(default)]
    pub rollout_failed: Option<String>,
    /// Failures since a replica last became ready.
    #[serde(default)]
    pub failures: u32,
    /// Replicas restarted after a failure, in all.
    #[serde(default)]
    pub restarts: u64,
    /// No replica is started before this time (ms since the epoch).
    #[serde(default)]
    pub next_attempt_ms: u64,
    /// The last failure, in words (exit status and the end of the log).
    #[serde(default)]
    pub last_failure: Option<String>,
}

impl DeploymentMemory {
    /// A first revision.
    pub fn new(spec: DeploymentSpec) -> Self {
        Self {
            current: Revision { number: 1, spec },
            history: Vec::new(),
            rollout: None,
            rollout_failed: None,
            failures: 0,
            restarts: 0,
            next_attempt_ms: 0,
            last_failure: None,
        }
    }

    /// Makes `spec` the current revision when it differs from it (a new revision, a rollout
    /// when replicas of the old one exist); a spec with the same hash only updates the count,
    /// hives and timeouts. Returns true when a new revision was made.
    pub fn apply(&mut self, spec: DeploymentSpec) -> bool {
        self.rollout_failed = None;
        if spec.spec_hash() == self.current.spec.spec_hash() {
            self.current.spec = spec;
            return false;
        }
        let number = self.history.iter().chain([&self.current]).map(|r| r.number).max().unwrap_or(0) + 1;
        let old = std::mem::replace(&mut self.current, Revision { number, spec });
        self.rollout = Some(Rollout { from: old.number });
        self.history.push(old);
        if self.history.len() > 10 {
            self.history.remove(0);
        }
        self.failures = 0;
        self.next_attempt_ms = 0;
        true
    }

    /// The revision with this spec hash, if it is the current one or in the history.
    pub fn revision_of(&self, spec_hash: &str) -> Option<u64> {
        self.history.iter().chain([&self.current]).rev().find(|r| r.spec.spec_hash() == spec_hash).map(|r| r.number)
    }

    /// Records a failed replica: one more failure, the next start delayed by the backoff.
    pub fn fail(&mut self, now_ms: u64, why: String, restarted: bool) {
        self.failures = self.failures.saturating_add(1);
        if restarted {
            self.restarts = self.restarts.saturating_add(1);
        }
        self.next_attempt_ms = now_ms.saturating_add(backoff_ms(self.failures));
        self.last_failure = Some(why);
    }

    /// Ends a failed rollout: the previous revision is current again, and its replicas go on
    /// serving.
    pub fn roll_back_failed(&mut self, why: String) {
        let Some(rollout) = self.rollout.take() else { return };
        if let Some(pos) = self.history.iter().position(|r| r.number == rollout.from) {
            let previous = self.history.remove(pos);
            let failed = std::mem::replace(&mut self.current, previous);
            self.history.push(failed);
        }
        self.rollout_failed = Some(why);
        self.failures = 0;
        self.next_attempt_ms = 0;
    }

    /// `rbee deployment rollback`: the previous revision's spec becomes a new revision.
    pub fn rollback(&mut self) -> Result<u64, String> {
        let previous = self
            .history
            .iter()
            .rev()
            .find(|r| r.spec.spec_hash() != self.current.spec.spec_hash())
            .ok_or_else(|| format!("deployment {} has no earlier revision", self.current.spec.name))?;
        let mut spec = previous.spec.clone();
        // The count, hives and timeouts stay as they are now.
        spec.replicas = self.current.spec.replicas;
        spec.hives = self.current.spec.hives.clone();
        self.apply(spec);
        Ok(self.current.number)
    }
}

/// How recently a hive was heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Its heartbeats arrive.
    Fresh,
    /// Silent for this long (stale, or never heard by this queen).
    Silent {
        /// Milliseconds.
        ms: u64,
        /// True if this queen never heard it.
        never: bool,
    },
}

/// A hive as the reconciler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HiveView {
    /// Its alias.
    pub alias: String,
    /// How fresh its report is.
    pub reach: Reach,
    /// Worker types installed.
    pub worker_types: Vec<String>,
    /// Its GPUs.
    pub gpus: Vec<Gpu>,
    /// Its worker processes.
    pub processes: Vec<WorkerProcess>,
    /// Model files present, by name, with their digest when known.
    pub models: BTreeMap<String, Option<Sha256>>,
    /// The installed version of each worker type.
    pub installed: BTreeMap<String, String>,
}

/// What the reconciler is doing besides what the hives report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InFlight {
    /// Workers being stopped, `(hive, worker id)`.
    pub stopping: BTreeSet<(String, String)>,
    /// Workers draining (no new requests), with when draining began.
    pub draining: BTreeMap<(String, String), u64>,
    /// Models being downloaded, `(deployment, hive)`.
    pub downloading: BTreeSet<(String, String)>,
    /// Requests in flight per worker, `(hive, worker id)`.
    pub requests: BTreeMap<(String, String), u64>,
}

/// Why a replica is stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// More replicas than declared.
    Surplus,
    /// Replaced by a replica of the current revision.
    Replaced,
    /// Its deployment is no longer declared.
    Undeclared,
    /// It did not become ready in time.
    NotReady,
}

/// One thing the reconciler does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Fetch the deployment's model onto a hive (verified against its digest).
    Download {
        /// The deployment.
        deployment: String,
        /// The hive.
        hive: String,
        /// URL or host path.
        source: String,
        /// Its digest.
        sha256: Option<Sha256>,
        /// The file name in the models directory.
        name: String,
    },
    /// Start a replica.
    Start {
        /// The deployment.
        deployment: String,
        /// The hive.
        hive: String,
        /// `cpu` or `cuda:N`.
        device: String,
        /// The revision.
        revision: u64,
    },
    /// A replica exited on its own: record why, clear it from its hive, restart later.
    Clear {
        /// The deployment.
        deployment: String,
        /// The hive.
        hive: String,
        /// The worker.
        worker_id: String,
        /// Its exit, in words.
        exit: String,
    },
    /// Stop routing new requests to a replica (it is being replaced).
    Drain {
        /// The deployment.
        deployment: String,
        /// The hive.
        hive: String,
        /// The worker.
        worker_id: String,
    },
    /// Stop a replica.
    Stop {
        /// The deployment.
        deployment: String,
        /// The hive.
        hive: String,
        /// The worker.
        worker_id: String,
        /// Why.
        reason: StopReason,
    },
    /// The rollout failed: go back to the previous revision.
    RolloutFailed {
        /// The deployment.
        deployment: String,
        /// Why.
        reason: String,
    },
    /// Every replica runs the current revision.
    RolloutDone {
        /// The deployment.
        deployment: String,
    },
}

impl Action {
    /// The deployment it is about.
    pub fn deployment(&self) -> &str {
        match self {
            Action::Download { deployment, .. }
            | Action::Start { deployment, .. }
            | Action::Clear { deployment, .. }
            | Action::Drain { deployment, .. }
            | Action::Stop { deployment, .. }
            | Action::RolloutFailed { deployment, .. }
            | Action::RolloutDone { deployment } => deployment,
        }
    }

    /// The hive it acts on (none for a rollout's end).
    pub fn hive(&self) -> Option<&str> {
        match self {
            Action::Download { hive, .. }
            | Action::Start { hive, .. }
            | Action::Clear { hive, .. }
            | Action::Drain { hive, .. }
            | Action::Stop { hive, .. } => Some(hive),
            Action::RolloutFailed { .. } | Action::RolloutDone { .. } => None,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Download { deployment, hive, source, sha256, name } => {
                write!(f, "{hive}: download model {name} for {deployment} from {source}")?;
                match sha256 {
                    Some(d) => write!(f, " (sha256:{})", d.short()),
                    None => Ok(()),
                }
            }
            Action::Start { deployment, hive, device, revision } => {
                write!(f, "{hive}: start a replica of {deployment} (revision {revision}, {device})")
            }
            Action::Clear { deployment, hive, worker_id, exit } => {
                let first = exit.lines().next().unwrap_or_default();
                write!(f, "{hive}: replica {worker_id} of {deployment} {first}; it will be restarted")
            }
            Action::Drain { deployment, hive, worker_id } => {
                write!(f, "{hive}: drain replica {worker_id} of {deployment} (replaced)")
            }
            Action::Stop { deployment, hive, worker_id, reason } => {
                let why = match reason {
                    StopReason::Surplus => "surplus",
                    StopReason::Replaced => "replaced",
                    StopReason::Undeclared => "no longer declared",
                    StopReason::NotReady => "not ready in time",
                };
                write!(f, "{hive}: stop replica {worker_id} of {deployment} ({why})")
            }
            Action::RolloutFailed { deployment, reason } => write!(f, "{deployment}: rollout failed: {reason}"),
            Action::RolloutDone { deployment } => write!(f, "{deployment}: rollout done"),
        }
    }
}

/// Why a hive cannot take a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Rejection {
    /// The hive.
    pub hive: String,
    /// Why, in words.
    pub reason: String,
}

/// A replica as `rbee deployment get` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReplicaStatus {
    /// The hive.
    pub hive: String,
    /// The worker.
    pub worker_id: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// `starting`, `ready`, `unresponsive`, `crashed`, `draining`, `stopping`, `lost`.
    pub state: String,
    /// Its revision (0 when unknown).
    pub revision: u64,
    /// Requests in flight.
    pub in_flight: u64,
}

/// The phase of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Every declared replica is ready on the current revision.
    Ready,
    /// Replicas are starting or being replaced.
    Progressing,
    /// Fewer ready replicas than declared, and none can be placed or started now.
    Degraded,
    /// Replicas keep failing; restarts are delayed more each time.
    CrashLoop,
    /// The last rollout failed; the previous revision serves.
    RolloutFailed,
}

impl Phase {
    /// Its name, as in JSON: `ready`, `progressing`, `degraded`, `crash-loop`, `rollout-failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Ready => "ready",
            Phase::Progressing => "progressing",
            Phase::Degraded => "degraded",
            Phase::CrashLoop => "crash-loop",
            Phase::RolloutFailed => "rollout-failed",
        }
    }
}

/// A deployment's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeploymentStatus {
    /// The deployment.
    pub name: String,
    /// Worker type.
    pub worker: String,
    /// The model.
    pub model: String,
    /// The current revision.
    pub revision: u64,
    /// Declared replicas.
    pub replicas: u32,
    /// Ready replicas (of any revision) that take requests.
    pub ready: u32,
    /// Its phase.
    pub phase: Phase,
    /// What is happening, in words.
    pub message: String,
    /// Restarts after failures.
    pub restarts: u64,
    /// The last failure.
    pub last_failure: Option<String>,
    /// The replicas.
    pub instances: Vec<ReplicaStatus>,
    /// Hives that may take a replica now.
    pub eligible: Vec<String>,
    /// Hives that may not, and why.
    pub rejected: Vec<Rejection>,
}

impl DeploymentStatus {
    /// True when every declared replica is ready on the current revision.
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The deployments and what the queen remembers of each.
    pub deployments: &'a [DeploymentMemory],
    /// Every hive a deployment may use or a replica runs on.
    pub hives: &'a [HiveView],
    /// What the reconciler is doing.
    pub in_flight: &'a InFlight,
    /// Now, in ms since the epoch.
    pub now_ms: u64,
    /// Replicas on a hive silent for this long are placed elsewhere.
    pub reschedule_after_ms: u64,
}

/// What [`decide`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What to do now, in order.
    pub actions: Vec<Action>,
    /// Each deployment's status, in the order given.
    pub status: Vec<DeploymentStatus>,
}

/// One replica found on a hive.
#[derive(Debug, Clone)]
struct Found<'a> {
    hive: &'a HiveView,
    process: &'a WorkerProcess,
    label: &'a ReplicaLabel,
}

impl Found<'_> {
    fn key(&self) -> (String, String) {
        (self.hive.alias.clone(), self.process.id.clone())
    }

    fn fresh(&self) -> bool {
        self.hive.reach == Reach::Fresh
    }

    /// Stop this replica.
    fn stop(&self, reason: StopReason) -> Action {
        Action::Stop {
            deployment: self.label.deployment.clone(),
            hive: self.hive.alias.clone(),
            worker_id: self.process.id.clone(),
            reason,
        }
    }

    /// Stop routing new requests to this replica.
    fn drain(&self) -> Action {
        Action::Drain {
            deployment: self.label.deployment.clone(),
            hive: self.hive.alias.clone(),
            worker_id: self.process.id.clone(),
        }
    }
}

/// A replica about to start, for placement.
#[derive(Debug, Clone)]
struct Seat {
    hive: String,
    device: String,
    deployment: String,
    share_gpu: bool,
}

fn seconds(ms: u64) -> String {
    format!("{:.0}s", ms as f64 / 1000.0)
}

/// Where a new replica of `spec` goes: the eligible hive with the fewest replicas of it, then
/// with the fewest replicas in all, then first in config order; on the lowest free GPU for
/// `cuda`. Also returns every hive's verdict.
fn place(
    spec: &DeploymentSpec,
    hives: &[HiveView],
    seats: &[Seat],
) -> (Option<(String, String)>, Vec<String>, Vec<Rejection>) {
    let mut eligible = Vec::new();
    let mut rejected = Vec::new();
    let mut best: Option<((usize, usize, usize), String, String)> = None;
    for (order, alias) in spec.hives.iter().enumerate() {
        let reject = |reason: String| Rejection { hive: alias.clone(), reason };
        let Some(hive) = hives.iter().find(|h| &h.alias == alias) else {
            rejected.push(reject("has not reported to this queen".into()));
            continue;
        };
        if let Reach::Silent { ms, never } = hive.reach {
            let why = if never {
                format!("has not reported to this queen ({} since it started)", seconds(ms))
            } else {
                format!("stale: last heartbeat {} ago", seconds(ms))
            };
            rejected.push(reject(why));
            continue;
        }
        if !hive.worker_types.contains(&spec.worker) {
            rejected.push(reject(format!("worker type {} is not installed", spec.worker)));
            continue;
        }
        let device = match spec.device {
            Device::Cpu => Ok("cpu".to_owned()),
            Device::AnyCuda | Device::Cuda(_) => pick_gpu(spec, hive, seats),
        };
        let device = match device {
            Ok(d) => d,
            Err(why) => {
                rejected.push(reject(why));
                continue;
            }
        };
        eligible.push(alias.clone());
        // Fewest replicas of this deployment first (spread it), then the least busy hive
        // (spread the fleet), then config order.
        let mine = seats.iter().filter(|s| s.hive == *alias && s.deployment == spec.name).count();
        let busy = seats.iter().filter(|s| s.hive == *alias).count();
        let candidate = ((mine, busy, order), alias.clone(), device);
        if best.as_ref().is_none_or(|b| candidate.0 < b.0) {
            best = Some(candidate);
        }
    }
    (best.map(|(_, hive, device)| (hive, device)), eligible, rejected)
}

fn pick_gpu(spec: &DeploymentSpec, hive: &HiveView, seats: &[Seat]) -> Result<String, String> {
    if hive.gpus.is_empty() {
        return Err("has no GPU".into());
    }
    let wanted: Vec<&Gpu> = match spec.device {
        Device::Cuda(n) => {
            let Some(gpu) = hive.gpus.iter().find(|g| g.index == n) else {
                return Err(format!("has no GPU cuda:{n}"));
            };
            vec![gpu]
        }
        _ => hive.gpus.iter().collect(),
    };
    let mut short_of_memory = None;
    for gpu in wanted {
        let device = format!("cuda:{}", gpu.index);
        let taken =
            seats.iter().any(|s| s.hive == hive.alias && s.device == device && !(spec.share_gpu && s.share_gpu));
        if taken {
            continue;
        }
        let free = gpu.memory_total_mib.saturating_sub(gpu.memory_used_mib);
        if let Some(need) = spec.gpu_memory_mib
            && free < need
        {
            short_of_memory = Some(format!("no GPU has {need} MiB free ({device} has {free} MiB)"));
            continue;
        }
        return Ok(device);
    }
    Err(short_of_memory.unwrap_or_else(|| "no GPU free (each runs a replica; set share_gpu = true to share)".into()))
}

/// The one reconciling function: from the deployments, the hives' reports and what is under way,
/// what to do now and where each deployment stands. Pure and deterministic (same inputs, same
/// answer): hives in config order, replicas by hive then id.
pub fn decide(inputs: Inputs<'_>) -> Decision {
    let Inputs { deployments, hives, in_flight, now_ms, reschedule_after_ms } = inputs;
    let mut actions = Vec::new();
    let mut status = Vec::new();
    let declared: BTreeSet<&str> = deployments.iter().map(|d| d.current.spec.name.as_str()).collect();
    // Every replica of every deployment, and every GPU seat taken, across the fleet.
    let mut all: Vec<Found<'_>> = Vec::new();
    for hive in hives {
        for process in &hive.processes {
            if let Some(label) = &process.replica {
                all.push(Found { hive, process, label });
            }
        }
    }
    let counted = |f: &Found<'_>| match f.hive.reach {
        Reach::Fresh => true,
        Reach::Silent { ms, .. } => ms < reschedule_after_ms,
    };
    let alive = |f: &Found<'_>| f.process.state.is_alive() && !in_flight.stopping.contains(&f.key());
    let mut seats: Vec<Seat> = all
        .iter()
        .filter(|f| alive(f) && counted(f))
        .map(|f| {
            let share = deployments
                .iter()
                .find(|d| d.current.spec.name == f.label.deployment)
                .is_some_and(|d| d.current.spec.share_gpu);
            Seat {
                hive: f.hive.alias.clone(),
                device: f.process.device.clone(),
                deployment: f.label.deployment.clone(),
                share_gpu: share,
            }
        })
        .collect();
    // Worker processes of deployments that are no longer declared.
    for f in all.iter().filter(|f| !declared.contains(f.label.deployment.as_str()) && f.fresh()) {
        if in_flight.stopping.contains(&f.key()) {
            continue;
        }
        actions.push(f.stop(StopReason::Undeclared));
    }
    for memory in deployments {
        let spec = &memory.current.spec;
        let hash = spec.spec_hash();
        let name = &spec.name;
        let mine: Vec<&Found<'_>> = all.iter().filter(|f| &f.label.deployment == name).collect();
        let mut failed_now = 0u32;
        let mut instances = Vec::new();
        for f in &mine {
            let key = f.key();
            let state = if in_flight.stopping.contains(&key) {
                "stopping"
            } else if !counted(f) && f.process.state.is_alive() {
                "lost"
            } else if in_flight.draining.contains_key(&key) && f.process.state.is_alive() {
                "draining"
            } else {
                f.process.state.name()
            };
            instances.push(ReplicaStatus {
                hive: f.hive.alias.clone(),
                worker_id: f.process.id.clone(),
                device: f.process.device.clone(),
                state: state.into(),
                revision: memory.revision_of(&f.label.spec_hash).unwrap_or(0),
                in_flight: in_flight.requests.get(&key).copied().unwrap_or(0),
            });
            // A replica that exited on its own: clear it (once) and count the failure.
            if let WorkerState::Crashed { message, .. } = &f.process.state
                && f.fresh()
                && !in_flight.stopping.contains(&key)
            {
                failed_now += 1;
                actions.push(Action::Clear {
                    deployment: name.clone(),
                    hive: f.hive.alias.clone(),
                    worker_id: f.process.id.clone(),
                    exit: message.clone(),
                });
            }
        }
        let live: Vec<&Found<'_>> = mine.iter().copied().filter(|f| alive(f) && counted(f)).collect();
        // Current: this revision's spec, on the worker version its hive has installed now.
        let current = |f: &&Found<'_>| {
            f.label.spec_hash == hash
                && match (&f.label.worker_version, f.hive.installed.get(&spec.worker)) {
                    (Some(ran), Some(installed)) => ran == installed,
                    _ => true,
                }
        };
        let (new, old): (Vec<&Found<'_>>, Vec<&Found<'_>>) = live.iter().partition(|f| current(f));
        let is_ready = |f: &&Found<'_>| f.process.state == WorkerState::Ready;
        let is_draining = |f: &&Found<'_>| in_flight.draining.contains_key(&f.key());
        let new_ready: Vec<&Found<'_>> = new.iter().copied().filter(|f| is_ready(f)).collect();
        let mut new_starting: Vec<&Found<'_>> = new.iter().copied().filter(|f| !is_ready(f)).collect();
        let ready = live.iter().filter(|f| is_ready(f) && !is_draining(f) && f.fresh()).count() as u32;
        let mut waiting_for = None;
        // A new replica that does not become ready in time has failed.
        let mut late_now = false;
        new_starting.retain(|f| {
            let late = now_ms.saturating_sub(f.process.started_ms) > spec.ready_timeout_ms && f.fresh();
            if late {
                failed_now += 1;
                late_now = true;
                actions.push(f.stop(StopReason::NotReady));
            }
            !late
        });
        let failures = memory.failures.saturating_add(failed_now);
        let (_, eligible, rejected) = place(spec, hives, &seats);
        let mut rollout_failed = None;
        if memory.rollout.is_some() && (failures >= CRASH_LOOP_FAILURES || late_now) && !old.is_empty() {
            // One replica that never became ready is enough: waiting out `ready_timeout` twice
            // more would hold the rollout for half an hour by default.
            let why = if late_now {
                format!(
                    "a replica of revision {} was not ready within {}",
                    memory.current.number,
                    seconds(spec.ready_timeout_ms)
                )
            } else {
                let last = memory.last_failure.clone().unwrap_or_else(|| "replicas of the new revision failed".into());
                format!("{failures} replicas of revision {} failed; the last: {last}", memory.current.number)
            };
            rollout_failed = Some(why.clone());
            actions.push(Action::RolloutFailed { deployment: name.clone(), reason: why });
        }
        let backoff_ok = failed_now == 0 && now_ms >= memory.next_attempt_ms;
        let model_ready = |hive: &str| match spec.model_file() {
            None => true,
            Some(file) => hives.iter().find(|h| h.alias == hive).is_some_and(|h| {
                h.models.get(&file).is_some_and(|d| spec.sha256.is_none() || d.as_ref() == spec.sha256.as_ref())
            }),
        };
        // Starts a replica where placement says (or fetches its model there first).
        let start = |seats: &mut Vec<Seat>, actions: &mut Vec<Action>| -> Result<(), String> {
            let (hive, device) = place(spec, hives, seats).0.ok_or("no hive can take a replica")?;
            seats.push(Seat {
                hive: hive.clone(),
                device: device.clone(),
                deployment: name.clone(),
                share_gpu: spec.share_gpu,
            });
            if !model_ready(&hive) {
                let key = (name.clone(), hive.clone());
                if !in_flight.downloading.contains(&key) {
                    actions.push(Action::Download {
                        deployment: name.clone(),
                        hive: hive.clone(),
                        source: spec.model.clone(),
                        sha256: spec.sha256.clone(),
                        name: spec.model_file().unwrap_or_default(),
                    });
                }
                return Err(format!("downloading the model to {hive}"));
            }
            actions.push(Action::Start { deployment: name.clone(), hive, device, revision: memory.current.number });
            Ok(())
        };
        let target = spec.replicas as usize;
        let old_ready: Vec<&Found<'_>> = old.iter().copied().filter(|f| is_ready(f)).collect();
        // Old replicas that serve nothing are stopped at once.
        for f in old.iter().filter(|f| !is_ready(f)) {
            actions.push(f.stop(StopReason::Replaced));
        }
        if rollout_failed.is_some() {
            // Nothing more this round: the previous revision is current from the next one.
        } else if !old_ready.is_empty() {
            // Replace old replicas one at a time, new before old.
            let draining: Vec<&Found<'_>> = old_ready.iter().copied().filter(|f| is_draining(f)).collect();
            if let Some(f) = draining.first() {
                let since = in_flight.draining.get(&f.key()).copied().unwrap_or(now_ms);
                let idle = in_flight.requests.get(&f.key()).copied().unwrap_or(0) == 0;
                if idle || now_ms.saturating_sub(since) >= spec.drain_timeout_ms {
                    actions.push(f.stop(StopReason::Replaced));
                }
                waiting_for = Some(format!("draining {}", f.process.id));
            } else if !new_starting.is_empty() {
                waiting_for = Some(format!("waiting for {} to become ready", new_starting[0].process.id));
            } else if new_ready.len() + old_ready.len() > target {
                let f = old_ready[old_ready.len() - 1];
                actions.push(f.drain());
                waiting_for = Some(format!("draining {}", f.process.id));
            } else if !backoff_ok {
                waiting_for =
                    Some(format!("next attempt in {}", seconds(memory.next_attempt_ms.saturating_sub(now_ms))));
            } else if let Err(why) = start(&mut seats, &mut actions) {
                if why.starts_with("no hive") && new_ready.len() + old_ready.len() > 1 {
                    // No room for one more: make room by retiring an old replica first.
                    let f = old_ready[old_ready.len() - 1];
                    actions.push(f.drain());
                }
                waiting_for = Some(why);
            }
        } else {
            if memory.rollout.is_some() && old.is_empty() && new_ready.len() >= target {
                actions.push(Action::RolloutDone { deployment: name.clone() });
            }
            let missing = target.saturating_sub(new_ready.len() + new_starting.len());
            if missing > 0 {
                if !backoff_ok {
                    waiting_for =
                        Some(format!("next attempt in {}", seconds(memory.next_attempt_ms.saturating_sub(now_ms))));
                } else {
                    // After a failure, one at a time.
                    let n = if failures > 0 { 1 } else { missing };
                    for _ in 0..n {
                        if let Err(why) = start(&mut seats, &mut actions) {
                            waiting_for = Some(why);
                            break;
                        }
                    }
                }
            }
            let kept = new_ready.len() + new_starting.len();
            if kept > target {
                // Surplus (a silent hive came back): stop those not ready first, then the
                // newest, so the older, warmed-up replicas keep serving.
                let mut order: Vec<&Found<'_>> = new_starting.iter().chain(new_ready.iter()).copied().collect();
                order.sort_by_key(|f| (is_ready(f), std::cmp::Reverse(f.process.started_ms), f.key()));
                for f in order.into_iter().take(kept - target) {
                    actions.push(f.stop(StopReason::Surplus));
                }
            }
        }
        let phase = if memory.rollout_failed.is_some() || rollout_failed.is_some() {
            Phase::RolloutFailed
        } else if failures >= CRASH_LOOP_FAILURES {
            Phase::CrashLoop
        } else if ready as usize >= target && old.is_empty() && new_ready.len() >= target {
            Phase::Ready
        } else if waiting_for.as_deref().is_some_and(|w| w.starts_with("no hive")) {
            Phase::Degraded
        } else {
            Phase::Progressing
        };
        let message = match phase {
            Phase::Ready => format!("revision {}", memory.current.number),
            Phase::RolloutFailed => {
                let why = rollout_failed.clone().or_else(|| memory.rollout_failed.clone()).unwrap_or_default();
                let serving = memory.rollout.as_ref().map_or(memory.current.number, |r| r.from);
                format!("rollout failed: {why}; serving revision {serving}")
            }
            Phase::CrashLoop => format!(
                "crash-loop: {failures} failures in a row, next attempt in {}; last: {}",
                seconds(memory.next_attempt_ms.saturating_sub(now_ms)),
                memory.last_failure.as_deref().unwrap_or("?").lines().next().unwrap_or_default()
            ),
            Phase::Progressing | Phase::Degraded => waiting_for.clone().unwrap_or_else(|| "starting".into()),
        };
        status.push(DeploymentStatus {
            name: name.clone(),
            worker: spec.worker.clone(),
            model: spec.model.clone(),
            revision: memory.current.number,
            replicas: spec.replicas,
            ready,
            phase,
            message,
            restarts: memory.restarts,
            last_failure: memory.last_failure.clone(),
            instances,
            eligible,
            rejected,
        });
    }
    Decision { actions, status }
}

#[cfg(test)]
mod tests;
