//! Model downloads against a local HTTP server: success, checksum mismatch (nothing kept),
//! interrupted then resumed with a `Range` request, and a server that cannot resume. Then the
//! limits: a server answering 416 to a resume, two downloads of one name at once, host paths
//! that are no regular model file (or lie in the hive's state directory), and the size cap set
//! by `RBEE_MODEL_MAX_BYTES` on a real `rbee-hive` process.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// How the server answers.
#[derive(Clone, Copy)]
enum Mode {
    /// Whole body, honouring `Range`.
    Normal,
    /// The first request gets the full length announced but only this many bytes, then the
    /// connection closes; later requests are served normally.
    CutFirstAt(usize),
    /// Ignores `Range` (always 200 with the whole body).
    NoRanges,
    /// Like `NoRanges`, without `Content-Length` (the body ends when the connection closes).
    NoLength,
    /// `416 Range Not Satisfiable` to a request with `Range`, the whole body to one without.
    RangesRefused,
    /// `416 Range Not Satisfiable` to every request.
    Always416,
}

struct Server {
    url: String,
    /// The `Range` header of each request (`None` when absent).
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

fn serve(body: Vec<u8>, mode: Mode) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/models/tiny.gguf", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("range")
                {
                    range = Some(value.trim().to_owned());
                }
            }
            seen.lock().unwrap().push(range.clone());
            if matches!(mode, Mode::Always416) || matches!(mode, Mode::RangesRefused) && range.is_some() {
                let _ = write!(
                    stream,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.flush();
                let _ = stream.shutdown(std::net::Shutdown::Both);
                continue;
            }
            let start = match (mode, &range) {
                (Mode::NoRanges | Mode::NoLength, _) | (_, None) => None,
                (_, Some(r)) => r.strip_prefix("bytes=").and_then(|r| r.trim_end_matches('-').parse::<usize>().ok()),
            };
            let _ = match start {
                Some(s) => write!(
                    stream,
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {s}-{}/{}\r\nConnection: close\r\n\r\n",
                    body.len() - s,
                    body.len() - 1,
                    body.len()
                )
                .and_then(|()| stream.write_all(&body[s..])),
                None => {
                    let head = match mode {
                        Mode::NoLength => "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned(),
                        _ => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()),
                    };
                    let cut = match mode {
                        Mode::CutFirstAt(at) if n == 0 => at,
                        _ => body.len(),
                    };
                    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body[..cut]))
                }
            };
            let _ = stream.flush();
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    });
    Server { url, ranges }
}

