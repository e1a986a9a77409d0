//! Models under `~/.local/share/rbee/models/`: download from an http(s) URL or a local path,
//! resumable, sha256-verified, appearing atomically; list, get, delete.
//!
//! ```text
//! models/<name>                 a complete model
//! models/.partial/<name>.part   a download in progress (resumed from its length)
//! models/.sha256/<name>         the digest recorded when the download finished
//! ```
//!
//! Limits on a download:
//!
//! - **One at a time per name.** A hive process runs one download of a model name at a time;
//!   a second request for the same name while the first runs fails at once with `a download of
//!   NAME is already running` (it would append to the same partial file). Two hive processes
//!   sharing one home are not coordinated; a partial file that changes under a download (its
//!   length is not what was written) fails the download instead of becoming the model.
//! - **Resuming.** A partial file resumes with `Range: bytes=N-`. A server that answers
//!   `416 Range Not Satisfiable` gets one more request from byte 0 (the partial file is
//!   discarded); a second 416 fails the download and deletes the partial file.
//! - **Size.** A model may have at most [`MAX_BYTES`] (1 TiB) bytes, or what the hive's
//!   environment variable [`MAX_BYTES_ENV`] (`RBEE_MODEL_MAX_BYTES`, read at each download)
//!   says. It is checked against `Content-Length` (or a local file's length) before anything is
//!   written and again while the body streams; a download over the cap is refused and its
//!   partial file deleted.
//! - **Host paths.** A source that is an absolute path (or `file://` URL) must be a regular file
//!   (not a device such as `/dev/zero`, a FIFO or a directory) and must not lie, once symlinks
//!   and `..` are resolved, in the hive's state directory (`~/.local/state/rbee`, which holds
//!   `hive.token`). That directory is found from the models directory (`HOME/.local/share/rbee/
//!   models` → `HOME/.local/state/rbee`) and from `$HOME`. With [`ROOTS_ENV`]
//!   (`RBEE_MODEL_ROOTS`, directories separated by `:`, read at each download) in the hive's
//!   environment, the resolved file must also lie under one of those directories; without it,
//!   any other file the hive's user can read is accepted.

use std::path::{Path, PathBuf};

