//! The wire contract keeper → queen → hive: one [`Operation`] per request.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything a client can ask rbee to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Operation {
    // --- package manager (the queen) ---
    /// Make the hosts match the config.
    PackageSync {
        /// Config directory or hives.conf; `None` for the default.
        config_path: Option<PathBuf>,
        /// Plan only.
        dry_run: bool,
        /// Remove undeclared workers.
        remove_extra: bool,
        /// Reinstall and restart everything.
        force: bool,
        /// Only these hives (empty: all).
        #[serde(default)]
        hive_aliases: Vec<String>,
        /// At most this many running hives restarting at once (overrides
        /// `[package] max_unavailable`).
        #[serde(default)]
        batch: Option<u32>,
        /// Refuse any artifact rbee.lock does not pin, and leave the lock as it is.
        #[serde(default)]
        locked: bool,
    },
    /// Return hives to the binaries their last upgrade replaced.
    PackageRollback {
        /// Config directory or hives.conf.
        config_path: Option<PathBuf>,
        /// Only these hives (empty: all).
        #[serde(default)]
        hive_aliases: Vec<String>,
    },
    /// Report drift between config and hosts.
    PackageStatus {
        /// Config directory or hives.conf.
        config_path: Option<PathBuf>,
        /// Include per-file detail.
        verbose: bool,
        /// Only these hives (empty: all).
        #[serde(default)]
        hive_aliases: Vec<String>,
    },
    /// Install (without removing extras) one hive or all.
    PackageInstall {
        /// Config directory or hives.conf.
        config_path: Option<PathBuf>,
        /// Reinstall even if in sync.
        force: bool,
        /// One hive, or all.
        hive_alias: Option<String>,
    },
    /// Stop and remove what rbee installed.
    PackageUninstall {
        /// Config directory or hives.conf.
        #[serde(default)]
        config_path: Option<PathBuf>,
        /// One hive, or all.
        hive_alias: Option<String>,
        /// Also remove rbee's state on the host.
        purge: bool,
    },
    /// Validate the config files.
    PackageValidate {
        /// Config directory or hives.conf.
        config_path: Option<PathBuf>,
    },
    /// Write a hives.conf describing what runs now.
    PackageMigrate {
        /// Where to write it.
        output_path: PathBuf,
    },

    // --- hive daemons (the queen) ---
    /// Start a hive daemon.
    HiveStart {
        /// The hive.
        alias: String,
        /// Config directory or hives.conf.
        #[serde(default)]
        config_path: Option<PathBuf>,
    },
    /// Stop a hive daemon.
    HiveStop {
        /// The hive.
        alias: String,
        /// Config directory or hives.conf.
        #[serde(default)]
        config_path: Option<PathBuf>,
    },
    /// All known hives.
    HiveList,
    /// One hive's registry entry.
    HiveGet {
        /// The hive.
        alias: String,
    },
    /// One hive's live status.
    HiveStatus {
        /// The hive.
        alias: String,
    },
    /// One hive's hardware.
    HiveCapabilities {
        /// The hive.
        alias: String,
    },

    // --- worker processes (forwarded to the hive) ---
    /// Start a worker process.
    WorkerSpawn {
        /// The hive.
        hive_alias: String,
        /// Worker type.
        worker_type: String,
        /// Model path on the host.
        model: String,
        /// `cpu` or `cuda:N`.
        device: String,
        /// How long to wait for its first heartbeat (default 120 s).
        #[serde(default)]
        ready_timeout_ms: Option<u64>,
        /// Arguments for the engine, passed as argv after `--` (never through a shell).
        #[serde(default)]
        args: Vec<String>,
        /// The deployment replica this worker is (kept with the worker on the hive).
        #[serde(default)]
        replica: Option<crate::deployment::ReplicaLabel>,
        /// Answer at once with the worker `starting` instead of waiting for it to be ready;
        /// its state then reaches the queen by heartbeats (a crash stays listed until deleted).
        #[serde(default)]
        no_wait: bool,
    },
    /// The hive's worker processes.
    WorkerProcessList {
        /// The hive.
        hive_alias: String,
    },
    /// One worker process.
    WorkerProcessGet {
        /// The hive.
        hive_alias: String,
        /// The worker.
        worker_id: String,
    },
    /// Stop a worker process.
    WorkerProcessDelete {
        /// The hive.
        hive_alias: String,
        /// The worker.
        worker_id: String,
        /// SIGTERM, then SIGKILL after this long (default 10 s).
        #[serde(default)]
        grace_ms: Option<u64>,
    },
    /// Re-read the worker catalog after a sync changed it.
    WorkerCatalogRefresh {
        /// The hive.
        hive_alias: String,
    },

    // --- models (forwarded) ---
    /// Download a model onto a hive.
    ModelDownload {
        /// The hive.
        hive_alias: String,
        /// http(s) URL or local path.
        source: String,
        /// Expected sha256, if known.
        sha256: Option<crate::Sha256>,
        /// File name under the models directory (default: the source's last path segment).
        #[serde(default)]
        name: Option<String>,
    },
    /// Models on a hive.
    ModelList {
        /// The hive.
        hive_alias: String,
    },
    /// One model.
    ModelGet {
        /// The hive.
        hive_alias: String,
        /// The model.
        name: String,
    },
    /// Delete a model.
    ModelDelete {
        /// The hive.
        hive_alias: String,
        /// The model.
        name: String,
    },

    // --- inference (forwarded to the chosen hive) ---
    /// Run a prompt on a worker serving `model`.
    Infer {
        /// Restrict to this hive.
        hive_alias: Option<String>,
        /// The model.
        model: String,
        /// The prompt.
        prompt: String,
        /// Token limit.
        max_tokens: Option<u32>,
    },

    // --- removed imperative operations: rejected with guidance ---
    /// Removed: declare the hive in hives.conf and run `rbee sync`.
    HiveInstall {
        /// Ignored.
        #[serde(default)]
        alias: Option<String>,
    },
    /// Removed: remove the hive from hives.conf and run `rbee uninstall --hive`.
    HiveUninstall {
        /// Ignored.
        #[serde(default)]
        alias: Option<String>,
    },
    /// Removed: declare the worker in hives.conf and run `rbee sync`.
    WorkerDownload {
        /// Ignored.
        #[serde(default)]
        worker_type: Option<String>,
    },
    /// Removed: declare the worker in hives.conf and run `rbee sync`.
    WorkerBuild {
        /// Ignored.
        #[serde(default)]
        worker_type: Option<String>,
    },
    /// Removed: remove the worker from hives.conf and run `rbee sync --remove-extra`.
    WorkerBinaryDelete {
        /// Ignored.
        #[serde(default)]
        worker_type: Option<String>,
    },
}

