//! Artifact sources and resolution: config + source → [`Desired`], every artifact pinned to a
//! version and a sha256.
//!
//! A source is a directory laid out as
//!
//! ```text
//! {source}/latest                 one line: the newest version, e.g. 0.2.0
//! {source}/{version}/SHA256SUMS   `sha256sum` output: "<hex>  <artifact>" per line
//! {source}/{version}/{artifact}   rbee-hive, rbee-worker-llama-cpp, ...
//! ```
//!
//! (a GitHub release maps onto it: one release per version, SHA256SUMS as an asset), either
//! as a directory or at an `http(s)://` base URL. From a URL, `latest` and the SHA256SUMS files
//! are read when planning ([`ArtifactSource::prepare`]); an artifact is downloaded once into
//! a local cache keyed by its sha256 and verified before use. A
//! directory without a `latest` file is a *build directory*, such as cargo's `target/debug`:
//! it holds one version, the version of this rbee, with the artifacts side by side. That is
//! the default source, so a fresh checkout syncs offline right after `cargo build`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rbee_proto::Sha256;
use sha2::Digest;

use crate::config::{Config, VersionReq};
use crate::layout::{HIVE_BINARY, Layout};
use crate::state::{Artifact, Desired, DesiredHive};

/// The version of this rbee build.
pub const RBEE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why artifacts could not be resolved or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactError {
    /// The source cannot be used at all.
    #[error("artifact source {source_name}: {reason}")]
    Source {
        /// The source.
        source_name: String,
        /// Why.
        reason: String,
    },
    /// Fetching from an http(s) source failed.
    #[error("artifact source {url}: {source}")]
    Fetch {
        /// What was fetched.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: HttpGetError,
    },
    /// A requested version does not exist in the source.
    #[error(
        "version {version} of {artifact} is not in {source_name} (it has {available}); pin another version or use \"latest\""
    )]
    NoSuchVersion {
        /// The artifact.
        artifact: String,
        /// The requested version.
        version: String,
        /// The source.
        source_name: String,
        /// What it has.
        available: String,
    },
    /// The artifact is not in the source.
    #[error("{artifact} {version} is not in {source_name}: {hint}")]
    Missing {
        /// The artifact.
        artifact: String,
        /// Its version.
        version: String,
        /// The source.
        source_name: String,
        /// What to do.
        hint: String,
    },
    /// Reading failed.
    #[error("could not read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A source lists something that is not a sha256 digest for an artifact.
    #[error("{source_name} lists an invalid digest for {artifact} {version}: {reason}")]
    InvalidDigest {
        /// The artifact.
        artifact: String,
        /// Its version.
        version: String,
        /// The source.
        source_name: String,
        /// What is wrong with it.
        #[source]
        reason: rbee_proto::DigestError,
    },
    /// The bytes do not have the pinned digest.
    #[error("sha256 mismatch for {artifact} {version}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The artifact.
        artifact: String,
        /// Its version.
        version: String,
        /// The pinned digest.
        expected: String,
        /// The digest of the bytes read.
        actual: String,
    },
    /// rbee.lock could not be read or does not allow the resolution.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
}

/// Why an [`HttpGet`] failed: the client's own error (e.g. `rbee_http::HttpError`).
pub type HttpGetError = Box<dyn std::error::Error + Send + Sync>;

/// Fetches a URL: the HTTP client an http source uses (rbee-core itself speaks no HTTP).
#[async_trait::async_trait]
pub trait HttpGet: Send + Sync {
    /// The body of a `GET`, or why not (a non-2xx status is an error).
    async fn get(&self, url: &str) -> Result<Vec<u8>, HttpGetError>;
}

/// An artifact ready to upload, checked against its pinned digest ([`ArtifactSource::open`]):
/// bytes held in memory (a memory source), or a file on this machine (a directory source's,
/// or the download cache's), which uploads stream rather than read whole.
#[derive(Debug, Clone)]
pub enum ArtifactData {
    /// The bytes.
    Bytes(Arc<Vec<u8>>),
    /// A file of `len` bytes, whose sha256 was the pinned one when it was opened.
    File {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
}

impl ArtifactData {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.upload_data().len()
    }

    /// True when it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.upload_data().is_empty()
    }

    /// What an upload of it sends.
    pub fn upload_data(&self) -> crate::transport::UploadData<'_> {
        match self {
            ArtifactData::Bytes(b) => crate::transport::UploadData::Bytes(b),
            ArtifactData::File { path, len } => crate::transport::UploadData::File { path, len: *len },
        }
    }
}