fn model_bytes() -> Vec<u8> {
    (0..3 * 1024 * 1024 + 17).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn download(
    dir: &Path,
    url: &str,
    sha256: Option<&str>,
) -> Result<rbee_core::proto::hive::ModelInfo, rbee_hive::models::ModelError> {
    let mut progress = Vec::new();
    let mut on = |done, total| progress.push((done, total));
    let want = sha256.map(|s| rbee_core::Sha256::parse(s).unwrap());
    let result = rbee_hive::models::download(dir, url, want.as_ref(), None, &mut on).await;
    if result.is_ok() {
        assert!(!progress.is_empty(), "progress was reported");
        let (done, total) = *progress.last().unwrap();
        assert_eq!(Some(done), total, "the last progress is complete");
    }
    result
}

#[tokio::test]
async fn a_download_is_verified_and_appears_complete() {
    let body = model_bytes();
    let server = serve(body.clone(), Mode::Normal);
    let dir = tempfile::tempdir().unwrap();
    let info = download(dir.path(), &server.url, Some(&sha(&body))).await.unwrap();
    assert_eq!(info.name, "tiny.gguf");
    assert_eq!(info.size, body.len() as u64);
    assert_eq!(info.sha256.map(String::from), Some(sha(&body)));
    assert_eq!(std::fs::read(dir.path().join("tiny.gguf")).unwrap(), body);
    assert!(!dir.path().join(".partial/tiny.gguf.part").exists());
    let listed = rbee_hive::models::list(dir.path());
    assert_eq!(listed.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["tiny.gguf"]);
    // Asked again with the same digest: nothing is fetched.
    let mut on = |_, _| {};
    let want = rbee_core::Sha256::parse(&sha(&body)).unwrap();
    rbee_hive::models::download(dir.path(), &server.url, Some(&want), None, &mut on).await.unwrap();
    assert_eq!(server.ranges.lock().unwrap().len(), 1);
    rbee_hive::models::delete(dir.path(), "tiny.gguf").unwrap();
    assert!(rbee_hive::models::list(dir.path()).is_empty());
}

#[tokio::test]
async fn a_checksum_mismatch_keeps_nothing() {
    let body = model_bytes();
    let server = serve(body.clone(), Mode::Normal);
    let dir = tempfile::tempdir().unwrap();
    let wrong = sha(b"something else");
    let err = download(dir.path(), &server.url, Some(&wrong)).await.unwrap_err();
    assert!(matches!(err, rbee_hive::models::ModelError::ChecksumMismatch { .. }), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("checksum mismatch") && err.contains(&wrong) && err.contains(&sha(&body)), "{err}");
    assert!(err.contains("deleted"), "{err}");
    assert!(!dir.path().join("tiny.gguf").exists());
    assert!(!dir.path().join(".partial/tiny.gguf.part").exists());
    assert!(rbee_hive::models::list(dir.path()).is_empty());
}

#[tokio::test]
async fn an_interrupted_download_resumes_where_it_stopped() {
    let body = model_bytes();
    let cut = 1024 * 1024 + 3;
    let server = serve(body.clone(), Mode::CutFirstAt(cut));
    let dir = tempfile::tempdir().unwrap();
    let err = download(dir.path(), &server.url, Some(&sha(&body))).await.unwrap_err().to_string();
    assert!(err.contains("interrupted") && err.contains("resume"), "{err}");
    assert!(!dir.path().join("tiny.gguf").exists(), "no partial model under its name");
    let part = dir.path().join(".partial/tiny.gguf.part");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), cut as u64);

    let info = download(dir.path(), &server.url, Some(&sha(&body))).await.unwrap();
    assert_eq!(info.size, body.len() as u64);
    assert_eq!(std::fs::read(dir.path().join("tiny.gguf")).unwrap(), body);
    assert_eq!(*server.ranges.lock().unwrap(), [None, Some(format!("bytes={cut}-"))]);
    assert!(!part.exists());
}

#[tokio::test]
async fn a_server_without_ranges_starts_over() {
    let body = model_bytes();
    let server = serve(body.clone(), Mode::NoRanges);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".partial")).unwrap();
    std::fs::write(dir.path().join(".partial/tiny.gguf.part"), &body[..1000]).unwrap();
    let info = download(dir.path(), &server.url, Some(&sha(&body))).await.unwrap();
    assert_eq!(info.size, body.len() as u64);
    assert_eq!(std::fs::read(dir.path().join("tiny.gguf")).unwrap(), body);
    assert_eq!(*server.ranges.lock().unwrap(), [Some("bytes=1000-".to_owned())]);
}

#[tokio::test]
async fn local_paths_and_bad_names() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    std::fs::write(&src, b"weights").unwrap();
    let models = dir.path().join("models");
    let info = download(&models, src.to_str().unwrap(), None).await.unwrap();
    assert_eq!((info.name.as_str(), info.size), ("src.bin", 7));
    let err = download(&models, "relative/path.bin", None).await.unwrap_err().to_string();
    assert!(err.contains("absolute path"), "{err}");
    let mut on = |_, _| {};
    let err = rbee_hive::models::download(&models, src.to_str().unwrap(), None, Some("../x"), &mut on)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a model name"), "{err}");
    let err = rbee_hive::models::get(&models, "absent").unwrap_err().to_string();
    assert!(err.contains("rbee model list"), "{err}");
}

/// Seeds `.partial/tiny.gguf.part` with `bytes`, as an interrupted download leaves it.
fn seed_partial(models: &Path, bytes: &[u8]) -> std::path::PathBuf {
    let part = models.join(".partial/tiny.gguf.part");
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, bytes).unwrap();
    part
}

/// It used to recurse on every 416 until the hive's stack overflowed. Now a 416 to a resume
/// starts over from byte 0 once, and that succeeds against a server that serves whole bodies.
#[tokio::test]
async fn a_416_to_a_resume_starts_over_from_zero_once() {
    let body = model_bytes();
    let server = serve(body.clone(), Mode::RangesRefused);
    let dir = tempfile::tempdir().unwrap();
    let part = seed_partial(dir.path(), b"not a prefix of the model");
    let info = download(dir.path(), &server.url, Some(&sha(&body))).await.unwrap();
    assert_eq!(info.size, body.len() as u64);
    assert_eq!(std::fs::read(dir.path().join("tiny.gguf")).unwrap(), body);
    assert_eq!(*server.ranges.lock().unwrap(), [Some("bytes=25-".to_owned()), None]);
    assert!(!part.exists());
}

