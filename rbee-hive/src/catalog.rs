//! The worker catalog: the `rbee-worker-<type>` binaries the queen installed. Read-only: the
//! hive never downloads or installs workers.

use std::path::Path;

/// The worker types installed in `dir`, sorted. Staging files of an install in progress
/// (dot files) are not workers.
pub fn scan(dir: &Path) -> Vec<String> {
    let mut kinds: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_file())
                .filter_map(|e| {
                    e.file_name().to_str()?.strip_prefix(rbee_core::layout::WORKER_PREFIX).map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    kinds.sort();
    kinds
}
