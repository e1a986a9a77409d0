//! Worker processes: spawn, list, stop, crash detection, and an on-disk registry
//! (`~/.local/state/rbee/workers/<id>.json`) so a restarted hive re-adopts the workers that
//! still run and clears the dead ones. A worker is found by its recorded pid *and* that
//! process's start time, never by searching the process table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbee_core::execute::now_ms;
use rbee_core::proto::deployment::ReplicaLabel;
use rbee_core::proto::hive::{WorkerProcess, WorkerState};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Why a worker could not be found, started, waited for or stopped. The texts reach users as
/// the hive's answers to forwarded operations, so each carries its source's text too (callers
/// print only `Display`); the source stays attached for callers that inspect it.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No worker with this id.
    #[error("no worker {id} on this hive (workers: {known}); see `rbee worker list`")]
    NoSuchWorker {
        /// The id asked for.
        id: String,
        /// The ids the hive has, comma-separated (`none` when it has none).
        known: String,
    },
    /// The worker type is not in the catalog.
    #[error(
        "worker type {worker_type:?} is not installed on this hive (installed: {installed}): add it to the \
         hive's `workers` in hives.conf and run `rbee sync`"
    )]
    NotInstalled {
        /// The type asked for.
        worker_type: String,
        /// The installed types, comma-separated (`none` when there are none).
        installed: String,
    },
    /// The device is neither `cpu` nor `cuda:N`.
    #[error("device {device:?} is not `cpu` or `cuda:N`")]
    BadDevice {
        /// The device asked for.
        device: String,
    },
    /// Asking the kernel for a free port failed.
    #[error("{0}")]
    PortProbe(#[source] std::io::Error),
    /// Every port the kernel offered was taken by the hive or a live worker.
    #[error("no free port for the worker")]
    NoFreePort,
    /// The worker's log file could not be created.
    #[error("cannot create worker log: {0}")]
    CreateLog(#[source] std::io::Error),
    /// The log file could not be shared between stdout and stderr.
    #[error("{0}")]
    ShareLog(#[source] std::io::Error),
    /// The worker binary could not be started.
    #[error("cannot start {}: {source}", .binary.display())]
    Start {
        /// The `rbee-worker-<type>` binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The worker exited before its pid could be read.
    #[error("the worker exited at once")]
    ExitedAtOnce,
    /// The registry record could not be encoded.
    #[error("{0}")]
    EncodeRecord(#[source] serde_json::Error),
    /// The registry record could not be written (the worker is then killed).
    #[error("cannot write the worker registry: {0}")]
    WriteRecord(#[source] std::io::Error),
    /// The worker exited while starting; `how` says how, with the end of its log.
    #[error("worker {id} {how}")]
    Crashed {
        /// The worker.
        id: String,
        /// Its crash message (`exited with status N; last lines of its log: ...`).
        how: String,
    },
    /// The worker was stopped before it became ready.
    #[error("worker {id} was stopped while starting")]
    StoppedWhileStarting {
        /// The worker.
        id: String,
    },
    /// No heartbeat came in time; the worker still runs.
    #[error(
        "worker {id} sent no heartbeat within {secs}s; it is still running: see its log {} or stop it with \
         `rbee worker delete {id}`",
        .log.display()
    )]
    NoHeartbeat {
        /// The worker.
        id: String,
        /// The timeout, in seconds.
        secs: u64,
        /// Its log file.
        log: PathBuf,
    },
    /// The recorded pid does not fit a process group id.
    #[error("{0}")]
    BadPid(#[source] std::num::TryFromIntError),
    /// No random secret could be made for the worker's token.
    #[error("cannot make the worker's token: {0}")]
    Secret(#[source] std::io::Error),
}

/// A worker's own credential: given to it as `RBEE_WORKER_TOKEN`, required on its heartbeats
/// to the hive and sent by the hive on its calls to the worker. It never leaves the host:
/// it is kept in the registry record (mode 0600), never in a [`WorkerProcess`], and its
/// `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
struct WorkerToken(String);

impl std::fmt::Debug for WorkerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerToken(..)")
    }
}

/// What the registry file of one worker holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    worker_type: String,
    model: String,
    device: String,
    port: u16,
    pid: u32,
    /// The process's start time (`/proc/<pid>/stat` field 22), so a reused pid is not mistaken
    /// for the worker.
    start_time: u64,
    started_ms: u64,
    /// The deployment replica it is (absent in records of older hives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replica: Option<ReplicaLabel>,
    /// Its engine arguments (absent in records of older hives).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    args: Vec<String>,
    /// Its own token (absent in records of older hives, whose workers got the hive's token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<WorkerToken>,
}

impl Record {
    /// The worker as listed, in state `starting`.
    fn process(&self, adopted: bool) -> WorkerProcess {
        WorkerProcess {
            id: self.id.clone(),
            worker_type: self.worker_type.clone(),
            model: self.model.clone(),
            device: self.device.clone(),
            port: self.port,
            pid: self.pid,
            started_ms: self.started_ms,
            last_heartbeat_ms: None,
            adopted,
            replica: self.replica.clone(),
            args: self.args.clone(),
            state: WorkerState::Starting,
        }
    }
}

/// What to start: a worker of a type, for a model, on a device, with its engine's arguments
/// and, when the queen's reconciler asks, the deployment replica it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpawnRequest {
    /// The worker type: the binary `rbee-worker-<type>` in the catalog.
    pub worker_type: String,
    /// The model: a name in the models directory, or whatever the worker accepts.
    pub model: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Arguments for the engine, passed to the worker as argv after `--` (never through a
    /// shell).
    pub args: Vec<String>,
    /// The deployment replica it is; kept in the registry, so a re-adopted worker keeps it.
    pub replica: Option<ReplicaLabel>,
}

impl SpawnRequest {
    /// A worker of `worker_type` for `model` on `device`, without engine arguments or label.
    pub fn new(worker_type: &str, model: &str, device: &str) -> Self {
        Self {
            worker_type: worker_type.to_owned(),
            model: model.to_owned(),
            device: device.to_owned(),
            ..Self::default()
        }
    }
}

struct Entry {
    process: WorkerProcess,
    deleting: bool,
    /// Its own token; `None` for a worker re-adopted from an older hive's record, which
    /// holds the hive's token instead.
    token: Option<WorkerToken>,
}

/// How workers are started.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The hive's home: engine records are under it.
    pub home: PathBuf,
    /// The worker catalog: `rbee-worker-<type>` binaries.
    pub catalog_dir: PathBuf,
    /// Where records and logs go.
    pub registry_dir: PathBuf,
    /// Models by name.
    pub models_dir: PathBuf,
    /// The hive's URL as workers reach it.
    pub hive_url: String,
    /// The hive's own port (never given to a worker).
    pub hive_port: u16,
    /// The hive's own token. Each worker the hive starts gets a token of its own instead;
    /// this one is the credential of workers re-adopted from records of older hives, which
    /// gave every worker the hive's token.
    pub token: Option<String>,
    /// How often workers beat; unresponsive after three missed beats.
    pub heartbeat_ms: u64,
}

/// The hive's worker processes.
pub struct Workers {
    settings: WorkerSettings,
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Notified (all waiters) whenever a worker's state changes.
    pub changed: Arc<Notify>,
    /// Holds a permit after a change until the heartbeat task takes it, so no change goes
    /// unreported while a heartbeat is on its way.
    pub beat_now: Arc<Notify>,
}

/// The start time of a live (not zombie) process, from `/proc/<pid>/stat`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // `rest` starts at field 3 (state); field 22 is start time.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A registry record, replaced whole and durably (see [`rbee_core::fsio::write_atomic`]); it
/// holds the worker's token, so it is the owner's only (0600), from its first byte.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    rbee_core::fsio::write_atomic(path, bytes, 0o600)
}