use rbee_core::proto::hive::ModelInfo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Why a model could not be named, found, deleted or downloaded. The texts reach users as the
/// hive's answers to forwarded operations, so each carries its source's text too (callers print
/// only `Display`); the source stays attached for callers that inspect it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The name is not one plain file name.
    #[error("{name:?} is not a model name: use a plain file name (no `/`, not starting with `.`)")]
    BadName {
        /// The name given.
        name: String,
    },
    /// No name was given and the source's last path segment is no model name.
    #[error("cannot name a model after {location:?}: give a name with --name")]
    Unnameable {
        /// The download's source.
        location: String,
    },
    /// No model by that name (its file cannot be looked at).
    #[error("no model {name} on this hive; see `rbee model list`")]
    NotFound {
        /// The name asked for.
        name: String,
        /// Why its file could not be looked at (usually: it does not exist).
        #[source]
        source: std::io::Error,
    },
    /// Something other than a file has the model's name.
    #[error("{} is not a file", .path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The model file could not be removed.
    #[error("cannot delete {path}: {source}")]
    Delete {
        /// The model file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The models directory (or its `.partial`/`.sha256`) could not be created.
    #[error("cannot create {}: {source}", .dir.display())]
    CreateDir {
        /// The models directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The source is neither an http(s) URL nor an absolute path.
    #[error("{location:?} is not an http(s) URL or an absolute path")]
    BadSource {
        /// The source given.
        location: String,
    },
    /// The HTTP request for the model failed.
    #[error("{0}")]
    Fetch(#[source] rbee_http::HttpError),
    /// The server resumed at another byte than asked for.
    #[error("{url} resumed at byte {start:?} instead of {have}; delete {} and retry", .part.display())]
    BadResume {
        /// The model's URL.
        url: String,
        /// Where the server's `Content-Range` starts, if it sent one.
        start: Option<u64>,
        /// Where the partial file ends.
        have: u64,
        /// The partial file.
        part: PathBuf,
    },
    /// The server answered with an error status.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// The model's URL.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// The answer's body broke off; the partial file is kept to resume from.
    #[error(
        "download of {url} interrupted after {done}{} bytes ({source}); run the same download again to resume",
        of_total(*.total)
    )]
    Interrupted {
        /// The model's URL.
        url: String,
        /// Bytes in the partial file.
        done: u64,
        /// Bytes in all, when known.
        total: Option<u64>,
        /// Why the body broke off.
        #[source]
        source: hyper::Error,
    },
    /// The connection closed before the announced length; the partial file is kept.
    #[error(
        "download of {url} interrupted after {done}{} bytes (the connection closed early); run the same download \
         again to resume",
        of_total(*.total)
    )]
    ClosedEarly {
        /// The model's URL.
        url: String,
        /// Bytes in the partial file.
        done: u64,
        /// Bytes in all, when known.
        total: Option<u64>,
    },
    /// A local source could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    ReadLocal {
        /// The source file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A local source's length or position could not be had.
    #[error("{0}")]
    LocalSource(#[source] std::io::Error),
    /// The partial file could not be opened or written.
    #[error("cannot write {}: {source}", .path.display())]
    WritePart {
        /// The partial file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The partial file could not be measured, truncated, flushed or synced.
    #[error("{0}")]
    PartFile(#[source] std::io::Error),
    /// The download could not be read back to hash it.
    #[error("{0}")]
    Hash(#[source] std::io::Error),
    /// The hashing task did not finish.
    #[error("{0}")]
    HashTask(#[source] tokio::task::JoinError),
    /// The download does not have the digest asked for; it was deleted.
    #[error("checksum mismatch for {name}: expected sha256 {expected}, got {got}; the download was deleted")]
    ChecksumMismatch {
        /// The model's name.
        name: String,
        /// The digest asked for.
        expected: rbee_core::Sha256,
        /// The download's digest.
        got: String,
    },
    /// The digest could not be recorded next to the model.
    #[error("{0}")]
    WriteDigest(#[source] std::io::Error),
    /// The complete download could not be renamed to the model's name.
    #[error("cannot move the model into place: {0}")]
    MoveIntoPlace(#[source] std::io::Error),
    /// Another download of the same name is running in this hive.
    #[error("a download of {name} is already running on this hive; wait for it to finish (`rbee model list`)")]
    AlreadyRunning {
        /// The model's name.
        name: String,
    },
    /// The server refused the range asked for, and then a download from the start too.
    #[error(
        "{url} answered 416 range not satisfiable {}; check the URL{}",
        range_attempts(*.resumed_from),
        if .resumed_from.is_some() { " (the partial download was deleted)" } else { "" }
    )]
    RangeNotSatisfiable {
        /// The model's URL.
        url: String,
        /// The byte a resumed download asked for first, if there was a partial file.
        resumed_from: Option<u64>,
    },
    /// The source is larger than this hive accepts; its partial file was deleted.
    #[error(
        "{location} is {} than this hive's limit of {max} bytes per model; the partial download was deleted; to \
         allow it, raise {MAX_BYTES_ENV} in the hive's environment",
        size.map_or_else(|| "larger".to_owned(), |s| format!("{s} bytes, more"))
    )]
    TooLarge {
        /// The source.
        location: String,
        /// Its size, when announced; `None` when the cap was reached while streaming.
        size: Option<u64>,
        /// The cap.
        max: u64,
    },
    /// `RBEE_MODEL_MAX_BYTES` is set to something other than a positive number of bytes.
    #[error("{MAX_BYTES_ENV}={value:?} is not a number of bytes; set it to a positive whole number or unset it")]
    BadMaxBytes {
        /// What it is set to.
        value: String,
    },
    /// A host path that is a device, FIFO, directory or other non-regular file.
    #[error("{} is not a regular file; give the path of a model file", .path.display())]
    NotRegularSource {
        /// The source given.
        path: PathBuf,
    },
    /// A host path inside the hive's state directory (its token, pid file, registry).
    #[error(
        "{} is in the hive's state directory {}, which holds its credentials; give the path of a model file \
         elsewhere",
        .path.display(),
        .state.display()
    )]
    StateSource {
        /// The source given.
        path: PathBuf,
        /// The state directory.
        state: PathBuf,
    },
    /// A host path outside every directory of [`ROOTS_ENV`].
    #[error(
        "{} is not under {ROOTS_ENV} ({roots}) once symlinks are resolved: move the model there, or add its \
         directory to {ROOTS_ENV} in the hive's environment",
        .path.display()
    )]
    OutsideRoots {
        /// The source given.
        path: PathBuf,
        /// The value of [`ROOTS_ENV`].
        roots: String,
    },
    /// [`ROOTS_ENV`] holds a relative path.
    #[error("{ROOTS_ENV}={value:?} must list absolute directories separated by `:`")]
    BadRoots {
        /// Its value.
        value: String,
    },
    /// The partial file's length is not what this download wrote (something else wrote to it).
    #[error(
        "{} changed during the download ({written} bytes written, {found} found); delete it and run the download \
         again",
        .part.display()
    )]
    PartChanged {
        /// The partial file.
        part: PathBuf,
        /// Bytes this download has in it.
        written: u64,
        /// Its length on disk.
        found: u64,
    },
}

