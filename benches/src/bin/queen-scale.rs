//! What a large fleet costs the queen: the real `queen-rbee` (a child process, so its `/proc`
//! figures are its own) with N simulated hives heartbeating at the default interval and 100 job
//! event streams open at once.
//!
//! Each simulated hive beats every 5 s (first beats spread evenly over the interval) the way
//! `rbee-hive` does: `rbee_http::send`, a new connection per beat (the hive keeps none), its
//! own credential, a 3 s timeout, a realistic heartbeat (1–3 workers, every other hive a GPU,
//! two models). `--keep-alive` instead keeps one connection per hive open and posts every beat
//! on it, to tell per-connection memory apart from the registry's. All hives advertise one
//! port, where this program answers the queen's forwarded operations: a `model_download`
//! streams a progress line every second until the end of the run.
//!
//! Measured: over a steady window, the queen's CPU (utime + stime) and RSS (sampled every
//! second), its peak RSS (VmHWM), threads and open descriptors; the round trip of every beat
//! (the registry is updated before the queen answers); then, with the load still on, sampled
//! calls of `GET /v1/hives` (its latency and size) and how long a beat takes to show there,
//! and `rbee hive list --json` when the `rbee` binary is beside this one.
//!
//! `cargo build --release -p rbee-queen --bin queen-rbee -p rbee-benches --bin queen-scale
//! [-p rbee-cli --bin rbee] && target/release/queen-scale [HIVES [WINDOW_S [STREAMS
//! [SAMPLES]]]] [--keep-alive]` (defaults 10000, 60, 100, 20). `QUEEN_SCALE_HOLD_S=N` keeps
//! the load on for N s after the samples (it prints how to reach the queen), to look at it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rbee_benches::{QueenProcess, watch};
use rbee_core::execute::now_ms;
use rbee_core::package::OperationResult;
use rbee_core::proto::hive::{Gpu, HiveEvent, ModelInfo, WorkerProcess, WorkerState};
use rbee_core::proto::operation::{Heartbeat, HeartbeatAck, Operation};

/// How often the hives beat (the hive's default).
const HEARTBEAT_MS: u64 = 5000;
/// How long a beat may take before the hive gives up on it (as `rbee-hive` does).
const BEAT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the simulated hives share.
struct Sim {
    queen: std::net::SocketAddr,
    hive_key: String,
    keep_alive: bool,
    beats: AtomicU64,
    beat_errors: AtomicU64,
    /// The longest interval the queen asked a hive for.
    told_ms: AtomicU64,
    /// The interval the queen asks of a fleet of this size (the default pacing).
    paced_ms: u64,
    /// Hives that were told [`Sim::paced_ms`] (or more) at least once.
    settled: AtomicU64,
    /// Round trips of beats (µs) while `recording`.
    rtt_us: Mutex<Vec<u32>>,
    recording: AtomicBool,
    /// Set at the end: the streaming operations send their result.
    stop: tokio::sync::watch::Sender<bool>,
    /// Progress lines sent by the simulated hives.
    lines_sent: AtomicU64,
}

