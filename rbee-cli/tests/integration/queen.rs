//! The queen: `rbee` as a thin client of `queen-rbee` (started automatically), jobs that
//! outlive the client, long silent jobs, auth, and many jobs at once.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, Run};

const WORKERS: &[(&str, &str)] = &[("llama-cpp", "latest")];

fn outcomes(result: &serde_json::Value) -> Vec<(String, String, Vec<String>)> {
    result["report"]["hives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let mut steps: Vec<String> =
                h["steps_done"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect();
            // Binary installs run concurrently (one DAG wave): they finish in any order.
            let installs = |s: &String| s.contains("/worker/") || s.ends_with("/hive-binary");
            let first = steps.iter().position(installs).unwrap_or(0);
            let n = steps[first..].iter().take_while(|s| installs(s)).count();
            steps[first..first + n].sort();
            (h["alias"].as_str().unwrap().to_owned(), h["outcome"].as_str().unwrap().to_owned(), steps)
        })
        .collect()
}

#[test]
fn sync_through_the_queen_streams_every_hive_and_matches_the_in_process_report() {
    let queen_fleet = Fleet::new(3, WORKERS);
    let run = Run(queen_fleet.via_queen(&["sync", "--json"]).output().unwrap()).expect_code(0);
    let events = run.json_lines();
    for h in &queen_fleet.hosts {
        for kind in ["hive_started", "step_started", "progress", "hive_done"] {
            assert!(
                events.iter().any(|e| e["event"] == kind && e["alias"] == h.alias.as_str()),
                "no {kind} for {}",
                h.alias
            );
        }
        assert!(h.health().is_some());
    }
    let in_process = Fleet::new(3, WORKERS);
    let local = in_process.rbee(&["sync", "--json"]).expect_code(0);
    assert_eq!(outcomes(&run.result()), outcomes(&local.result()));
    let status = Run(queen_fleet.via_queen(&["status"]).output().unwrap()).expect_code(0);
    assert!(status.stdout().contains("Everything is in sync."));
}