/// The requests a 416 answered, for [`ModelError::RangeNotSatisfiable`].
fn range_attempts(resumed_from: Option<u64>) -> String {
    match resumed_from {
        Some(at) => format!("to a resume from byte {at} and again to a download from the start"),
        None => "to a download from the start".to_owned(),
    }
}

/// The most bytes a model may have unless [`MAX_BYTES_ENV`] says otherwise: 1 TiB.
pub const MAX_BYTES: u64 = 1 << 40;

/// The hive's environment variable that overrides [`MAX_BYTES`] (a positive number of bytes).
pub const MAX_BYTES_ENV: &str = "RBEE_MODEL_MAX_BYTES";

/// The size cap for one model: [`MAX_BYTES_ENV`] when set (and not empty), else [`MAX_BYTES`].
pub fn max_bytes() -> Result<u64, ModelError> {
    match std::env::var(MAX_BYTES_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(MAX_BYTES),
        Ok(v) if v.trim().is_empty() => Ok(MAX_BYTES),
        Ok(v) => v.trim().parse::<u64>().ok().filter(|n| *n > 0).ok_or(ModelError::BadMaxBytes { value: v }),
        Err(std::env::VarError::NotUnicode(v)) => {
            Err(ModelError::BadMaxBytes { value: v.to_string_lossy().into_owned() })
        }
    }
}

/// The hive's environment variable naming the only directories host-path sources may come
/// from (absolute paths separated by `:`; symlinks in them resolved).
pub const ROOTS_ENV: &str = "RBEE_MODEL_ROOTS";

/// The directories of [`ROOTS_ENV`], each as given and resolved; empty when it is unset or
/// empty. A relative entry is an error (it would depend on the hive's working directory).
fn roots() -> Result<Vec<PathBuf>, ModelError> {
    let Some(value) = std::env::var_os(ROOTS_ENV) else { return Ok(Vec::new()) };
    let mut roots = Vec::new();
    for root in std::env::split_paths(&value).filter(|p| !p.as_os_str().is_empty()) {
        if !root.is_absolute() {
            return Err(ModelError::BadRoots { value: value.to_string_lossy().into_owned() });
        }
        if let Ok(real) = std::fs::canonicalize(&root) {
            roots.push(real);
        }
        roots.push(root);
    }
    Ok(roots)
}

/// The partial files of the downloads running in this process (one per model name).
static RUNNING: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A running download's claim on its partial file; released when dropped (also when the
/// download's future is dropped because its caller went away).
struct Claim(PathBuf);

impl Claim {
    fn take(part: &Path, name: &str) -> Result<Self, ModelError> {
        let key = std::path::absolute(part).unwrap_or_else(|_| part.to_owned());
        let mut running = rbee_core::locked(&RUNNING);
        if !running.insert(key.clone()) {
            return Err(ModelError::AlreadyRunning { name: name.to_owned() });
        }
        Ok(Self(key))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        rbee_core::locked(&RUNNING).remove(&self.0);
    }
}

