//! The wire types between queen, hive and workers: worker processes, models, and the events a
//! hive streams back for a forwarded operation.
//!
//! A forwarded [`Operation`](crate::operation::Operation) is `POST`ed to the hive's
//! `/v1/operations`; the hive answers with newline-delimited JSON [`HiveEvent`]s, the last of
//! which is a [`HiveEvent::Result`].

use serde::{Deserialize, Serialize};

/// Where a worker process is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WorkerState {
    /// Spawned; no heartbeat yet (loading its model).
    Starting,
    /// Heartbeats arrive: it takes requests.
    Ready,
    /// Alive, but no heartbeat for three intervals.
    Unresponsive,
    /// Exited without being asked to.
    Crashed {
        /// Its exit code, when it exited.
        exit_code: Option<i32>,
        /// The signal that killed it, when one did.
        signal: Option<i32>,
        /// Its exit in words, with the last lines of its log.
        message: String,
    },
    /// Stopped by a `worker delete`.
    Stopped,
}

impl WorkerState {
    /// Its wire name (`starting`, `ready`, `unresponsive`, `crashed`, `stopped`).
    pub fn name(&self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Unresponsive => "unresponsive",
            WorkerState::Crashed { .. } => "crashed",
            WorkerState::Stopped => "stopped",
        }
    }
}

impl WorkerState {
    /// True while the process runs.
    pub fn is_alive(&self) -> bool {
        matches!(self, WorkerState::Starting | WorkerState::Ready | WorkerState::Unresponsive)
    }
}

/// A worker process on a hive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WorkerProcess {
    /// Its id, unique on the hive.
    pub id: String,
    /// Its type (`llama-cpp`, …): the binary `rbee-worker-<type>`.
    pub worker_type: String,
    /// The model it serves, as given to it.
    pub model: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Its port on the hive's host (127.0.0.1).
    pub port: u16,
    /// Its process id (and process group).
    pub pid: u32,
    /// When it was spawned (ms since the epoch).
    pub started_ms: u64,
    /// Its last heartbeat (ms since the epoch), if any.
    pub last_heartbeat_ms: Option<u64>,
    /// True when a restarted hive found it still running and took it back.
    #[serde(default)]
    pub adopted: bool,
    /// The deployment replica it is, when the queen's reconciler started it (the hive keeps
    /// the label in its registry, so a restarted queen adopts the replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<crate::deployment::ReplicaLabel>,
    /// The arguments passed to its engine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Its state.
    #[serde(flatten)]
    pub state: WorkerState,
}

impl WorkerProcess {
    /// True if it serves `model`: the same string, or the same file name (with or without
    /// its extension) as the path it was given.
    /// A replica of a deployment serves the deployment's name too.
    pub fn serves(&self, model: &str) -> bool {
        if self.model == model || self.replica.as_ref().is_some_and(|r| r.deployment == model) {
            return true;
        }
        let path = std::path::Path::new(&self.model);
        path.file_name().is_some_and(|n| n == model) || path.file_stem().is_some_and(|n| n == model)
    }
}

/// A worker's heartbeat to its hive (`POST /v1/workers/{id}/heartbeat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WorkerHeartbeat {
    /// The worker's id.
    pub worker_id: String,
    /// `ready`, or `loading` while its engine starts.
    pub status: String,
}

/// A model file on a hive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelInfo {
    /// Its name: the file name under the models directory.
    pub name: String,
    /// Its full path on the host.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256, recorded when rbee downloaded it.
    pub sha256: Option<crate::Sha256>,
}

/// One line of a hive's answer to a forwarded operation.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum HiveEvent {
    /// A log line.
    Log {
        /// The line.
        message: String,
    },
    /// Download progress.
    Progress {
        /// Bytes so far.
        done: u64,
        /// Bytes in all, when known.
        total: Option<u64>,
    },
    /// Generated text, as it streams.
    Token {
        /// The text.
        text: String,
    },
    /// The last line: the result.
    Result {
        /// The result.
        result: crate::result::OperationResult,
    },
}

/// What a hive's `GET /health` answers (no token needed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HiveHealth {
    /// Always `ok` when it answers.
    pub status: String,
    /// The hive's version.
    pub version: String,
    /// sha256 of the binary this process was started from.
    pub sha256: crate::Sha256,
    /// Process id.
    pub pid: u32,
    /// Its link to a queen, as this process runs it (absent: not linked, or a hive from
    /// before links were reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkState>,
}

