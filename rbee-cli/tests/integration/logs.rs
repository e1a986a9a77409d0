//! The daemons' logs end to end: `RUST_LOG` and the JSON format reach the queen, the hive and
//! the workers it starts; a chatty worker's log is capped and rotated; `rbee logs` reads a
//! worker's and a hive's log through the queen, and follows one.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, Run, bin_dir, wait_for};

/// The cap the daemons of this test run with.
const CAP: u64 = 16 * 1024;

/// `rbee` through the fleet's queen; the queen it starts (and the hive and workers that
/// queen starts) inherit `env`.
fn rbee_with<'a>(fleet: &'a Fleet, env: &[(&str, &str)]) -> impl Fn(&[&str]) -> Command + 'a {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    move |args: &[&str]| {
        let mut cmd = fleet.via_queen(args);
        cmd.env("RBEE_HEARTBEAT_MS", "500").env_remove("RUST_LOG").env_remove("RBEE_LOG_FORMAT");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd
    }
}

fn run(mut cmd: Command) -> Run {
    Run(cmd.output().unwrap())
}

/// A log and its rotated part, oldest first.
fn read_log(path: &std::path::Path) -> String {
    let rotated = std::fs::read_to_string(format!("{}.1", path.display())).unwrap_or_default();
    rotated + &std::fs::read_to_string(path).unwrap_or_default()
}

