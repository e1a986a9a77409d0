//! Files on this machine that must survive a crash or a power cut whole: written to a
//! temporary file in the same directory, flushed to disk, renamed (or linked) into place, and
//! the directory flushed too, so that after a crash the path holds the old file or the new
//! one, complete, and never an empty or half-written one.
//!
//! ```text
//! .NAME.tmp-PID-N ─ write ─ fsync ─▶ rename(tmp, NAME) ─▶ fsync(dir)
//! ```

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A temporary name next to `path`, unique in this process (and across processes by pid).
fn tmp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{seq}", std::process::id()))
}

/// The directory `path` lives in (`.` for a bare file name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to a new temporary file next to `path` (permission bits `mode`, as
/// `open(2)` takes them: the umask still applies) and flushes it to disk.
fn write_tmp(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<PathBuf> {
    let tmp = tmp_path(path);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Flushes a directory's entries (a rename or a new link in it) to disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes`, crash-safely: a temporary file in the same directory is
/// written and flushed, renamed over `path`, and the directory flushed. Readers see the old
/// contents or the new ones, never a part; concurrent writers each leave a complete file (the
/// last rename wins). The parent directory must exist. `mode` is as `open(2)` takes it (the
/// umask still applies), e.g. `0o600`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = write_tmp(path, bytes, mode)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir_of(path))
}

/// Creates `path` holding `bytes` only if it does not exist, crash-safely and whole: the
/// complete, flushed file is hard-linked into place (so of several concurrent creators
/// exactly one wins), then the directory flushed. Fails with
/// [`std::io::ErrorKind::AlreadyExists`] when `path` exists. The parent directory must exist.
pub fn create_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = write_tmp(path, bytes, mode)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    linked?;
    sync_dir(dir_of(path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn write_atomic_replaces_the_file_with_its_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"first", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o600, 0, "no bits beyond 0600: {mode:o}");
        assert_eq!(mode & 0o600, 0o600, "owner reads and writes: {mode:o}");

        write_atomic(&path, b"second, longer", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        write_atomic(&path, b"", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        assert_eq!(names(dir.path()), vec!["state.json"], "no temporary file left");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target");
        write_atomic(&path, b"old", 0o644).unwrap();
        // Renaming a file over a non-empty directory fails after the temporary file is written.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("inside"), "x").unwrap();
        assert!(write_atomic(&blocked, b"new", 0o644).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(names(dir.path()), vec!["blocked", "target"], "no temporary file left");
        assert!(write_atomic(&dir.path().join("missing/dir/file"), b"x", 0o644).is_err());
    }

    #[test]
    fn concurrent_writers_each_leave_a_complete_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        let contents: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 64 * 1024 + usize::from(i)]).collect();
        let all = &contents;
        std::thread::scope(|s| {
            for bytes in all {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_atomic(path, bytes, 0o644).unwrap();
                        let seen = std::fs::read(path).unwrap();
                        assert!(all.contains(&seen), "a torn file of {} bytes", seen.len());
                    }
                });
            }
        });
        assert!(contents.contains(&std::fs::read(&path).unwrap()));
        assert_eq!(names(dir.path()), vec!["registry.json"], "no temporary file left");
    }

    #[test]
    fn create_atomic_creates_once_and_the_first_creator_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queen.token");
        let won: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u8)
                .map(|i| {
                    let path = &path;
                    s.spawn(move || match create_atomic(path, &[b'0' + i; 32], 0o600) {
                        Ok(()) => true,
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                        Err(e) => panic!("{e}"),
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
        let text = std::fs::read(&path).unwrap();
        assert_eq!(text.len(), 32);
        assert!(text.iter().all(|b| *b == text[0]), "one creator's complete bytes");
        assert_eq!(names(dir.path()), vec!["queen.token"], "no temporary file left");
    }
}