/// Where artifacts come from.
#[derive(Debug)]
pub struct ArtifactSource {
    root: PathBuf,
    kind: SourceKind,
    digests: Mutex<BTreeMap<PathBuf, (Sha256, u64)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SourceKind {
    /// `latest` + `{version}/SHA256SUMS`.
    Releases,
    /// A build directory holding only [`RBEE_VERSION`].
    Build,
    /// Bytes held by the caller: one version.
    Memory { version: String, files: BTreeMap<String, (Sha256, Arc<Vec<u8>>)> },
    /// A release tree at an http URL, with a local cache keyed by sha256.
    Http(HttpSource),
}

struct HttpSource {
    base: String,
    client: Arc<dyn HttpGet>,
    cache: PathBuf,
    latest: Mutex<Option<String>>,
    sums: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
}

impl std::fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSource").field("base", &self.base).field("cache", &self.cache).finish_non_exhaustive()
    }
}

impl PartialEq for HttpSource {
    fn eq(&self, other: &Self) -> bool {
        self.base == other.base
    }
}

impl Eq for HttpSource {}

impl Clone for HttpSource {
    fn clone(&self) -> Self {
        Self {
            base: self.base.clone(),
            client: self.client.clone(),
            cache: self.cache.clone(),
            latest: Mutex::new(crate::locked(&self.latest).clone()),
            sums: Mutex::new(crate::locked(&self.sums).clone()),
        }
    }
}

fn parse_sums(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(sum, file)| (file.trim_start().trim_start_matches('*').to_owned(), sum.to_ascii_lowercase()))
        .collect()
}

/// `$XDG_CACHE_HOME/rbee/artifacts`, else `~/.cache/rbee/artifacts`.
pub(crate) fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map_or_else(|| crate::config::home_dir().join(".cache"), PathBuf::from)
        .join("rbee")
        .join("artifacts")
}

impl ArtifactSource {
    /// The source named by `[package] source`, or the directory of the running executable.
    pub fn from_config(config: &Config) -> Result<Self, ArtifactError> {
        Self::from_config_with(config, None)
    }

    /// Like [`Self::from_config`], with the HTTP client an `http(s)://` source needs.
    pub fn from_config_with(config: &Config, http: Option<Arc<dyn HttpGet>>) -> Result<Self, ArtifactError> {
        match &config.package.source {
            Some(s) if s.starts_with("http://") || s.starts_with("https://") => match http {
                Some(client) => Ok(Self::http(s, client, default_cache_dir())),
                None => Err(ArtifactError::Source {
                    source_name: s.clone(),
                    reason: "this program has no HTTP client for http sources (pass one to ArtifactSource::from_config_with)".into(),
                }),
            },
            Some(s) => Ok(Self::directory(s)),
            None => {
                let exe = std::env::current_exe().map_err(|e| ArtifactError::Source {
                    source_name: "the directory of the running executable".into(),
                    reason: e.to_string(),
                })?;
                let dir = exe.parent().unwrap_or(Path::new("."));
                // cargo puts examples and tests one level below the binaries.
                let dir = match dir.parent() {
                    Some(up) if !dir.join(HIVE_BINARY).exists() && up.join(HIVE_BINARY).exists() => up,
                    _ => dir,
                };
                Ok(Self::directory(dir))
            }
        }
    }

    /// A source held in memory: `files` (artifact name → bytes), all at `version`. For
    /// programs that build or download the binaries themselves, and for tests.
    ///
    /// ```
    /// let source = rbee_core::artifact::ArtifactSource::memory("1.0.0", [("rbee-hive", b"...".to_vec())]);
    /// let hive = source.resolve("rbee-hive", &rbee_core::config::VersionReq::Latest)?;
    /// assert_eq!(hive.version, "1.0.0");
    /// # Ok::<(), rbee_core::artifact::ArtifactError>(())
    /// ```
    pub fn memory<N: Into<String>>(version: &str, files: impl IntoIterator<Item = (N, Vec<u8>)>) -> Self {
        let files = files.into_iter().map(|(n, b)| (n.into(), (sha256_of(&b), Arc::new(b)))).collect();
        Self {
            root: PathBuf::new(),
            kind: SourceKind::Memory { version: version.to_owned(), files },
            digests: Mutex::new(BTreeMap::new()),
        }
    }