/// ` of N` when the total is known, for the interrupted-download messages.
fn of_total(total: Option<u64>) -> String {
    total.map_or(String::new(), |t| format!(" of {t}"))
}

/// Download progress: bytes so far, bytes in all when known.
pub type OnProgress<'a> = &'a mut (dyn FnMut(u64, Option<u64>) + Send);

/// Checks a model name: one plain file name.
pub fn check_name(name: &str) -> Result<(), ModelError> {
    let bad = name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0', '\n']) || name.len() > 255;
    if bad { Err(ModelError::BadName { name: name.to_owned() }) } else { Ok(()) }
}

/// The name a source gets by default: its last path segment, without a query.
pub fn default_name(source: &str) -> Result<String, ModelError> {
    let path = source.split(['?', '#']).next().unwrap_or(source);
    let path = match path.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, p)| p),
        None => path,
    };
    let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or("").to_owned();
    check_name(&name).map_err(|_| ModelError::Unnameable { location: source.to_owned() })?;
    Ok(name)
}

fn sidecar(dir: &Path, name: &str) -> PathBuf {
    dir.join(".sha256").join(name)
}

fn partial(dir: &Path, name: &str) -> PathBuf {
    dir.join(".partial").join(format!("{name}.part"))
}

/// One model's entry.
pub fn get(dir: &Path, name: &str) -> Result<ModelInfo, ModelError> {
    check_name(name)?;
    let path = dir.join(name);
    let meta = std::fs::metadata(&path).map_err(|source| ModelError::NotFound { name: name.to_owned(), source })?;
    if !meta.is_file() {
        return Err(ModelError::NotAFile { path });
    }
    let sha256 = std::fs::read_to_string(sidecar(dir, name)).ok().and_then(|s| rbee_core::Sha256::parse(&s).ok());
    Ok(ModelInfo { name: name.to_owned(), path: path.to_string_lossy().into_owned(), size: meta.len(), sha256 })
}

/// Every model, by name.
pub fn list(dir: &Path) -> Vec<ModelInfo> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    names.sort();
    names.iter().filter(|n| !n.starts_with('.')).filter_map(|n| get(dir, n).ok()).collect()
}

/// Deletes a model (and its recorded digest).
pub fn delete(dir: &Path, name: &str) -> Result<ModelInfo, ModelError> {
    let info = get(dir, name)?;
    std::fs::remove_file(&info.path).map_err(|source| ModelError::Delete { path: info.path.clone(), source })?;
    let _ = std::fs::remove_file(sidecar(dir, name));
    Ok(info)
}

async fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path).map_err(ModelError::Hash)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(ModelError::Hash)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .map_err(ModelError::HashTask)?
}

/// Throttles progress to one call per 200 ms; the caller reports completion.
struct Progress<'a> {
    on: OnProgress<'a>,
    last: std::time::Instant,
}

impl Progress<'_> {
    fn tick(&mut self, done: u64, total: Option<u64>) {
        // The last call (complete) is made by the caller once the body ends.
        if self.last.elapsed() >= std::time::Duration::from_millis(200) && total != Some(done) {
            self.last = std::time::Instant::now();
            (self.on)(done, total);
        }
    }
}