#[test]
fn a_killed_client_leaves_the_job_running_and_its_outcome_can_be_shown() {
    let fleet = Fleet::new(2, WORKERS);
    let mut child = fleet.via_queen(&["sync", "--json"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    // Wait for the first event, then kill the client.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("\"event\""), "{first}");
    child.kill().unwrap();
    child.wait().unwrap();
    let jobs = Run(fleet.via_queen(&["jobs", "--json"]).output().unwrap()).expect_code(0);
    let list: serde_json::Value = serde_json::from_str(jobs.stdout().trim()).unwrap();
    let job = list.as_array().unwrap().iter().find(|j| j["operation"] == "package_sync").expect("the sync job");
    let id = job["job_id"].as_str().unwrap();
    // Following the job replays it to its end and gives its exit code.
    let shown = Run(fleet.via_queen(&["jobs", id]).output().unwrap()).expect_code(0);
    assert!(shown.stdout().contains("Sync: 2 ok, 0 failed, 0 unreachable"), "{}", shown.stdout());
    for h in &fleet.hosts {
        assert!(h.health().is_some(), "{} converged without its client", h.alias);
    }
}

#[test]
fn a_job_longer_than_a_minute_streams_to_the_end() {
    let fleet = Fleet::new(1, &[]);
    // Another sync (of another machine) holds h1's lock and stopped refreshing it: the job
    // waits in silence until the lock goes stale (60 s), then converges.
    let lock = fleet.host("h1").path(".local/state/rbee/sync.lock");
    std::fs::create_dir_all(&lock).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    std::fs::write(lock.join("since"), format!("{now}\n")).unwrap();
    std::fs::write(lock.join("owner"), "rbee pid 1 on another-machine since 0\n").unwrap();
    let started = Instant::now();
    let run = Run(fleet.via_queen(&["sync", "--json"]).output().unwrap()).expect_code(0);
    assert!(started.elapsed() > Duration::from_secs(60), "took only {:?}", started.elapsed());
    assert_eq!(run.result()["overall"], "ok");
    assert!(fleet.host("h1").health().is_some());
}

#[test]
fn requests_without_the_right_token_get_401_on_queen_and_hive_and_token_files_are_private() {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    let fleet = Fleet::new(1, &[]);
    Run(fleet.via_queen(&["queen", "start"]).output().unwrap()).expect_code(0);
    let token_file = fleet.dir.path().join("operator/.local/state/rbee-queen/queen.token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();
    let get = |port: u16, auth: Option<&str>, path: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let header = auth.map(|a| format!("Authorization: Bearer {a}\r\n")).unwrap_or_default();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{header}\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.split(' ').nth(1).unwrap().to_owned()
    };
    assert_eq!(get(fleet.queen_port, None, "/v1/jobs"), "401");
    assert_eq!(get(fleet.queen_port, Some("wrong"), "/v1/jobs"), "401");
    assert_eq!(get(fleet.queen_port, Some(token.trim()), "/v1/jobs"), "200");
    assert_eq!(get(fleet.queen_port, None, "/health"), "200");

    // A sync through the queen installs the hive's own credential, which the hive then
    // requires: not the operator's token, which never leaves this machine, and which the hive
    // refuses; and the hive's credential cannot drive the queen.
    Run(fleet.via_queen(&["sync"]).output().unwrap()).expect_code(0);
    let h1 = fleet.host("h1");
    let hive_token = h1.path(".local/state/rbee/hive.token");
    assert_eq!(std::fs::metadata(&hive_token).unwrap().permissions().mode() & 0o777, 0o600);
    let credential = std::fs::read_to_string(&hive_token).unwrap().trim().to_owned();
    assert_ne!(credential, token.trim());
    assert_eq!(get(h1.port, None, "/v1/capabilities"), "401");
    assert_eq!(get(h1.port, Some("wrong"), "/v1/capabilities"), "401");
    assert_eq!(get(h1.port, Some(token.trim()), "/v1/capabilities"), "401");
    assert_eq!(get(h1.port, Some(&credential), "/v1/capabilities"), "200");
    assert_eq!(get(h1.port, None, "/health"), "200");
    assert_eq!(get(fleet.queen_port, Some(&credential), "/v1/jobs"), "401");
}

#[test]
fn two_hundred_concurrent_jobs_lose_and_reorder_no_event_and_the_queen_stays_small() {
    let fleet = Fleet::new(2, &[]);
    Run(fleet.via_queen(&["queen", "start"]).output().unwrap()).expect_code(0);
    let token = std::fs::read_to_string(fleet.dir.path().join("operator/.local/state/rbee-queen/queen.token")).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], fleet.queen_port));
    let config = fleet.config_dir();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let counts: Vec<usize> = rt.block_on(async {
        let client = rbee_queen::client::QueenClient::new(addr, token.trim());
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let client = client.clone();
            let op = rbee_core::proto::operation::Operation::PackageStatus {
                config_path: Some(config.clone()),
                verbose: false,
                hive_aliases: Vec::new(),
            };
            tasks.push(tokio::spawn(async move {
                let job = client.submit(&op).await.expect("submit");
                let mut n = 0;
                // The client checks that `seq` runs 0, 1, 2, ... with no gap.
                let last = client.stream(&job.job_id, |_| n += 1).await.expect("stream to the end");
                assert!(matches!(last.body, rbee_queen::api::JobEventBody::Result { exit_code: 2, .. }));
                n
            }));
        }
        let mut counts = Vec::new();
        for t in tasks {
            counts.push(t.await.unwrap());
        }
        counts
    });
    assert_eq!(counts.len(), 200);
    assert!(counts.iter().all(|&n| n >= 1));
    let pid = std::fs::read_to_string(
        fleet.dir.path().join(format!("operator/.local/state/rbee-queen/queen-{}.pid", fleet.queen_port)),
    )
    .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    eprintln!("queen peak RSS after 200 jobs: {} KiB", hwm_kib);
    assert!(hwm_kib < 100 * 1024, "queen peak RSS {hwm_kib} KiB");
}

