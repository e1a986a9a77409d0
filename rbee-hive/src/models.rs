//! Models under `~/.local/share/rbee/models/`: download from an http(s) URL or a local path,
//! resumable, sha256-verified, appearing atomically; list, get, delete.
//!
//! ```text
//! models/<name>                 a complete model
//! models/.partial/<name>.part   a download in progress (resumed from its length)
//! models/.sha256/<name>         the digest recorded when the download finished
//! ```

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
/// fails. The model appears under its name only once complete and verified.
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
    if let Ok(existing) = get(dir, &name) {
        match (want, &existing.sha256) {
            (None, _) => return Ok(existing),
            (Some(w), Some(have)) if w == have => return Ok(existing),
            _ => {} // a different digest asked for: download again, replaced atomically at the end
        }
    }
    for sub in [".partial", ".sha256"] {
        tokio::fs::create_dir_all(dir.join(sub))
            .await
            .map_err(|source| ModelError::CreateDir { dir: dir.to_owned(), source })?;
    }
    let part = partial(dir, &name);
    let mut progress =
        Progress { on: on_progress, last: std::time::Instant::now() - std::time::Duration::from_secs(1) };
    if source.starts_with("http://") || source.starts_with("https://") {
        fetch_http(source, &part, &mut progress).await?;
    } else {
        let path = source.strip_prefix("file://").unwrap_or(source);
        if !path.starts_with('/') {
            return Err(ModelError::BadSource { location: source.to_owned() });
        }
        copy_local(Path::new(path), &part, &mut progress).await?;
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
    tokio::fs::write(sidecar(dir, &name), format!("{got}\n")).await.map_err(ModelError::WriteDigest)?;
    tokio::fs::rename(&part, dir.join(&name)).await.map_err(ModelError::MoveIntoPlace)?;
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

async fn fetch_http(url: &str, part: &Path, progress: &mut Progress<'_>) -> Result<(), ModelError> {
    let (mut file, have) = open_part(part).await?;
    let range = format!("bytes={have}-");
    let headers: Vec<(&str, &str)> = if have > 0 { vec![("range", range.as_str())] } else { Vec::new() };
    let response = rbee_http::send("GET", url, &headers, Vec::new()).await.map_err(ModelError::Fetch)?;
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
        416 => {
            // The partial file is no prefix of the source any more: start over.
            file.set_len(0).await.map_err(ModelError::PartFile)?;
            drop(file);
            return Box::pin(fetch_http(url, part, progress)).await;
        }
        _ => {
            let body = rbee_http::collect(response).await.unwrap_or_default();
            let body = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(ModelError::Status { url: url.to_owned(), status, body: body.trim().to_owned() });
        }
    };
    let total = length.map(|l| l + done);
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
            file.write_all(data).await.map_err(|source| ModelError::WritePart { path: part.to_owned(), source })?;
            done += data.len() as u64;
            progress.tick(done, total);
        }
    }
    file.flush().await.map_err(ModelError::PartFile)?;
    if total.is_some_and(|t| done < t) {
        return Err(ModelError::ClosedEarly { url: url.to_owned(), done, total });
    }
    (progress.on)(done, total);
    Ok(())
}

async fn copy_local(src: &Path, part: &Path, progress: &mut Progress<'_>) -> Result<(), ModelError> {
    let read_error = |source| ModelError::ReadLocal { path: src.to_owned(), source };
    let write_error = |source| ModelError::WritePart { path: part.to_owned(), source };
    let mut input = tokio::fs::File::open(src).await.map_err(read_error)?;
    let total = input.metadata().await.map_err(ModelError::LocalSource)?.len();
    let (mut file, mut done) = open_part(part).await?;
    if done > total {
        file.set_len(0).await.map_err(ModelError::PartFile)?;
        done = 0;
    }
    input.seek(std::io::SeekFrom::Start(done)).await.map_err(ModelError::LocalSource)?;
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
    file.flush().await.map_err(ModelError::PartFile)?;
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