/// A heartbeat as a hive with 1–3 workers (not replicas of deployments), a GPU (every other
/// hive) and two models sends it.
fn heartbeat(i: usize, alias: &str, port: u16) -> Heartbeat {
    let gpu = i.is_multiple_of(2);
    let types: Vec<String> = if gpu { vec!["llama-cpp".into(), "vllm".into()] } else { vec!["llama-cpp".into()] };
    let home = "/home/rbee".to_owned();
    let models_dir = format!("{home}/.local/share/rbee/models");
    let model_names = ["qwen2.5-7b-instruct-q4_k_m.gguf", "llama-3.1-8b-instruct-q5_k_m.gguf"];
    let started = now_ms() - 3_600_000;
    let processes = (0..1 + i % 3)
        .map(|k| WorkerProcess {
            id: format!("llama-cpp-{}", 100 + k),
            worker_type: "llama-cpp".into(),
            model: format!("{models_dir}/{}", model_names[k % 2]),
            device: if gpu { "cuda:0".into() } else { "cpu".into() },
            port: 9100 + k as u16,
            pid: 20_000 + k as u32,
            started_ms: started,
            last_heartbeat_ms: Some(started + 3_000_000),
            adopted: false,
            // Started by hand (`rbee worker spawn`): a replica of a deployment that is not
            // declared would be stopped by the reconciler.
            replica: None,
            args: vec!["--ctx-size".into(), "8192".into()],
            state: WorkerState::Ready,
        })
        .collect();
    Heartbeat {
        tls: false,
        alias: alias.to_owned(),
        version: "0.4.2".into(),
        sha256: rbee_core::Sha256::from_bytes([7; 32]),
        pid: 4242,
        port,
        interval_ms: HEARTBEAT_MS,
        installed: types.iter().map(|t| (t.clone(), "0.4.2".to_owned())).collect(),
        workers: types,
        home,
        processes,
        gpus: if gpu {
            vec![Gpu {
                index: 0,
                name: "NVIDIA L4".into(),
                memory_total_mib: 23034,
                memory_used_mib: 9120,
                driver: "550.54.15".into(),
            }]
        } else {
            Vec::new()
        },
        models: model_names
            .iter()
            .map(|name| ModelInfo {
                name: (*name).to_owned(),
                path: format!("{models_dir}/{name}"),
                size: 4_683_073_536,
                sha256: Some(rbee_core::Sha256::from_bytes([9; 32])),
            })
            .collect(),
    }
}

/// The heap a heartbeat holds in the registry, estimated from its strings' and lists' lengths
/// (capacities equal lengths after deserialising; allocator overhead not counted).
fn heap_bytes(b: &Heartbeat) -> usize {
    let s = |s: &String| s.capacity();
    let process = |p: &WorkerProcess| {
        s(&p.id)
            + s(&p.worker_type)
            + s(&p.model)
            + s(&p.device)
            + p.args.iter().map(|a| std::mem::size_of::<String>() + s(a)).sum::<usize>()
            + p.replica
                .as_ref()
                .map_or(0, |r| s(&r.deployment) + s(&r.spec_hash) + r.worker_version.as_ref().map_or(0, s))
    };
    std::mem::size_of::<Heartbeat>()
        + s(&b.alias)
        + s(&b.version)
        + s(&b.home)
        + b.workers.iter().map(|w| std::mem::size_of::<String>() + s(w)).sum::<usize>()
        + b.installed.iter().map(|(k, v)| 2 * std::mem::size_of::<String>() + s(k) + s(v)).sum::<usize>()
        + b.processes.iter().map(|p| std::mem::size_of::<WorkerProcess>() + process(p)).sum::<usize>()
        + b.gpus.iter().map(|g| std::mem::size_of::<Gpu>() + s(&g.name) + s(&g.driver)).sum::<usize>()
        + b.models.iter().map(|m| std::mem::size_of::<ModelInfo>() + s(&m.name) + s(&m.path)).sum::<usize>()
}

/// The interval a queen's answer asks for, if the beat was taken.
fn acked(ok: bool, body: &[u8]) -> Option<u64> {
    ok.then(|| serde_json::from_slice::<HeartbeatAck>(body).map_or(0, |ack| ack.interval_ms))
}