    /// A release tree at `base` (an http(s) URL), fetched with `client`, cached in `cache`.
    pub fn http(base: &str, client: Arc<dyn HttpGet>, cache: PathBuf) -> Self {
        let http = HttpSource {
            base: base.trim_end_matches('/').to_owned(),
            client,
            cache,
            latest: Mutex::new(None),
            sums: Mutex::new(BTreeMap::new()),
        };
        Self { root: PathBuf::new(), kind: SourceKind::Http(http), digests: Mutex::new(BTreeMap::new()) }
    }

    /// Reads what resolving `config` needs from a remote source (`latest`, and SHA256SUMS of
    /// every version it names); nothing to do for local sources.
    pub async fn prepare(&self, config: &Config) -> Result<(), ArtifactError> {
        self.prepare_versions(config, &[]).await
    }

    /// Like [`Self::prepare`], also reading the SHA256SUMS of `pinned` (the versions a lock
    /// pins).
    pub async fn prepare_versions(&self, config: &Config, pinned: &[String]) -> Result<(), ArtifactError> {
        let SourceKind::Http(h) = &self.kind else { return Ok(()) };
        let get = |url: String| async move {
            h.client.get(&url).await.map_err(|source| ArtifactError::Fetch { url: url.clone(), source })
        };
        let latest = String::from_utf8_lossy(&get(format!("{}/latest", h.base)).await?).trim().to_owned();
        let latest = checked_version(&h.base, latest)?;
        let mut versions = vec![latest.clone()];
        versions.extend(pinned.iter().filter(|v| semver::Version::parse(v).is_ok()).cloned());
        for hive in &config.hives {
            for w in &hive.workers {
                if let VersionReq::Exact(v) = &w.version {
                    versions.push(v.to_string());
                }
            }
        }
        versions.sort();
        versions.dedup();
        for v in versions {
            if crate::locked(&h.sums).contains_key(&v) {
                continue;
            }
            let sums = match get(format!("{}/{v}/SHA256SUMS", h.base)).await {
                Ok(bytes) => parse_sums(&String::from_utf8_lossy(&bytes)),
                Err(_) => BTreeMap::new(), // resolve says the version is missing
            };
            crate::locked(&h.sums).insert(v, sums);
        }
        *crate::locked(&h.latest) = Some(latest);
        Ok(())
    }

    /// A directory source: a release tree if it has a `latest` file, else a build directory.
    pub fn directory(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let kind = if root.join("latest").is_file() { SourceKind::Releases } else { SourceKind::Build };
        Self { root, kind, digests: Mutex::new(BTreeMap::new()) }
    }

    /// For messages.
    pub fn name(&self) -> String {
        match &self.kind {
            SourceKind::Releases => self.root.display().to_string(),
            SourceKind::Build => format!("build directory {}", self.root.display()),
            SourceKind::Memory { .. } => "an in-memory source".to_owned(),
            SourceKind::Http(h) => h.base.clone(),
        }
    }

    fn latest(&self) -> Result<String, ArtifactError> {
        match &self.kind {
            SourceKind::Http(h) => crate::locked(&h.latest).clone().ok_or_else(|| ArtifactError::Source {
                source_name: h.base.clone(),
                reason: "not prepared: call ArtifactSource::prepare first".into(),
            }),
            SourceKind::Memory { version, .. } => Ok(version.clone()),
            SourceKind::Build => Ok(RBEE_VERSION.to_owned()),
            SourceKind::Releases => {
                let path = self.root.join("latest");
                let text = std::fs::read_to_string(&path).map_err(|source| ArtifactError::Io { path, source })?;
                checked_version(&self.name(), text.trim().to_owned())
            }
        }
    }

    fn path_of(&self, name: &str, version: &str) -> PathBuf {
        match &self.kind {
            SourceKind::Http(h) => h.cache.join(name),
            SourceKind::Build | SourceKind::Memory { .. } => self.root.join(name),
            SourceKind::Releases => self.root.join(version).join(name),
        }
    }

