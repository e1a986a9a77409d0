//! Engines: the inference programs a worker launches (`llama-server`, `vllm`), installed by
//! `rbee sync` like the binaries, observed, planned and recorded on the host.
//!
//! ```text
//! ~/.local/share/rbee/engines/<type>/
//!     current          the record: id, program digest, stat, version, program path (tabs)
//!     <id>/            one installed engine: an unpacked tarball (bin/llama-server) or a venv
//! ```
//!
//! The record is written last, by rename, so it names only an engine that passed its check;
//! the hive reads its program path at each spawn and passes it to the launcher (`--engine`).

use serde::{Deserialize, Serialize};

use crate::layout::Layout;
use crate::state::Artifact;

/// Where a worker type's engine comes from, as declared (`engine = …` on a worker entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EngineSource {
    /// `engine-<type>-<variant>.tar.gz` from the artifact source; `None`: chosen from the
    /// host (`cuda12` where `nvidia-smi` lists a GPU and the source has that variant, else
    /// `cpu`).
    Artifact {
        /// `cpu`, `cuda12`, …
        variant: Option<String>,
    },
    /// A virtual environment made with the host's `python3 -m venv` and pip.
    Pip {
        /// What pip installs, e.g. `vllm==0.6.3`.
        spec: String,
    },
    /// A program the user installed; sync only checks it.
    Path {
        /// Absolute path of the program.
        path: String,
    },
}

/// The engine a host must have for one worker type, resolved against the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum EngineInstall {
    /// Unpack this tarball.
    Artifact {
        /// The variant picked.
        variant: String,
        /// The tarball.
        artifact: Artifact,
    },
    /// Make a venv and `pip install` the spec, from the wheelhouse when there is one.
    Pip {
        /// What pip installs.
        spec: String,
        /// The wheels uploaded first (the source's wheelhouse); empty: the host's index.
        wheels: Vec<Artifact>,
    },
    /// Check the program and record it.
    Path {
        /// Absolute path of the program.
        path: String,
    },
    /// It cannot be installed from this source; the step fails with the reason.
    Unavailable {
        /// Why, and what to do.
        reason: String,
    },
}

impl EngineInstall {
    /// The id an installed engine records: the tarball's sha256, or a digest of the pip
    /// spec and wheels, or of the path. Same declaration, same id.
    pub fn id(&self) -> String {
        match self {
            EngineInstall::Artifact { artifact, .. } => artifact.sha256.to_string(),
            EngineInstall::Pip { spec, wheels } => {
                let mut text = spec.clone();
                for w in wheels {
                    text.push(' ');
                    text.push_str(w.sha256.as_str());
                }
                format!("pip-{:016x}", fnv1a(text.as_bytes()))
            }
            EngineInstall::Path { path } => format!("path-{:016x}", fnv1a(path.as_bytes())),
            EngineInstall::Unavailable { .. } => "unavailable".to_owned(),
        }
    }

    /// For plans: `cpu 0.2.0 (sha256:…)`, `pip vllm==0.6.3`, `path /opt/…`.
    pub fn describe(&self) -> String {
        match self {
            EngineInstall::Artifact { variant, artifact } => {
                format!("{variant} {} (sha256:{})", artifact.version, artifact.short_digest())
            }
            EngineInstall::Pip { spec, wheels } if wheels.is_empty() => format!("pip {spec}"),
            EngineInstall::Pip { spec, wheels } => format!("pip {spec} (from {} wheels)", wheels.len()),
            EngineInstall::Path { path } => format!("path {path}"),
            EngineInstall::Unavailable { reason } => format!("unavailable: {reason}"),
        }
    }

    /// The engine's program, relative to the home (or absolute, for a path engine).
    pub fn program(&self, kind: &str) -> String {
        let dir = Layout::engine_dir(kind);
        let id = self.id();
        match self {
            EngineInstall::Artifact { .. } => format!("{dir}/{id}/bin/{}", program_name(kind)),
            EngineInstall::Pip { .. } => format!("{dir}/{id}/bin/{}", program_name(kind)),
            EngineInstall::Path { path } => path.clone(),
            EngineInstall::Unavailable { .. } => String::new(),
        }
    }
}

/// The program name of a worker type's engine: `llama-server`, `vllm`, `main.py`.
pub fn program_name(kind: &str) -> &'static str {
    match kind {
        "llama-cpp" => "llama-server",
        "vllm" => "vllm",
        "comfyui" => "main.py",
        _ => "engine",
    }
}

/// The artifact name of a worker type's engine tarball for a variant.
pub fn tarball_name(kind: &str, variant: &str) -> String {
    format!("engine-{kind}-{variant}.tar.gz")
}

/// An engine as observed on a host (from its record, with the program hashed again unless
/// its stat is unchanged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InstalledEngine {
    /// The id its record holds ([`EngineInstall::id`]).
    pub id: String,
    /// The program's path.
    pub program: String,
    /// The version the install recorded (`b11434`, `0.6.3`).
    pub version: String,
    /// What is wrong with it, if anything.
    pub problem: Option<EngineProblem>,
}

/// Why an installed engine cannot be used as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EngineProblem {
    /// The program is gone.
    Missing,
    /// The program's digest differs from the one recorded at install.
    Altered,
}

impl std::fmt::Display for EngineProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineProblem::Missing => "its program is missing",
            EngineProblem::Altered => "its program was altered (digest differs from the install record)",
        })
    }
}

/// Why an engine is (re)installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum EngineChange {
    /// None is installed.
    Install,
    /// Another engine is installed (other version, variant or source).
    Replace {
        /// What is there.
        from: InstalledEngine,
    },
    /// The installed one is broken.
    Repair {
        /// What is wrong.
        problem: EngineProblem,
    },
    /// `--force`.
    Reinstall,
}

/// FNV-1a, 64 bits: stable ids from text (not a security digest; engine bytes are checked by
/// sha256).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(c: char) -> Artifact {
        Artifact {
            name: tarball_name("llama-cpp", "cpu"),
            version: "0.2.0".into(),
            sha256: crate::Sha256::parse(&c.to_string().repeat(64)).unwrap(),
            size: 1,
        }
    }

    #[test]
    fn ids_follow_what_is_installed() {
        let a = EngineInstall::Artifact { variant: "cpu".into(), artifact: tarball('a') };
        assert_eq!(a.id(), "a".repeat(64));
        assert_eq!(a.program("llama-cpp"), format!(".local/share/rbee/engines/llama-cpp/{}/bin/llama-server", a.id()));
        let pip = |spec: &str, wheels: Vec<Artifact>| EngineInstall::Pip { spec: spec.into(), wheels };
        assert_eq!(pip("vllm==1", vec![]).id(), pip("vllm==1", vec![]).id());
        assert_ne!(pip("vllm==1", vec![]).id(), pip("vllm==2", vec![]).id());
        assert_ne!(pip("vllm==1", vec![]).id(), pip("vllm==1", vec![tarball('b')]).id());
        assert!(pip("vllm==1", vec![]).id().starts_with("pip-"));
        let path = EngineInstall::Path { path: "/opt/llama-server".into() };
        assert_eq!(path.program("llama-cpp"), "/opt/llama-server");
        assert!(path.id().starts_with("path-") && path.id().len() == 21);
    }
}
