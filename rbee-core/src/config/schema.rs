//! The file formats of `rbee.conf` and `hives.conf`, exactly as written on disk.
//!
//! These types are what serde reads (with `deny_unknown_fields`, so a typo is an error) and
//! what `rbee config schema` publishes. Values the validator has to point at keep their
//! location as a [`toml::Spanned`]; the validated, location-free form is in
//! [`super::model`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// `rbee.conf`: settings of the queen and the package manager. Every key is optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RbeeConfFile {
    /// The coordinator daemon.
    #[serde(default)]
    pub queen: QueenSection,
    /// How `rbee sync` installs things.
    #[serde(default)]
    pub package: PackageSection,
    /// How hosts are reached over SSH.
    #[serde(default)]
    pub ssh: SshSection,
}

/// `[queen]` in `rbee.conf`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueenSection {
    /// `standalone`, or `attached-hive` to also run a hive on the queen's host.
    #[serde(default)]
    pub mode: QueenMode,
    /// TCP port of the queen's HTTP API on 127.0.0.1.
    #[serde(default = "default_queen_port")]
    #[schemars(with = "u16")]
    pub port: Spanned<i64>,
    /// Start the queen automatically when a command needs it.
    #[serde(default = "default_true")]
    pub auto_start: bool,
    /// Address the queen's API listens on. Default `127.0.0.1`: only this machine. Use
    /// `0.0.0.0` (with `advertise_url`) when remote hives must reach it for heartbeats; every
    /// request but `/health` still needs the token.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub bind: Option<Spanned<String>>,
    /// The URL hives use to reach the queen, e.g. `http://10.0.0.1:8500`. Default:
    /// `http://<bind>:<port>`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub advertise_url: Option<Spanned<String>>,
    /// With `mode = "attached-hive"`: the alias of the hive the queen runs in its own process
    /// (default `localhost`). Declare it in hives.conf with `transport = "local"` to have its
    /// workers installed; its `hive_port` is where the queen serves it.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub hive_alias: Option<Spanned<String>>,
    /// Seconds a hive may be silent (no heartbeat) before the replicas of deployments on it are
    /// started on other hives, 1..=86400. Default 60.
    #[serde(default = "default_reschedule_after")]
    #[schemars(with = "u32")]
    pub reschedule_after: Spanned<i64>,
    /// The most heartbeats a second the queen asks of its whole fleet, 1..=100000. Default 100:
    /// up to 500 hives beat at the 5 s interval; a larger fleet is told a longer one (10,000
    /// hives: every 100 s), and a silent hive is then seen after three of those.
    #[serde(default = "default_max_heartbeats_per_second")]
    #[schemars(with = "u32")]
    pub max_heartbeats_per_second: Spanned<i64>,
    /// Serve `GET /metrics` (Prometheus) on the queen and on the hives it starts without the
    /// API token. Default false: a scraper sends the token like any client.
    #[serde(default)]
    pub metrics_public: bool,
}

impl Default for QueenSection {
    fn default() -> Self {
        Self {
            mode: QueenMode::default(),
            port: default_queen_port(),
            auto_start: true,
            bind: None,
            advertise_url: None,
            hive_alias: None,
            reschedule_after: default_reschedule_after(),
            max_heartbeats_per_second: default_max_heartbeats_per_second(),
            metrics_public: false,
        }
    }
}

/// How the queen runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum QueenMode {
    /// The queen only coordinates.
    #[default]
    Standalone,
    /// The queen also runs a hive on its own host.
    AttachedHive,
}

/// `[package]` in `rbee.conf`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageSection {
    /// How many hives are installed at the same time.
    #[serde(default = "default_concurrency")]
    #[schemars(with = "u32")]
    pub max_concurrent_installs: Spanned<i64>,
    /// Deadline in seconds for connecting to a host and for each remote step.
    #[serde(default = "default_ssh_timeout")]
    #[schemars(with = "u32")]
    pub ssh_timeout: Spanned<i64>,
    /// Deadline in seconds for a started hive to answer `/health`.
    #[serde(default = "default_health_timeout")]
    #[schemars(with = "u32")]
    pub health_check_timeout: Spanned<i64>,
    /// Where artifacts come from: a directory or an http(s) base URL laid out as
    /// `{source}/{version}/{artifact}`, `{source}/{version}/SHA256SUMS` and `{source}/latest`.
    /// Default: the directory of the running `rbee` executable.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub source: Option<Spanned<String>>,
    /// How many running hives may be restarting at once during an upgrade: a number, or a
    /// percentage of the hives being upgraded such as `"25%"` (the default), rounded up.
    /// Fresh installs on hosts where nothing runs are not limited.
    #[serde(default)]
    #[schemars(with = "Option<CountOrPercent>")]
    pub max_unavailable: Option<Spanned<CountOrPercent>>,
    /// Stop starting upgrades of further hives once this many failed or were rolled back; they
    /// are reported as skipped, untouched. Default: never stop.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub max_failed: Option<Spanned<i64>>,
    /// Accept a plain `http://` source. Off by default: over plain HTTP anyone on the path
    /// can change both the binaries and the SHA256SUMS that vouch for them.
    #[serde(default)]
    pub allow_insecure_source: bool,
}

