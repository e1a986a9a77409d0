//! Every path rbee uses: on a host ([`Layout`], defined with the protocol in `rbee-proto`),
//! and on the operator's machine (the queen's directory).

pub use rbee_proto::layout::{HIVE_BINARY, Layout, WORKER_PREFIX};

/// The directory of the queen (and of `rbee --in-process`) on the operator's machine:
/// `$XDG_STATE_HOME/rbee-queen`, else `~/.local/state/rbee-queen`. It holds the queen's token,
/// its pid file per port, its log and the last sync's report. It is apart from a hive's state
/// directory (`~/.local/state/rbee`), so uninstalling a hive on the same machine never takes
/// the queen's credentials with it.
pub fn queen_state_dir() -> std::path::PathBuf {
    state_home().join("rbee-queen")
}

/// `$XDG_STATE_HOME`, else `~/.local/state`.
fn state_home() -> std::path::PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map_or_else(|| crate::config::home_dir().join(".local/state"), std::path::PathBuf::from)
}

/// Where a queen kept its token before it had a directory of its own (`queen.token` in the
/// hive's state directory), read once so an upgraded queen keeps the token its hives know.
pub fn legacy_queen_token() -> std::path::PathBuf {
    state_home().join("rbee").join("queen.token")
}
