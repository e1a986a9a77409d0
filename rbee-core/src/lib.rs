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
  case "$bin" in */*) d=${bin%/*} ;; *) d=. ;; esac
  d=$(cd "$d" 2>/dev/null && pwd -P) || return 1
  n=${bin##*/}
  [ "$e" = "$d/$n" ] || [ "$e" = "$d/$n (deleted)" ]
}
"#
    };
}

/// Shell function `held_by DIR OWNER`: true when the sync lock at `DIR` is held by `OWNER`
/// (its `owner` file names it), for the scripts that release or refresh the lock.
macro_rules! sh_held_by {
    () => {
        r#"held_by() { hb=; { read -r hb < "$1/owner"; } 2>/dev/null; [ "$hb" = "$2" ]; }
"#
    };
}

/// Shell function `digest FILE`: the file's sha256 in hex, for the scripts that observe and
/// install. `openssl dgst` where the host has it (it uses the CPU's SHA instructions: 24 MiB in
/// 15 ms where coreutils' `sha256sum` takes 70), else `sha256sum`, else `shasum`; an answer
/// that is not 64 hex digits is not trusted and the next tool asked.
macro_rules! sh_digest {
    () => {
        r#"digest() {
  if command -v openssl >/dev/null 2>&1 && dg=$(openssl dgst -sha256 -r < "$1" 2>/dev/null); then
    dg=${dg%% *}
    case "$dg" in *[!0-9a-f]*) ;; *) if [ ${#dg} -eq 64 ]; then echo "$dg"; return 0; fi ;; esac
  fi
  if command -v sha256sum >/dev/null 2>&1; then dg=$(sha256sum < "$1"); else dg=$(shasum -a 256 < "$1"); fi || return 1
  echo "${dg%% *}"
}
"#
    };
}

/// Shell functions for the scripts that start, stop, observe and uninstall the hive under
/// systemd (see [`execute::systemd`]). `supervisor` prints `systemd-system` (root),
/// `systemd-user` or `detached`: systemd supervises the hive only when it is this host's
/// PID 1 (`/run/systemd/system`, the `sd_booted` check; PID 1 named systemd and in this
/// process's PID and network namespaces, so a container or test host that shares another
/// machine's file system falls back), `systemctl` is installed, `$HOME` is the user's own home
/// (a transport with a substitute home, as tests use, must not install a unit shared by every
/// home), and for another user than root `systemctl --user` answers. `sc MODE ARGS…` runs
/// `systemctl [--user] ARGS…`; `unit_dir MODE` prints the directory of the unit file.
macro_rules! sh_supervisor {
    () => {
        r#"supervisor() {
  [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1 || { echo detached; return 0; }
  [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] || { echo detached; return 0; }
  for sv_ns in pid net; do
    sv_one=$(readlink "/proc/1/ns/$sv_ns" 2>/dev/null) || continue
    [ "$sv_one" = "$(readlink "/proc/self/ns/$sv_ns" 2>/dev/null)" ] || { echo detached; return 0; }
  done
  sv_uid=$(id -u)
  sv_own=$(getent passwd "$sv_uid" 2>/dev/null | cut -d: -f6)
  [ -n "$sv_own" ] || sv_own=$(awk -F: -v u="$sv_uid" '$3 == u { print $6; exit }' /etc/passwd 2>/dev/null)
  sv_home=$(cd "$HOME" 2>/dev/null && pwd -P) && [ -n "$sv_own" ] &&
    [ "$(cd "$sv_own" 2>/dev/null && pwd -P)" = "$sv_home" ] || { echo detached; return 0; }
  if [ "$sv_uid" = 0 ]; then echo systemd-system
  elif sc systemd-user show-environment >/dev/null 2>&1; then echo systemd-user
  else echo detached; fi
}
sc() {
  sv_mode=$1; shift
  if [ "$sv_mode" = systemd-user ]; then XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/run/user/$(id -u)} systemctl --user "$@"
  else systemctl "$@"; fi
}
unit_dir() {
  if [ "$1" = systemd-user ]; then printf '%s\n' "${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
  else echo /etc/systemd/system; fi
}
"#
    };
}

pub mod artifact;
pub mod config;
pub mod credentials;
pub mod execute;
pub mod fleet;
pub mod fsio;
pub mod layout;
pub mod link;
pub mod lock;
pub mod observe;
pub mod package;
pub mod pidfile;
pub mod plan;
pub mod state;
pub mod transport;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod interaction_tests;

/// `m`'s guard, also after another holder panicked: rbee's shared maps and caches are whole
/// after each change, so one panic must not make every later caller panic too.
pub fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub use rbee_proto as proto;
pub use rbee_proto::Sha256;

pub use config::{Config, ConfigError};
pub use plan::{Plan, PlanOptions, plan};
pub use rbee_proto::operation::Operation;
pub use state::{Actual, Desired};
