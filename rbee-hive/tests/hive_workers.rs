//! Worker spawns through a real `rbee-hive` process, with the reference worker
//! (testbed/src/bin/rbee-worker-reference.rs) in its catalog: engine arguments and the
//! deployment replica label kept across a hive restart, a `no_wait` spawn whose worker crashes
//! later (and stays listed until deleted), and the heartbeat's GPUs and models.
//!
//! The reference worker is another package's binary: build it first (`scripts/test` does,
//! with `cargo build --workspace --bins`; or `cargo build -p rbee-testbed --bins`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use rbee_core::layout::Layout;
use rbee_core::package::OperationResult;
use rbee_core::proto::hive::{WorkerProcess, WorkerState};

/// The reference worker, built beside this package's binaries.
fn reference_worker() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_rbee-hive")).with_file_name("rbee-worker-reference");
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build -p rbee-testbed --bins` (or `cargo build --workspace --bins`) first",
        path.display()
    );
    path
}

/// A home for hives: the reference worker in its catalog, and the workers it leaves killed
/// when the test ends (passing or not).
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let catalog = dir.path().join(Layout::WORKERS_DIR);
        std::fs::create_dir_all(&catalog).unwrap();
        std::fs::copy(reference_worker(), catalog.join("rbee-worker-reference")).unwrap();
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let registry = self.path(&Layout::worker_registry_dir());
        for file in std::fs::read_dir(registry).into_iter().flatten().flatten() {
            let record: Option<serde_json::Value> =
                std::fs::read(file.path()).ok().and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(pid) = record.and_then(|r| r["pid"].as_i64()).and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// A real `rbee-hive` listening on `port`, its home `home`.
struct HiveProcess {
    child: std::process::Child,
    url: String,
    /// Its token (`hive.token`, which it made itself when no test wrote one).
    token: String,
}

impl Drop for HiveProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl HiveProcess {
    async fn start(home: &Home, port: u16) -> Self {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_rbee-hive"))
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--alias", "h1"])
            .env("HOME", home.dir.path())
            .env("RBEE_WORKER_HEARTBEAT_MS", "200")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut hive = Self { child, url: format!("http://127.0.0.1:{port}"), token: String::new() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !hive.healthy().await {
            assert!(Instant::now() < deadline, "the hive did not answer /health");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let token = home.path(&Layout::hive_token());
        hive.token = std::fs::read_to_string(&token).unwrap_or_else(|e| panic!("{}: {e}", token.display()));
        hive.token = hive.token.trim().to_owned();
        hive
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    async fn healthy(&self) -> bool {
        let health = format!("{}/health", self.url);
        matches!(rbee_http::send("GET", &health, &[], Vec::new()).await, Ok(r) if r.status() == 200)
    }

    /// Kills the process (SIGKILL: no goodbye), as a crash or an upgrade's restart would.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A forwarded operation's result.
    async fn op(&self, op: serde_json::Value) -> OperationResult {
        let url = format!("{}/v1/operations", self.url);
        let bearer = self.bearer();
        let headers = [("content-type", "application/json"), ("authorization", bearer.as_str())];
        let response = rbee_http::send("POST", &url, &headers, serde_json::to_vec(&op).unwrap()).await.unwrap();
        let body = String::from_utf8(rbee_http::collect(response).await.unwrap()).unwrap();
        let last: serde_json::Value = serde_json::from_str(body.lines().last().unwrap()).unwrap();
        serde_json::from_value(last["result"].clone()).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    async fn spawn(&self, fields: serde_json::Value) -> OperationResult {
        let mut op = serde_json::json!({
            "type": "worker_spawn", "hive_alias": "h1", "worker_type": "reference", "model": "m", "device": "cpu",
        });
        op.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        self.op(op).await
    }

    async fn list(&self) -> Vec<WorkerProcess> {
        match self.op(serde_json::json!({"type": "worker_process_list", "hive_alias": "h1"})).await {
            OperationResult::Workers { workers, .. } => workers,
            other => panic!("{other:?}"),
        }
    }

    async fn get(&self, id: &str) -> WorkerProcess {
        let listed = self.list().await;
        listed.iter().find(|w| w.id == id).cloned().unwrap_or_else(|| panic!("{id} is not listed: {listed:?}"))
    }

    async fn delete(&self, id: &str) -> OperationResult {
        self.op(
            serde_json::json!({"type": "worker_process_delete", "hive_alias": "h1", "worker_id": id, "grace_ms": 2000}),
        )
        .await
    }
}

fn worker(result: OperationResult) -> WorkerProcess {
    match result {
        OperationResult::Worker { worker, .. } => *worker,
        other => panic!("{other:?}"),
    }
}

/// The argv a process was started with.
fn cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// Polls until `check` holds, for at most `within`.
async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_worker_keeps_its_replica_label_and_engine_args_across_a_hive_restart() {
    let home = Home::new();
    let port = free_port();
    let hive = HiveProcess::start(&home, port).await;
    let label = serde_json::json!({"deployment": "chat", "spec_hash": "0123abcd"});
    // Arguments a shell would split or expand: they must reach the worker as they are.
    let args = ["--load-ms", "50", "--alias", "two words; $(touch /tmp/never)", "--port", "1"];
    let spawned = worker(hive.spawn(serde_json::json!({"args": args, "replica": label})).await);
    assert_eq!(spawned.state, WorkerState::Ready);
    assert_eq!(spawned.args, args);
    assert_eq!(serde_json::to_value(&spawned.replica).unwrap(), label);

    // The worker got the contract's flags, then `--` and the engine arguments, one each.
    let argv = cmdline(spawned.pid);
    let dash = argv.iter().position(|a| a == "--").unwrap_or_else(|| panic!("{argv:?}"));
    assert_eq!(argv[dash + 1..], args, "{argv:?}");
    assert!(argv[..dash].contains(&"--hive-url".to_owned()), "{argv:?}");

    let listed = hive.get(&spawned.id).await;
    assert_eq!((listed.args.clone(), listed.replica.clone()), (spawned.args.clone(), spawned.replica.clone()));
    assert!(!listed.adopted);

    // A hive killed outright leaves its worker running; the next one on the port re-adopts it
    // from the registry, label and arguments included, and hears its heartbeats again.
    hive.kill();
    assert!(alive(spawned.pid), "the worker outlives its hive");
    let hive = HiveProcess::start(&home, port).await;
    let adopted = hive.get(&spawned.id).await;
    assert!(adopted.adopted && adopted.pid == spawned.pid, "{adopted:?}");
    assert_eq!((adopted.args.clone(), adopted.replica.clone()), (spawned.args.clone(), spawned.replica.clone()));
    let (h, id) = (&hive, spawned.id.as_str());
    wait_until("the re-adopted worker is ready", Duration::from_secs(10), || async move {
        h.get(id).await.state == WorkerState::Ready
    })
    .await;

    let stopped = worker(hive.delete(&spawned.id).await);
    assert_eq!(stopped.state, WorkerState::Stopped);
    assert_eq!(stopped.replica, spawned.replica);
    assert!(!alive(spawned.pid));
    assert!(hive.list().await.is_empty());
}

#[tokio::test]
async fn a_no_wait_spawn_answers_at_once_and_its_crash_stays_listed_until_deleted() {
    let home = Home::new();
    let hive = HiveProcess::start(&home, free_port()).await;
    let label = serde_json::json!({"deployment": "chat", "spec_hash": "0123abcd"});

    let asked = Instant::now();
    let spawned =
        worker(hive.spawn(serde_json::json!({"args": ["--fail-at-start"], "replica": label, "no_wait": true})).await);
    assert!(asked.elapsed() < Duration::from_secs(5), "answered at once");
    assert_eq!(spawned.state, WorkerState::Starting, "not waited for");
    assert_eq!(spawned.args, ["--fail-at-start"]);

    let (h, id) = (&hive, spawned.id.as_str());
    wait_until("the worker is listed as crashed", Duration::from_secs(10), || async move {
        !h.get(id).await.state.is_alive()
    })
    .await;
    let crashed = hive.get(&spawned.id).await;
    match &crashed.state {
        WorkerState::Crashed { exit_code, signal, message } => {
            assert_eq!((*exit_code, *signal), (Some(3), None), "{message}");
            assert!(message.contains("failing at start as asked"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(serde_json::to_value(&crashed.replica).unwrap(), label, "the label stays with the crash");

    // Nothing clears it but a delete.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(matches!(hive.get(&spawned.id).await.state, WorkerState::Crashed { exit_code: Some(3), .. }));
    let deleted = worker(hive.delete(&spawned.id).await);
    assert_eq!(deleted.id, spawned.id);
    assert!(hive.list().await.is_empty());

    // Without `no_wait` the spawn still waits, fails with the crash, and keeps nothing.
    match hive.spawn(serde_json::json!({"args": ["--fail-at-start"]})).await {
        OperationResult::Error { message, .. } => {
            assert!(message.contains("exited with status 3") && message.contains("failing at start"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(hive.list().await.is_empty());
}

/// A stand-in queen that keeps the heartbeats it receives and answers 204, as an older queen.
async fn fake_queen() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    fake_queen_pacing(None).await
}

/// A stand-in queen that keeps the heartbeats it receives (with when they arrived, in
/// `at_ms`) and, given `interval_ms`, asks for that interval in its answers.
async fn fake_queen_pacing(interval_ms: Option<u64>) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let beats = Arc::new(Mutex::new(Vec::new()));
    let kept = beats.clone();
    let started = std::time::Instant::now();
    let app = axum::Router::new().route(
        "/v1/heartbeats",
        axum::routing::post(move |axum::Json(mut beat): axum::Json<serde_json::Value>| {
            let kept = kept.clone();
            async move {
                beat["at_ms"] = serde_json::json!(started.elapsed().as_millis() as u64);
                kept.lock().unwrap().push(beat);
                match interval_ms {
                    Some(ms) => axum::Json(serde_json::json!({"interval_ms": ms})).into_response(),
                    None => axum::http::StatusCode::NO_CONTENT.into_response(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, beats)
}

#[tokio::test]
async fn heartbeats_carry_the_models_and_gpus() {
    let home = Home::new();
    let (queen, beats) = fake_queen().await;
    let state = home.path(Layout::STATE_DIR);
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("queen.link"), serde_json::json!({"url": queen, "interval_ms": 200}).to_string())
        .unwrap();
    std::fs::write(state.join("hive.token"), "secret\n").unwrap();
    let models = home.path(Layout::MODELS_DIR);
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("tiny.gguf"), b"weights").unwrap();
    let _hive = HiveProcess::start(&home, free_port()).await;

    let latest = || beats.lock().unwrap().last().cloned();
    let latest = &latest;
    wait_until("a heartbeat arrives", Duration::from_secs(15), || async move { latest().is_some() }).await;
    let beat = latest().unwrap();
    assert_eq!(beat["alias"], "h1");
    assert_eq!(beat["models"][0]["name"], "tiny.gguf", "{beat}");
    assert_eq!(beat["models"][0]["size"], 7, "{beat}");
    // Whatever `nvidia-smi` finds here (nothing, without it); a list either way.
    assert!(beat["gpus"].is_array(), "{beat}");

    // A model that appears later shows in a later beat.
    std::fs::write(models.join("second.gguf"), b"more").unwrap();
    wait_until("the new model is reported", Duration::from_secs(10), || async move {
        latest().is_some_and(|b| b["models"].as_array().is_some_and(|m| m.len() == 2))
    })
    .await;
}

/// A queen with a large fleet answers each beat with a longer interval: the hive beats at
/// that interval from then on and says so in its beats.
#[tokio::test]
async fn a_hive_beats_at_the_interval_the_queen_asks_for() {
    let home = Home::new();
    let (queen, beats) = fake_queen_pacing(Some(900)).await;
    let state = home.path(Layout::STATE_DIR);
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("queen.link"), serde_json::json!({"url": queen, "interval_ms": 100}).to_string())
        .unwrap();
    std::fs::write(state.join("hive.token"), "secret\n").unwrap();
    let _hive = HiveProcess::start(&home, free_port()).await;

    let count = || beats.lock().unwrap().len();
    wait_until("four heartbeats arrive", Duration::from_secs(20), || async move { count() >= 4 }).await;
    let beats = beats.lock().unwrap().clone();
    assert_eq!(beats[0]["interval_ms"], 100, "the first beat at the link's interval");
    for (earlier, later) in beats.iter().zip(&beats[1..]).take(3) {
        assert_eq!(later["interval_ms"], 900, "then the queen's: {later}");
        let gap = later["at_ms"].as_u64().unwrap() - earlier["at_ms"].as_u64().unwrap();
        // At the link's 100 ms there would be nine beats in that time.
        assert!(gap >= 800, "beats {gap} ms apart after the queen asked for 900 ms");
    }
}

/// A worker that freezes while a request waits for its answer (SIGSTOP, a wedged engine
/// host) used to hold the request for ever: once its heartbeats stop, the hive answers 502.
#[tokio::test]
async fn a_request_to_a_worker_that_freezes_ends_when_its_heartbeats_stop() {
    let home = Home::new();
    let hive = HiveProcess::start(&home, free_port()).await;
    let spawned = worker(hive.spawn(serde_json::json!({})).await);
    assert_eq!(spawned.state, WorkerState::Ready);
    let pid = spawned.pid.to_string();
    std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let url = format!("{}/v1/workers/{}/chat/completions", hive.url, spawned.id);
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let started = Instant::now();
    let bearer = hive.bearer();
    let headers = [("content-type", "application/json"), ("authorization", bearer.as_str())];
    let asked = rbee_http::send("POST", &url, &headers, body.to_string().into_bytes());
    let answer = tokio::time::timeout(Duration::from_secs(20), asked).await;
    std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let response = answer.expect("the request did not end within 20 s").unwrap();
    assert_eq!(response.status(), 502);
    let text = String::from_utf8_lossy(&rbee_http::collect(response).await.unwrap()).into_owned();
    assert!(text.contains("stopped sending heartbeats before it answered"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    hive.delete(&spawned.id).await;
}

/// The status of a request with an optional bearer token.
async fn status(method: &str, url: &str, token: Option<&str>, body: &str) -> u16 {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    let response = rbee_http::send(method, url, &headers, body.as_bytes().to_vec()).await.unwrap();
    let status = response.status().as_u16();
    let _ = rbee_http::collect(response).await;
    status
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A hive no queen linked makes its own token (0600) and requires it; each worker it starts
/// gets a token of its own (kept in its 0600 record, never the hive's), which is what its
/// heartbeats need and what the hive sends it, and which a re-adopting hive keeps.
#[tokio::test]
async fn a_hive_makes_its_own_token_and_gives_each_worker_another() {
    let home = Home::new();
    let port = free_port();
    let hive = HiveProcess::start(&home, port).await;
    assert_eq!(hive.token.len(), 64, "a random token: {}", hive.token);
    assert_eq!(mode(&home.path(&Layout::hive_token())), 0o600);
    let catalog = format!("{}/v1/catalog", hive.url);
    assert_eq!(status("GET", &format!("{}/health", hive.url), None, "").await, 200, "/health stays open");
    assert_eq!(status("GET", &catalog, None, "").await, 401);
    assert_eq!(status("GET", &catalog, Some("wrong"), "").await, 401);
    assert_eq!(status("GET", &catalog, Some(&hive.token), "").await, 200);
    assert_eq!(status("GET", &format!("{}/metrics", hive.url), None, "").await, 401);

    let spawned = worker(hive.spawn(serde_json::json!({"args": ["--load-ms", "50"]})).await);
    assert_eq!(spawned.state, WorkerState::Ready, "its heartbeats, with its own token, got through");
    let registry = home.path(&Layout::worker_registry_dir());
    assert_eq!(mode(&registry), 0o700);
    let record_file = registry.join(format!("{}.json", spawned.id));
    assert_eq!(mode(&record_file), 0o600);
    let record_text = std::fs::read_to_string(&record_file).unwrap();
    assert!(!record_text.contains(&hive.token), "{record_text}");
    let record: serde_json::Value = serde_json::from_str(&record_text).unwrap();
    let own = record["token"].as_str().unwrap_or_else(|| panic!("{record_text}")).to_owned();
    assert_eq!(own.len(), 64);
    assert_ne!(own, hive.token);
    let environ = std::fs::read(format!("/proc/{}/environ", spawned.pid)).unwrap();
    let given = format!("RBEE_WORKER_TOKEN={own}");
    assert!(environ.split(|b| *b == 0).any(|v| v == given.as_bytes()), "the worker got its own token");

    // Neither the listing nor the answers carry it.
    let listed = serde_json::to_string(&hive.list().await).unwrap();
    assert!(!listed.contains(&own), "{listed}");

    // Each credential opens its own door only.
    let beat_url = format!("{}/v1/workers/{}/heartbeat", hive.url, spawned.id);
    let beat = serde_json::json!({"worker_id": spawned.id, "status": "ready"}).to_string();
    assert_eq!(status("POST", &beat_url, Some(&hive.token), &beat).await, 401);
    assert_eq!(status("POST", &beat_url, None, &beat).await, 401);
    assert_eq!(status("POST", &beat_url, Some(&own), &beat).await, 204);
    let unknown = format!("{}/v1/workers/absent-1/heartbeat", hive.url);
    assert_eq!(status("POST", &unknown, Some(&own), &beat).await, 404);
    assert_eq!(status("GET", &catalog, Some(&own), "").await, 401);
    let ops = format!("{}/v1/operations", hive.url);
    let list_op = serde_json::json!({"type": "worker_process_list", "hive_alias": "h1"}).to_string();
    assert_eq!(status("POST", &ops, Some(&own), &list_op).await, 401);

    // The hive calls the worker with the worker's token; the worker refuses the hive's.
    let ask = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let chat = format!("{}/v1/workers/{}/chat/completions", hive.url, spawned.id);
    assert_eq!(status("POST", &chat, Some(&hive.token), &ask).await, 200);
    let direct = format!("http://127.0.0.1:{}/v1/chat/completions", spawned.port);
    assert_eq!(status("POST", &direct, Some(&hive.token), &ask).await, 401);
    assert_eq!(status("POST", &direct, Some(&own), &ask).await, 200);

    // A restarted hive keeps its token, re-adopts the worker and still knows its credential.
    hive.kill();
    let hive = HiveProcess::start(&home, port).await;
    assert_eq!(hive.token.len(), 64);
    assert_eq!(status("POST", &beat_url, Some(&hive.token), &beat).await, 401);
    let (h, id) = (&hive, spawned.id.as_str());
    wait_until("the re-adopted worker is ready", Duration::from_secs(10), || async move {
        h.get(id).await.state == WorkerState::Ready
    })
    .await;
    let chat = format!("{}/v1/workers/{}/chat/completions", hive.url, spawned.id);
    assert_eq!(status("POST", &chat, Some(&hive.token), &ask).await, 200);
    hive.delete(&spawned.id).await;
}

/// A worker recorded by an older hive (no token in its record) got the hive's token: the
/// hive that re-adopts it keeps accepting that token for it, so an upgrade orphans nothing.
#[tokio::test]
async fn a_worker_recorded_without_a_token_keeps_the_hives_token() {
    let home = Home::new();
    let port = free_port();
    let hive = HiveProcess::start(&home, port).await;
    let spawned = worker(hive.spawn(serde_json::json!({"args": ["--load-ms", "50"]})).await);
    hive.kill();
    // Make the record an older hive's: no token.
    let record_file = home.path(&Layout::worker_registry_dir()).join(format!("{}.json", spawned.id));
    let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&record_file).unwrap()).unwrap();
    let own = record.as_object_mut().unwrap().remove("token").unwrap();
    std::fs::write(&record_file, serde_json::to_vec(&record).unwrap()).unwrap();
    let hive = HiveProcess::start(&home, port).await;
    assert!(hive.get(&spawned.id).await.adopted);
    let beat_url = format!("{}/v1/workers/{}/heartbeat", hive.url, spawned.id);
    let beat = serde_json::json!({"worker_id": spawned.id, "status": "ready"}).to_string();
    assert_eq!(status("POST", &beat_url, Some(&hive.token), &beat).await, 204);
    assert_eq!(status("POST", &beat_url, Some(own.as_str().unwrap()), &beat).await, 401);
    hive.delete(&spawned.id).await;
}