/// Downloads `source` (http(s) URL, `file://` URL or absolute path) as `name` (default: the
/// source's last path segment). A previous interrupted download of the same name resumes
/// from where it stopped (HTTP `Range`). With `sha256`, a mismatch deletes the download and
/// fails. The model appears under its name only once complete and verified. One download per
/// name at a time; sizes capped by [`max_bytes`]; host paths restricted (see the module doc).
pub async fn download(
    dir: &Path,
    source: &str,
    want: Option<&rbee_core::Sha256>,
    name: Option<&str>,
    on_progress: OnProgress<'_>,
) -> Result<ModelInfo, ModelError> {
    let name = match name {
        Some(n) => {
            check_name(n)?;
            n.to_owned()
        }
        None => default_name(source)?,
    };
    let part = partial(dir, &name);
    // Held until the model is in place (or the download fails or is dropped): a second download
    // of the same name would append to the same partial file.
    let _claim = Claim::take(&part, &name)?;
    if let Ok(existing) = get(dir, &name) {
        match (want, &existing.sha256) {
            (None, _) => return Ok(existing),
            (Some(w), Some(have)) if w == have => return Ok(existing),
            _ => {} // a different digest asked for: download again, replaced atomically at the end
        }
    }
    let max = max_bytes()?;
    for sub in [".partial", ".sha256"] {
        tokio::fs::create_dir_all(dir.join(sub))
            .await
            .map_err(|source| ModelError::CreateDir { dir: dir.to_owned(), source })?;
    }
    let mut progress =
        Progress { on: on_progress, last: std::time::Instant::now() - std::time::Duration::from_secs(1) };
    if source.starts_with("http://") || source.starts_with("https://") {
        fetch_http(source, &part, max, &mut progress).await?;
    } else {
        let path = source.strip_prefix("file://").unwrap_or(source);
        if !path.starts_with('/') {
            return Err(ModelError::BadSource { location: source.to_owned() });
        }
        copy_local(Path::new(path), dir, &part, max, &mut progress).await?;
    }
    let got = sha256_file(&part).await?;
    if let Some(w) = want
        && w.as_str() != got
    {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(ModelError::ChecksumMismatch { name, expected: w.clone(), got });
    }
    let file = tokio::fs::OpenOptions::new().write(true).open(&part).await.map_err(ModelError::PartFile)?;
    file.sync_all().await.map_err(ModelError::PartFile)?;
    drop(file);
    // The digest, then the model, each in place whole and durably (the directory flushed too).
    let digest = (sidecar(dir, &name), format!("{got}\n"));
    tokio::task::spawn_blocking(move || rbee_core::fsio::write_atomic(&digest.0, digest.1.as_bytes(), 0o644))
        .await
        .map_err(std::io::Error::other)
        .and_then(|written| written)
        .map_err(ModelError::WriteDigest)?;
    tokio::fs::rename(&part, dir.join(&name)).await.map_err(ModelError::MoveIntoPlace)?;
    let models_dir = dir.to_owned();
    tokio::task::spawn_blocking(move || rbee_core::fsio::sync_dir(&models_dir))
        .await
        .map_err(std::io::Error::other)
        .and_then(|synced| synced)
        .map_err(ModelError::MoveIntoPlace)?;
    get(dir, &name)
}

async fn open_part(part: &Path) -> Result<(tokio::fs::File, u64), ModelError> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)
        .await
        .map_err(|source| ModelError::WritePart { path: part.to_owned(), source })?;
    let len = file.metadata().await.map_err(ModelError::PartFile)?.len();
    Ok((file, len))
}

/// Flushes the partial file and checks it holds exactly the `written` bytes this download
/// accounts for (nothing else appended to it meanwhile).
async fn finish_part(file: &mut tokio::fs::File, part: &Path, written: u64) -> Result<(), ModelError> {
    file.flush().await.map_err(ModelError::PartFile)?;
    let found = file.metadata().await.map_err(ModelError::PartFile)?.len();
    if found != written {
        return Err(ModelError::PartChanged { part: part.to_owned(), written, found });
    }
    Ok(())
}

/// Deletes the partial file and answers [`ModelError::TooLarge`].
async fn too_large(part: &Path, location: &str, size: Option<u64>, max: u64) -> ModelError {
    let _ = tokio::fs::remove_file(part).await;
    ModelError::TooLarge { location: location.to_owned(), size, max }
}

/// `GET url`, from byte `from` (a `Range` request) when it is not 0.
async fn request(url: &str, from: u64) -> Result<rbee_http::Response, ModelError> {
    let range = format!("bytes={from}-");
    let headers: Vec<(&str, &str)> = if from > 0 { vec![("range", range.as_str())] } else { Vec::new() };
    rbee_http::send("GET", url, &headers, Vec::new()).await.map_err(ModelError::Fetch)
}

