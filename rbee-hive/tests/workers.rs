//! Worker processes without HTTP: stand-in workers are shell scripts in a catalog directory.
//! SIGTERM then SIGKILL, crashes during startup, distinct ports, and the on-disk registry
//! across hive restarts.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rbee_core::proto::deployment::ReplicaLabel;
use rbee_core::proto::hive::WorkerState;
use rbee_hive::workers::{SpawnRequest, WorkerSettings, Workers};

fn settings(dir: &Path) -> WorkerSettings {
    WorkerSettings {
        home: dir.to_path_buf(),
        catalog_dir: dir.join("workers"),
        registry_dir: dir.join("state/workers"),
        models_dir: dir.join("models"),
        hive_url: "http://127.0.0.1:9".into(),
        hive_port: 9,
        token: None,
        heartbeat_ms: 200,
    }
}

fn worker_script(dir: &Path, kind: &str, body: &str) {
    let path = dir.join("workers").join(format!("rbee-worker-{kind}"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

#[tokio::test]
async fn a_worker_ignoring_sigterm_is_killed_after_the_grace_period_and_ports_never_collide() {
    let dir = tempfile::tempdir().unwrap();
    worker_script(dir.path(), "stubborn", "trap '' TERM\nwhile :; do sleep 0.1; done");
    let workers = Workers::open(settings(dir.path()));
    let catalog = workers.scan_catalog();
    assert_eq!(catalog, ["stubborn"]);
    let spawned: Vec<_> =
        (0..5).map(|_| workers.spawn(&catalog, SpawnRequest::new("stubborn", "m", "cpu")).unwrap()).collect();
    let mut ports: Vec<u16> = spawned.iter().map(|p| p.port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 5, "distinct ports");
    assert!(!ports.contains(&9), "never the hive's port");
    assert!(spawned.iter().all(|p| p.state == WorkerState::Starting));

    let started = Instant::now();
    let stopped = workers.delete(&spawned[0].id, Duration::from_millis(400)).await.unwrap();
    assert_eq!(stopped.state, WorkerState::Stopped);
    assert!(started.elapsed() >= Duration::from_millis(400), "SIGKILL only after the grace period");
    assert!(!alive(spawned[0].pid));
    assert!(workers.get(&spawned[0].id).unwrap_err().to_string().contains("no worker"));
    for p in &spawned[1..] {
        workers.delete(&p.id, Duration::from_millis(100)).await.unwrap();
        assert!(!alive(p.pid));
    }
    assert!(workers.list().is_empty());
}

#[tokio::test]
async fn a_worker_exiting_during_startup_is_reported_with_its_status_and_log() {
    let dir = tempfile::tempdir().unwrap();
    worker_script(dir.path(), "broken", "echo 'error: `engine` not found: this worker needs an engine' >&2\nexit 3");
    let workers = Workers::open(settings(dir.path()));
    let p = workers.spawn(&workers.scan_catalog(), SpawnRequest::new("broken", "m", "cpu")).unwrap();
    let err = workers.wait_ready(&p.id, Duration::from_secs(10)).await.unwrap_err().to_string();
    assert!(err.contains("exited with status 3") && err.contains("`engine` not found"), "{err}");
    match workers.get(&p.id).unwrap().state {
        WorkerState::Crashed { exit_code, signal, .. } => assert_eq!((exit_code, signal), (Some(3), None)),
        other => panic!("{other:?}"),
    }
    assert!(!dir.path().join(format!("state/workers/{}.json", p.id)).exists(), "a dead worker leaves no record");
    // Deleting a crashed worker clears it.
    workers.delete(&p.id, Duration::from_secs(1)).await.unwrap();
    assert!(workers.list().is_empty());
}

#[tokio::test]
async fn bad_requests_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    worker_script(dir.path(), "ok", "exec sleep 30");
    let workers = Workers::open(settings(dir.path()));
    let err = workers.spawn(&workers.scan_catalog(), SpawnRequest::new("vllm", "m", "cpu")).unwrap_err().to_string();
    assert!(err.contains("not installed on this hive (installed: ok)") && err.contains("rbee sync"), "{err}");
    let err = workers.spawn(&workers.scan_catalog(), SpawnRequest::new("ok", "m", "gpu0")).unwrap_err().to_string();
    assert!(err.contains("`cpu` or `cuda:N`"), "{err}");
}

#[tokio::test]
async fn a_restarted_hive_readopts_live_workers_and_clears_dead_ones() {
    let dir = tempfile::tempdir().unwrap();
    worker_script(dir.path(), "sleeper", "exec sleep 30");
    let first = Workers::open(settings(dir.path()));
    let live = first.spawn(&first.scan_catalog(), SpawnRequest::new("sleeper", "m", "cpu")).unwrap();
    // A record left by a worker that died while no hive watched it.
    let registry = dir.path().join("state/workers");
    let dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let _ = dead.wait_with_output();
    let record = serde_json::json!({"id": "sleeper-dead", "worker_type": "sleeper", "model": "m", "device": "cpu",
        "port": 1, "pid": dead_pid, "start_time": 1, "started_ms": 0});
    std::fs::write(registry.join("sleeper-dead.json"), record.to_string()).unwrap();
    // A record whose pid is alive but is another process (pid reuse): not adopted.
    let record = serde_json::json!({"id": "sleeper-reused", "worker_type": "sleeper", "model": "m", "device": "cpu",
        "port": 2, "pid": std::process::id(), "start_time": 1, "started_ms": 0});
    std::fs::write(registry.join("sleeper-reused.json"), record.to_string()).unwrap();

    let second = Workers::open(settings(dir.path()));
    let ids: Vec<String> = second.list().into_iter().map(|p| p.id).collect();
    assert_eq!(ids, std::slice::from_ref(&live.id));
    let adopted = second.get(&live.id).unwrap();
    assert!(adopted.adopted && adopted.pid == live.pid && adopted.port == live.port, "{adopted:?}");
    assert!(!registry.join("sleeper-dead.json").exists() && !registry.join("sleeper-reused.json").exists());

    // An adopted worker is not this hive's child: its death is still noticed.
    std::process::Command::new("kill").args(["-9", &live.pid.to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while second.get(&live.id).unwrap().state.is_alive() {
        assert!(Instant::now() < deadline, "the adopted worker's death was not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(second.get(&live.id).unwrap().state, WorkerState::Crashed { exit_code: None, .. }));
}

#[tokio::test]
async fn engine_args_follow_a_double_dash_and_the_registry_keeps_them_with_the_label() {
    let dir = tempfile::tempdir().unwrap();
    // Writes its argv, one per line, then sleeps.
    worker_script(dir.path(), "argv", &format!("printf '%s\\n' \"$@\" > {}/argv\nexec sleep 30", dir.path().display()));
    let workers = Workers::open(settings(dir.path()));
    let label = ReplicaLabel { deployment: "chat".into(), spec_hash: "0123abcd".into(), worker_version: None };
    let args = vec!["--ctx-size".to_owned(), "8192".into(), "two words; $(echo no)".into()];
    let request =
        SpawnRequest { args: args.clone(), replica: Some(label.clone()), ..SpawnRequest::new("argv", "m", "cpu") };
    let spawned = workers.spawn(&workers.scan_catalog(), request).unwrap();
    assert_eq!((spawned.args.clone(), spawned.replica.clone()), (args.clone(), Some(label.clone())));

    let argv_file = dir.path().join("argv");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&argv_file).is_ok_and(|t| t.ends_with('\n')) {
        assert!(Instant::now() < deadline, "the worker did not write its argv");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let argv: Vec<String> = std::fs::read_to_string(&argv_file).unwrap().lines().map(str::to_owned).collect();
    let dash = argv.iter().position(|a| a == "--").unwrap();
    assert_eq!(argv[dash + 1..], args, "{argv:?}");
    assert_eq!(argv[..dash].last().map(String::as_str), Some("http://127.0.0.1:9"), "after the contract's flags");

    // The record holds both; a restarted hive's worker keeps them.
    let record_path = dir.path().join(format!("state/workers/{}.json", spawned.id));
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    assert_eq!(
        (record["replica"]["deployment"].as_str(), record["args"].as_array().map(Vec::len)),
        (Some("chat"), Some(3))
    );
    let adopted = Workers::open(settings(dir.path())).get(&spawned.id).unwrap();
    assert!(adopted.adopted);
    assert_eq!((adopted.args, adopted.replica), (args, Some(label)));

    // A record from an older hive (no label, no arguments) is still adopted.
    let mut old = record.clone();
    old.as_object_mut().unwrap().retain(|k, _| k != "replica" && k != "args");
    std::fs::write(&record_path, old.to_string()).unwrap();
    let older = Workers::open(settings(dir.path()));
    let adopted = older.get(&spawned.id).unwrap();
    assert!(adopted.adopted && adopted.args.is_empty() && adopted.replica.is_none(), "{adopted:?}");
    older.delete(&spawned.id, Duration::from_millis(500)).await.unwrap();
    assert!(!alive(spawned.pid));
}

#[tokio::test]
async fn without_engine_args_there_is_no_double_dash() {
    let dir = tempfile::tempdir().unwrap();
    worker_script(dir.path(), "argv", &format!("printf '%s\\n' \"$@\" > {}/argv", dir.path().display()));
    let workers = Workers::open(settings(dir.path()));
    let p = workers.spawn(&workers.scan_catalog(), SpawnRequest::new("argv", "m", "cpu")).unwrap();
    let _ = workers.wait_ready(&p.id, Duration::from_secs(10)).await;
    let argv = std::fs::read_to_string(dir.path().join("argv")).unwrap();
    assert!(!argv.lines().any(|a| a == "--"), "{argv}");
    assert!(argv.contains("--worker-id"), "{argv}");
}
