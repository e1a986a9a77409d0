//! Why an operation could not run at all, and checking which hives it is for.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::artifact::ArtifactError;
use crate::config::Config;

/// Why an operation could not run at all (per-hive failures are in the report instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// `--hive` named a hive that is not declared.
    #[error("no hive {alias:?} in hives.conf (declared: {declared})")]
    UnknownHive {
        /// The alias given.
        alias: String,
        /// The aliases declared.
        declared: String,
    },
    /// Artifacts could not be resolved.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// The last run's state could not be read or written.
    #[error("last run state {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Checks `--hive` aliases against the config; `None` when none were given.
pub fn select(config: &Config, aliases: &[String]) -> Result<Option<BTreeSet<String>>, PackageError> {
    if aliases.is_empty() {
        return Ok(None);
    }
    for alias in aliases {
        if config.hive(alias).is_none() {
            let declared: Vec<&str> = config.hives.iter().map(|h| h.alias.as_str()).collect();
            return Err(PackageError::UnknownHive { alias: alias.clone(), declared: declared.join(", ") });
        }
    }
    Ok(Some(aliases.iter().cloned().collect()))
}