/// A server that answers 416 to everything: two requests (the resume, then one from byte 0),
/// then a clean error naming the 416; the partial file is gone and downloads still work.
#[tokio::test]
async fn a_server_answering_416_again_fails_the_download_after_two_requests() {
    let body = model_bytes();
    let server = serve(body.clone(), Mode::Always416);
    let dir = tempfile::tempdir().unwrap();
    let part = seed_partial(dir.path(), &body[..1000]);
    let err = download(dir.path(), &server.url, Some(&sha(&body))).await.unwrap_err();
    assert!(matches!(err, rbee_hive::models::ModelError::RangeNotSatisfiable { resumed_from: Some(1000), .. }));
    let err = err.to_string();
    assert!(err.contains("416 range not satisfiable") && err.contains("from byte 1000"), "{err}");
    assert!(err.contains("check the URL") && err.contains("partial download was deleted"), "{err}");
    assert_eq!(*server.ranges.lock().unwrap(), [Some("bytes=1000-".to_owned()), None]);
    assert!(!part.exists());
    assert!(!dir.path().join("tiny.gguf").exists());

    // Without a partial file: one request, the same kind of error.
    let err = download(dir.path(), &server.url, None).await.unwrap_err().to_string();
    assert!(err.contains("416 range not satisfiable to a download from the start; check the URL"), "{err}");
    assert_eq!(server.ranges.lock().unwrap().len(), 3);

    // The process (the hive) carries on: the next download works.
    let good = serve(body.clone(), Mode::Normal);
    let info = download(dir.path(), &good.url, Some(&sha(&body))).await.unwrap();
    assert_eq!(info.size, body.len() as u64);
}

/// Two downloads of one name at once used to append to one partial file: a model twice the
/// source's size, accepted. Now the second fails at once, and the model is the source.
#[tokio::test]
async fn two_downloads_of_one_name_at_once_give_one_correct_model() {
    let body = model_bytes();
    let server = serve(body.clone(), Mode::Normal);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = tokio::join!(download(dir.path(), &server.url, None), download(dir.path(), &server.url, None));
    let (ok, err) = match (a, b) {
        (Ok(info), Err(e)) | (Err(e), Ok(info)) => (info, e),
        (a, b) => panic!("expected one success and one refusal: {a:?} {b:?}"),
    };
    assert!(matches!(err, rbee_hive::models::ModelError::AlreadyRunning { .. }), "{err:?}");
    assert!(err.to_string().starts_with("a download of tiny.gguf is already running"), "{err}");
    assert_eq!(ok.size, body.len() as u64);
    assert_eq!(ok.sha256.map(String::from), Some(sha(&body)));
    assert_eq!(std::fs::read(dir.path().join("tiny.gguf")).unwrap(), body);
    assert_eq!(server.ranges.lock().unwrap().len(), 1, "one request reached the server");

    // Once the first is done, the name is free again: the same request finds the model.
    let mut on = |_, _| {};
    let want = rbee_core::Sha256::parse(&sha(&body)).unwrap();
    let again = rbee_hive::models::download(dir.path(), &server.url, Some(&want), None, &mut on).await.unwrap();
    assert_eq!(again.size, body.len() as u64);
    assert_eq!(server.ranges.lock().unwrap().len(), 1);
}