/// What a running hive reports of its link (never a secret: digests only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LinkState {
    /// The queen's URL it reports to.
    pub queen_url: String,
    /// sha256 of its credential (`hive.token`).
    pub credential: crate::Sha256,
    /// Its TLS identity, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsState>,
}

/// A hive's TLS identity, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TlsState {
    /// sha256 of the CA certificate (PEM text) it trusts.
    pub ca: crate::Sha256,
    /// When its certificate expires (ms since the Unix epoch).
    pub not_after_ms: u64,
}

/// Where the queen is and how often to beat: the hive's `queen.link` file (JSON: url,
/// interval_ms, metrics_public), written by a sync beside `hive.token`, which holds the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QueenLink {
    /// The queen's base URL, e.g. `http://127.0.0.1:8500`.
    pub url: String,
    /// Heartbeat interval.
    pub interval_ms: u64,
    /// Serve `GET /metrics` without the token (`[queen] metrics_public`). Absent in link files
    /// written before it existed: the token is then required, as on every other route.
    #[serde(default)]
    pub metrics_public: bool,
    /// The API token (kept in `hive.token`, never in `queen.link`).
    #[serde(skip)]
    pub token: String,
}

/// One line of the install manifest (`installed/<file name>` in the hive's state directory),
/// written on the host right after an install's rename:
/// `SHA256 SIZE MTIME CTIME INODE VERSION` (times as `stat -c %.9Y`/`%.9Z` print them).
/// The observation script trusts the digest while the file's stat still matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallRecord {
    /// The installed file's digest.
    pub sha256: crate::Sha256,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, as `stat` printed it.
    pub mtime: String,
    /// Change time, as `stat` printed it.
    pub ctime: String,
    /// Inode number.
    pub inode: u64,
    /// The version installed.
    pub version: String,
}

/// An install record that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallRecordError {
    /// Not six space-separated fields.
    #[error("an install record has 6 fields (sha256 size mtime ctime inode version), this one {0}")]
    Fields(usize),
    /// The digest is not one.
    #[error(transparent)]
    Digest(#[from] crate::digest::DigestError),
    /// Size or inode is not a number.
    #[error("the install record's {0} is not a number")]
    Number(&'static str),
}

impl InstallRecord {
    /// Reads one record (its first line).
    pub fn parse(text: &str) -> Result<Self, InstallRecordError> {
        let fields: Vec<&str> = text.lines().next().unwrap_or("").split_whitespace().collect();
        let [sha, size, mtime, ctime, inode, version] = fields[..] else {
            return Err(InstallRecordError::Fields(fields.len()));
        };
        Ok(Self {
            sha256: crate::Sha256::parse(sha)?,
            size: size.parse().map_err(|_| InstallRecordError::Number("size"))?,
            mtime: mtime.to_owned(),
            ctime: ctime.to_owned(),
            inode: inode.parse().map_err(|_| InstallRecordError::Number("inode"))?,
            version: version.to_owned(),
        })
    }

    /// The record as a line (what [`InstallRecord::parse`] reads).
    pub fn format(&self) -> String {
        format!("{} {} {} {} {} {}\n", self.sha256, self.size, self.mtime, self.ctime, self.inode, self.version)
    }
}

/// One GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Gpu {
    /// `cuda:<index>`.
    pub index: u32,
    /// Model name.
    pub name: String,
    /// Total memory in MiB.
    pub memory_total_mib: u64,
    /// Used memory in MiB.
    pub memory_used_mib: u64,
    /// Driver version.
    pub driver: String,
}

/// A host's capabilities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Capabilities {
    /// Logical CPUs.
    pub cpu_cores: usize,
    /// Total RAM in bytes.
    pub ram_bytes: u64,
    /// GPUs found.
    pub gpus: Vec<Gpu>,
    /// Why GPUs could not be listed, when `nvidia-smi` exists but failed.
    pub gpu_error: Option<String>,
    /// The engines `rbee sync` installed, by worker type.
    #[serde(default)]
    pub engines: Vec<EngineInfo>,
}

