//! The exit codes of every `rbee` command (and the outcome `--json` output carries).

/// Success, or in sync.
pub const OK: u8 = 0;
/// Error: nothing or not everything could be checked or done (including "every hive failed").
pub const ERROR: u8 = 1;
/// Drift, or changes pending (`status`, `sync --dry-run`).
pub const DRIFT: u8 = 2;
/// Partial failure: some hives done, some failed.
pub const PARTIAL: u8 = 3;
