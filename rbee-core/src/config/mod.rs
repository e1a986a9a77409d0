//! Configuration: `rbee.conf` (settings) and `hives.conf` (the fleet).

mod load;
mod model;
mod schema;

pub use load::{
    ConfigError, ConfigFiles, Diagnostic, HIVES_CONF, RBEE_CONF, config_dir, home_dir, load, load_dir, parse,
};
pub use model::{
    Config, HiveConfig, HostKeyPolicy, MaxUnavailable, PackageSettings, QueenMode, QueenSettings, SshSettings,
    TransportKind, VersionReq, WORKER_TYPES, WorkerSpec, is_localhost,
};
pub use schema::{DeploymentEntry, HiveEntry, WorkerEntry};
pub(crate) use schema::{HivesConfFile, RbeeConfFile};

/// The JSON Schemas of both files, keyed by file name.
pub fn json_schema() -> serde_json::Value {
    serde_json::json!({
        RBEE_CONF: schemars::schema_for!(RbeeConfFile),
        HIVES_CONF: schemars::schema_for!(HivesConfFile),
    })
}