/// Host paths: only regular files, and none in the hive's state directory (where `hive.token`
/// lives), however the path reaches it (directly, through a symlink, through `..`).
#[tokio::test]
async fn host_paths_must_be_regular_files_outside_the_state_directory() {
    let home = tempfile::tempdir().unwrap();
    let models = home.path().join(".local/share/rbee/models");
    let state = home.path().join(".local/state/rbee");
    std::fs::create_dir_all(&state).unwrap();
    let token = state.join("hive.token");
    std::fs::write(&token, "secret-token\n").unwrap();
    let elsewhere = home.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let link = elsewhere.join("innocent.gguf");
    std::os::unix::fs::symlink(&token, &link).unwrap();
    let dotdot = models.join("../../../state/rbee/hive.token");
    std::fs::create_dir_all(&models).unwrap();

    let mut on = |_, _| {};
    for source in [&token, &link, &dotdot] {
        let err = rbee_hive::models::download(&models, source.to_str().unwrap(), None, Some("stolen"), &mut on)
            .await
            .unwrap_err();
        assert!(matches!(err, rbee_hive::models::ModelError::StateSource { .. }), "{source:?}: {err:?}");
        let err = err.to_string();
        assert!(err.contains("the hive's state directory") && err.contains("elsewhere"), "{err}");
    }
    // As a file:// URL too.
    let url = format!("file://{}", token.display());
    let err = rbee_hive::models::download(&models, &url, None, Some("stolen"), &mut on).await.unwrap_err();
    assert!(matches!(err, rbee_hive::models::ModelError::StateSource { .. }), "{err:?}");
    assert!(!models.join("stolen").exists() && !models.join(".partial/stolen.part").exists());

    let fifo = elsewhere.join("fifo.gguf");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for source in [Path::new("/dev/zero"), fifo.as_path(), elsewhere.as_path()] {
        let err = rbee_hive::models::download(&models, source.to_str().unwrap(), None, Some("odd"), &mut on)
            .await
            .unwrap_err();
        assert!(matches!(err, rbee_hive::models::ModelError::NotRegularSource { .. }), "{source:?}: {err:?}");
        assert!(err.to_string().contains("is not a regular file; give the path of a model file"), "{err}");
    }
    assert!(rbee_hive::models::list(&models).is_empty());

    // A regular file elsewhere is still fine.
    let fine = elsewhere.join("fine.gguf");
    std::fs::write(&fine, b"weights").unwrap();
    let info = download(&models, fine.to_str().unwrap(), None).await.unwrap();
    assert_eq!((info.name.as_str(), info.size), ("fine.gguf", 7));
}

/// A real `rbee-hive` on a free port, its home a temporary directory.
struct HiveProcess {
    child: std::process::Child,
    url: String,
    home: tempfile::TempDir,
}

