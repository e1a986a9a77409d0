//! Desired and actual state: the two inputs of the planner. Plain data, no I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::TransportKind;

pub use rbee_proto::engine::{EngineInstall, EngineSource, InstalledEngine};
pub use rbee_proto::state::{Artifact, Installed, Supervisor};

/// What the config wants, with every artifact resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// By alias.
    pub hives: BTreeMap<String, DesiredHive>,
}

/// What one host must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredHive {
    /// The hive's alias.
    pub alias: String,
    /// Where it is (for display).
    pub hostname: String,
    /// How it is reached.
    pub transport: TransportKind,
    /// Port of the hive daemon.
    pub hive_port: u16,
    /// Start it after installing.
    pub auto_start: bool,
    /// The hive binary (shared: every hive of a fleet usually wants the same one).
    pub hive: Arc<Artifact>,
    /// Worker binaries by worker type.
    pub workers: BTreeMap<String, Arc<Artifact>>,
    /// Managed engines by worker type (unmanaged ones are absent).
    #[serde(default)]
    pub engines: BTreeMap<String, DesiredEngine>,
    /// Run by the queen itself (attached-hive mode): no hive binary, no hive daemon.
    #[serde(default)]
    pub attached: bool,
    /// The link to the queen it must run with (set when a queen runs the operation; `None`
    /// leaves whatever link it has).
    #[serde(default)]
    pub link: Option<crate::link::DesiredLink>,
}

impl DesiredHive {
    /// What the declared hive `h` must have: `hive` and these worker binaries.
    pub fn for_config(
        h: &crate::config::HiveConfig,
        hive: Arc<Artifact>,
        workers: BTreeMap<String, Arc<Artifact>>,
        engines: BTreeMap<String, DesiredEngine>,
    ) -> Self {
        DesiredHive {
            alias: h.alias.clone(),
            hostname: h.hostname.clone(),
            transport: h.transport,
            hive_port: h.hive_port,
            auto_start: h.auto_start,
            hive,
            workers,
            engines,
            attached: h.attached,
            link: None,
        }
    }
}

impl Desired {
    /// Every hive (but an attached one, which runs inside the queen) linked as `spec` says;
    /// without a spec, links are left as they are.
    pub fn link_to(&mut self, spec: Option<&crate::link::LinkSpec>, now_ms: u64) {
        let Some(spec) = spec else { return };
        for hive in self.hives.values_mut().filter(|h| !h.attached) {
            hive.link = Some(spec.desired(&hive.alias, now_ms));
        }
    }
}

/// A worker type's engine as declared, with what the source offers for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredEngine {
    /// Where it comes from.
    pub source: EngineSource,
    /// With an artifact source: the tarballs the source has, by variant.
    pub variants: BTreeMap<String, Artifact>,
    /// With pip: the source's wheelhouse (may be empty).
    pub wheels: Vec<Artifact>,
    /// Where the source is, for messages.
    pub source_name: String,
}

impl DesiredEngine {
    /// What to install on a host of worker type `kind`; `gpu`: the host has an NVIDIA GPU.
    pub fn pick(&self, kind: &str, gpu: bool) -> EngineInstall {
        match &self.source {
            EngineSource::Artifact { variant } => {
                let chosen = match variant {
                    Some(v) => v.clone(),
                    None if gpu && self.variants.contains_key("cuda12") => "cuda12".to_owned(),
                    None => "cpu".to_owned(),
                };
                match self.variants.get(&chosen) {
                    Some(artifact) => EngineInstall::Artifact { variant: chosen, artifact: artifact.clone() },
                    None => EngineInstall::Unavailable {
                        reason: format!(
                            "{} has no {} (it has {}): build a release tree with `scripts/release`, or declare engine = {{ path = \"…\" }}",
                            self.source_name,
                            rbee_proto::engine::tarball_name(kind, &chosen),
                            if self.variants.is_empty() {
                                "no engine for it".to_owned()
                            } else {
                                self.variants.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
                            }
                        ),
                    },
                }
            }
            EngineSource::Pip { spec } => EngineInstall::Pip { spec: spec.clone(), wheels: self.wheels.clone() },
            EngineSource::Path { path } => EngineInstall::Path { path: path.clone() },
        }
    }
}

