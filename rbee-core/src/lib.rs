//! # rbee-core
//!
//! The library behind `rbee sync`: one pipeline, each stage a plain function or trait.
//!
//! ```text
//! hives.conf + rbee.conf ──config::load_dir / config::parse──▶ Config
//! Config + ArtifactSource ──artifact::resolve──▶ Desired   (every artifact pinned: version + sha256)
//! each host ──fleet::observe_fleet (1 round trip per host over a Transport)──▶ Actual
//! plan(&Desired, &Actual, &PlanOptions) ──▶ Plan           (pure, deterministic DAG of actions)
//! ```
//!
//! Then `execute::execute(&Desired, &Planned, …, on_event) -> SyncReport` runs the plan:
//! hives concurrently, each under a per-host lock, atomic verified installs, typed
//! [`execute::SyncEvent`]s to a callback.
//!
//! Entry points: [`config::load`] / [`config::parse`], [`artifact::resolve`],
//! [`fleet::connect_fleet`] + [`fleet::observe_fleet`], [`plan::plan`], [`execute::execute`];
//! or the whole operations at once in [`package`] (`sync`, `status`, `uninstall`). Hosts are
//! reached through the [`transport::Transport`] trait; [`transport::LocalTransport`] is built
//! in (and, with the `test-util` feature, a scriptable `transport::MockTransport` for tests),
//! SSH is in the `rbee-ssh` crate.
//!
//! Planning a sync for a config given as a string:
//!
//! ```
//! use std::path::Path;
//! use rbee_core::artifact::{ArtifactSource, resolve};
//! use rbee_core::config;
//! use rbee_core::plan::{PlanOptions, plan};
//! use rbee_core::state::{Actual, HiveState, Observed};
//!
//! let hives = r#"
//! [[hive]]
//! alias = "gpu-1"
//! hostname = "localhost"
//! workers = [{ type = "vllm", version = "latest" }]
//! "#;
//! let config = config::parse(None, (Path::new("hives.conf"), hives))?;
//! // Where the binaries come from: here, bytes in memory; usually a release directory.
//! let source = ArtifactSource::memory("1.0.0", [
//!     ("rbee-hive", b"hive binary".to_vec()),
//!     ("rbee-worker-vllm", b"vllm worker".to_vec()),
//! ]);
//! let desired = resolve(&config, &source)?;
//! // What the host has: nothing yet. `fleet::observe_fleet` reads this from real hosts.
//! let mut actual = Actual::default();
//! actual.hives.insert("gpu-1".into(), HiveState::Reachable(Observed::default()));
//!
//! let plan = plan(&desired, &actual, &PlanOptions::default());
//! assert_eq!(plan.summary().install, 2);
//! println!("{plan}"); // the `rbee sync --dry-run` text; `plan.to_json()` for JSON
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

/// Shell function for the scripts that find the running hive: `is_hive PID` is true when that
/// process runs the installed hive binary `$bin` (a path relative to the home directory) — its
/// executable, not its command line (any process may put "rbee-hive" in its arguments). After
/// an upgrade renamed a new binary into place, the old process's executable reads
/// "… (deleted)"; it is still the hive. Never pid 0 or 1.
macro_rules! sh_is_hive {
    () => {
        r#"is_hive() {
  case "$1" in ''|0|1|*[!0-9]*) return 1 ;; esac
  kill -s 0 "$1" 2>/dev/null || return 1
  e=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
  d=$(cd "$(dirname "$bin")" 2>/dev/null && pwd -P) || return 1
  n=$(basename "$bin")
  [ "$e" = "$d/$n" ] || [ "$e" = "$d/$n (deleted)" ]
}
"#
    };
}

pub mod artifact;
pub mod config;
pub mod execute;
pub mod fleet;
pub mod layout;
pub mod observe;
pub mod package;
pub mod pidfile;
pub mod plan;
pub mod state;
pub mod transport;

#[cfg(test)]
mod interaction_tests;

pub use rbee_proto as proto;
pub use rbee_proto::Sha256;

pub use config::{Config, ConfigError};
pub use plan::{Plan, PlanOptions, plan};
pub use rbee_proto::operation::Operation;
pub use state::{Actual, Desired};