/// A hive's heartbeat to the queen (`POST /v1/heartbeats`), every few seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Heartbeat {
    /// The hive's alias.
    pub alias: String,
    /// Its version.
    pub version: String,
    /// Digest of its binary.
    pub sha256: crate::Sha256,
    /// Its pid.
    pub pid: u32,
    /// Its port.
    pub port: u16,
    /// How often it beats; the queen calls it stale after three missed beats.
    pub interval_ms: u64,
    /// Worker types in its catalog.
    pub workers: Vec<String>,
    /// Installed version of each worker type, from the install records.
    #[serde(default)]
    pub installed: std::collections::BTreeMap<String, String>,
    /// The hive's home directory.
    #[serde(default)]
    pub home: String,
    /// Its worker processes.
    #[serde(default)]
    pub processes: Vec<crate::hive::WorkerProcess>,
    /// Its GPUs (from `nvidia-smi`; empty without).
    #[serde(default)]
    pub gpus: Vec<crate::hive::Gpu>,
    /// The models in its models directory.
    #[serde(default)]
    pub models: Vec<crate::hive::ModelInfo>,
    /// It serves TLS (with a certificate from the queen's CA): the queen calls it over https.
    #[serde(default)]
    pub tls: bool,
}

/// How many heartbeats a second a queen asks of its fleet unless configured
/// (`[queen] max_heartbeats_per_second`).
pub const DEFAULT_MAX_HEARTBEATS_PER_SECOND: u32 = 100;

/// The shortest heartbeat interval a queen accepts or asks for (ms).
pub const MIN_HEARTBEAT_INTERVAL_MS: u64 = 100;
/// The longest heartbeat interval a queen accepts or asks for (ms): ten minutes.
pub const MAX_HEARTBEAT_INTERVAL_MS: u64 = 10 * 60 * 1000;

/// `ms` within [`MIN_HEARTBEAT_INTERVAL_MS`]..=[`MAX_HEARTBEAT_INTERVAL_MS`]: what a queen makes
/// of the interval a hive reports, and a hive of the one a queen asks for.
pub fn heartbeat_interval_ms(ms: u64) -> u64 {
    ms.clamp(MIN_HEARTBEAT_INTERVAL_MS, MAX_HEARTBEAT_INTERVAL_MS)
}

/// The interval a queen asks of each hive ([`HeartbeatAck`]) when `hives` hives beat and at
/// most `per_second` beats a second are wanted: the configured `base_ms`, or longer once the
/// fleet is larger than `per_second` × `base_ms` allows; within
/// [`MIN_HEARTBEAT_INTERVAL_MS`]..=[`MAX_HEARTBEAT_INTERVAL_MS`].
pub fn paced_interval_ms(base_ms: u64, hives: usize, per_second: u32) -> u64 {
    let hives = u64::try_from(hives).unwrap_or(u64::MAX);
    let spread_ms = hives.saturating_mul(1000).div_ceil(u64::from(per_second.max(1)));
    heartbeat_interval_ms(base_ms.max(spread_ms))
}

