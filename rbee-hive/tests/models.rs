//! Model downloads against a local HTTP server: success, checksum mismatch (nothing kept),
//! interrupted then resumed with a `Range` request, and a server that cannot resume.

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
            let start = match (mode, &range) {
                (Mode::NoRanges, _) | (_, None) => None,
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
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
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
