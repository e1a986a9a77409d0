//! The validated configuration: what the rest of rbee works with.

use std::path::PathBuf;
use std::time::Duration;

use rbee_proto::deployment::DeploymentSpec;
pub use rbee_proto::engine::EngineSource;
use serde::Serialize;

pub use super::schema::{HostKeyPolicy, QueenMode, TransportKind};

/// The worker types rbee knows how to install. Each maps to a binary `rbee-worker-<type>`.
/// `reference` is the worker contract's reference implementation (a deterministic echo model,
/// no engine): it proves a fleet end to end — sync, deployments, routing — without GPUs or
/// weights, and it is what rbee's own tests deploy.
pub const WORKER_TYPES: &[&str] = &["llama-cpp", "vllm", "comfyui", "reference"];

/// A validated `rbee.conf` + `hives.conf`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// `[queen]`.
    pub queen: QueenSettings,
    /// `[package]`.
    pub package: PackageSettings,
    /// `[ssh]`.
    pub ssh: SshSettings,
    /// The fleet, in file order.
    pub hives: Vec<HiveConfig>,
    /// `[[deployment]]`: the models the fleet keeps serving, in file order.
    pub deployments: Vec<DeploymentSpec>,
}

impl Config {
    /// The hive declared with this alias.
    pub fn hive(&self, alias: &str) -> Option<&HiveConfig> {
        self.hives.iter().find(|h| h.alias == alias)
    }

    /// The deployment declared with this name.
    pub fn deployment(&self, name: &str) -> Option<&DeploymentSpec> {
        self.deployments.iter().find(|d| d.name == name)
    }
}

/// `[queen]` settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueenSettings {
    /// How the queen runs.
    pub mode: QueenMode,
    /// HTTP port of the queen.
    pub port: u16,
    /// Start the queen when a command needs it.
    pub auto_start: bool,
    /// Address the API listens on.
    pub bind: std::net::IpAddr,
    /// The URL hives use to reach the queen.
    pub advertise_url: String,
    /// With [`QueenMode::AttachedHive`]: the alias of the hive the queen runs itself.
    pub hive_alias: String,
    /// How long a hive may be silent before its deployments' replicas are started elsewhere.
    pub reschedule_after: Duration,
    /// The most heartbeats a second the queen asks of its fleet (it lengthens the interval it
    /// tells each hive as the fleet grows).
    pub max_heartbeats_per_second: u32,
    /// `GET /metrics` needs no token, on the queen and on the hives it starts.
    pub metrics_public: bool,
}

/// `[package]` settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PackageSettings {
    /// Hives installed at the same time.
    pub max_concurrent_installs: usize,
    /// Deadline for connecting and for each remote step.
    pub ssh_timeout: Duration,
    /// Deadline for a started hive to become healthy.
    pub health_check_timeout: Duration,
    /// Where artifacts come from; `None` means the directory of the running executable.
    pub source: Option<String>,
    /// How many running hives may be restarting at once during an upgrade.
    pub max_unavailable: MaxUnavailable,
    /// Stop starting hive upgrades once this many hives failed or were rolled back.
    pub max_failed: Option<usize>,
}

impl PackageSettings {
    /// A warning to show before installing from this source, if it is plain HTTP (which a
    /// valid config allows only with `allow_insecure_source = true`).
    pub fn insecure_source_warning(&self) -> Option<String> {
        let source = self.source.as_deref().filter(|s| s.starts_with("http://"))?;
        Some(format!(
            "warning: artifacts come from {source} over plain HTTP (allow_insecure_source = true): anyone on the \
             network path can change them and their SHA256SUMS; use https:// where you can"
        ))
    }
}

/// `[package] max_unavailable`: a number of hives, or a percentage of the hives being
/// restarted (rounded up); never less than one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxUnavailable {
    /// This many hives.
    Count(usize),
    /// This percentage (1..=100) of the hives a run restarts.
    Percent(u32),
}

impl Default for MaxUnavailable {
    fn default() -> Self {
        MaxUnavailable::Percent(25)
    }
}

impl MaxUnavailable {
    /// How many of `restarting` hives may be down at once (at least 1).
    pub fn of(self, restarting: usize) -> usize {
        match self {
            MaxUnavailable::Count(n) => n.max(1),
            MaxUnavailable::Percent(p) => (restarting * p as usize).div_ceil(100).max(1),
        }
    }
}

/// `[ssh]` settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SshSettings {
    /// Unknown host keys: refuse or record.
    pub host_key_policy: HostKeyPolicy,
    /// known_hosts file, if not the default.
    pub known_hosts: Option<PathBuf>,
}

/// One declared hive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HiveConfig {
    /// Unique, path- and shell-safe name.
    pub alias: String,
    /// Where the host is.
    pub hostname: String,
    /// SSH user, if set.
    pub ssh_user: Option<String>,
    /// SSH port.
    pub ssh_port: u16,
    /// Identity file, if set.
    pub ssh_key: Option<PathBuf>,
    /// Port of the hive daemon.
    pub hive_port: u16,
    /// Declared workers, sorted by type.
    pub workers: Vec<WorkerSpec>,
    /// Start the hive after installing.
    pub auto_start: bool,
    /// How the host is reached (resolved: never ambiguous).
    pub transport: TransportKind,
    /// Home directory of a local hive, if not `$HOME`.
    pub local_home: Option<PathBuf>,
    /// The queen runs this hive in its own process (`mode = "attached-hive"`): a sync installs
    /// its workers but neither installs nor starts a hive daemon.
    pub attached: bool,
}

/// A declared worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerSpec {
    /// One of [`WORKER_TYPES`].
    pub kind: String,
    /// Requested version.
    pub version: VersionReq,
    /// Where its engine comes from; `None`: unmanaged.
    pub engine: Option<EngineSource>,
}

/// A requested version: the newest, or exactly this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum VersionReq {
    /// Whatever the source calls newest, resolved when planning.
    Latest,
    /// Exactly this version.
    Exact(semver::Version),
}

impl std::fmt::Display for VersionReq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionReq::Latest => f.write_str("latest"),
            VersionReq::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// True for hostnames that name this machine.
pub fn is_localhost(hostname: &str) -> bool {
    matches!(hostname, "localhost" | "127.0.0.1" | "::1")
}