/// What the hosts have, as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actual {
    /// By alias. A hive missing here was not observed (e.g. filtered out).
    pub hives: BTreeMap<String, HiveState>,
}

/// One host as observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HiveState {
    /// The host could not be observed.
    Unreachable {
        /// Why, in words a user can act on.
        reason: String,
    },
    /// The host answered.
    Reachable(Observed),
}

/// The state of a reachable host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// The hive binary, if installed.
    pub hive_binary: Option<Installed>,
    /// Worker binaries in the catalog, by worker type.
    pub workers: BTreeMap<String, Installed>,
    /// The hive process is alive (per its pid file).
    pub running: bool,
    /// Pid of the running hive.
    pub pid: Option<u32>,
    /// The hive answered `/health`.
    pub healthy: bool,
    /// Digest of the binary the running hive was started from, as it reports it.
    pub running_sha256: Option<rbee_proto::Sha256>,
    /// Version the running hive reports.
    pub running_version: Option<String>,
    /// Engines recorded on the host, by worker type.
    #[serde(default)]
    pub engines: BTreeMap<String, InstalledEngine>,
    /// `nvidia-smi` lists a GPU on the host.
    #[serde(default)]
    pub gpu: bool,
    /// Binaries an upgrade replaced and kept for a rollback, by file name (`rbee-hive`,
    /// `rbee-worker-<type>`).
    #[serde(default)]
    pub previous: BTreeMap<String, Installed>,
    /// What keeps the hive running: of a running hive, what started it; of a stopped one,
    /// what a start would use. `None` when the host did not say.
    #[serde(default)]
    pub supervisor: Option<Supervisor>,
    /// The running hive's link to a queen, from its `/health`.
    pub link: Option<Box<rbee_proto::hive::LinkState>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(variant: &str) -> Artifact {
        Artifact {
            name: rbee_proto::engine::tarball_name("llama-cpp", variant),
            version: "0.2.0".into(),
            sha256: crate::artifact::sha256_of(variant.as_bytes()),
            size: 1,
        }
    }

    fn engine(variant: Option<&str>, have: &[&str]) -> DesiredEngine {
        DesiredEngine {
            source: EngineSource::Artifact { variant: variant.map(str::to_owned) },
            variants: have.iter().map(|v| ((*v).to_owned(), tarball(v))).collect(),
            wheels: Vec::new(),
            source_name: "the release tree".into(),
        }
    }

    fn picked(e: &DesiredEngine, gpu: bool) -> String {
        match e.pick("llama-cpp", gpu) {
            EngineInstall::Artifact { variant, .. } => variant,
            EngineInstall::Unavailable { reason } => format!("unavailable: {reason}"),
            other => panic!("{other:?}"),
        }
    }

    /// `auto` takes the CUDA build on a GPU host when the release has one, the CPU build
    /// otherwise; a named variant is taken as named, and a missing one says what the source has.
    #[test]
    fn the_variant_follows_the_host_and_the_source() {
        let both = engine(None, &["cpu", "cuda12"]);
        assert_eq!(picked(&both, true), "cuda12");
        assert_eq!(picked(&both, false), "cpu");
        assert_eq!(picked(&engine(None, &["cpu"]), true), "cpu");
        assert_eq!(picked(&engine(Some("cpu"), &["cpu", "cuda12"]), true), "cpu");
        let missing = picked(&engine(Some("cuda12"), &["cpu"]), true);
        assert!(missing.contains("has no engine-llama-cpp-cuda12.tar.gz (it has cpu)"), "{missing}");
        assert!(missing.contains("scripts/release"), "{missing}");
        let none = picked(&engine(None, &[]), false);
        assert!(none.contains("has no engine-llama-cpp-cpu.tar.gz (it has no engine for it)"), "{none}");
    }
}