#[test]
fn hives_send_heartbeats_go_stale_when_stopped_and_fresh_when_started() {
    let fleet = Fleet::new(2, WORKERS);
    let queen = |args: &[&str]| {
        let mut cmd = fleet.via_queen(args);
        cmd.env("RBEE_HEARTBEAT_MS", "500");
        Run(cmd.output().unwrap())
    };
    queen(&["sync"]).expect_code(0);
    let state = |alias: &str| -> Option<bool> {
        let list = queen(&["hive", "list", "--json"]).expect_code(0);
        let hives: serde_json::Value = serde_json::from_str(list.stdout().trim()).unwrap();
        hives.as_array().unwrap().iter().find(|h| h["alias"] == alias).map(|h| h["stale"].as_bool().unwrap())
    };
    let wait_for = |alias: &str, stale: bool, within: Duration| {
        let started = Instant::now();
        while started.elapsed() < within {
            if state(alias) == Some(stale) {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{alias} not {} within {within:?}", if stale { "stale" } else { "fresh" });
    };
    wait_for("h1", false, Duration::from_secs(5));
    wait_for("h2", false, Duration::from_secs(5));
    let beat = queen(&["hive", "list", "--json"]).stdout();
    assert!(beat.contains("\"workers\":[\"llama-cpp\"]"), "{beat}");

    let caps = queen(&["hive", "capabilities", "h1", "--json"]).expect_code(0);
    let caps: serde_json::Value = serde_json::from_str(caps.stdout().trim()).unwrap();
    eprintln!("capabilities: {caps}");
    assert!(caps["cpu_cores"].as_u64().unwrap() >= 1 && caps["ram_bytes"].as_u64().unwrap() > 0, "{caps}");
    queen(&["hive", "get", "h2"]).expect_code(0);

    fleet.host("h1").kill_hive();
    // Three missed beats of 500 ms, plus one interval of slack for the last beat's timing.
    let took = wait_for("h1", true, Duration::from_millis(2500));
    eprintln!("h1 marked stale {took:?} after it stopped");
    assert_eq!(state("h2"), Some(false), "h2 still fresh");
    queen(&["sync"]).expect_code(0);
    wait_for("h1", false, Duration::from_secs(5));
}

#[test]
fn migrate_writes_a_config_whose_dry_run_is_empty() {
    let fleet = Fleet::new(2, &[("llama-cpp", "latest"), ("vllm", "0.1.0")]);
    let queen = |args: &[&str]| {
        let mut cmd = fleet.via_queen(args);
        cmd.env("RBEE_HEARTBEAT_MS", "300");
        Run(cmd.output().unwrap())
    };
    queen(&["sync"]).expect_code(0);
    let started = Instant::now();
    while queen(&["hive", "list", "--json"]).stdout().matches("\"alias\"").count() < 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "heartbeats never came");
        std::thread::sleep(Duration::from_millis(100));
    }
    let migrated = fleet.dir.path().join("migrated");
    std::fs::create_dir_all(&migrated).unwrap();
    std::fs::copy(fleet.config_dir().join("rbee.conf"), migrated.join("rbee.conf")).unwrap();
    let out = migrated.join("hives.conf");
    queen(&["migrate", "--output", out.to_str().unwrap()]).expect_code(0);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("version = \"0.1.0\""), "{text}");
    let dry = Run(std::process::Command::new(env!("CARGO_BIN_EXE_rbee"))
        .arg("--config")
        .arg(&migrated)
        .args(["sync", "--dry-run"])
        .env("HOME", fleet.dir.path().join("operator"))
        .env("RBEE_IN_PROCESS", "1")
        .output()
        .unwrap());
    let dry = dry.expect_code(0);
    assert!(dry.stdout().contains("2 in sync"), "{}\n{text}", dry.stdout());
    let again = queen(&["migrate", "--output", out.to_str().unwrap()]).expect_code(1);
    assert!(again.stderr().contains("pass --force"), "{}", again.stderr());
    queen(&["migrate", "--output", out.to_str().unwrap(), "--force"]).expect_code(0);
}