    /// Pins `name` at `req`.
    pub fn resolve(&self, name: &str, req: &VersionReq) -> Result<Artifact, ArtifactError> {
        let version = match req {
            VersionReq::Latest => self.latest()?,
            VersionReq::Exact(v) => v.to_string(),
        };
        if let SourceKind::Memory { version: have, files } = &self.kind {
            if &version != have {
                return Err(ArtifactError::NoSuchVersion {
                    artifact: name.to_owned(),
                    version,
                    source_name: self.name(),
                    available: format!("only {have}"),
                });
            }
            let (sha256, bytes) = files.get(name).ok_or_else(|| ArtifactError::Missing {
                artifact: name.to_owned(),
                version: version.clone(),
                source_name: self.name(),
                hint: "add it to the source".to_owned(),
            })?;
            return Ok(Artifact { name: name.to_owned(), version, sha256: sha256.clone(), size: bytes.len() as u64 });
        }
        if let SourceKind::Http(h) = &self.kind {
            let sums = crate::locked(&h.sums);
            let sum = sums.get(&version).and_then(|s| s.get(name)).cloned().ok_or_else(|| ArtifactError::Missing {
                artifact: name.to_owned(),
                version: version.clone(),
                source_name: self.name(),
                hint: format!("{}/{version}/SHA256SUMS has no line for it", h.base),
            })?;
            let sha256 = self.checked_digest(name, &version, &sum)?;
            return Ok(Artifact { name: name.to_owned(), version, sha256, size: 0 });
        }
        let path = self.path_of(name, &version);
        let hint = match self.kind {
            SourceKind::Build => "build the workspace (`cargo build`) or set [package] source in rbee.conf".to_owned(),
            _ => format!("expected {}", path.display()),
        };
        if self.kind == SourceKind::Build && version != RBEE_VERSION {
            return Err(ArtifactError::NoSuchVersion {
                artifact: name.to_owned(),
                version,
                source_name: self.name(),
                available: format!("only {RBEE_VERSION}"),
            });
        }
        let meta = std::fs::metadata(&path).map_err(|_| ArtifactError::Missing {
            artifact: name.to_owned(),
            version: version.clone(),
            source_name: self.name(),
            hint: hint.clone(),
        })?;
        let sha256 = match self.kind {
            SourceKind::Releases => self.sum_from_file(name, &version)?,
            _ => self.digest_of(&path)?.0,
        };
        Ok(Artifact { name: name.to_owned(), version, sha256, size: meta.len() })
    }

    /// The artifact names the source lists at `req` (SHA256SUMS, or the files of a build
    /// directory and its `wheels/`).
    fn names(&self, req: &VersionReq) -> Result<Vec<String>, ArtifactError> {
        let version = match req {
            VersionReq::Latest => self.latest()?,
            VersionReq::Exact(v) => v.to_string(),
        };
        Ok(match &self.kind {
            SourceKind::Memory { files, .. } => files.keys().cloned().collect(),
            SourceKind::Http(h) => {
                crate::locked(&h.sums).get(&version).map(|s| s.keys().cloned().collect()).unwrap_or_default()
            }
            SourceKind::Releases => {
                let path = self.root.join(&version).join("SHA256SUMS");
                match std::fs::read_to_string(&path) {
                    Ok(text) => parse_sums(&text).into_keys().collect(),
                    Err(_) => Vec::new(),
                }
            }
            SourceKind::Build => {
                let list = |dir: &Path, prefix: &str| -> Vec<String> {
                    std::fs::read_dir(dir)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .filter_map(|e| e.file_name().into_string().ok())
                        .map(|n| format!("{prefix}{n}"))
                        .collect()
                };
                let mut names = list(&self.root, "");
                names.extend(list(&self.root.join("wheels"), "wheels/"));
                names
            }
        })
    }

    /// The engine a worker declares, with what this source offers for it.
    pub fn resolve_engine(
        &self,
        kind: &str,
        source: &crate::state::EngineSource,
        req: &VersionReq,
    ) -> Result<crate::state::DesiredEngine, ArtifactError> {
        use crate::state::EngineSource;
        let mut engine = crate::state::DesiredEngine {
            source: source.clone(),
            variants: BTreeMap::new(),
            wheels: Vec::new(),
            source_name: self.name(),
        };
        match source {
            EngineSource::Artifact { .. } => {
                let prefix = format!("engine-{kind}-");
                for name in self.names(req)? {
                    let Some(variant) = name.strip_prefix(&prefix).and_then(|n| n.strip_suffix(".tar.gz")) else {
                        continue;
                    };
                    if variant.is_empty()
                        || !variant.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    {
                        continue;
                    }
                    engine.variants.insert(variant.to_owned(), self.resolve(&name, req)?);
                }
            }
            EngineSource::Pip { .. } => {
                for name in self.names(req)? {
                    let Some(file) = name.strip_prefix("wheels/") else { continue };
                    let plain = file.ends_with(".whl")
                        && !file.starts_with('.')
                        && file.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
                    if plain {
                        engine.wheels.push(self.resolve(&name, req)?);
                    }
                }
            }
            EngineSource::Path { .. } => {}
        }
        Ok(engine)
    }