/// Creates the registry directory, the owner's only (0700); a directory an older hive made is
/// made private too.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        other => other?,
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

impl Workers {
    /// The registry, with the workers of a previous hive process that still run re-adopted
    /// and the records of dead ones removed.
    pub fn open(settings: WorkerSettings) -> Arc<Self> {
        if let Err(e) = create_private_dir(&settings.registry_dir) {
            tracing::warn!("cannot create the worker registry {}: {e}", settings.registry_dir.display());
        }
        let workers = Arc::new(Workers {
            settings,
            entries: Mutex::new(BTreeMap::new()),
            changed: Arc::new(Notify::new()),
            beat_now: Arc::new(Notify::new()),
        });
        let files = std::fs::read_dir(&workers.settings.registry_dir).map(|d| d.flatten().collect::<Vec<_>>());
        for file in files.unwrap_or_default() {
            let path = file.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let record: Option<Record> = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
            match record {
                Some(r) if start_time(r.pid) == Some(r.start_time) => {
                    tracing::info!(worker = %r.id, pid = r.pid, port = r.port, "re-adopted worker");
                    let process = r.process(true);
                    let token = r.token.clone();
                    workers
                        .entries
                        .lock()
                        .expect("workers lock")
                        .insert(r.id.clone(), Entry { process, deleting: false, token });
                    tokio::spawn(watch_adopted(workers.clone(), r));
                }
                other => {
                    if let Some(r) = other {
                        tracing::info!(worker = %r.id, pid = r.pid, "cleared worker: its process is gone");
                        remove_log(&workers.log_path(&r.id));
                    }
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        workers
    }

    /// Wakes everyone waiting for a change, and the heartbeat.
    pub fn notify(&self) {
        self.changed.notify_waiters();
        self.beat_now.notify_one();
    }

    /// Every worker, with `unresponsive` for live ones whose heartbeats stopped.
    pub fn list(&self) -> Vec<WorkerProcess> {
        let now = now_ms();
        let limit = 3 * self.settings.heartbeat_ms;
        self.entries
            .lock()
            .expect("workers lock")
            .values()
            .map(|e| {
                let mut p = e.process.clone();
                if p.state == WorkerState::Ready && p.last_heartbeat_ms.is_some_and(|t| now.saturating_sub(t) > limit) {
                    p.state = WorkerState::Unresponsive;
                }
                p
            })
            .collect()
    }

    /// One worker.
    pub fn get(&self, id: &str) -> Result<WorkerProcess, WorkerError> {
        self.list().into_iter().find(|p| p.id == id).ok_or_else(|| self.no_such(id))
    }

    fn no_such(&self, id: &str) -> WorkerError {
        let ids: Vec<String> = self.list().into_iter().map(|p| p.id).collect();
        let known = if ids.is_empty() { "none".to_owned() } else { ids.join(", ") };
        WorkerError::NoSuchWorker { id: id.to_owned(), known }
    }

    /// The log of worker `id` (its rotated part is `<log>.1`).
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.settings.registry_dir.join(format!("{id}.log"))
    }

    /// Whether `authorization` (an `Authorization` header) carries worker `id`'s own token,
    /// compared in constant time; `None` when the hive has no worker `id`. A worker re-adopted
    /// from an older hive's record has the hive's token; one without any token is refused.
    pub fn authorized(&self, id: &str, authorization: Option<&str>) -> Option<bool> {
        let entries = rbee_core::locked(&self.entries);
        let entry = entries.get(id)?;
        let token = entry.token.as_ref().map(|t| t.0.as_str()).or(self.settings.token.as_deref());
        Some(token.is_some_and(|token| rbee_core::proto::authorized(authorization, token)))
    }

    /// The token the hive sends on its calls to worker `id` (see [`Workers::authorized`]).
    pub fn token_of(&self, id: &str) -> Option<String> {
        let entries = rbee_core::locked(&self.entries);
        let entry = entries.get(id)?;
        entry.token.as_ref().map(|t| t.0.clone()).or_else(|| self.settings.token.clone())
    }

    /// A worker's heartbeat: it is ready (or still loading).
    pub fn heartbeat(&self, id: &str, ready: bool) -> bool {
        let mut entries = rbee_core::locked(&self.entries);
        let Some(entry) = entries.get_mut(id) else { return false };
        if !entry.process.state.is_alive() {
            return false;
        }
        entry.process.last_heartbeat_ms = Some(now_ms());
        let before = entry.process.state.clone();
        entry.process.state = if ready { WorkerState::Ready } else { WorkerState::Starting };
        let changed = before != entry.process.state;
        drop(entries);
        if changed {
            self.notify();
        }
        true
    }

    fn set_exited(&self, id: &str, state: WorkerState) {
        let mut entries = rbee_core::locked(&self.entries);
        if let Some(entry) = entries.get_mut(id) {
            entry.process.state = if entry.deleting { WorkerState::Stopped } else { state };
            if let WorkerState::Crashed { message, .. } = &entry.process.state {
                tracing::warn!(worker = %id, "worker crashed: {message}");
            }
        }
        drop(entries);
        let _ = std::fs::remove_file(self.settings.registry_dir.join(format!("{id}.json")));
        self.notify();
    }

    fn free_port(&self) -> Result<u16, WorkerError> {
        let taken: Vec<u16> = self.list().iter().filter(|p| p.state.is_alive()).map(|p| p.port).collect();
        for _ in 0..32 {
            // The kernel hands out a port nothing listens on; skip the hive's and live workers'.
            let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(WorkerError::PortProbe)?;
            let port = listener.local_addr().map_err(WorkerError::PortProbe)?.port();
            if port != self.settings.hive_port && !taken.contains(&port) {
                return Ok(port);
            }
        }
        Err(WorkerError::NoFreePort)
    }

    /// The installed worker types (the catalog), read from disk.
    pub fn scan_catalog(&self) -> Vec<String> {
        crate::catalog::scan(&self.settings.catalog_dir)
    }

    /// Starts `rbee-worker-<type>` as `request` asks; returns at once, in state `starting` (see
    /// [`Workers::wait_ready`]). The engine arguments follow the contract's flags after `--`.
    pub fn spawn(self: &Arc<Self>, catalog: &[String], request: SpawnRequest) -> Result<WorkerProcess, WorkerError> {
        let SpawnRequest { worker_type, model, device, args, replica } = request;
        if !catalog.contains(&worker_type) {
            let installed = if catalog.is_empty() { "none".to_owned() } else { catalog.join(", ") };
            return Err(WorkerError::NotInstalled { worker_type, installed });
        }
        let device_ok = device == "cpu" || device.strip_prefix("cuda:").is_some_and(|n| n.parse::<u32>().is_ok());
        if !device_ok {
            return Err(WorkerError::BadDevice { device });
        }
        // A bare name means a model in the models directory.
        let model_arg = if !model.contains('/') && self.settings.models_dir.join(&model).is_file() {
            self.settings.models_dir.join(&model).to_string_lossy().into_owned()
        } else {
            model
        };
        let port = self.free_port()?;
        let started_ms = now_ms();
        let id = {
            let entries = rbee_core::locked(&self.entries);
            let mut n = started_ms % 1_000_000;
            while entries.contains_key(&format!("{worker_type}-{n}")) {
                n += 1;
            }
            format!("{worker_type}-{n}")
        };
        let binary = self.settings.catalog_dir.join(rbee_core::layout::Layout::worker_file_name(&worker_type));
        // Its own credential: it never gets the hive's token.
        let token = WorkerToken(crate::secret::new_secret().map_err(WorkerError::Secret)?);
        let log = std::fs::File::create(self.log_path(&id)).map_err(WorkerError::CreateLog)?;
        let log2 = log.try_clone().map_err(WorkerError::ShareLog)?;
        let mut command = tokio::process::Command::new(&binary);
        command
            .args(["--worker-id", &id, "--model", &model_arg, "--device", &device, "--port", &port.to_string()])
            .args(["--hive-url", &self.settings.hive_url]);
        // The engine sync installed for this type; without one the launcher looks on PATH.
        if let Some(engine) = crate::engines::recorded(&self.settings.home, &worker_type) {
            command.arg("--engine").arg(&engine.program);
        }
        if !args.is_empty() {
            // argv, not a shell line: each argument reaches the engine as given.
            command.arg("--").args(&args);
        }
        command
            .env("RBEE_HEARTBEAT_MS", self.settings.heartbeat_ms.to_string())
            .env(rbee_log::FORMAT_VAR, rbee_log::current_format().to_string())
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a stop reaches the engine it starts too, and the worker
            // outlives a hive restart (to be re-adopted).
            .process_group(0)
            .kill_on_drop(false);
        // The worker sees only its GPU (as cuda:0 to the engine); a CPU worker sees none.
        command.env("CUDA_VISIBLE_DEVICES", device.strip_prefix("cuda:").unwrap_or(""));
        command.env("RBEE_WORKER_TOKEN", &token.0);
        let mut child = command.spawn().map_err(|source| WorkerError::Start { binary: binary.clone(), source })?;
        let pid = child.id().ok_or(WorkerError::ExitedAtOnce)?;
        let record = Record {
            id: id.clone(),
            worker_type,
            model: model_arg,
            device,
            port,
            pid,
            start_time: start_time(pid).unwrap_or(0),
            started_ms,
            replica,
            args,
            token: Some(token.clone()),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(WorkerError::EncodeRecord)?;
        if let Err(e) = write_atomic(&self.settings.registry_dir.join(format!("{id}.json")), &json) {
            let _ = child.start_kill();
            return Err(WorkerError::WriteRecord(e));
        }
        tracing::info!(worker = %id, pid, port, kind = %record.worker_type, model = %record.model, "started worker");
        let process = record.process(false);
        self.entries
            .lock()
            .expect("workers lock")
            .insert(id.clone(), Entry { process: process.clone(), deleting: false, token: Some(token) });
        let workers = self.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            use std::os::unix::process::ExitStatusExt;
            let (exit_code, signal) = status.as_ref().map_or((None, None), |s| (s.code(), s.signal()));
            let how = match (exit_code, signal) {
                (Some(c), _) => format!("exited with status {c}"),
                (None, Some(s)) => format!("was killed by signal {s}"),
                _ => "exited".to_owned(),
            };
            let tail = log_tail(&workers.log_path(&id), 5);
            let message = if tail.is_empty() { how } else { format!("{how}; last lines of its log:\n{tail}") };
            workers.set_exited(&id, WorkerState::Crashed { exit_code, signal, message });
        });
        self.notify();
        Ok(process)
    }

    /// Waits until the worker is ready; fails if it exits first or `timeout` passes.
    pub async fn wait_ready(&self, id: &str, timeout: Duration) -> Result<WorkerProcess, WorkerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let process = self.get(id)?;
            match &process.state {
                WorkerState::Ready => return Ok(process),
                WorkerState::Crashed { message, .. } => {
                    return Err(WorkerError::Crashed { id: id.to_owned(), how: message.clone() });
                }
                WorkerState::Stopped => return Err(WorkerError::StoppedWhileStarting { id: id.to_owned() }),
                WorkerState::Starting | WorkerState::Unresponsive => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(WorkerError::NoHeartbeat {
                    id: id.to_owned(),
                    secs: timeout.as_secs(),
                    log: self.log_path(id),
                });
            }
        }
    }

    /// Stops a worker: SIGTERM to its process group, SIGKILL after `grace`. A worker that
    /// already exited is cleared from the list.
    pub async fn delete(&self, id: &str, grace: Duration) -> Result<WorkerProcess, WorkerError> {
        let process = {
            let mut entries = rbee_core::locked(&self.entries);
            let Some(entry) = entries.get_mut(id) else {
                drop(entries);
                return Err(self.no_such(id));
            };
            if !entry.process.state.is_alive() {
                let process = entries.remove(id).map(|e| e.process);
                drop(entries);
                remove_log(&self.log_path(id));
                return process.ok_or_else(|| self.no_such(id));
            }
            entry.deleting = true;
            entry.process.clone()
        };
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        let group = Pid::from_raw(i32::try_from(process.pid).map_err(WorkerError::BadPid)?);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        let mut killed = false;
        loop {
            if self.get(id).is_ok_and(|p| !p.state.is_alive()) {
                break;
            }
            if tokio::time::Instant::now() >= deadline && !killed {
                tracing::warn!(worker = %id, "worker ignored SIGTERM for {grace:?}; sending SIGKILL");
                let _ = killpg(group, Signal::SIGKILL);
                killed = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut process = rbee_core::locked(&self.entries).remove(id).map_or(process, |e| e.process);
        process.state = WorkerState::Stopped;
        let _ = std::fs::remove_file(self.settings.registry_dir.join(format!("{id}.json")));
        remove_log(&self.log_path(id));
        self.notify();
        Ok(process)
    }

    /// A ready worker serving `model`, if any.
    pub fn ready_for(&self, model: &str) -> Option<WorkerProcess> {
        self.list().into_iter().find(|p| p.state == WorkerState::Ready && p.serves(model))
    }
}

/// A worker from a previous hive process is not our child: poll its process until it is gone.
async fn watch_adopted(workers: Arc<Workers>, record: Record) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if start_time(record.pid) != Some(record.start_time) {
            let message =
                "exited; its exit status is unknown (it was re-adopted after a hive restart, so this hive is not \
                 its parent)"
                    .to_owned();
            workers.set_exited(&record.id, WorkerState::Crashed { exit_code: None, signal: None, message });
            return;
        }
    }
}

