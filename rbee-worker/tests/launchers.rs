//! The launchers as the hive runs them: a missing engine is named (exit 127), the engine
//! `--engine` names is run with its environment cleaned and dies with the launcher, and the
//! bridge puts the contract in front of an engine's own health check and OpenAI endpoint.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use rbee_worker::contract::{WorkerEnv, router};
use rbee_worker::proxy::EngineProxy;
use rbee_worker::{Engine, WorkerArgs};

/// Without `--engine` a launcher starts no engine, not even one first on its `$PATH`.
#[test]
fn without_an_engine_each_launcher_refuses_and_says_how_to_declare_one() {
    let decoys = tempfile::tempdir().unwrap();
    for name in ["llama-server", "vllm", "python3"] {
        let decoy = decoys.path().join(name);
        std::fs::write(&decoy, "#!/bin/sh\necho 'the decoy on PATH ran' >&2\nexit 99\n").unwrap();
        std::fs::set_permissions(&decoy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let path = std::env::join_paths(
        std::iter::once(decoys.path().to_path_buf())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    for (bin, says) in [
        (env!("CARGO_BIN_EXE_rbee-worker-llama-cpp"), "`rbee sync` installs it from the release"),
        (env!("CARGO_BIN_EXE_rbee-worker-vllm"), "engine = { pip = \"vllm==X.Y.Z\" }"),
        (env!("CARGO_BIN_EXE_rbee-worker-comfyui"), "engine = { path = \"/path/to/ComfyUI/main.py\" }"),
    ] {
        let out = Command::new(bin)
            .args(["--worker-id", "w1", "--model", "/m/model.gguf", "--port", "1"])
            .env("PATH", &path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(127), "{bin}: {stderr}");
        assert!(stderr.contains("no engine is installed for this worker on this host"), "{bin}: {stderr}");
        assert!(stderr.contains(says), "{bin}: {stderr}");
        assert!(!stderr.contains("decoy"), "{bin} ran an engine from PATH: {stderr}");
    }
}

#[test]
fn each_launcher_names_its_missing_given_engine() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("engines").join("current").join("engine");
    for bin in [
        env!("CARGO_BIN_EXE_rbee-worker-llama-cpp"),
        env!("CARGO_BIN_EXE_rbee-worker-vllm"),
        env!("CARGO_BIN_EXE_rbee-worker-comfyui"),
    ] {
        let out = Command::new(bin)
            .args(["--worker-id", "w1", "--model", "/m/model.gguf", "--port", "1", "--engine"])
            .arg(&missing)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(127), "{bin}: {stderr}");
        assert!(stderr.contains(&format!("engine {} does not exist", missing.display())), "{bin}: {stderr}");
        assert!(stderr.contains("run `rbee sync` to (re)install the engine"), "{bin}: {stderr}");
    }
}

/// A stand-in engine at `<dir>/llama-server`: it writes its arguments and environment to
/// `<dir>/args` and `<dir>/env`, a line to stdout and one to stderr, then its pid to `<dir>/pid`
/// (last, by rename), and becomes `sleep 300` (the same pid).
fn stand_in_engine(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = dir.display();
    let script = format!(
        "#!/bin/sh\n\
         printf '%s\\n' \"$@\" > '{d}/args'\n\
         env > '{d}/env'\n\
         echo 'stand-in engine: to stdout'\n\
         echo 'stand-in engine: to stderr' >&2\n\
         echo $$ > '{d}/pid.tmp' && mv '{d}/pid.tmp' '{d}/pid'\n\
         exec sleep 300\n"
    );
    let path = dir.join("llama-server");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Polls `done` every 20 ms until it holds or 10 s pass.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True while `pid` runs: its `/proc` entry exists and it is not a zombie (a zombie is dead,
/// waiting to be reaped by whoever it was reparented to).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// The stand-in engine's pid; SIGKILLs it when dropped, so a failing test leaves no engine.
struct EnginePid(i32);

impl Drop for EnginePid {
    fn drop(&mut self) {
        if alive(self.0) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Starts `rbee-worker-llama-cpp` on `cuda:3` with the stand-in engine in `dir`, rbee
/// variables in its environment, a decoy `llama-server` first on its `$PATH`, and its output
/// captured; returns once the engine runs.
fn launch_stand_in(dir: &Path) -> (Child, EnginePid) {
    use std::os::unix::fs::PermissionsExt;
    let engine = stand_in_engine(dir);
    let decoys = dir.join("decoys");
    std::fs::create_dir(&decoys).unwrap();
    let decoy = decoys.join("llama-server");
    std::fs::write(&decoy, "#!/bin/sh\necho 'the decoy on PATH ran' >&2\nexit 99\n").unwrap();
    std::fs::set_permissions(&decoy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::join_paths(
        std::iter::once(decoys).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let mut launcher = Command::new(env!("CARGO_BIN_EXE_rbee-worker-llama-cpp"))
        .args(["--worker-id", "w1", "--model", "/m/model.gguf", "--device", "cuda:3", "--port", "0", "--engine"])
        .arg(&engine)
        .args(["--", "--ctx-size", "64"])
        .env("RBEE_WORKER_TOKEN", "secret-token")
        .env("RBEE_HEARTBEAT_MS", "1000")
        .env("CUDA_VISIBLE_DEVICES", "0,1,2,3")
        .env("KEPT_FOR_THE_ENGINE", "yes")
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // As the hive starts it: in its own process group.
        .process_group(0)
        .spawn()
        .unwrap();
    let pid_file = dir.join("pid");
    eventually("the engine to start", || {
        if let Ok(Some(status)) = launcher.try_wait() {
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(&mut launcher.stderr.take().unwrap(), &mut stderr);
            panic!("the launcher exited ({status}) before its engine started: {stderr}");
        }
        pid_file.exists()
    });
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(alive(pid), "the engine runs");
    (launcher, EnginePid(pid))
}

/// `--engine` runs exactly that program (not the one on `$PATH`), with the contract's arguments, the
/// GPU the device names and no rbee variables; its output goes to the launcher's log; and it
/// dies with a launcher that is SIGKILLed (no chance to clean up).
#[test]
fn a_given_engine_runs_cleanly_and_dies_with_a_killed_launcher() {
    let dir = tempfile::tempdir().unwrap();
    let (mut launcher, engine) = launch_stand_in(dir.path());

    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    assert!(args.contains("--n-gpu-layers\n999\n--ctx-size\n64\n"), "{args}");
    let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
    let lines: Vec<&str> = env.lines().collect();
    assert!(lines.contains(&"CUDA_VISIBLE_DEVICES=3"), "{env}");
    assert!(lines.contains(&"KEPT_FOR_THE_ENGINE=yes"), "{env}");
    assert!(!env.contains("RBEE_") && !env.contains("secret-token"), "{env}");

    launcher.kill().unwrap();
    launcher.wait().unwrap();
    eventually("the engine to die with its launcher", || !alive(engine.0));

    // Both are gone, so the pipes are at their ends.
    let out = launcher.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stderr.contains("stand-in engine: to stderr"), "{stderr}");
    // The engine's stdout too goes to the worker's log, through the launcher.
    assert!(stderr.contains("stand-in engine: to stdout"), "{stderr}");
    assert!(!stdout.contains("stand-in engine"), "{stdout}");
}

/// SIGTERM (the hive's stop) to the launcher alone stops its engine too, and the launcher exits 0.
#[test]
fn a_launcher_stopped_with_sigterm_stops_its_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (mut launcher, engine) = launch_stand_in(dir.path());
    let pid = nix::unistd::Pid::from_raw(i32::try_from(launcher.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut status = None;
    eventually("the launcher to exit", || {
        status = launcher.try_wait().unwrap();
        status.is_some()
    });
    eventually("the engine to stop", || !alive(engine.0));
    let out = launcher.wait_with_output().unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn comfyui_arguments() {
    let args = WorkerArgs {
        worker_id: "w".into(),
        model: "m".into(),
        device: "cpu".into(),
        port: 1,
        hive_url: None,
        engine: None,
        engine_args: Vec::new(),
    };
    let (program, argv) = Engine::ComfyUi.command(&args, 7000);
    assert_eq!(program, Path::new("python3"));
    assert_eq!(argv[1..].join(" "), "--listen 127.0.0.1 --port 7000 --cpu");
}

/// A stand-in engine: `/health` answers 503 until `loaded`, then 200; chat completions
/// stream one chunk.
async fn fake_engine(loaded: Arc<AtomicBool>) -> String {
    let app = axum::Router::new()
        .route(
            "/health",
            axum::routing::get(move || {
                let loaded = loaded.clone();
                async move {
                    if loaded.load(Ordering::Relaxed) {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }),
        )
        .route(
            "/v1/chat/completions",
            axum::routing::post(|body: String| async move {
                assert!(body.contains("\"stream\":true"), "{body}");
                let sse = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
                ([("content-type", "text/event-stream")], sse).into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn the_bridge_reports_engine_health_and_proxies_completions_with_the_token() {
    let loaded = Arc::new(AtomicBool::new(false));
    let base = fake_engine(loaded.clone()).await;
    let args = WorkerArgs {
        worker_id: "w1".into(),
        model: "/m/x.gguf".into(),
        device: "cpu".into(),
        port: 0,
        hive_url: None,
        engine: None,
        engine_args: Vec::new(),
    };
    let env = WorkerEnv { token: Some("secret".into()), heartbeat_ms: 1000 };
    let app = router(args, &env, Arc::new(EngineProxy { base, engine: Engine::LlamaCpp }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let health = rbee_http::send("GET", &format!("{url}/health"), &[], Vec::new()).await.unwrap();
    assert_eq!(health.status(), 503, "loading while the engine loads");
    loaded.store(true, Ordering::Relaxed);
    let health = rbee_http::send("GET", &format!("{url}/health"), &[], Vec::new()).await.unwrap();
    assert_eq!(health.status(), 200);
    let body = String::from_utf8(rbee_http::collect(health).await.unwrap()).unwrap();
    assert!(body.contains("\"worker_id\":\"w1\""), "{body}");

    let request = br#"{"model":"x","stream":true,"messages":[{"role":"user","content":"hello"}]}"#.to_vec();
    let chat = format!("{url}/v1/chat/completions");
    let refused = rbee_http::send("POST", &chat, &[], request.clone()).await.unwrap();
    assert_eq!(refused.status(), 401);
    let answer = rbee_http::send("POST", &chat, &[("authorization", "Bearer secret")], request).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "text/event-stream");
    let body = String::from_utf8(rbee_http::collect(answer).await.unwrap()).unwrap();
    assert!(body.contains("\"content\":\"hi\"") && body.ends_with("data: [DONE]\n\n"), "{body}");
}

struct AlwaysReady;

#[async_trait::async_trait]
impl rbee_worker::contract::Backend for AlwaysReady {
    async fn ready(&self) -> bool {
        true
    }
    async fn chat(&self, _body: axum::body::Bytes) -> axum::response::Response {
        axum::http::StatusCode::NOT_IMPLEMENTED.into_response()
    }
}

#[tokio::test]
async fn a_worker_its_hive_disowns_stops_instead_of_running_unmanaged() {
    let hive = axum::Router::new()
        .route("/v1/workers/{id}/heartbeat", axum::routing::post(|| async { axum::http::StatusCode::NOT_FOUND }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hive_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hive).await });
    let args = WorkerArgs {
        worker_id: "w1".into(),
        model: "m".into(),
        device: "cpu".into(),
        port: 0,
        hive_url: Some(hive_url),
        engine: None,
        engine_args: Vec::new(),
    };
    let env = WorkerEnv { token: None, heartbeat_ms: 50 };
    let served = rbee_worker::contract::serve(args, env, Arc::new(AlwaysReady), std::future::pending());
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), served).await.expect("the worker stopped");
    let err = result.unwrap_err();
    assert!(matches!(err, rbee_worker::contract::ContractError::Disowned { .. }), "{err:?}");
    assert!(err.to_string().contains("does not know worker w1"), "{err}");
}
