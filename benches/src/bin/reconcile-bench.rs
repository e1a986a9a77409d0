//! What the queen's reconciler costs: the real `queen-rbee` (a child process, so its `/proc`
//! figures are its own) keeps 100 deployments (200 replicas) served over 50 simulated hives.
//!
//! The hives are simulated in this process: each is an HTTP server on its own 127.0.0.1 port that
//! heartbeats to the queen every 5 s (and at once after a change, as real hives do), answers the
//! queen's `worker_spawn` at once with the worker `starting`, reports it `ready` 200 ms later,
//! and answers `worker_process_delete`. No worker process, engine or model exists.
//!
//! Measured: the queen's CPU and RSS with the 50 hives and no deployments (baseline), the time
//! from applying the deployments to all of them `ready`, the queen's CPU and RSS while it keeps
//! them (steady state), and the time from a replica crashing to its deployment being ready
//! again with a new worker.
//!
//! `cargo build --release -p rbee-queen --bin queen-rbee && cargo build --release -p
//! rbee-benches --bin reconcile-bench && target/release/reconcile-bench [WINDOW_S [HIVES
//! [DEPLOYMENTS [CRASHES]]]]` (defaults 30, 50, 100, 5). Set `RECONCILE_BENCH_LOG=path` to keep
//! the queen's log.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rbee_benches::{QueenProcess, watch};
use rbee_core::execute::now_ms;
use rbee_core::package::OperationResult;
use rbee_core::proto::deployment::{DeploymentSpec, DeploymentStatus, Device};
use rbee_core::proto::hive::{HiveEvent, WorkerProcess, WorkerState};
use rbee_core::proto::operation::{Heartbeat, Operation};
use rbee_queen::client::QueenClient;

/// How often the simulated hives beat (the hive's default).
const HEARTBEAT_MS: u64 = 5000;
/// How long a simulated worker takes from `starting` to `ready`.
const READY_AFTER: Duration = Duration::from_millis(200);

/// Something a simulated hive did, for the phase breakdowns.
#[derive(Debug, Clone)]
enum Ev {
    Spawn { deployment: String, id: String },
    Ready { id: String },
    Delete { id: String },
}

/// Everything the simulated hives share.
struct Sim {
    hives: Vec<Arc<SimHive>>,
    hive_key: String,
    queen_url: String,
    events: Mutex<Vec<(Instant, Ev)>>,
    beats: AtomicU64,
    beat_errors: AtomicU64,
    other_ops: AtomicU64,
    next_id: AtomicU64,
}

struct SimHive {
    alias: String,
    port: u16,
    workers: Mutex<Vec<WorkerProcess>>,
    beat_now: tokio::sync::Notify,
}

impl Sim {
    fn note(&self, ev: Ev) {
        self.events.lock().unwrap().push((Instant::now(), ev));
    }

    fn events_since(&self, since: Instant) -> Vec<(Instant, Ev)> {
        self.events.lock().unwrap().iter().filter(|(at, _)| *at >= since).cloned().collect()
    }

    /// Live workers per hive, most first, and how many hives have none.
    fn placement(&self) -> (Vec<(String, usize)>, usize) {
        let mut per: Vec<(String, usize)> = self
            .hives
            .iter()
            .map(|h| (h.alias.clone(), h.workers.lock().unwrap().iter().filter(|w| w.state.is_alive()).count()))
            .collect();
        per.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let empty = per.iter().filter(|(_, n)| *n == 0).count();
        per.retain(|(_, n)| *n > 0);
        (per, empty)
    }

    /// Live workers per deployment, across all hives.
    fn alive_by_deployment(&self) -> BTreeMap<String, u32> {
        let mut n = BTreeMap::new();
        for hive in &self.hives {
            for w in hive.workers.lock().unwrap().iter().filter(|w| w.state.is_alive()) {
                if let Some(r) = &w.replica {
                    *n.entry(r.deployment.clone()).or_default() += 1;
                }
            }
        }
        n
    }
}

