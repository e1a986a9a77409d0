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

/// What keeps a hive running on its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Supervisor {
    /// A system unit (`/etc/systemd/system/rbee-hive.service`): restarted when it fails,
    /// started at boot.
    SystemdSystem,
    /// A user unit (`~/.config/systemd/user/rbee-hive.service`), with lingering: restarted
    /// when it fails, started at boot.
    SystemdUser,
    /// A detached process: nothing restarts it, and it does not survive a reboot.
    Detached,
}

impl Supervisor {
    /// `systemd-system`, `systemd-user` or `detached`.
    pub fn as_str(self) -> &'static str {
        match self {
            Supervisor::SystemdSystem => "systemd-system",
            Supervisor::SystemdUser => "systemd-user",
            Supervisor::Detached => "detached",
        }
    }

    /// From [`Supervisor::as_str`]'s names; `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        [Supervisor::SystemdSystem, Supervisor::SystemdUser, Supervisor::Detached]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