impl Default for PackageSection {
    fn default() -> Self {
        Self {
            max_concurrent_installs: default_concurrency(),
            ssh_timeout: default_ssh_timeout(),
            health_check_timeout: default_health_timeout(),
            source: None,
            allow_insecure_source: false,
            max_unavailable: None,
            max_failed: None,
        }
    }
}

/// A number, or a percentage written as a string (`"25%"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum CountOrPercent {
    /// A number.
    Count(i64),
    /// `"N%"`.
    Text(String),
}

/// `[ssh]` in `rbee.conf`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SshSection {
    /// `strict` (default): unknown or changed host keys are refused. `accept-new`: unknown
    /// keys are recorded, changed keys are still refused.
    #[serde(default)]
    pub host_key_policy: HostKeyPolicy,
    /// The known_hosts file. Default `~/.ssh/known_hosts`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub known_hosts: Option<Spanned<String>>,
}

/// What to do with a host key that is not in known_hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// Refuse unknown keys.
    #[default]
    Strict,
    /// Record unknown keys on first contact; refuse changed ones.
    AcceptNew,
}

/// `hives.conf`: the fleet.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HivesConfFile {
    /// One entry per host.
    #[serde(default)]
    pub hive: Vec<HiveEntry>,
    /// The models the fleet keeps serving, one entry per deployment.
    // The loader takes these out and reads each table on its own, so that a mistake serde stops
    // at in one is reported with all the others.
    #[serde(default)]
    pub deployment: Vec<DeploymentEntry>,
}

/// One `[[hive]]` in `hives.conf`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HiveEntry {
    /// Unique name of the host in rbee; `[a-z0-9][a-z0-9._-]*`.
    #[schemars(with = "String")]
    pub alias: Spanned<String>,
    /// DNS name, IP address or `~/.ssh/config` host alias.
    #[schemars(with = "String")]
    pub hostname: Spanned<String>,
    /// SSH user. Default: the user from `~/.ssh/config`, else the current user.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub ssh_user: Option<Spanned<String>>,
    /// SSH port.
    #[serde(default = "default_ssh_port")]
    #[schemars(with = "u16")]
    pub ssh_port: Spanned<i64>,
    /// Identity file for this host.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub ssh_key: Option<Spanned<String>>,
    /// Port the hive daemon listens on.
    #[serde(default = "default_hive_port")]
    #[schemars(with = "u16")]
    pub hive_port: Spanned<i64>,
    /// The workers this hive must have.
    #[serde(default)]
    pub workers: Vec<WorkerEntry>,
    /// Start the hive after installing it.
    #[serde(default = "default_true")]
    pub auto_start: bool,
    /// `local` or `ssh`. Default: `local` for localhost with no SSH options, else `ssh`.
    #[serde(default)]
    pub transport: Option<TransportKind>,
    /// For a `local` hive: the directory used as its home (default: `$HOME`). Lets several
    /// local hives live side by side on one machine.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub local_home: Option<Spanned<String>>,
}

/// One entry of `workers = [...]`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerEntry {
    /// Worker type: `llama-cpp`, `vllm` or `comfyui`.
    #[serde(rename = "type")]
    #[schemars(with = "String")]
    pub kind: Spanned<String>,
    /// `latest` or an exact semver version.
    #[serde(default = "default_latest")]
    #[schemars(with = "String")]
    pub version: Spanned<String>,
    /// Where the worker's engine comes from; one key. Default for `llama-cpp`:
    /// `{ artifact = "auto" }`; `vllm` and `comfyui` have none: without it their launchers are
    /// installed, but a worker of theirs cannot start (no launcher looks for an engine on the
    /// host's PATH; declare `{ path = … }` for one installed by hand).
    #[serde(default)]
    pub engine: Option<EngineEntry>,
}