impl Drop for HiveProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HiveProcess {
    async fn start(env: &[(&str, &str)]) -> Self {
        let home = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_rbee-hive"))
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .env("HOME", home.path())
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let hive = Self { child, url: format!("http://127.0.0.1:{port}"), home };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !hive.healthy().await {
            assert!(std::time::Instant::now() < deadline, "the hive did not answer /health");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        hive
    }

    async fn healthy(&self) -> bool {
        let health = format!("{}/health", self.url);
        matches!(rbee_http::send("GET", &health, &[], Vec::new()).await, Ok(r) if r.status() == 200)
    }

    fn models(&self) -> std::path::PathBuf {
        self.home.path().join(rbee_core::layout::Layout::MODELS_DIR)
    }

    /// A forwarded `model_download`: the model's JSON, or the error's message.
    async fn download(&self, source: &str, name: Option<&str>) -> Result<serde_json::Value, String> {
        let op = serde_json::json!({
            "type": "model_download", "hive_alias": "h1", "source": source, "sha256": null, "name": name,
        });
        let url = format!("{}/v1/operations", self.url);
        // The hive made its token at start (no sync installed one).
        let token = self.home.path().join(rbee_core::layout::Layout::hive_token());
        let bearer = format!("Bearer {}", std::fs::read_to_string(token).unwrap().trim());
        let headers = [("content-type", "application/json"), ("authorization", bearer.as_str())];
        let response = rbee_http::send("POST", &url, &headers, serde_json::to_vec(&op).unwrap()).await.unwrap();
        let body = String::from_utf8(rbee_http::collect(response).await.unwrap()).unwrap();
        let last: serde_json::Value = serde_json::from_str(body.lines().last().unwrap()).unwrap();
        let result = &last["result"];
        match result["kind"].as_str() {
            Some("model") => Ok(result["model"].clone()),
            _ => Err(result["message"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned()),
        }
    }
}

/// `RBEE_MODEL_MAX_BYTES` in the hive's environment caps a model's size: checked against
/// `Content-Length` (a resume included), while a body without a length streams, and against
/// a local file's length. Each refusal names the cap and leaves no partial file.
#[tokio::test]
async fn the_hive_refuses_models_over_rbee_model_max_bytes() {
    let cap = 1024 * 1024;
    let hive = HiveProcess::start(&[("RBEE_MODEL_MAX_BYTES", &cap.to_string())]).await;
    let body = model_bytes();
    let part = hive.models().join(".partial/tiny.gguf.part");

    // Content-Length announces 3 MiB on a resume: refused before a byte is written.
    let announced = serve(body.clone(), Mode::Normal);
    seed_partial(&hive.models(), &body[..1000]);
    let err = hive.download(&announced.url, None).await.unwrap_err();
    assert!(err.contains(&format!("is {} bytes, more than this hive's limit of {cap} bytes", body.len())), "{err}");
    assert!(err.contains("partial download was deleted") && err.contains("raise RBEE_MODEL_MAX_BYTES"), "{err}");
    assert_eq!(*announced.ranges.lock().unwrap(), [Some("bytes=1000-".to_owned())]);
    assert!(!part.exists());

    // No length: stopped once the cap is reached while streaming.
    let unannounced = serve(body.clone(), Mode::NoLength);
    let err = hive.download(&unannounced.url, None).await.unwrap_err();
    assert!(err.contains(&format!("is larger than this hive's limit of {cap} bytes per model")), "{err}");
    assert!(!part.exists());

    // A local file over the cap.
    let big = hive.home.path().join("big.gguf");
    std::fs::write(&big, &body).unwrap();
    let err = hive.download(big.to_str().unwrap(), None).await.unwrap_err();
    assert!(err.contains(&format!("limit of {cap} bytes")), "{err}");
    assert!(!hive.models().join(".partial/big.gguf.part").exists());

    // Under the cap: fine; nothing over it was kept.
    let small = hive.home.path().join("small.gguf");
    std::fs::write(&small, &body[..cap]).unwrap();
    let model = hive.download(small.to_str().unwrap(), None).await.unwrap();
    assert_eq!(model["size"], cap as u64);
    assert_eq!(rbee_hive::models::list(&hive.models()).len(), 1);
}

/// With `RBEE_MODEL_ROOTS`, a host path is taken only from under those directories (an SSH
/// key or any other readable file elsewhere was copied into a model before), symlinks resolved.
#[tokio::test]
async fn with_rbee_model_roots_host_paths_come_only_from_under_them() {
    let outside = tempfile::tempdir().unwrap();
    let root = outside.path().join("models");
    std::fs::create_dir_all(&root).unwrap();
    let roots = format!("/nonexistent:{}", root.display());
    let hive = HiveProcess::start(&[("RBEE_MODEL_ROOTS", &roots)]).await;

    let inside = root.join("ok.gguf");
    std::fs::write(&inside, b"weights").unwrap();
    let model = hive.download(inside.to_str().unwrap(), None).await.unwrap();
    assert_eq!(model["size"], 7);

    let secret = outside.path().join("id_ed25519");
    std::fs::write(&secret, b"-----BEGIN OPENSSH PRIVATE KEY-----").unwrap();
    let link = root.join("innocent.gguf");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    for source in [&secret, &link] {
        let err = hive.download(source.to_str().unwrap(), Some("stolen")).await.unwrap_err();
        assert!(err.contains("is not under RBEE_MODEL_ROOTS") && err.contains(&roots), "{source:?}: {err}");
    }
    assert!(!hive.models().join("stolen").exists());

    let relative = HiveProcess::start(&[("RBEE_MODEL_ROOTS", "models")]).await;
    let err = relative.download(inside.to_str().unwrap(), None).await.unwrap_err();
    assert!(err.contains("must list absolute directories"), "{err}");
}

/// The 416 case through a real hive: the download fails with its message and the hive keeps
/// answering.
#[tokio::test]
async fn a_hive_survives_a_server_answering_416_to_everything() {
    let hive = HiveProcess::start(&[]).await;
    let server = serve(model_bytes(), Mode::Always416);
    seed_partial(&hive.models(), b"partial");
    let err = hive.download(&server.url, None).await.unwrap_err();
    assert!(err.starts_with("h1: ") || err.contains("416 range not satisfiable"), "{err}");
    assert!(err.contains("416 range not satisfiable"), "{err}");
    assert_eq!(server.ranges.lock().unwrap().len(), 2);
    assert!(hive.healthy().await, "the hive still answers");
}