/// An engine recorded on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EngineInfo {
    /// The worker type it serves.
    pub worker_type: String,
    /// Its id (see `rbee_proto::engine::EngineInstall::id`).
    pub id: String,
    /// The version it reported when installed.
    pub version: String,
    /// Its program (absolute).
    pub program: String,
    /// The program exists.
    pub present: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(model: &str) -> WorkerProcess {
        WorkerProcess {
            id: "w".into(),
            worker_type: "llama-cpp".into(),
            model: model.into(),
            device: "cpu".into(),
            port: 1,
            pid: 1,
            started_ms: 0,
            last_heartbeat_ms: None,
            adopted: false,
            replica: None,
            args: Vec::new(),
            state: WorkerState::Ready,
        }
    }

    #[test]
    fn a_worker_serves_its_model_by_path_file_name_or_stem() {
        let w = worker("/home/u/.local/share/rbee/models/llama-3-8b.gguf");
        for name in ["/home/u/.local/share/rbee/models/llama-3-8b.gguf", "llama-3-8b.gguf", "llama-3-8b"] {
            assert!(w.serves(name), "{name}");
        }
        assert!(!w.serves("llama-3"));
        assert!(worker("meta-llama/Llama-3-8B").serves("meta-llama/Llama-3-8B"));
    }

    #[test]
    fn install_records_round_trip_and_reject_bad_digests() {
        let line = format!("{} 10 1.5 2.5 77 0.1.0\n", "a".repeat(64));
        let r = InstallRecord::parse(&line).unwrap();
        assert_eq!((r.size, r.inode, r.version.as_str()), (10, 77, "0.1.0"));
        assert_eq!(r.format(), line);
        assert!(InstallRecord::parse(&format!("{} 10 1.5 2.5 77 0.1.0", "é".repeat(32))).is_err());
        assert!(InstallRecord::parse("x y").is_err());
    }

    #[test]
    fn states_flatten_into_the_worker() {
        let mut w = worker("m");
        w.state = WorkerState::Crashed { exit_code: None, signal: Some(9), message: "killed".into() };
        let v = serde_json::to_value(&w).unwrap();
        assert_eq!((v["state"].as_str(), v["signal"].as_i64()), (Some("crashed"), Some(9)));
        assert_eq!(serde_json::from_value::<WorkerProcess>(v).unwrap(), w);
    }
}

/// What `GET /v1/logs` on a hive (and `GET /v1/hives/{alias}/logs` on the queen) is asked
/// for, as its query string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LogQuery {
    /// A worker's log; the hive's own log without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// How many of the last lines to send first (default [`LogQuery::DEFAULT_TAIL`], at most
    /// [`LogQuery::MAX_TAIL`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<usize>,
    /// Keep sending lines as they are written, until the caller goes away.
    #[serde(default)]
    pub follow: bool,
}

impl LogQuery {
    /// Lines sent when `tail` is not given.
    pub const DEFAULT_TAIL: usize = 100;
    /// The most lines a tail sends.
    pub const MAX_TAIL: usize = 100_000;

    /// The query string (`worker=…&tail=…&follow=true`), percent-encoded.
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(w) = &self.worker {
            parts.push(format!("worker={}", percent_encode(w)));
        }
        if let Some(t) = self.tail {
            parts.push(format!("tail={t}"));
        }
        if self.follow {
            parts.push("follow=true".to_owned());
        }
        parts.join("&")
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for a query value or a
/// path segment).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One line of a log stream: newline-delimited JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogEvent {
    /// A line of the log (without its newline; bytes that are not UTF-8 are replaced).
    Line {
        /// The line.
        text: String,
    },
    /// The log was rotated: what follows is from the new file.
    Rotated,
    /// Nothing was written for a while; sent so that idle timeouts on the way do not fire.
    Keepalive,
}

#[cfg(test)]
mod log_tests {
    use super::*;

    #[test]
    fn log_queries_encode_what_they_carry() {
        assert_eq!(LogQuery::default().to_query(), "");
        let q = LogQuery { worker: Some("w-1 &x=y".into()), tail: Some(5), follow: true };
        assert_eq!(q.to_query(), "worker=w-1%20%26x%3Dy&tail=5&follow=true");
        let line = serde_json::to_string(&LogEvent::Line { text: "hi".into() }).unwrap();
        assert_eq!(line, r#"{"type":"line","text":"hi"}"#);
    }
}
