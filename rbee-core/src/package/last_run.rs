//! The last sync's report on disk, for `--retry-failed`.

use super::PackageError;
use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::execute::SyncReport;

/// Where the last sync's report is kept: `last-sync.json` in the queen's state directory
/// ([`crate::layout::queen_state_dir`]).
pub fn last_run_path() -> PathBuf {
    crate::layout::queen_state_dir().join("last-sync.json")
}

/// Saves a report for `--retry-failed`.
pub fn save_last_run(report: &SyncReport) -> Result<(), PackageError> {
    let path = last_run_path();
    let err = |e: std::io::Error| PackageError::State { path: path.clone(), reason: e.to_string() };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    crate::fsio::write_atomic(&path, &serde_json::to_vec_pretty(report).unwrap_or_default(), 0o644).map_err(err)
}

/// The hives that failed or were unreachable in the last saved run.
pub fn last_failed() -> Result<BTreeSet<String>, PackageError> {
    let path = last_run_path();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| PackageError::State { path: path.clone(), reason: format!("{e}; run `rbee sync` first") })?;
    let report: SyncReport =
        serde_json::from_str(&text).map_err(|e| PackageError::State { path: path.clone(), reason: e.to_string() })?;
    Ok(report.failed().into_iter().collect())
}
