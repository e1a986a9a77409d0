//! The queen's files on its own machine: its directory (apart from any hive's), its token,
//! and one pid file per port.
//!
//! Two queens may start at once (two `rbee` commands that each found none): both must end up
//! with the same token, and only the one that listens writes the pid file. So the token is
//! created with a hard link of a complete file (it appears whole or not at all, and the first
//! one wins), and the pid file (`rbee_core::pidfile`) is written by rename once the port is
//! bound, and removed only by the process it names.

use std::path::{Path, PathBuf};

/// The queen's directory: `$XDG_STATE_HOME/rbee-queen`, else `~/.local/state/rbee-queen`.
pub fn state_dir() -> PathBuf {
    rbee_core::layout::queen_state_dir()
}

/// The token file: `<state dir>/queen.token`.
pub fn token_path() -> PathBuf {
    state_dir().join("queen.token")
}

/// The pid file of the queen listening on `port`: `<state dir>/queen-<port>.pid`.
pub fn pid_path(port: u16) -> PathBuf {
    state_dir().join(format!("queen-{port}.pid"))
}

/// The queen's log (written by `rbee` when it starts the queen in the background).
pub fn log_path() -> PathBuf {
    state_dir().join("queen.log")
}

fn create_dir_0700(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// The token in `path`: created with mode 0600 on first start, read afterwards. When it does
/// not exist yet and a queen of an earlier rbee left one in the hive's state directory, that
/// one is kept, so hives linked to it keep working. Safe against a concurrent first start:
/// the file is linked into place complete, and the loser of the race reads the winner's token.
pub fn ensure_token(path: &Path) -> std::io::Result<String> {
    if let Some(token) = read_token(path)? {
        return Ok(token);
    }
    if let Some(dir) = path.parent() {
        create_dir_0700(dir)?;
    }
    let legacy = rbee_core::layout::legacy_queen_token();
    let token = match std::fs::read_to_string(&legacy) {
        Ok(t) if is_token(t.trim()) => t.trim().to_owned(),
        _ => rbee_core::credentials::new_secret()?,
    };
    // Linked into place complete and flushed, the directory too (see `rbee_core::fsio`).
    match rbee_core::fsio::create_atomic(path, token.as_bytes(), 0o600) {
        Ok(()) => Ok(token),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_token(path)?
            .ok_or_else(|| std::io::Error::other(format!("{} exists but holds no token", path.display()))),
        Err(e) => Err(e),
    }
}

fn is_token(t: &str) -> bool {
    !t.is_empty() && t.len() <= 256 && t.bytes().all(|b| b.is_ascii_graphic())
}

fn read_token(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) if is_token(t.trim()) => Ok(Some(t.trim().to_owned())),
        Ok(_) => Err(std::io::Error::other(format!(
            "{} does not hold a token: remove it and start the queen again",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_first_starts_agree_on_one_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q/queen.token");
        let tokens: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| ensure_token(&path).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert!(tokens.iter().all(|t| *t == on_disk), "{tokens:?} vs {on_disk}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left");
    }
}
