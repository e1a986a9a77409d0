//! `rbee migrate`: write a hives.conf describing the fleet as it runs now — the hives the
//! queen knows from their heartbeats, with the workers each has installed (pinned to the
//! installed versions) — and, with `--from-ssh-config`, an entry per `~/.ssh/config` host.

use std::fmt::Write;
use std::path::Path;

use rbee_core::config::home_dir;
use rbee_queen::api::HiveEntry;
use rbee_ssh::ssh_config::SshConfig;

fn quoted(s: &str) -> String {
    // A JSON string is a valid TOML basic string.
    serde_json::to_string(s).unwrap_or_default()
}

/// An alias usable in hives.conf made from any host name.
fn alias_of(name: &str) -> String {
    let a: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .collect();
    a.trim_start_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned()
}

/// The hives.conf text.
pub(crate) fn render(hives: &[HiveEntry], ssh: Option<&SshConfig>) -> String {
    let mut out =
        String::from("# Written by `rbee migrate`: the fleet as it runs now. Review it, then `rbee sync --dry-run`.\n");
    let home = home_dir().display().to_string();
    let mut seen = Vec::new();
    for h in hives {
        let b = &h.heartbeat;
        let local = h.address == "127.0.0.1" || h.address == "::1";
        seen.push(b.alias.clone());
        let _ = writeln!(out, "\n[[hive]]\nalias = {}", quoted(&b.alias));
        if local {
            let _ = writeln!(out, "hostname = \"localhost\"");
            if !b.home.is_empty() && b.home != home {
                let _ = writeln!(out, "local_home = {}", quoted(&b.home));
            }
        } else {
            let _ = writeln!(
                out,
                "hostname = {}\n# ssh_user = \"...\"   (the queen cannot see it; fill it in if needed)",
                quoted(&h.address)
            );
        }
        let _ = writeln!(out, "hive_port = {}", b.port);
        let workers: Vec<String> = b
            .workers
            .iter()
            .map(|w| match b.installed.get(w) {
                Some(v) => format!("{{ type = {}, version = {} }}", quoted(w), quoted(v)),
                None => format!("{{ type = {} }}", quoted(w)),
            })
            .collect();
        let _ = writeln!(out, "workers = [{}]", workers.join(", "));
        if h.stale {
            let _ = writeln!(out, "# note: this hive's heartbeats stopped {} s ago", h.age_ms / 1000);
        }
    }
    if let Some(ssh) = ssh {
        for host in ssh.hosts() {
            let alias = alias_of(&host);
            if alias.is_empty() || seen.contains(&alias) {
                continue;
            }
            seen.push(alias.clone());
            let s = ssh.lookup(&host, &home_dir(), "");
            let _ = writeln!(out, "\n[[hive]]\nalias = {}\nhostname = {}", quoted(&alias), quoted(&host));
            if let Some(user) = s.user {
                let _ = writeln!(out, "ssh_user = {}", quoted(&user));
            }
            let _ = writeln!(out, "workers = []");
        }
    }
    out
}

/// Why the migrated hives.conf was not written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    /// The file is there and `--force` was not given.
    #[error("{} exists; pass --force to overwrite it", .0.display())]
    Exists(std::path::PathBuf),
    /// Writing failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Writes `text` to `path` atomically, refusing to overwrite without `force`.
pub(crate) fn write(path: &Path, text: &str, force: bool) -> Result<(), WriteError> {
    if path.exists() && !force {
        return Err(WriteError::Exists(path.to_owned()));
    }
    rbee_core::fsio::write_atomic(path, text.as_bytes(), 0o644)
        .map_err(|source| WriteError::Io { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_from_host_names_are_valid() {
        assert_eq!(alias_of("GPU_Box.lab"), "gpu_box.lab");
        assert_eq!(alias_of("-x y"), "x-y");
    }
}
