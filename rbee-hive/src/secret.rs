//! The hive's credentials: its own API token (`hive.token`, made by the hive itself when no
//! sync installed one, so that its API is never open) and the random secret each worker gets
//! as its own token. Every secret file is created with mode 0600 from its first byte.

use std::path::Path;

/// The file in the hive's state directory that holds its API token.
pub const HIVE_TOKEN_FILE: &str = "hive.token";

pub use rbee_core::credentials::new_secret;

/// What a token file holds, trimmed: `Ok(None)` when it is absent, `Ok(Some(""))` when blank.
fn read_token(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The hive's token: what `hive.token` in `state_dir` holds, or, when it is absent (a hive
/// no queen linked: started by hand or by an in-process sync), a new random one written there
/// first (mode 0600 from its first byte, linked into place whole, so that of two hives
/// starting at once both use the one that won). A blank file is replaced.
pub fn hive_token(state_dir: &Path) -> std::io::Result<String> {
    let path = state_dir.join(HIVE_TOKEN_FILE);
    let found = read_token(&path)?;
    if let Some(token) = found.as_ref().filter(|t| !t.is_empty()) {
        return Ok(token.clone());
    }
    std::fs::create_dir_all(state_dir)?;
    let token = new_secret()?;
    let created = match found {
        Some(_blank) => rbee_core::fsio::write_atomic(&path, token.as_bytes(), 0o600),
        None => rbee_core::fsio::create_atomic(&path, token.as_bytes(), 0o600),
    };
    match created {
        Ok(()) => Ok(token),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_token(&path)?
            .filter(|t| !t.is_empty())
            .ok_or_else(|| std::io::Error::other(format!("{} exists but holds no token", path.display()))),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn secrets_are_64_hex_characters_and_differ() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn the_hive_token_is_made_once_private_and_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state/rbee");
        let made = hive_token(&state).unwrap();
        assert_eq!(made.len(), 64);
        let path = state.join(HIVE_TOKEN_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(hive_token(&state).unwrap(), made, "kept across starts");

        // One a sync installed is used as it is (trimmed).
        std::fs::write(&path, "installed-token\n").unwrap();
        assert_eq!(hive_token(&state).unwrap(), "installed-token");

        // A blank one is replaced by a new private one.
        std::fs::write(&path, "\n").unwrap();
        let replaced = hive_token(&state).unwrap();
        assert_eq!(replaced.len(), 64);
        assert_ne!(replaced, made);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), replaced);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn hives_starting_at_once_agree_on_one_token() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let tokens: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| hive_token(state).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
        assert_eq!(std::fs::read_to_string(state.join(HIVE_TOKEN_FILE)).unwrap(), tokens[0]);
    }
}