/// One beat over a new connection, as `rbee-hive` sends it: `None` when it failed, else the
/// interval the queen asked for (0 when it named none).
async fn post_new(url: &str, bearer: &str, body: Vec<u8>) -> Option<u64> {
    let headers = [("authorization", bearer), ("content-type", "application/json")];
    let response = rbee_http::send("POST", url, &headers, body).await.ok()?;
    let ok = response.status().is_success();
    acked(ok, &rbee_http::collect(response).await.ok()?)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One beat over the hive's kept connection, opened again when the queen closed it.
async fn post_kept(sim: &Sim, conn: &mut Option<Sender>, bearer: &str, body: Vec<u8>) -> Option<u64> {
    if conn.as_ref().is_none_or(Sender::is_closed) {
        let tcp = tokio::net::TcpStream::connect(sim.queen).await.ok()?;
        let _ = tcp.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.ok()?;
        tokio::spawn(connection);
        *conn = Some(sender);
    }
    let sender = conn.as_mut()?;
    if sender.ready().await.is_err() {
        *conn = None;
        return None;
    }
    let request = hyper::Request::post("/v1/heartbeats")
        .header("host", sim.queen.to_string())
        .header("user-agent", "rbee/bench")
        .header("authorization", bearer)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let Ok(response) = sender.send_request(request).await else {
        *conn = None;
        return None;
    };
    let ok = response.status().is_success();
    acked(ok, &response.into_body().collect().await.ok()?.to_bytes())
}

/// Beats every interval, the first at `offset`; from then on at the interval the queen asks
/// for, as `rbee-hive` does.
async fn beat_loop(sim: Arc<Sim>, mut beat: Heartbeat, offset: Duration) {
    let url = format!("http://{}/v1/heartbeats", sim.queen);
    let bearer = rbee_core::proto::bearer(&rbee_core::credentials::hive_credential(&sim.hive_key, &beat.alias));
    let mut kept = None;
    let mut interval_ms = HEARTBEAT_MS;
    let mut settled = false;
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + offset, Duration::from_millis(HEARTBEAT_MS));
    loop {
        ticker.tick().await;
        beat.interval_ms = interval_ms;
        let body = serde_json::to_vec(&beat).unwrap();
        let sent = Instant::now();
        let ok = if sim.keep_alive {
            tokio::time::timeout(BEAT_TIMEOUT, post_kept(&sim, &mut kept, &bearer, body)).await
        } else {
            tokio::time::timeout(BEAT_TIMEOUT, post_new(&url, &bearer, body)).await
        };
        if let Ok(Some(told)) = ok {
            if told != 0 && told != interval_ms {
                interval_ms = told;
                let every = Duration::from_millis(told);
                ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            }
            sim.told_ms.fetch_max(told, Ordering::Relaxed);
            if !settled && told >= sim.paced_ms {
                settled = true;
                sim.settled.fetch_add(1, Ordering::Relaxed);
            }
            sim.beats.fetch_add(1, Ordering::Relaxed);
            if sim.recording.load(Ordering::Relaxed) {
                let us = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                sim.rtt_us.lock().unwrap().push(us);
            }
        } else {
            sim.beat_errors.fetch_add(1, Ordering::Relaxed);
            if ok.is_err() {
                kept = None;
            }
        }
    }
}

/// `POST /v1/operations` of every simulated hive: a `model_download` streams a progress line
/// every second until the run ends, then its result; anything else is an error result.
async fn operation(State(sim): State<Arc<Sim>>, headers: HeaderMap, axum::Json(op): axum::Json<Operation>) -> Response {
    let alias = op.hive_alias().unwrap_or_default().to_owned();
    let given = headers.get("authorization").and_then(|v| v.to_str().ok());
    if !rbee_core::proto::authorized(given, &rbee_core::credentials::hive_credential(&sim.hive_key, &alias)) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong token").into_response();
    }
    let line = |event: &HiveEvent| {
        let mut bytes = serde_json::to_vec(event).unwrap();
        bytes.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(bytes))
    };
    let Operation::ModelDownload { source, .. } = op else {
        let result = OperationResult::error("the simulated hive only downloads models");
        let body = line(&HiveEvent::Result { result }).unwrap();
        return ([("content-type", "application/x-ndjson")], body).into_response();
    };
    let name = source.rsplit('/').next().unwrap_or("model.gguf").to_owned();
    let state = (0u64, sim.stop.subscribe(), sim.clone());
    let stream = futures_util::stream::unfold(state, move |(n, mut stop, sim)| {
        let (alias, name) = (alias.clone(), name.clone());
        async move {
            if n == u64::MAX {
                return None;
            }
            let stopped = tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopped {
                let model = ModelInfo { path: format!("/home/rbee/models/{name}"), name, size: n << 20, sha256: None };
                let event = HiveEvent::Result { result: OperationResult::Model { hive: alias, model } };
                return Some((line(&event), (u64::MAX, stop, sim)));
            }
            sim.lines_sent.fetch_add(1, Ordering::Relaxed);
            let event = HiveEvent::Log { message: format!("{name}: {} MiB downloaded", (n + 1) * 40) };
            Some((line(&event), (n + 1, stop, sim)))
        }
    });
    ([("content-type", "application/x-ndjson")], axum::body::Body::from_stream(stream)).into_response()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `GET /v1/hives` with the admin token: the time to the whole answer, and the answer.