async fn fetch_http(url: &str, part: &Path, max: u64, progress: &mut Progress<'_>) -> Result<(), ModelError> {
    let (mut file, mut have) = open_part(part).await?;
    let mut response = request(url, have).await?;
    if response.status().as_u16() == 416 {
        let resumed_from = (have > 0).then_some(have);
        if resumed_from.is_some() {
            // The partial file is no prefix of the source any more: start over, once.
            drop(response);
            file.set_len(0).await.map_err(ModelError::PartFile)?;
            have = 0;
            response = request(url, 0).await?;
        }
        if response.status().as_u16() == 416 {
            drop(file);
            let _ = tokio::fs::remove_file(part).await;
            return Err(ModelError::RangeNotSatisfiable { url: url.to_owned(), resumed_from });
        }
    }
    let status = response.status().as_u16();
    let length =
        response.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let mut done = match status {
        206 => {
            let start = response
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes ")?.split('-').next()?.parse::<u64>().ok());
            if start != Some(have) {
                return Err(ModelError::BadResume { url: url.to_owned(), start, have, part: part.to_owned() });
            }
            have
        }
        200 => {
            // No resume from this server: start over.
            file.set_len(0).await.map_err(ModelError::PartFile)?;
            0
        }
        _ => {
            let body = rbee_http::collect(response).await.unwrap_or_default();
            let body = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(ModelError::Status { url: url.to_owned(), status, body: body.trim().to_owned() });
        }
    };
    let total = length.map(|l| l + done);
    if let Some(t) = total
        && t > max
    {
        drop(file);
        return Err(too_large(part, url, Some(t), max).await);
    }
    let mut body = response.into_body();
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(source) => {
                file.flush().await.map_err(ModelError::PartFile)?;
                return Err(ModelError::Interrupted { url: url.to_owned(), done, total, source });
            }
        };
        if let Some(data) = frame.data_ref() {
            if done + data.len() as u64 > max {
                drop(file);
                return Err(too_large(part, url, None, max).await);
            }
            file.write_all(data).await.map_err(|source| ModelError::WritePart { path: part.to_owned(), source })?;
            done += data.len() as u64;
            progress.tick(done, total);
        }
    }
    if total.is_some_and(|t| done < t) {
        file.flush().await.map_err(ModelError::PartFile)?;
        return Err(ModelError::ClosedEarly { url: url.to_owned(), done, total });
    }
    finish_part(&mut file, part, done).await?;
    (progress.on)(done, total);
    Ok(())
}

/// The state directories a host-path source must stay out of: the one next to the models
/// directory (`HOME/.local/share/rbee/models` → `HOME/.local/state/rbee`) and `$HOME`'s, each
/// as given and with symlinks resolved.
fn state_dirs(models: &Path) -> Vec<PathBuf> {
    use rbee_core::layout::Layout;
    let mut homes = Vec::new();
    if models.ends_with(Layout::MODELS_DIR)
        && let Some(home) = models.ancestors().nth(Path::new(Layout::MODELS_DIR).components().count())
    {
        homes.push(home.to_owned());
    }
    homes.extend(std::env::var_os("HOME").map(PathBuf::from));
    let mut dirs = Vec::new();
    for state in homes.iter().map(|h| h.join(Layout::STATE_DIR)) {
        if let Ok(real) = std::fs::canonicalize(&state) {
            dirs.push(real);
        }
        dirs.push(state);
    }
    dirs
}