/// `engine = { … }` of a worker entry: exactly one of its keys.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EngineEntry {
    /// From the artifact source: `engine-<type>-<variant>.tar.gz`, variant `auto` (`cuda12`
    /// on hosts with an NVIDIA GPU when the source has it, else `cpu`), `cpu`, `cuda12`, …
    /// (llama-cpp).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub artifact: Option<Spanned<String>>,
    /// A pip requirement installed into a venv on the host, e.g. `vllm==0.6.3` (vllm). With a
    /// wheelhouse in the artifact source (`<version>/wheels/*.whl` in SHA256SUMS), pip installs
    /// only from it (`--no-index`), for hosts without internet.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub pip: Option<Spanned<String>>,
    /// An absolute path to an engine program installed by hand; sync only checks it.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub path: Option<Spanned<String>>,
}

/// One `[[deployment]]` in `hives.conf`: a model the fleet keeps serving, on `replicas` workers
/// spread over its hives.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentEntry {
    /// Unique name of the deployment, the `model` clients ask for; `[a-z0-9][a-z0-9._-]*`.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// The model file: an `http://` or `https://` URL (then `sha256` is required), or an
    /// absolute path on the hive host.
    #[schemars(with = "String")]
    pub model: Spanned<String>,
    /// The model's sha256 digest, 64 hex digits. Required when `model` is a URL; with a path,
    /// the file is checked and copied into the hive's models directory.
    #[serde(default)]
    #[schemars(with = "Option<rbee_proto::Sha256>")]
    pub sha256: Option<Spanned<String>>,
    /// The worker type that serves it (`llama-cpp`, `vllm` or `comfyui`). Every hive the
    /// deployment may use must declare it in its `workers`.
    #[schemars(with = "String")]
    pub worker: Spanned<String>,
    /// How many replicas serve it, 1..=1000. Default 1.
    #[serde(default = "default_replicas")]
    #[schemars(with = "u32")]
    pub replicas: Spanned<i64>,
    /// The hives (aliases) its replicas may run on, without duplicates. Default: every hive
    /// whose `workers` include `worker`, in file order.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub hives: Option<Spanned<Vec<Spanned<String>>>>,
    /// Where each replica runs: `cpu`, `cuda` (any free GPU) or `cuda:N` (GPU N). Default
    /// `cpu`.
    #[serde(default)]
    #[schemars(with = "Option<rbee_proto::deployment::Device>")]
    pub device: Option<Spanned<String>>,
    /// With a `cuda` device: a GPU must have this many MiB free to take a replica.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub gpu_memory_mib: Option<Spanned<i64>>,
    /// Let replicas share a GPU (with each other and with other deployments). Default false:
    /// one replica per GPU.
    #[serde(default)]
    pub share_gpu: bool,
    /// Arguments for the engine, each passed as one argv entry (never through a shell): at most
    /// 256, each at most 4096 bytes, without control characters.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub args: Vec<Spanned<String>>,
    /// Seconds a new replica may take to become ready before it counts as failed,
    /// 1..=86400. Default 600.
    #[serde(default = "default_ready_timeout")]
    #[schemars(with = "u32")]
    pub ready_timeout: Spanned<i64>,
    /// Seconds a replaced replica may go on finishing its in-flight requests, 0..=86400
    /// (0: stop it at once). Default 30.
    #[serde(default = "default_drain_timeout")]
    #[schemars(with = "u32")]
    pub drain_timeout: Spanned<i64>,
}

pub use rbee_proto::config::TransportKind;

fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}
fn default_true() -> bool {
    true
}
fn default_queen_port() -> Spanned<i64> {
    unspanned(8500)
}
fn default_concurrency() -> Spanned<i64> {
    unspanned(10)
}
fn default_ssh_timeout() -> Spanned<i64> {
    unspanned(30)
}
fn default_health_timeout() -> Spanned<i64> {
    unspanned(60)
}
fn default_reschedule_after() -> Spanned<i64> {
    unspanned(secs(rbee_proto::deployment::DEFAULT_RESCHEDULE_AFTER_MS))
}
fn default_max_heartbeats_per_second() -> Spanned<i64> {
    unspanned(i64::from(rbee_proto::operation::DEFAULT_MAX_HEARTBEATS_PER_SECOND))
}
fn default_replicas() -> Spanned<i64> {
    unspanned(1)
}
fn default_ready_timeout() -> Spanned<i64> {
    unspanned(secs(rbee_proto::deployment::DEFAULT_READY_TIMEOUT_MS))
}
fn default_drain_timeout() -> Spanned<i64> {
    unspanned(secs(rbee_proto::deployment::DEFAULT_DRAIN_TIMEOUT_MS))
}
fn secs(ms: u64) -> i64 {
    i64::try_from(ms / 1000).unwrap_or(i64::MAX)
}
fn default_ssh_port() -> Spanned<i64> {
    unspanned(22)
}
fn default_hive_port() -> Spanned<i64> {
    unspanned(8600)
}
fn default_latest() -> Spanned<String> {
    unspanned("latest".to_owned())
}