/// The queen's answer to a [`Heartbeat`]: when to send the next one. The queen paces its
/// fleet: with more hives than `max_heartbeats_per_second` × the configured interval allows,
/// each hive is told a longer interval (as Nomad scales its heartbeat TTL with the number of
/// nodes), and calls a hive stale after three of the intervals it told it. A hive beats at
/// once anyway when one of its workers changes state. An older queen answered 204 with no
/// body: the hive then keeps its own interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HeartbeatAck {
    /// Milliseconds until the next heartbeat.
    pub interval_ms: u64,
}

/// A removed imperative operation, with what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} was removed: {instead}")]
pub struct RemovedOperation {
    /// The operation's wire name.
    pub name: &'static str,
    /// The declarative replacement.
    pub instead: &'static str,
}

impl Operation {
    /// Its wire name (the `type` tag), e.g. `worker_spawn`.
    pub fn wire_name(&self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v["type"].as_str().map(str::to_owned)).unwrap_or_default()
    }

    /// True for operations the queen forwards to a hive's API; package and hive-daemon
    /// operations always stay in the queen.
    pub fn should_forward_to_hive(&self) -> bool {
        matches!(
            self,
            Operation::WorkerSpawn { .. }
                | Operation::WorkerProcessList { .. }
                | Operation::WorkerProcessGet { .. }
                | Operation::WorkerProcessDelete { .. }
                | Operation::WorkerCatalogRefresh { .. }
                | Operation::ModelDownload { .. }
                | Operation::ModelList { .. }
                | Operation::ModelGet { .. }
                | Operation::ModelDelete { .. }
                | Operation::Infer { .. }
        )
    }

    /// The hive a forwarded operation names (`None` for `Infer` without one: the queen picks).
    pub fn hive_alias(&self) -> Option<&str> {
        match self {
            Operation::WorkerSpawn { hive_alias, .. }
            | Operation::WorkerProcessList { hive_alias }
            | Operation::WorkerProcessGet { hive_alias, .. }
            | Operation::WorkerProcessDelete { hive_alias, .. }
            | Operation::WorkerCatalogRefresh { hive_alias }
            | Operation::ModelDownload { hive_alias, .. }
            | Operation::ModelList { hive_alias }
            | Operation::ModelGet { hive_alias, .. }
            | Operation::ModelDelete { hive_alias, .. } => Some(hive_alias),
            Operation::Infer { hive_alias, .. } => hive_alias.as_deref(),
            Operation::HiveStart { alias, .. }
            | Operation::HiveStop { alias, .. }
            | Operation::HiveGet { alias }
            | Operation::HiveStatus { alias }
            | Operation::HiveCapabilities { alias } => Some(alias),
            _ => None,
        }
    }

    /// `Err` for the removed imperative operations, naming `rbee sync`.
    pub fn check_supported(&self) -> Result<(), RemovedOperation> {
        let (name, instead) = match self {
            Operation::HiveInstall { .. } => ("hive_install", "declare the hive in hives.conf, then run `rbee sync`"),
            Operation::HiveUninstall { .. } => (
                "hive_uninstall",
                "remove the hive from hives.conf and run `rbee uninstall --hive ALIAS`; `rbee sync` keeps the rest in shape",
            ),
            Operation::WorkerDownload { .. } => {
                ("worker_download", "declare the worker in the hive's `workers` in hives.conf, then run `rbee sync`")
            }
            Operation::WorkerBuild { .. } => {
                ("worker_build", "declare the worker in the hive's `workers` in hives.conf, then run `rbee sync`")
            }
            Operation::WorkerBinaryDelete { .. } => {
                ("worker_binary_delete", "remove the worker from hives.conf, then run `rbee sync --remove-extra`")
            }
            _ => return Ok(()),
        };
        Err(RemovedOperation { name, instead })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_tagged_snake_case() {
        let op = Operation::WorkerProcessList { hive_alias: "gpu-1".into() };
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(json, r#"{"type":"worker_process_list","hive_alias":"gpu-1"}"#);
        assert_eq!(op.wire_name(), "worker_process_list");
        assert_eq!(serde_json::from_str::<Operation>(&json).unwrap(), op);
    }

    #[test]
    fn removed_operations_name_rbee_sync() {
        for json in [
            r#"{"type":"hive_install","alias":"x"}"#,
            r#"{"type":"hive_uninstall"}"#,
            r#"{"type":"worker_download"}"#,
            r#"{"type":"worker_build"}"#,
            r#"{"type":"worker_binary_delete"}"#,
        ] {
            let op: Operation = serde_json::from_str(json).unwrap();
            let err = op.check_supported().unwrap_err().to_string();
            assert!(err.contains("rbee sync") || err.contains("rbee uninstall"), "{err}");
            assert!(err.contains("was removed"), "{err}");
        }
    }

    #[test]
    fn forwarding() {
        assert!(Operation::ModelList { hive_alias: "a".into() }.should_forward_to_hive());
        assert!(!Operation::HiveList.should_forward_to_hive());
        assert!(
            !Operation::PackageUninstall { config_path: None, hive_alias: None, purge: false }.should_forward_to_hive()
        );
    }
}