fn heartbeat(hive: &SimHive) -> Heartbeat {
    Heartbeat {
        tls: false,
        alias: hive.alias.clone(),
        version: "0.1.0".into(),
        sha256: rbee_core::Sha256::from_bytes([7; 32]),
        pid: 4242,
        port: hive.port,
        interval_ms: HEARTBEAT_MS,
        workers: vec!["reference".into()],
        installed: BTreeMap::from([("reference".to_owned(), "0.1.0".to_owned())]),
        home: format!("/home/{}", hive.alias),
        processes: hive.workers.lock().unwrap().clone(),
        gpus: Vec::new(),
        models: Vec::new(),
    }
}

/// Beats every interval (the first at `offset`, so the hives do not all beat at once), and at
/// once when a worker changed.
async fn beat_loop(sim: Arc<Sim>, hive: Arc<SimHive>, offset: Duration) {
    let url = format!("{}/v1/heartbeats", sim.queen_url);
    let bearer = rbee_core::proto::bearer(&rbee_core::credentials::hive_credential(&sim.hive_key, &hive.alias));
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + offset, Duration::from_millis(HEARTBEAT_MS));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = hive.beat_now.notified() => {}
        }
        let body = serde_json::to_vec(&heartbeat(&hive)).unwrap();
        let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
        let sent = async {
            let response = rbee_http::send("POST", &url, &headers, body).await.ok()?;
            let ok = response.status().is_success();
            rbee_http::collect(response).await.ok()?;
            ok.then_some(())
        };
        match tokio::time::timeout(Duration::from_secs(3), sent).await {
            Ok(Some(())) => sim.beats.fetch_add(1, Ordering::Relaxed),
            _ => sim.beat_errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// `POST /v1/operations`: the queen's forwarded operation; NDJSON events, the result last.
async fn operation(
    State((sim, hive)): State<(Arc<Sim>, Arc<SimHive>)>,
    headers: HeaderMap,
    axum::Json(op): axum::Json<Operation>,
) -> Response {
    let given = headers.get("authorization").and_then(|v| v.to_str().ok());
    if !rbee_core::proto::authorized(given, &rbee_core::credentials::hive_credential(&sim.hive_key, &hive.alias)) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong token").into_response();
    }
    let alias = hive.alias.clone();
    let (log, result) = match op {
        Operation::WorkerSpawn { worker_type, model, device, args, replica, .. } => {
            let n = sim.next_id.fetch_add(1, Ordering::Relaxed);
            let id = format!("{worker_type}-{n}");
            let worker = WorkerProcess {
                id: id.clone(),
                worker_type,
                model,
                device,
                port: 20_000 + (n % 40_000) as u16,
                pid: 100_000 + n as u32,
                started_ms: now_ms(),
                last_heartbeat_ms: None,
                adopted: false,
                replica: replica.clone(),
                args,
                state: WorkerState::Starting,
            };
            hive.workers.lock().unwrap().push(worker.clone());
            sim.note(Ev::Spawn { deployment: replica.map(|r| r.deployment).unwrap_or_default(), id: id.clone() });
            hive.beat_now.notify_one();
            let (sim, hive) = (sim.clone(), hive.clone());
            let ready_id = id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(READY_AFTER).await;
                let mut workers = hive.workers.lock().unwrap();
                if let Some(w) = workers.iter_mut().find(|w| w.id == ready_id && w.state == WorkerState::Starting) {
                    w.state = WorkerState::Ready;
                    w.last_heartbeat_ms = Some(now_ms());
                    drop(workers);
                    sim.note(Ev::Ready { id: ready_id });
                    hive.beat_now.notify_one();
                }
            });
            let log = format!("spawned worker {id} (pid {}, port {}); not waiting for it", worker.pid, worker.port);
            (Some(log), OperationResult::Worker { hive: alias, worker: Box::new(worker) })
        }
        Operation::WorkerProcessDelete { worker_id, .. } => {
            let mut workers = hive.workers.lock().unwrap();
            let found = workers.iter().position(|w| w.id == worker_id).map(|i| workers.remove(i));
            drop(workers);
            sim.note(Ev::Delete { id: worker_id.clone() });
            match found {
                Some(mut w) => {
                    w.state = WorkerState::Stopped;
                    hive.beat_now.notify_one();
                    (None, OperationResult::Worker { hive: alias, worker: Box::new(w) })
                }
                None => (None, OperationResult::error(format!("no worker {worker_id} on {alias}"))),
            }
        }
        other => {
            sim.other_ops.fetch_add(1, Ordering::Relaxed);
            (None, OperationResult::error(format!("the simulated hive does not do {other:?}")))
        }
    };
    let mut body = Vec::new();
    for event in log.map(|message| HiveEvent::Log { message }).into_iter().chain([HiveEvent::Result { result }]) {
        body.extend(serde_json::to_vec(&event).unwrap());
        body.push(b'\n');
    }
    ([("content-type", "application/x-ndjson")], body).into_response()
}

