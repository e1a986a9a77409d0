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

/// Download progress: bytes so far, bytes in all when known.
pub type OnProgress<'a> = &'a mut (dyn FnMut(u64, Option<u64>) + Send);

/// Checks a model name: one plain file name.
pub fn check_name(name: &str) -> Result<(), String> {
    let bad = name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0', '\n']) || name.len() > 255;
    if bad {
        Err(format!("{name:?} is not a model name: use a plain file name (no `/`, not starting with `.`)"))
    } else {
        Ok(())
    }
}

/// The name a source gets by default: its last path segment, without a query.
pub fn default_name(source: &str) -> Result<String, String> {
    let path = source.split(['?', '#']).next().unwrap_or(source);
    let path = match path.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, p)| p),
        None => path,
    };
    let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or("").to_owned();
    check_name(&name).map_err(|_| format!("cannot name a model after {source:?}: give a name with --name"))?;
    Ok(name)
}

fn sidecar(dir: &Path, name: &str) -> PathBuf {
    dir.join(".sha256").join(name)
}

fn partial(dir: &Path, name: &str) -> PathBuf {
    dir.join(".partial").join(format!("{name}.part"))
}

/// One model's entry.
pub fn get(dir: &Path, name: &str) -> Result<ModelInfo, String> {
    check_name(name)?;
    let path = dir.join(name);
    let meta = std::fs::metadata(&path).map_err(|_| format!("no model {name} on this hive; see `rbee model list`"))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
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
pub fn delete(dir: &Path, name: &str) -> Result<ModelInfo, String> {
    let info = get(dir, name)?;
    std::fs::remove_file(&info.path).map_err(|e| format!("cannot delete {}: {e}", info.path))?;
    let _ = std::fs::remove_file(sidecar(dir, name));
    Ok(info)
}

async fn sha256_file(path: &Path) -> Result<String, String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .map_err(|e| e.to_string())?
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
) -> Result<ModelInfo, String> {
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
        tokio::fs::create_dir_all(dir.join(sub)).await.map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let part = partial(dir, &name);
    let mut progress =
        Progress { on: on_progress, last: std::time::Instant::now() - std::time::Duration::from_secs(1) };
    if source.starts_with("http://") || source.starts_with("https://") {
        fetch_http(source, &part, &mut progress).await?;
    } else {
        let path = source.strip_prefix("file://").unwrap_or(source);
        if !path.starts_with('/') {
            return Err(format!("{source:?} is not an http(s) URL or an absolute path"));
        }
        copy_local(Path::new(path), &part, &mut progress).await?;
    }
    let got = sha256_file(&part).await?;
    if let Some(w) = want
        && w.as_str() != got
    {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(format!("checksum mismatch for {name}: expected sha256 {w}, got {got}; the download was deleted"));
    }
    let file = tokio::fs::OpenOptions::new().write(true).open(&part).await.map_err(|e| e.to_string())?;
    file.sync_all().await.map_err(|e| e.to_string())?;
    drop(file);
    tokio::fs::write(sidecar(dir, &name), format!("{got}\n")).await.map_err(|e| e.to_string())?;
    tokio::fs::rename(&part, dir.join(&name)).await.map_err(|e| format!("cannot move the model into place: {e}"))?;
    get(dir, &name)
}

async fn open_part(part: &Path) -> Result<(tokio::fs::File, u64), String> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)
        .await
        .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
    let len = file.metadata().await.map_err(|e| e.to_string())?.len();
    Ok((file, len))
}

async fn fetch_http(url: &str, part: &Path, progress: &mut Progress<'_>) -> Result<(), String> {
    let (mut file, have) = open_part(part).await?;
    let range = format!("bytes={have}-");
    let headers: Vec<(&str, &str)> = if have > 0 { vec![("range", range.as_str())] } else { Vec::new() };
    let response = rbee_http::send("GET", url, &headers, Vec::new()).await.map_err(|e| e.to_string())?;
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
                return Err(format!(
                    "{url} resumed at byte {start:?} instead of {have}; delete {} and retry",
                    part.display()
                ));
            }
            have
        }
        200 => {
            // No resume from this server: start over.
            file.set_len(0).await.map_err(|e| e.to_string())?;
            0
        }
        416 => {
            // The partial file is no prefix of the source any more: start over.
            file.set_len(0).await.map_err(|e| e.to_string())?;
            drop(file);
            return Box::pin(fetch_http(url, part, progress)).await;
        }
        _ => {
            let body = rbee_http::collect(response).await.unwrap_or_default();
            let body = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("{url} answered {status}: {}", body.trim()));
        }
    };
    let total = length.map(|l| l + done);
    let mut body = response.into_body();
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                file.flush().await.map_err(|e| e.to_string())?;
                return Err(interrupted(url, done, total, &e.to_string()));
            }
        };
        if let Some(data) = frame.data_ref() {
            file.write_all(data).await.map_err(|e| format!("cannot write {}: {e}", part.display()))?;
            done += data.len() as u64;
            progress.tick(done, total);
        }
    }
    file.flush().await.map_err(|e| e.to_string())?;
    if total.is_some_and(|t| done < t) {
        return Err(interrupted(url, done, total, "the connection closed early"));
    }
    (progress.on)(done, total);
    Ok(())
}

fn interrupted(source: &str, done: u64, total: Option<u64>, why: &str) -> String {
    let of = total.map_or(String::new(), |t| format!(" of {t}"));
    format!("download of {source} interrupted after {done}{of} bytes ({why}); run the same download again to resume")
}

async fn copy_local(src: &Path, part: &Path, progress: &mut Progress<'_>) -> Result<(), String> {
    let mut input = tokio::fs::File::open(src).await.map_err(|e| format!("cannot read {}: {e}", src.display()))?;
    let total = input.metadata().await.map_err(|e| e.to_string())?.len();
    let (mut file, mut done) = open_part(part).await?;
    if done > total {
        file.set_len(0).await.map_err(|e| e.to_string())?;
        done = 0;
    }
    input.seek(std::io::SeekFrom::Start(done)).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).await.map_err(|e| format!("cannot read {}: {e}", src.display()))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).await.map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        done += n as u64;
        progress.tick(done, Some(total));
    }
    file.flush().await.map_err(|e| e.to_string())?;
    (progress.on)(done, Some(total));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(default_name("https://h/x/llama-3.gguf?download=1").unwrap(), "llama-3.gguf");
        assert_eq!(default_name("/data/m.bin").unwrap(), "m.bin");
        assert!(default_name("https://h/").unwrap_err().contains("--name"));
        for bad in ["", ".hidden", "a/b", "..", "x\ny"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
