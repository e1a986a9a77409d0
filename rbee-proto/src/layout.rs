//! Every path rbee uses on a host. The one source of truth: install, observe, uninstall and
//! the hive's worker catalog all ask [`Layout`].
//!
//! Paths are relative to the home directory of the user rbee logs in as; transports run
//! commands in that home, so the same relative path works locally and over SSH.

/// File name of the hive binary.
pub const HIVE_BINARY: &str = "rbee-hive";
/// Prefix of worker binaries: `rbee-worker-<type>`.
pub const WORKER_PREFIX: &str = "rbee-worker-";

/// Paths on a host, relative to its home directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layout;

impl Layout {
    /// Directory of the hive binary.
    pub const BIN_DIR: &'static str = ".local/bin";
    /// The worker catalog: worker binaries, written only by sync.
    pub const WORKERS_DIR: &'static str = ".local/share/rbee/workers";
    /// Models downloaded on demand.
    pub const MODELS_DIR: &'static str = ".local/share/rbee/models";
    /// Engines installed by sync: `<type>/<id>/` and the record `<type>/current`.
    pub const ENGINES_DIR: &'static str = ".local/share/rbee/engines";
    /// rbee's data directory (parent of workers and models).
    pub const DATA_DIR: &'static str = ".local/share/rbee";
    /// Pid file, log, install manifest, lock.
    pub const STATE_DIR: &'static str = ".local/state/rbee";

    /// The hive binary.
    pub fn hive_binary() -> String {
        format!("{}/{HIVE_BINARY}", Self::BIN_DIR)
    }
    /// The file name of a worker type's binary.
    pub fn worker_file_name(kind: &str) -> String {
        format!("{WORKER_PREFIX}{kind}")
    }
    /// A worker binary in the catalog.
    pub fn worker_binary(kind: &str) -> String {
        format!("{}/{}", Self::WORKERS_DIR, Self::worker_file_name(kind))
    }
    /// The directory of a worker type's engines.
    pub fn engine_dir(kind: &str) -> String {
        format!("{}/{kind}", Self::ENGINES_DIR)
    }
    /// The record of a worker type's installed engine (see [`crate::engine`]).
    pub fn engine_record(kind: &str) -> String {
        format!("{}/{kind}/current", Self::ENGINES_DIR)
    }
    /// The running hive's pid.
    pub fn hive_pid() -> String {
        format!("{}/hive.pid", Self::STATE_DIR)
    }
    /// The hive's log.
    pub fn hive_log() -> String {
        format!("{}/hive.log", Self::STATE_DIR)
    }
    /// The install manifest: one record per installed binary (`installed/<file name>`:
    /// sha256, size, mtime, ctime, inode, version), written on the host right after the rename.
    pub fn installed_dir() -> String {
        format!("{}/installed", Self::STATE_DIR)
    }
    /// The binaries an upgrade replaced (`previous/<file name>`, with `<file name>.record`,
    /// its install record), kept for a rollback.
    pub fn previous_dir() -> String {
        format!("{}/previous", Self::STATE_DIR)
    }
    /// Where the queen is, for heartbeats (JSON: url, interval_ms).
    pub fn queen_link() -> String {
        format!("{}/queen.link", Self::STATE_DIR)
    }
    /// The token the hive requires and sends (mode 0600).
    pub fn hive_token() -> String {
        format!("{}/hive.token", Self::STATE_DIR)
    }
    /// The hive's TLS identity from the queen's CA: `ca.pem`, `hive.pem`, `hive.key` (0600).
    pub fn hive_tls_dir() -> String {
        format!("{}/tls", Self::STATE_DIR)
    }
    /// The CA certificate the hive trusts (the queen's).
    pub fn hive_tls_ca() -> String {
        format!("{}/ca.pem", Self::hive_tls_dir())
    }
    /// The hive's certificate.
    pub fn hive_tls_cert() -> String {
        format!("{}/hive.pem", Self::hive_tls_dir())
    }
    /// The hive's private key (mode 0600).
    pub fn hive_tls_key() -> String {
        format!("{}/hive.key", Self::hive_tls_dir())
    }
    /// The hive's worker registry: one `<id>.json` (and `<id>.log`) per worker process, so a
    /// restarted hive re-adopts live workers and clears dead ones.
    pub fn worker_registry_dir() -> String {
        format!("{}/workers", Self::STATE_DIR)
    }
    /// The per-host sync lock (a directory: `mkdir` is atomic everywhere).
    pub fn lock_dir() -> String {
        format!("{}/sync.lock", Self::STATE_DIR)
    }
    /// Files and directories of the state directory that belong to the hive: what
    /// `rbee uninstall --purge` removes there, and nothing else (a queen or another program
    /// may keep its own files beside them).
    pub fn hive_state_entries() -> [String; 9] {
        [
            Self::hive_tls_dir(),
            Self::previous_dir(),
            Self::hive_pid(),
            Self::hive_log(),
            // The log as rotated by its cap (`RBEE_LOG_MAX_BYTES`).
            format!("{}.1", Self::hive_log()),
            Self::hive_token(),
            Self::queen_link(),
            Self::installed_dir(),
            Self::worker_registry_dir(),
        ]
    }
    /// A staging name for an upload next to its target, so the final rename is atomic.
    pub fn staging(target: &str, sha256: &crate::Sha256) -> String {
        let (dir, name) = target.rsplit_once('/').unwrap_or((".", target));
        format!("{dir}/.{name}.rbee-tmp-{}", sha256.short())
    }
}
