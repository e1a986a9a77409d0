//! Pid files of rbee's daemons (the queen per port, each hive): written whole by rename once
//! the daemon listens, read only as a valid pid, removed only by the process they name (a
//! daemon that lost the race for its port, or an older one, must not delete a newer one's).

use std::path::Path;

/// Writes this process's pid to `path` atomically and durably (a complete file renamed into
/// place, see [`crate::fsio::write_atomic`]).
pub fn write(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::fsio::write_atomic(path, format!("{}\n", std::process::id()).as_bytes(), 0o644)
}

/// Removes the pid file at `path` if it names this process.
pub fn remove_if_own(path: &Path) {
    if read(path) == Some(std::process::id()) {
        let _ = std::fs::remove_file(path);
    }
}

/// The pid in a pid file: a positive number that is not 1, or `None`.
pub fn read(path: &Path) -> Option<u32> {
    parse(&std::fs::read_to_string(path).ok()?)
}

/// A pid as a pid file holds it: digits only, greater than 1 (never the init process, never a
/// process group or "every process").
pub fn parse(text: &str) -> Option<u32> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse::<u32>().ok().filter(|p| *p > 1 && *p <= i32::MAX as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_hold_only_positive_pids_other_than_init() {
        assert_eq!(parse("1234\n"), Some(1234));
        for bad in ["", "0", "1", "-5", "12 34", "0x10", "99999999999", "+7", "4294967295"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_pid_file_is_removed_only_by_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queen-1.pid");
        std::fs::write(&path, "4242\n").unwrap();
        remove_if_own(&path);
        assert!(path.exists(), "another process's pid file is kept");
        write(&path).unwrap();
        assert_eq!(read(&path), Some(std::process::id()));
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left");
        remove_if_own(&path);
        assert!(!path.exists());
    }
}