/// Opens a host-path source: a regular file outside the hive's state directory. Its length
/// is taken from the opened file.
async fn open_local(src: &Path, models: &Path) -> Result<(tokio::fs::File, u64), ModelError> {
    let read_error = |source| ModelError::ReadLocal { path: src.to_owned(), source };
    let not_regular = || ModelError::NotRegularSource { path: src.to_owned() };
    // Looked at before opening: opening a FIFO would wait for a writer.
    if !tokio::fs::metadata(src).await.map_err(read_error)?.is_file() {
        return Err(not_regular());
    }
    let input = tokio::fs::File::open(src).await.map_err(read_error)?;
    let meta = input.metadata().await.map_err(ModelError::LocalSource)?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    // Where the opened file really is (symlinks and `..` resolved, no race with a path that
    // changes after the check): /proc names it; elsewhere, the path resolved now.
    let real = {
        use std::os::fd::AsRawFd;
        let fd = format!("/proc/self/fd/{}", input.as_raw_fd());
        match tokio::fs::read_link(&fd).await {
            Ok(real) => real,
            Err(_) => tokio::fs::canonicalize(src).await.map_err(read_error)?,
        }
    };
    if let Some(state) = state_dirs(models).into_iter().find(|d| real.starts_with(d) || src.starts_with(d)) {
        return Err(ModelError::StateSource { path: src.to_owned(), state });
    }
    let roots = roots()?;
    // The resolved file, not the path given: a symlink under a root may point anywhere.
    if !roots.is_empty() && !roots.iter().any(|root| real.starts_with(root)) {
        let roots = std::env::var_os(ROOTS_ENV).unwrap_or_default().to_string_lossy().into_owned();
        return Err(ModelError::OutsideRoots { path: src.to_owned(), roots });
    }
    Ok((input, meta.len()))
}

async fn copy_local(
    src: &Path,
    models: &Path,
    part: &Path,
    max: u64,
    progress: &mut Progress<'_>,
) -> Result<(), ModelError> {
    let read_error = |source| ModelError::ReadLocal { path: src.to_owned(), source };
    let write_error = |source| ModelError::WritePart { path: part.to_owned(), source };
    let (mut input, total) = open_local(src, models).await?;
    if total > max {
        return Err(too_large(part, &src.display().to_string(), Some(total), max).await);
    }
    let (mut file, mut done) = open_part(part).await?;
    if done > total {
        file.set_len(0).await.map_err(ModelError::PartFile)?;
        done = 0;
    }
    input.seek(std::io::SeekFrom::Start(done)).await.map_err(ModelError::LocalSource)?;
    // No more than the length it had when opened (a file that grows meanwhile stays capped).
    let mut input = input.take(total - done);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).await.map_err(read_error)?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).await.map_err(write_error)?;
        done += n as u64;
        progress.tick(done, Some(total));
    }
    finish_part(&mut file, part, done).await?;
    (progress.on)(done, Some(total));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These texts reach users as operation errors: pinned word for word.
    #[test]
    fn messages_read_as_before() {
        let e = ModelError::ClosedEarly { url: "http://h/m".into(), done: 3, total: Some(10) };
        assert_eq!(
            e.to_string(),
            "download of http://h/m interrupted after 3 of 10 bytes (the connection closed early); run the same \
             download again to resume"
        );
        let e = ModelError::ClosedEarly { url: "http://h/m".into(), done: 3, total: None };
        assert!(e.to_string().contains("after 3 bytes ("), "{e}");
        let e = ModelError::BadResume { url: "http://h/m".into(), start: Some(5), have: 3, part: "/p/m.part".into() };
        assert_eq!(e.to_string(), "http://h/m resumed at byte Some(5) instead of 3; delete /p/m.part and retry");
        let e = ModelError::RangeNotSatisfiable { url: "http://h/m".into(), resumed_from: Some(7) };
        assert_eq!(
            e.to_string(),
            "http://h/m answered 416 range not satisfiable to a resume from byte 7 and again to a download from the \
             start; check the URL (the partial download was deleted)"
        );
        let e = ModelError::TooLarge { location: "/d/m".into(), size: Some(9), max: 8 };
        assert_eq!(
            e.to_string(),
            "/d/m is 9 bytes, more than this hive's limit of 8 bytes per model; the partial download was deleted; to \
             allow it, raise RBEE_MODEL_MAX_BYTES in the hive's environment"
        );
        let e = ModelError::AlreadyRunning { name: "m".into() };
        assert!(e.to_string().starts_with("a download of m is already running"), "{e}");
    }

    #[test]
    fn names() {
        assert_eq!(default_name("https://h/x/llama-3.gguf?download=1").unwrap(), "llama-3.gguf");
        assert_eq!(default_name("/data/m.bin").unwrap(), "m.bin");
        assert!(default_name("https://h/").unwrap_err().to_string().contains("--name"));
        for bad in ["", ".hidden", "a/b", "..", "x\ny"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