    /// A digest read from a source's SHA256SUMS, checked before it is used for anything (as a
    /// cache file name, say).
    fn checked_digest(&self, name: &str, version: &str, sum: &str) -> Result<Sha256, ArtifactError> {
        Sha256::parse(sum).map_err(|reason| ArtifactError::InvalidDigest {
            artifact: name.to_owned(),
            version: version.to_owned(),
            source_name: self.name(),
            reason,
        })
    }

    fn sum_from_file(&self, name: &str, version: &str) -> Result<Sha256, ArtifactError> {
        let path = self.root.join(version).join("SHA256SUMS");
        let text = std::fs::read_to_string(&path).map_err(|source| ArtifactError::Io { path: path.clone(), source })?;
        text.lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .find(|(_, file)| file.trim_start().trim_start_matches('*') == name)
            .map(|(sum, _)| sum.to_owned())
            .ok_or_else(|| ArtifactError::Missing {
                artifact: name.to_owned(),
                version: version.to_owned(),
                source_name: self.name(),
                hint: format!("{} has no line for it", path.display()),
            })
            .and_then(|sum| self.checked_digest(name, version, &sum))
    }

    fn digest_of(&self, path: &Path) -> Result<(Sha256, u64), ArtifactError> {
        if let Some(hit) = crate::locked(&self.digests).get(path) {
            return Ok(hit.clone());
        }
        let entry = hash_file(path).map_err(|source| ArtifactError::Io { path: path.to_owned(), source })?;
        crate::locked(&self.digests).insert(path.to_owned(), entry.clone());
        Ok(entry)
    }

    /// An http source's copy of `artifact` in its cache, downloaded first unless the cache
    /// holds it with the right digest (checked by streaming it); with its length.
    async fn cached(&self, h: &HttpSource, artifact: &Artifact) -> Result<(PathBuf, u64), ArtifactError> {
        let cached = h.cache.join(artifact.sha256.as_str());
        match verify_file(artifact, &cached).await {
            Ok(len) => return Ok((cached, len)),
            Err(_) => {
                let _ = std::fs::remove_file(&cached);
            }
        }
        let url = format!("{}/{}/{}", h.base, artifact.version, artifact.name);
        let bytes = h.client.get(&url).await.map_err(|source| ArtifactError::Fetch { url: url.clone(), source })?;
        verify(artifact, &bytes)?;
        let io = |source| ArtifactError::Io { path: cached.clone(), source };
        std::fs::create_dir_all(&h.cache).map_err(io)?;
        crate::fsio::write_atomic(&cached, &bytes, 0o644).map_err(io)?;
        Ok((cached, bytes.len() as u64))
    }

    /// Like [`Self::fetch`], downloading into the cache first for an http source (once per
    /// digest; a cached file is verified again before use).
    pub async fn fetch_async(&self, artifact: &Artifact) -> Result<Vec<u8>, ArtifactError> {
        if let SourceKind::Http(h) = &self.kind {
            self.cached(h, artifact).await?;
        }
        self.fetch(artifact)
    }

    /// The artifact, checked against its pinned digest, without reading it into memory when
    /// it is a file: a directory source's file (or an http source's cached download, fetched
    /// first when needed) is streamed through sha256 here, a MiB at a time, and handed on by
    /// path for uploads to stream. Its length is fixed by that check; a file changed after it
    /// is caught by the upload (a different length) or by the host's sha256 check before the
    /// file takes its place. A memory source hands over its bytes.
    pub async fn open(&self, artifact: &Artifact) -> Result<ArtifactData, ArtifactError> {
        let path = match &self.kind {
            SourceKind::Memory { files, .. } => {
                let bytes = files.get(&artifact.name).map(|(_, b)| b.clone()).unwrap_or_default();
                verify(artifact, &bytes)?;
                return Ok(ArtifactData::Bytes(bytes));
            }
            SourceKind::Http(h) => {
                let (path, len) = self.cached(h, artifact).await?;
                return Ok(ArtifactData::File { path, len });
            }
            SourceKind::Releases | SourceKind::Build => self.path_of(&artifact.name, &artifact.version),
        };
        let len = verify_file(artifact, &path).await?;
        Ok(ArtifactData::File { path, len })
    }