/// Starts a reference worker on h1 serving `model`; its id.
fn spawn_reference(rbee: &impl Fn(&[&str]) -> Command, model: &std::path::Path) -> String {
    let args = ["worker", "spawn", "--hive", "h1", "--type", "reference", "--model", model.to_str().unwrap(), "--json"];
    let spawned = run(rbee(&args)).expect_code(0);
    let last = spawned.stdout().lines().rfind(|l| l.starts_with('{')).unwrap_or_default().to_owned();
    let spawned: serde_json::Value = serde_json::from_str(&last).unwrap();
    spawned["worker"]["id"].as_str().unwrap().to_owned()
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn json_debug_logs_capped_worker_logs_and_rbee_logs_through_the_queen() {
    let fleet = Fleet::new(1, &[("llama-cpp", "latest")]);
    let chatty = rbee_with(
        &fleet,
        &[
            ("RUST_LOG", "debug"),
            ("RBEE_LOG_FORMAT", "json"),
            ("RBEE_LOG_MAX_BYTES", "16384"),
            ("REFERENCE_WORKER_CHATTY_BYTES", "200000"),
        ],
    );
    run(chatty(&["sync"])).expect_code(0);
    let queen_log = fleet.dir.path().join("operator/.local/state/rbee-queen/queen.log");

    // The queen logs JSON, one object a line, at debug: the sync's job id is a field of the
    // lines about it, and the job's steps are debug lines.
    let jobs: Vec<serde_json::Value> =
        serde_json::from_str(run(chatty(&["jobs", "--json"])).expect_code(0).stdout().trim()).unwrap();
    let job_id = jobs[0]["job_id"].as_str().unwrap().to_owned();
    let text = read_log(&queen_log);
    let lines = json_lines(&text);
    assert!(!lines.is_empty(), "JSON lines in the queen's log:\n{text}");
    let about_job: Vec<_> = lines.iter().filter(|l| l["job"] == job_id.as_str()).collect();
    assert!(about_job.iter().any(|l| l["message"] == "job started" && l["kind"] == "package_sync"), "{text}");
    assert!(about_job.iter().any(|l| l["level"] == "DEBUG" && l["hive"] == "h1"), "debug lines for the steps: {text}");
    assert!(about_job.iter().any(|l| l["message"] == "job finished" && l["exit_code"] == 0), "{text}");

    // The hive it started logs JSON too.
    let h1 = fleet.host("h1");
    let hive_log = h1.path(".local/state/rbee/hive.log");
    wait_for("h1 in the registry", Duration::from_secs(10), || {
        run(chatty(&["hive", "get", "h1"])).code().eq(&0).then_some(())
    });
    std::fs::copy(bin_dir().join("rbee-worker-reference"), h1.path(".local/share/rbee/workers/rbee-worker-reference"))
        .unwrap();
    run(chatty(&["worker", "refresh", "--hive", "h1"])).expect_code(0);
    let model = fleet.dir.path().join("tiny.gguf");
    std::fs::write(&model, b"a tiny model\n").unwrap();
    let id = spawn_reference(&chatty, &model);
    let hive_lines = json_lines(&read_log(&hive_log));
    assert!(
        hive_lines.iter().any(|l| l["message"] == "started worker" && l["worker"] == id.as_str()),
        "the hive's JSON line about the worker: {hive_lines:?}"
    );

    // The worker wrote ~200 kB with a cap of 16 KiB: a rotated log and a current one, each
    // within the cap — not one big file.
    let worker_log = h1.path(&format!(".local/state/rbee/workers/{id}.log"));
    let rotated = h1.path(&format!(".local/state/rbee/workers/{id}.log.1"));
    wait_for("the chatty worker done", Duration::from_secs(20), || {
        std::fs::read_to_string(&worker_log).ok()?.contains("chatty: done").then_some(())
    });
    let (current, old) = (std::fs::metadata(&worker_log).unwrap().len(), std::fs::metadata(&rotated).unwrap().len());
    assert!(current <= CAP && old <= CAP && old > CAP / 2, "log {current} bytes, rotated {old}, cap {CAP}");
    let worker_lines = json_lines(&std::fs::read_to_string(&worker_log).unwrap());
    let chatty_lines: Vec<_> =
        worker_lines.iter().filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with("chatty"))).collect();
    assert!(
        !chatty_lines.is_empty() && chatty_lines.iter().all(|l| l["worker"] == id.as_str()),
        "the lines name the worker"
    );

    // `rbee logs` reads the worker's log through the queen and the hive.
    let plain = rbee_with(&fleet, &[]);
    let tail = run(plain(&["logs", "--hive", "h1", "--worker", &id, "--tail", "5"])).expect_code(0);
    let out = tail.stdout();
    let shown: Vec<&str> = out.lines().collect();
    assert_eq!(shown.len(), 5, "{out}");
    assert!(shown[4].contains("chatty: done"), "{out}");
    let unknown = run(plain(&["logs", "--hive", "h1", "--worker", "../../hive", "--tail", "5"])).expect_code(1);
    assert!(unknown.stderr().contains(&id), "names the workers there are: {}", unknown.stderr());

    // `--follow` streams new lines until interrupted: follow the hive's log, start a worker,
    // and its line arrives.
    let mut follow = plain(&["logs", "--hive", "h1", "--follow", "--tail", "1"]);
    let mut follower = follow.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).expect("the tail's line");
    assert!(!first.is_empty());
    let second_id = spawn_reference(&chatty, &model);
    let started = Instant::now();
    let seen = loop {
        let line = rx.recv_timeout(Duration::from_secs(10)).expect("followed lines keep coming");
        if line.contains("started worker") && line.contains(&second_id) {
            break line;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no line about {second_id}");
    };
    assert!(follower.try_wait().unwrap().is_none(), "still following after {seen}");
    follower.kill().unwrap();
    follower.wait().unwrap();

    // Restarted without RUST_LOG and in the text format, the queen prints no debug lines and
    // no JSON.
    run(plain(&["queen", "stop"])).expect_code(0);
    let before = std::fs::metadata(&queen_log).unwrap().len();
    run(plain(&["status"])).expect_code(0);
    let text = std::fs::read_to_string(&queen_log).unwrap();
    let after = &text[usize::try_from(before).unwrap()..];
    assert!(after.contains("queen-rbee listening"), "{after}");
    assert!(after.contains("job started") && !after.contains("DEBUG"), "{after}");
    assert!(json_lines(after).is_empty(), "{after}");

    let _ = run(plain(&["worker", "delete", "--hive", "h1", "--grace", "1", &id]));
    let _ = run(plain(&["worker", "delete", "--hive", "h1", "--grace", "1", &second_id]));
    let _ = run(plain(&["queen", "stop"]));
}
