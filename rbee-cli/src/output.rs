//! Exit codes and error printing shared by all commands.

use std::process::ExitCode;

/// The documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: success, in sync.
    Ok = 0,
    /// 1: error; nothing, or not everything, could be checked or done.
    Error = 1,
    /// 2: drift, or changes pending.
    Drift = 2,
    /// 3: partial failure: some hives done, some failed.
    Partial = 3,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// Prints an error: `error: ...` on stderr, or `{"error": ...}` on stdout with `--json`.
pub(crate) fn error(json: bool, message: &str) -> Exit {
    if json {
        println!("{}", serde_json::json!({ "ok": false, "error": message }));
    } else {
        eprintln!("error: {message}");
    }
    Exit::Error
}
