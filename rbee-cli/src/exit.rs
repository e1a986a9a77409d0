//! The documented exit codes, and the one error type every command returns: a command
//! gives `Ok(exit)` (0, 2 or 3 come from results) or a [`CliError`], which always exits 1.

use std::process::ExitCode;

use rbee_core::config::{ConfigError, Diagnostic};
use rbee_core::proto::exit;
use rbee_queen::client::ClientError;

/// The documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// 0: success, in sync.
    Ok = exit::OK,
    /// 1: error; nothing, or not everything, could be checked or done.
    Error = exit::ERROR,
    /// 2: drift, or changes pending.
    Drift = exit::DRIFT,
    /// 3: partial failure: some hives done, some failed.
    Partial = exit::PARTIAL,
}

impl Exit {
    /// The exit for a code an operation result (here or from the queen) reports; an unknown
    /// code is an error, so nothing unexpected ever reads as success.
    pub(crate) fn from_code(code: u8) -> Self {
        match code {
            exit::OK => Exit::Ok,
            exit::DRIFT => Exit::Drift,
            exit::PARTIAL => Exit::Partial,
            _ => Exit::Error,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// Why a command failed; printed once, by [`crate::render::error`], and always exit 1.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Printed as `error: ...`.
    #[error("{0}")]
    Message(String),
    /// Config problems, printed one per line with file:line:column.
    #[error("the config has {} problem(s)", .0.len())]
    Invalid(Vec<Diagnostic>),
    /// A request to the queen failed.
    #[error(transparent)]
    Queen(#[from] ClientError),
    /// `rbee migrate` could not write its file.
    #[error(transparent)]
    Migrate(#[from] crate::migrate::WriteError),
    /// The local queen could not be reached, started, stopped or followed.
    #[error(transparent)]
    QueenControl(#[from] crate::queen::QueenError),
}

impl CliError {
    pub(crate) fn exit(&self) -> Exit {
        Exit::Error
    }
}

impl From<String> for CliError {
    fn from(message: String) -> Self {
        CliError::Message(message)
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Invalid(diags) => CliError::Invalid(diags),
            other => CliError::Message(other.to_string()),
        }
    }
}

/// What every command returns.
pub(crate) type Outcome = Result<Exit, CliError>;
