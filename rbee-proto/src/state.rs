//! Pinned artifacts and installed files: what plans and reports name.

use serde::{Deserialize, Serialize};

use crate::digest::Sha256;

/// An artifact pinned to one version and one digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Artifact {
    /// File name in the source and on the host, e.g. `rbee-hive`, `rbee-worker-vllm`.
    pub name: String,
    /// Resolved version (never `latest`).
    pub version: String,
    /// sha256 of the file.
    pub sha256: Sha256,
    /// Size in bytes.
    pub size: u64,
}

impl Artifact {
    /// The first 12 hex digits of the digest, for display.
    pub fn short_digest(&self) -> &str {
        self.sha256.short()
    }
}

/// An installed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Installed {
    /// Its sha256 as computed on the host.
    pub sha256: Sha256,
    /// The version the install manifest records for this digest, if any.
    pub version: Option<String>,
}