/// Removes a worker's log and its rotated part.
fn remove_log(log: &std::path::Path) {
    let _ = std::fs::remove_file(log);
    let _ = std::fs::remove_file(rbee_log::rotated_name(log));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_identifies_a_live_process() {
        let me = std::process::id();
        let t = start_time(me).expect("this process has a start time");
        assert_eq!(start_time(me), Some(t), "stable");
        assert_eq!(start_time(u32::MAX), None);
    }

    /// These texts reach users (and end-to-end tests) as operation errors: pinned word for word.
    #[test]
    fn messages_read_as_before() {
        let e = WorkerError::NoHeartbeat { id: "w-1".into(), secs: 120, log: "/s/w-1.log".into() };
        assert_eq!(
            e.to_string(),
            "worker w-1 sent no heartbeat within 120s; it is still running: see its log /s/w-1.log or stop it with \
             `rbee worker delete w-1`"
        );
        let e = WorkerError::NotInstalled { worker_type: "vllm".into(), installed: "none".into() };
        assert_eq!(
            e.to_string(),
            "worker type \"vllm\" is not installed on this hive (installed: none): add it to the hive's `workers` \
             in hives.conf and run `rbee sync`"
        );
        let e = WorkerError::Crashed { id: "w-1".into(), how: "exited with status 127".into() };
        assert_eq!(e.to_string(), "worker w-1 exited with status 127");
    }

    fn record(id: &str, token: Option<&str>) -> Record {
        let pid = std::process::id();
        Record {
            id: id.to_owned(),
            worker_type: "reference".into(),
            model: "m".into(),
            device: "cpu".into(),
            port: 1,
            pid,
            start_time: start_time(pid).unwrap(),
            started_ms: 1,
            replica: None,
            args: Vec::new(),
            token: token.map(|t| WorkerToken(t.to_owned())),
        }
    }

    #[test]
    fn a_record_keeps_its_token_and_an_older_hives_record_reads_without_one() {
        let with = record("w-1", Some("worker-secret"));
        let json = serde_json::to_string(&with).unwrap();
        assert!(json.contains(r#""token":"worker-secret""#), "{json}");
        let back: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(back.token, Some(WorkerToken("worker-secret".into())));

        let older = r#"{"id":"w-2","worker_type":"reference","model":"m","device":"cpu","port":1,"pid":2,
            "start_time":3,"started_ms":4}"#;
        let back: Record = serde_json::from_str(older).unwrap();
        assert_eq!(back.token, None);
        let json = serde_json::to_string(&back).unwrap();
        assert!(!json.contains("token"), "{json}");

        // Neither its listing nor its Debug shows the token.
        let listed = serde_json::to_string(&with.process(false)).unwrap();
        assert!(!listed.contains("worker-secret"), "{listed}");
        assert!(!format!("{with:?}").contains("worker-secret"));
    }

    /// Re-adopted workers: one with its own token accepts only that token; one recorded by an
    /// older hive (no token) keeps the hive's token; an unknown id is `None`.
    #[tokio::test]
    async fn heartbeats_are_checked_against_each_workers_own_token() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let registry = dir.path().join("state/workers");
        std::fs::create_dir_all(&registry).unwrap();
        std::fs::set_permissions(&registry, std::fs::Permissions::from_mode(0o755)).unwrap();
        for r in [record("new-1", Some("own-secret")), record("old-1", None)] {
            std::fs::write(registry.join(format!("{}.json", r.id)), serde_json::to_vec(&r).unwrap()).unwrap();
        }
        let workers = Workers::open(WorkerSettings {
            home: dir.path().to_path_buf(),
            catalog_dir: dir.path().join("workers"),
            registry_dir: registry.clone(),
            models_dir: dir.path().join("models"),
            hive_url: "http://127.0.0.1:9".into(),
            hive_port: 9,
            token: Some("hive-secret".into()),
            heartbeat_ms: 200,
        });
        let mode = std::fs::metadata(&registry).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "an older hive's registry is made private: {mode:o}");
        assert_eq!(workers.list().len(), 2);

        assert_eq!(workers.authorized("new-1", Some("Bearer own-secret")), Some(true));
        assert_eq!(workers.authorized("new-1", Some("Bearer hive-secret")), Some(false));
        assert_eq!(workers.authorized("new-1", None), Some(false));
        assert_eq!(workers.token_of("new-1").as_deref(), Some("own-secret"));

        assert_eq!(workers.authorized("old-1", Some("Bearer hive-secret")), Some(true));
        assert_eq!(workers.authorized("old-1", Some("Bearer own-secret")), Some(false));
        assert_eq!(workers.token_of("old-1").as_deref(), Some("hive-secret"));

        assert_eq!(workers.authorized("absent", Some("Bearer hive-secret")), None);
        assert_eq!(workers.token_of("absent"), None);
        for p in workers.list() {
            let listed = serde_json::to_string(&p).unwrap();
            assert!(!listed.contains("secret"), "{listed}");
        }
    }

    #[test]
    fn log_tail_keeps_the_last_nonblank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("w.log");
        std::fs::write(&log, "a\n\nb\nc\n\n").unwrap();
        assert_eq!(log_tail(&log, 2), "b\nc");
        assert_eq!(log_tail(&dir.path().join("absent"), 2), "");
    }
}