async fn get_hives(queen: &QueenProcess) -> (Duration, Vec<u8>) {
    get_hives_at(queen, "/v1/hives").await
}

/// `GET path` (`/v1/hives`, with a query or not) with the admin token.
async fn get_hives_at(queen: &QueenProcess, path: &str) -> (Duration, Vec<u8>) {
    let bearer = rbee_core::proto::bearer(&queen.token);
    let url = format!("http://{}{path}", queen.addr);
    let started = Instant::now();
    let response = rbee_http::send("GET", &url, &[("authorization", &bearer)], Vec::new()).await.unwrap();
    assert!(response.status().is_success(), "GET /v1/hives: {}", response.status());
    let body = rbee_http::collect(response).await.unwrap();
    (started.elapsed(), body.to_vec())
}

/// Raises this process's open-file limit to its hard limit (the queen, a child, inherits it).
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    getrlimit(Resource::RLIMIT_NOFILE).unwrap().0
}

#[tokio::main]
async fn main() {
    let keep_alive = std::env::args().any(|a| a == "--keep-alive");
    let positional: Vec<u64> =
        std::env::args().skip(1).filter(|a| !a.starts_with("--")).map(|a| a.parse().unwrap()).collect();
    let arg = |i: usize, default: u64| positional.get(i).copied().unwrap_or(default);
    let n_hives = arg(0, 10_000) as usize;
    let window = Duration::from_secs(arg(1, 60));
    let n_streams = arg(2, 100) as usize;
    let samples = arg(3, 20) as usize;
    let fd_limit = raise_fd_limit();
    let needed = if keep_alive { n_hives + n_streams * 2 + 100 } else { 4 * n_streams + 1000 };
    assert!(fd_limit as usize >= needed, "the open-file limit is {fd_limit}; this run needs about {needed}");

    let queen = QueenProcess::start("reschedule_after = 60\n").await;
    let client = queen.client();
    let proc = &queen.proc;
    let (stop, _) = tokio::sync::watch::channel(false);
    let sim = Arc::new(Sim {
        queen: queen.addr,
        hive_key: queen.hive_key.clone(),
        keep_alive,
        beats: AtomicU64::new(0),
        beat_errors: AtomicU64::new(0),
        told_ms: AtomicU64::new(0),
        paced_ms: rbee_core::proto::operation::paced_interval_ms(
            HEARTBEAT_MS,
            n_hives,
            rbee_core::proto::operation::DEFAULT_MAX_HEARTBEATS_PER_SECOND,
        ),
        settled: AtomicU64::new(0),
        rtt_us: Mutex::new(Vec::new()),
        recording: AtomicBool::new(false),
        stop,
        lines_sent: AtomicU64::new(0),
    });
    // One server answers the operations of all simulated hives: they all advertise its port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hive_port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route("/v1/operations", axum::routing::post(operation)).with_state(sim.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut json_bytes = 0usize;
    let mut heap = 0usize;
    for i in 0..n_hives {
        let alias = format!("sim-{i:05}");
        let beat = heartbeat(i, &alias, hive_port);
        json_bytes += serde_json::to_vec(&beat).unwrap().len();
        heap += heap_bytes(&beat) + alias.capacity();
        let offset = Duration::from_millis(HEARTBEAT_MS * i as u64 / n_hives as u64);
        tokio::spawn(beat_loop(sim.clone(), beat, offset));
    }
    let registered = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let fresh = client.hives().await.map_or(0, |h| h.iter().filter(|e| !e.stale).count());
        if fresh >= n_hives {
            break;
        }
        assert!(
            registered.elapsed() < Duration::from_secs(60),
            "{fresh} of {n_hives} hives registered after 60 s ({} beats failed)",
            sim.beat_errors.load(Ordering::Relaxed)
        );
    }
    // Each hive is told the fleet's interval at its first beat after the registry is full.
    let settle_by = Duration::from_millis(2 * sim.paced_ms) + Duration::from_secs(30);
    eprintln!("queen-scale: {n_hives} hives registered; waiting until each was told {} ms", sim.paced_ms);
    while sim.settled.load(Ordering::Relaxed) < n_hives as u64 {
        assert!(registered.elapsed() < settle_by, "hives were not told the fleet's interval in {settle_by:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("queen-scale: queen pid {}, {n_hives} hives paced; starting {n_streams} job streams", proc.pid);

    // The job streams: each follows a model download on its own hive.
    let events = Arc::new(AtomicU64::new(0));
    let mut streams = tokio::task::JoinSet::new();
    for k in 0..n_streams {
        let op = Operation::ModelDownload {
            hive_alias: format!("sim-{:05}", k % n_hives),
            source: format!("https://models.example/m-{k}.gguf"),
            sha256: None,
            name: None,
        };
        let submitted = client.submit(&op).await.unwrap();
        let (client, events) = (client.clone(), events.clone());
        streams.spawn(async move {
            client
                .stream(&submitted.job_id, |_| {
                    events.fetch_add(1, Ordering::Relaxed);
                })
                .await
        });
    }
    // Every stream has carried a progress line before the window starts.
    let warm = Instant::now();
    while events.load(Ordering::Relaxed) < 3 * n_streams as u64 && warm.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    eprintln!("queen-scale: steady window of {} s", window.as_secs());
    let (beats0, errors0, events0) =
        (sim.beats.load(Ordering::Relaxed), sim.beat_errors.load(Ordering::Relaxed), events.load(Ordering::Relaxed));
    sim.recording.store(true, Ordering::Relaxed);
    let fds_threads = Arc::new(Mutex::new((0usize, 0u64)));
    let steady = {
        let fds_threads = fds_threads.clone();
        let pid = proc.pid;
        let sampler = tokio::spawn(async move {
            let p = rbee_benches::Proc::new(pid);
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let mut max = fds_threads.lock().unwrap();
                max.0 = max.0.max(p.fds());
                max.1 = max.1.max(p.threads());
            }
        });
        let w = watch(proc, window).await;
        sampler.abort();
        w
    };
    sim.recording.store(false, Ordering::Relaxed);
    let steady_beats = sim.beats.load(Ordering::Relaxed) - beats0;
    let steady_errors = sim.beat_errors.load(Ordering::Relaxed) - errors0;
    let steady_events = events.load(Ordering::Relaxed) - events0;
    let hwm_steady = proc.status_kib("VmHWM:") as f64 / 1024.0;
    let (fds, threads) = *fds_threads.lock().unwrap();
    let mut rtt: Vec<f64> = sim.rtt_us.lock().unwrap().iter().map(|us| f64::from(*us) / 1000.0).collect();
    rtt.sort_by(f64::total_cmp);

    // `GET /v1/hives`, sampled with the load still on: each sample first sends a beat of the
    // probe hive with a marker of its own, then asks until the answer shows it.
    eprintln!("queen-scale: {samples} samples of GET /v1/hives");
    let probe_bearer = rbee_core::proto::bearer(&queen.hive_credential("zz-probe"));
    let probe_url = format!("http://{}/v1/heartbeats", queen.addr);
    let mut probe = heartbeat(1, "zz-probe", hive_port);
    let mut list_ms = Vec::new();
    let mut visible_ms = Vec::new();
    let mut answer_bytes = 0;
    let cpu_sampling = proc.cpu_s();
    let sampling_started = Instant::now();
    for k in 0..samples {
        probe.home = format!("/home/probe/beat-{k}");
        let needle = format!("/home/probe/beat-{k}\"");
        let sent = Instant::now();
        assert!(post_new(&probe_url, &probe_bearer, serde_json::to_vec(&probe).unwrap()).await.is_some(), "probe beat");
        loop {
            let (took, body) = get_hives(&queen).await;
            list_ms.push(took.as_secs_f64() * 1000.0);
            answer_bytes = body.len();
            if body.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                visible_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let cpu_sampling_pct = (proc.cpu_s() - cpu_sampling) / sampling_started.elapsed().as_secs_f64() * 100.0;
    list_ms.sort_by(f64::total_cmp);
    visible_ms.sort_by(f64::total_cmp);

    // `rbee hive list` and `rbee hive list --json`, when built, with the queen's HOME (its
    // token) and config (port); their output read whole, as a terminal or a pipe would.
    let rbee = std::env::current_exe().unwrap().parent().unwrap().join("rbee");
    let (mut cli_ms, mut cli_json_ms) = (Vec::new(), Vec::new());
    // Where `rbee hive list`'s time goes: the queen's answer alone, and a process that starts
    // and exits (`rbee --version`).
    let (mut table_ms, mut start_ms) = (Vec::new(), Vec::new());
    if rbee.exists() {
        for _ in 0..5.min(samples) {
            table_ms.push(get_hives_at(&queen, "/v1/hives?fields=table").await.0.as_secs_f64() * 1000.0);
            let started = Instant::now();
            let out = tokio::process::Command::new(&rbee).arg("--version").output().await.unwrap();
            assert!(out.status.success());
            start_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            for (json, times) in [(false, &mut cli_ms), (true, &mut cli_json_ms)] {
                let started = Instant::now();
                let out = tokio::process::Command::new(&rbee)
                    .args(["--config"])
                    .arg(&queen.config)
                    .args(["hive", "list"])
                    .args(json.then_some("--json"))
                    .env("HOME", &queen.home)
                    .env_remove("XDG_STATE_HOME")
                    .env_remove("XDG_CONFIG_HOME")
                    .output()
                    .await
                    .unwrap();
                assert!(out.status.success(), "rbee hive list: {}", String::from_utf8_lossy(&out.stderr));
                times.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        cli_ms.sort_by(f64::total_cmp);
        cli_json_ms.sort_by(f64::total_cmp);
        table_ms.sort_by(f64::total_cmp);
        start_ms.sort_by(f64::total_cmp);
    }
    if let Some(hold) = std::env::var("QUEEN_SCALE_HOLD_S").ok().and_then(|v| v.parse::<u64>().ok()) {
        eprintln!(
            "queen-scale: holding the load for {hold} s: HOME={} rbee --config {} hive list",
            queen.home.display(),
            queen.config.display()
        );
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
    let hwm_end = proc.status_kib("VmHWM:") as f64 / 1024.0;
    let rss_end = proc.status_kib("VmRSS:") as f64 / 1024.0;

    // The end: the downloads finish, every stream must end with its result.
    sim.stop.send_replace(true);
    let mut streams_ok = 0;
    let mut stream_errors = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(done) = streams.join_next().await {
            match done.unwrap() {
                Ok(_) => streams_ok += 1,
                Err(e) => stream_errors.push(e.to_string()),
            }
        }
    })
    .await;

    let mode = if keep_alive { "one kept connection per hive" } else { "a new connection per beat, as rbee-hive" };
    println!(
        "queen-rbee (pid {}), {n_hives} simulated hives beating every {} s as the queen asks (configured 5 s, at most {} beats/s; {mode}), {n_streams} job streams; window {} s; fd limit {fd_limit}",
        proc.pid,
        sim.told_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        rbee_core::proto::operation::DEFAULT_MAX_HEARTBEATS_PER_SECOND,
        window.as_secs()
    );
    if let Ok(v) = std::env::var("MALLOC_ARENA_MAX") {
        println!("MALLOC_ARENA_MAX={v}");
    }
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| queen CPU, steady window | {:.2} % of a core |", steady.cpu_pct);
    println!("| queen RSS, steady window: mean / max | {:.1} / {:.1} MiB |", steady.rss_mean_mib, steady.rss_max_mib);
    println!("| queen peak RSS (VmHWM) after the window / after the samples | {hwm_steady:.1} / {hwm_end:.1} MiB |");
    println!("| queen RSS at the end | {rss_end:.1} MiB |");
    println!("| queen threads / open descriptors (max of samples every 5 s) | {threads} / {fds} |");
    println!(
        "| beat round trip (registry updated before the answer): p50 / p95 / p99 / max | {:.2} / {:.2} / {:.2} / {:.2} ms |",
        percentile(&rtt, 0.5),
        percentile(&rtt, 0.95),
        percentile(&rtt, 0.99),
        rtt.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "| `GET /v1/hives` ({} calls): median / p95 / max | {:.1} / {:.1} / {:.1} ms |",
        list_ms.len(),
        percentile(&list_ms, 0.5),
        percentile(&list_ms, 0.95),
        list_ms.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "| beat sent → shown by `GET /v1/hives` ({} samples): median / p95 | {:.1} / {:.1} ms |",
        visible_ms.len(),
        percentile(&visible_ms, 0.5),
        percentile(&visible_ms, 0.95)
    );
    for (what, times) in [
        ("`rbee hive list`", &cli_ms),
        ("`rbee hive list --json`", &cli_json_ms),
        ("of which the queen: `GET /v1/hives?fields=table`", &table_ms),
        ("of which a process's start and exit: `rbee --version`", &start_ms),
    ] {
        if !times.is_empty() {
            println!(
                "| {what} ({} runs): median / max | {:.1} / {:.1} ms |",
                times.len(),
                percentile(times, 0.5),
                times.last().copied().unwrap_or(f64::NAN)
            );
        }
    }
    println!("| queen CPU while sampling (load + the calls above) | {cpu_sampling_pct:.2} % of a core |");
    println!(
        "| `GET /v1/hives` answer | {:.1} KiB ({:.0} B per hive) |",
        answer_bytes as f64 / 1024.0,
        answer_bytes as f64 / (n_hives + 1) as f64
    );
    println!(
        "| heartbeat JSON, mean / heap held per hive (estimate) / all hives | {} B / {} B / {:.1} MiB |",
        json_bytes / n_hives.max(1),
        heap / n_hives.max(1),
        heap as f64 / (1 << 20) as f64
    );
    println!();
    println!(
        "- steady window: {steady_beats} beats ({:.0}/s), {steady_errors} failed; {steady_events} job events streamed ({:.0}/s); progress lines sent by the hives in all: {}",
        steady_beats as f64 / window.as_secs_f64(),
        steady_events as f64 / window.as_secs_f64(),
        sim.lines_sent.load(Ordering::Relaxed)
    );
    println!(
        "- job streams: {streams_ok} of {n_streams} ended with their result{}{}",
        if ended.is_err() { " (gave up waiting after 30 s)" } else { "" },
        stream_errors.first().map(|e| format!("; first error: {e}")).unwrap_or_default()
    );
    println!("- beats failed in all: {}", sim.beat_errors.load(Ordering::Relaxed));
    if let Some(path) = std::env::var_os("QUEEN_SCALE_LOG") {
        let _ = std::fs::copy(&queen.log_path, path);
    }
}