    /// Reads an artifact's bytes and checks them against its pinned digest (all of it in
    /// memory: for small artifacts; uploads use [`Self::open`]).
    pub fn fetch(&self, artifact: &Artifact) -> Result<Vec<u8>, ArtifactError> {
        let path = self.path_of(&artifact.name, &artifact.version);
        let mut bytes = Vec::with_capacity(usize::try_from(artifact.size).unwrap_or(0));
        if let SourceKind::Memory { files, .. } = &self.kind {
            bytes = files.get(&artifact.name).map(|(_, b)| b.to_vec()).unwrap_or_default();
        } else if let SourceKind::Http(h) = &self.kind {
            let cached = h.cache.join(artifact.sha256.as_str());
            bytes = std::fs::read(&cached).map_err(|source| ArtifactError::Io { path: cached.clone(), source })?;
        } else {
            std::fs::File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|source| ArtifactError::Io { path: path.clone(), source })?;
        }
        verify(artifact, &bytes)?;
        Ok(bytes)
    }
}

/// A source's `latest` must name a version (semver): it becomes a path and a URL.
fn checked_version(source_name: &str, latest: String) -> Result<String, ArtifactError> {
    match semver::Version::parse(&latest) {
        Ok(_) => Ok(latest),
        Err(e) => Err(ArtifactError::Source {
            source_name: source_name.to_owned(),
            reason: format!(
                "`latest` holds {:?}, which is not a version ({e})",
                latest.escape_debug().take(80).collect::<String>()
            ),
        }),
    }
}

/// `Err` unless `bytes` have the artifact's pinned digest.
fn verify(artifact: &Artifact, bytes: &[u8]) -> Result<(), ArtifactError> {
    mismatch(artifact, sha256_of(bytes))
}

/// The length of the file at `path`, or `Err` unless it has the artifact's pinned digest.
/// The file is streamed through sha256 on a blocking thread, never held whole.
async fn verify_file(artifact: &Artifact, path: &Path) -> Result<u64, ArtifactError> {
    let owned = path.to_owned();
    let hashed = tokio::task::spawn_blocking(move || hash_file(&owned))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|source| ArtifactError::Io { path: path.to_owned(), source })?;
    let (actual, len) = hashed;
    mismatch(artifact, actual)?;
    Ok(len)
}

/// The sha256 and length of the file at `path`, read a MiB at a time.
fn hash_file(path: &Path) -> std::io::Result<(Sha256, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mut raw = [0u8; 32];
    raw.copy_from_slice(&hasher.finalize());
    Ok((Sha256::from_bytes(raw), len))
}

/// `Err` unless `actual` is the artifact's pinned digest.
fn mismatch(artifact: &Artifact, actual: Sha256) -> Result<(), ArtifactError> {
    if actual == artifact.sha256 {
        return Ok(());
    }
    Err(ArtifactError::DigestMismatch {
        artifact: artifact.name.clone(),
        version: artifact.version.clone(),
        expected: artifact.sha256.to_string(),
        actual: actual.to_string(),
    })
}

/// Lowercase hex sha256.
#[cfg(test)]
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The sha256 of `bytes`.
pub fn sha256_of(bytes: &[u8]) -> Sha256 {
    let mut raw = [0u8; 32];
    raw.copy_from_slice(&sha2::Sha256::digest(bytes));
    Sha256::from_bytes(raw)
}

/// Config + source → desired state. The hive binary always follows `latest`.
pub fn resolve(config: &Config, source: &ArtifactSource) -> Result<Desired, ArtifactError> {
    resolve_pinned(config, source, &mut crate::lock::Pins::default())
}