fn spec(i: usize, hives: &[String]) -> DeploymentSpec {
    DeploymentSpec {
        name: format!("dep-{i}"),
        model: format!("/models/m-{i}.gguf"),
        sha256: None,
        worker: "reference".into(),
        replicas: (i % 3 + 1) as u32,
        hives: hives.to_vec(),
        device: Device::Cpu,
        gpu_memory_mib: None,
        share_gpu: false,
        args: Vec::new(),
        ready_timeout_ms: 600_000,
        drain_timeout_ms: 30_000,
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

async fn poll_until<F: Fn(&[DeploymentStatus]) -> bool>(client: &QueenClient, every: Duration, done: F) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(statuses) = client.deployments().await
            && done(&statuses)
        {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "the deployments did not become ready within 300 s");
        tokio::time::sleep(every).await;
    }
}

#[tokio::main]
async fn main() {
    let arg = |i: usize, default: u64| std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let window = Duration::from_secs(arg(1, 30));
    let n_hives = arg(2, 50) as usize;
    let n_deployments = arg(3, 100) as usize;
    let crashes = arg(4, 5) as usize;

    // The queen, as its own process, with its own HOME (token, deployments.json) and config.
    let mut queen_process = QueenProcess::start("reschedule_after = 60\n").await;
    let (started, addr, log_path) = (queen_process.started, queen_process.addr, queen_process.log_path.clone());
    let client = queen_process.client();
    let queen = &queen_process.proc;

    // The simulated hives.
    let mut listeners = Vec::new();
    let mut hives = Vec::new();
    for i in 0..n_hives {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        hives.push(Arc::new(SimHive {
            alias: format!("sim-{i}"),
            port: listener.local_addr().unwrap().port(),
            workers: Mutex::new(Vec::new()),
            beat_now: tokio::sync::Notify::new(),
        }));
        listeners.push(listener);
    }
    let sim = Arc::new(Sim {
        hives: hives.clone(),
        // Each simulated hive's credential, as a sync would install it: derived from the queen's
        // hive key.
        hive_key: queen_process.hive_key.clone(),
        queen_url: format!("http://{addr}"),
        events: Mutex::new(Vec::new()),
        beats: AtomicU64::new(0),
        beat_errors: AtomicU64::new(0),
        other_ops: AtomicU64::new(0),
        next_id: AtomicU64::new(0),
    });
    for (i, (hive, listener)) in hives.iter().zip(listeners).enumerate() {
        let app = axum::Router::new()
            .route("/v1/operations", axum::routing::post(operation))
            .with_state((sim.clone(), hive.clone()));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let offset = Duration::from_millis(HEARTBEAT_MS * i as u64 / n_hives as u64);
        tokio::spawn(beat_loop(sim.clone(), hive.clone(), offset));
    }
    let aliases: Vec<String> = hives.iter().map(|h| h.alias.clone()).collect();
    while client.hives().await.map_or(0, |h| h.iter().filter(|e| !e.stale).count()) < n_hives {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The queen decides nothing for one heartbeat interval + 1 s after it starts.
    let warm = Duration::from_millis(HEARTBEAT_MS + 1000) + Duration::from_millis(500);
    tokio::time::sleep(warm.saturating_sub(started.elapsed())).await;
    eprintln!("reconcile-bench: queen pid {} up, {n_hives} hives registered; baseline window", queen.pid);
    let baseline = watch(queen, window).await;

    // Apply and wait for every deployment to be ready.
    let specs: Vec<DeploymentSpec> = (0..n_deployments).map(|i| spec(i, &aliases)).collect();
    let declared: u32 = specs.iter().map(|s| s.replicas).sum();
    let cpu_before = queen.cpu_s();
    let applied = Instant::now();
    let changes = client.apply_deployments(&specs).await.unwrap();
    let apply_answered = applied.elapsed();
    assert_eq!(changes.len(), n_deployments, "{changes:?}");
    let all_ready = poll_until(&client, Duration::from_millis(50), |s| {
        s.len() == n_deployments && s.iter().all(DeploymentStatus::is_ready)
    })
    .await;
    let ramp = all_ready - applied;
    let ramp_cpu = queen.cpu_s() - cpu_before;
    let ramp_events = sim.events_since(applied);
    let spawns: Vec<Instant> =
        ramp_events.iter().filter(|(_, e)| matches!(e, Ev::Spawn { .. })).map(|(at, _)| *at).collect();
    let readies: Vec<Instant> =
        ramp_events.iter().filter(|(_, e)| matches!(e, Ev::Ready { .. })).map(|(at, _)| *at).collect();
    let first_spawn = spawns.first().map_or(Duration::ZERO, |t| *t - applied);
    let last_spawn = spawns.last().map_or(Duration::ZERO, |t| *t - applied);
    let last_ready = readies.last().map_or(Duration::ZERO, |t| *t - applied);
    let spawned_in_ramp = spawns.len();
    let alive_after_ramp = sim.alive_by_deployment();
    let (placed, empty_hives) = sim.placement();

    // Steady state: nothing to do but read heartbeats and decide every 500 ms.
    eprintln!("reconcile-bench: all ready after {}; steady-state window", ms(ramp));
    let events_before_steady = sim.events.lock().unwrap().len();
    let beats_before = sim.beats.load(Ordering::Relaxed);
    let steady = watch(queen, window).await;
    let steady_beats = sim.beats.load(Ordering::Relaxed) - beats_before;
    let steady_ops = sim.events.lock().unwrap().len() - events_before_steady;
    let hwm = queen.status_kib("VmHWM:") as f64 / 1024.0;
    let threads = queen.threads();

    // Crashes: one single-replica deployment at a time.
    eprintln!("reconcile-bench: crashes");
    let mut recoveries = Vec::new();
    for k in 0..crashes {
        let name = format!("dep-{}", 3 * k);
        let (hive, old_id) = hives
            .iter()
            .find_map(|h| {
                let workers = h.workers.lock().unwrap();
                let w = workers.iter().find(|w| w.replica.as_ref().is_some_and(|r| r.deployment == name))?;
                Some((h.clone(), w.id.clone()))
            })
            .expect("a replica to crash");
        let crashed = Instant::now();
        {
            let mut workers = hive.workers.lock().unwrap();
            let w = workers.iter_mut().find(|w| w.id == old_id).unwrap();
            w.state =
                WorkerState::Crashed { exit_code: Some(137), signal: None, message: "exited with status 137".into() };
        }
        hive.beat_now.notify_one();
        let recovered = poll_until(&client, Duration::from_millis(10), |s| {
            s.iter().find(|d| d.name == name).is_some_and(|d| {
                d.is_ready()
                    && d.instances.iter().all(|r| r.worker_id != old_id)
                    && d.instances.iter().any(|r| r.state == "ready")
            })
        })
        .await;
        let events = sim.events_since(crashed);
        let at = |f: &dyn Fn(&Ev) -> bool| events.iter().find(|(_, e)| f(e)).map(|(t, _)| *t - crashed);
        let cleared = at(&|e| matches!(e, Ev::Delete { id } if *id == old_id));
        let respawned = at(&|e| matches!(e, Ev::Spawn { deployment, .. } if *deployment == name));
        let new_id = events.iter().find_map(|(_, e)| match e {
            Ev::Spawn { deployment, id } if *deployment == name => Some(id.clone()),
            _ => None,
        });
        let new_ready = at(&|e| matches!(e, Ev::Ready { id } if Some(id) == new_id.as_ref()));
        let spawns_for =
            events.iter().filter(|(_, e)| matches!(e, Ev::Spawn { deployment, .. } if *deployment == name)).count();
        recoveries.push((recovered - crashed, cleared, respawned, new_ready, spawns_for));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let statuses = client.deployments().await.unwrap();
    let restarts: u64 = statuses.iter().map(|s| s.restarts).sum();
    let alive_end = sim.alive_by_deployment();
    let _ = queen_process.child.kill().await;

    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    if let Some(path) = std::env::var_os("RECONCILE_BENCH_LOG") {
        let _ = std::fs::write(path, &log);
    }
    let starts_logged = log.lines().filter(|l| l.contains(": start a replica of ")).count();
    let stops_logged = log.lines().filter(|l| l.contains(": stop replica ")).count();

    println!(
        "queen-rbee (pid {}), {n_hives} simulated hives beating every {} s, {n_deployments} deployments, {declared} replicas; windows of {} s",
        queen.pid,
        HEARTBEAT_MS / 1000,
        window.as_secs()
    );
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| baseline ({n_hives} hives, no deployments): queen CPU | {:.2} % of a core |", baseline.cpu_pct);
    println!("| baseline: queen RSS, mean / max | {:.1} / {:.1} MiB |", baseline.rss_mean_mib, baseline.rss_max_mib);
    println!("| apply → all {n_deployments} deployments ready | {} |", ms(ramp));
    println!(
        "| … apply answered / first spawn / last spawn / last worker ready (hive side) | {} / {} / {} / {} |",
        ms(apply_answered),
        ms(first_spawn),
        ms(last_spawn),
        ms(last_ready)
    );
    println!("| … queen CPU from apply to all ready | {ramp_cpu:.2} s |");
    println!("| steady state ({declared} replicas ready): queen CPU | {:.2} % of a core |", steady.cpu_pct);
    println!("| steady state: queen RSS, mean / max | {:.1} / {:.1} MiB |", steady.rss_mean_mib, steady.rss_max_mib);
    println!("| queen peak RSS (VmHWM) / threads | {hwm:.1} MiB / {threads} |");
    let mut times: Vec<Duration> = recoveries.iter().map(|r| r.0).collect();
    times.sort();
    if !times.is_empty() {
        println!(
            "| replica crash → deployment ready with a new worker: median (min–max of {}) | {} ({}–{}) |",
            times.len(),
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1])
        );
    }
    println!();
    println!("Checks:");
    println!(
        "- spawns during the ramp: {spawned_in_ramp} for {declared} declared replicas; live replicas after it: {} (deployments with more than declared: {:?})",
        alive_after_ramp.values().sum::<u32>(),
        surplus(&specs, &alive_after_ramp)
    );
    let shown: Vec<String> = placed.iter().take(8).map(|(h, n)| format!("{h} {n}")).collect();
    println!(
        "- replicas per hive after the ramp: {}{}; {empty_hives} of {n_hives} hives run none",
        shown.join(", "),
        if placed.len() > 8 { ", …" } else { "" }
    );
    println!(
        "- steady state: {steady_beats} heartbeats ({:.1}/s), {steady_ops} spawns/deletes/readies on the hives",
        steady_beats as f64 / window.as_secs_f64()
    );
    for (k, (total, cleared, respawned, new_ready, spawns_for)) in recoveries.iter().enumerate() {
        let opt = |d: &Option<Duration>| d.map_or("never".to_owned(), ms);
        println!(
            "- crash {k} (dep-{}), ms after the crash: cleared (delete on the hive) {}, respawned {}, new worker ready on the hive {}, queen reports ready {} ({spawns_for} spawn(s))",
            3 * k,
            opt(cleared),
            opt(respawned),
            opt(new_ready),
            ms(*total)
        );
    }
    println!(
        "- end: live replicas {} (surplus: {:?}), restarts counted by the queen {restarts}, queen log: {starts_logged} starts, {stops_logged} stops",
        alive_end.values().sum::<u32>(),
        surplus(&specs, &alive_end)
    );
    println!(
        "- heartbeat failures: {}, operations the simulator does not do: {}",
        sim.beat_errors.load(Ordering::Relaxed),
        sim.other_ops.load(Ordering::Relaxed)
    );
}

/// Deployments with more live replicas than declared, with the count.
fn surplus(specs: &[DeploymentSpec], alive: &BTreeMap<String, u32>) -> Vec<(String, u32)> {
    specs.iter().filter_map(|s| alive.get(&s.name).filter(|n| **n > s.replicas).map(|n| (s.name.clone(), *n))).collect()
}