/// Like [`resolve`], every artifact pinned through `pins` (rbee.lock: see [`crate::lock`]),
/// which records what each resolved to.
pub fn resolve_pinned(
    config: &Config,
    source: &ArtifactSource,
    pins: &mut crate::lock::Pins<'_>,
) -> Result<Desired, ArtifactError> {
    let mut desired = Desired::default();
    let hive = Arc::new(pins.artifact(source, HIVE_BINARY, &VersionReq::Latest)?);
    for h in &config.hives {
        let mut workers = BTreeMap::new();
        let mut engines = BTreeMap::new();
        for w in &h.workers {
            let worker = pins.artifact(source, &Layout::worker_file_name(&w.kind), &w.version)?;
            if let Some(engine) = &w.engine {
                engines.insert(w.kind.clone(), pins.engine(source, &w.kind, engine, &w.version, &worker.version)?);
            }
            workers.insert(w.kind.clone(), Arc::new(worker));
        }
        desired.hives.insert(h.alias.clone(), DesiredHive::for_config(h, hive.clone(), workers, engines));
    }
    Ok(desired)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers from a map of URL → body, like a release server would.
    struct Served(BTreeMap<String, Vec<u8>>);

    #[async_trait::async_trait]
    impl HttpGet for Served {
        async fn get(&self, url: &str) -> Result<Vec<u8>, HttpGetError> {
            self.0.get(url).cloned().ok_or_else(|| format!("{url} answered 404 Not Found").into())
        }
    }

    /// A hostile source once listed "../../victim" as a digest; it was used as a cache path,
    /// and the cache's "remove a file that fails verification" deleted the victim. Digests and
    /// `latest` are checked before anything uses them.
    #[tokio::test]
    async fn a_hostile_sha256sums_or_latest_is_rejected_and_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let config =
            crate::config::parse(None, (Path::new("hives.conf"), "[[hive]]\nalias = \"a\"\nhostname = \"a.lab\"\n"))
                .unwrap();
        let base = "https://releases.example";
        for (latest, sums) in [
            ("1.0.0", "../victim  rbee-hive\n".to_owned()),
            ("1.0.0", format!("{}  rbee-hive\n", "é".repeat(32))),
            ("../../etc", format!("{}  rbee-hive\n", sha256_hex(b"x"))),
        ] {
            let served = Served(BTreeMap::from([
                (format!("{base}/latest"), latest.as_bytes().to_vec()),
                (format!("{base}/{latest}/SHA256SUMS"), sums.into_bytes()),
                (format!("{base}/1.0.0/rbee-hive"), b"x".to_vec()),
            ]));
            let source = ArtifactSource::http(base, Arc::new(served), cache.clone());
            let outcome = match source.prepare(&config).await {
                Err(e) => Err(e),
                Ok(()) => source.resolve("rbee-hive", &VersionReq::Latest),
            };
            let err = outcome.expect_err("a hostile source must be refused");
            assert!(
                matches!(err, ArtifactError::InvalidDigest { .. }) || err.to_string().contains("not a version"),
                "{err}"
            );
            assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        }
    }

    #[test]
    fn release_tree_resolves_latest_and_pins() {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path().join("0.2.0");
        std::fs::create_dir_all(&v).unwrap();
        std::fs::write(dir.path().join("latest"), "0.2.0\n").unwrap();
        std::fs::write(v.join("rbee-hive"), b"hello").unwrap();
        std::fs::write(v.join("SHA256SUMS"), format!("{}  rbee-hive\n", sha256_hex(b"hello"))).unwrap();
        let src = ArtifactSource::directory(dir.path());
        let a = src.resolve("rbee-hive", &VersionReq::Latest).unwrap();
        assert_eq!((a.version.as_str(), a.size), ("0.2.0", 5));
        assert_eq!(src.fetch(&a).unwrap(), b"hello");
        let err = src.resolve("rbee-worker-vllm", &VersionReq::Latest).unwrap_err();
        assert!(err.to_string().contains("is not in"), "{err}");
        std::fs::write(v.join("rbee-hive"), b"tampered").unwrap();
        assert!(matches!(src.fetch(&a), Err(ArtifactError::DigestMismatch { .. })));
    }

    #[test]
    fn build_directory_has_only_this_version() {
        let dir = tempfile::tempdir().unwrap();
        let src = ArtifactSource::directory(dir.path());
        let err = src.resolve("rbee-hive", &VersionReq::Exact("9.9.9".parse().unwrap())).unwrap_err();
        assert!(err.to_string().contains("only"), "{err}");
        let err = src.resolve("rbee-hive", &VersionReq::Latest).unwrap_err();
        assert!(err.to_string().contains("cargo build"), "{err}");
    }
}
