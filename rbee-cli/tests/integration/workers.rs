//! Workers, models and inference end to end: `rbee` → queen → hive → worker, with the
//! reference worker (a test fixture that honours the worker contract deterministically:
//! testbed/src/bin/rbee-worker-reference.rs) installed in the hive's worker catalog.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, Run, alive, bin_dir, sha256_file, wait_for};

/// The last JSON object `rbee --json` printed.
pub(crate) fn json(run: &Run) -> serde_json::Value {
    let line = run.stdout().lines().rfind(|l| l.starts_with('{')).unwrap_or_default().to_owned();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout(), run.stderr()))
}

/// The queen's OpenAI-compatible endpoint, called as any OpenAI client would.
fn chat_completions(fleet: &Fleet, body: serde_json::Value) -> (u16, String) {
    crate::fleet::queen_chat(&fleet.dir.path().join("operator"), fleet.queen_port, body)
}

/// `rbee` through this fleet's queen, with fast heartbeats.
fn through_queen(fleet: &Fleet) -> impl Fn(&[&str]) -> Run + '_ {
    move |args: &[&str]| {
        let mut cmd = fleet.via_queen(args);
        cmd.env("RBEE_HEARTBEAT_MS", "500");
        Run(cmd.output().unwrap())
    }
}

/// Syncs the fleet, waits for h1 in the queen's registry, and puts the reference worker in
/// h1's catalog (it appears after `rbee worker refresh`).
fn sync_and_add_the_reference_worker(fleet: &Fleet) {
    let rbee = through_queen(fleet);
    rbee(&["sync"]).expect_code(0);
    wait_for("h1 in the registry", Duration::from_secs(10), || {
        rbee(&["hive", "get", "h1"]).code().eq(&0).then_some(())
    });
    let catalog = fleet.host("h1").path(".local/share/rbee/workers");
    std::fs::copy(bin_dir().join("rbee-worker-reference"), catalog.join("rbee-worker-reference"))
        .expect("the reference worker is built with the workspace (`cargo build --workspace --bins`)");
}

#[test]
fn workers_spawn_beat_infer_stop_crash_and_survive_a_hive_restart() {
    let fleet = Fleet::new(1, &[("llama-cpp", "latest")]);
    let rbee = through_queen(&fleet);
    // The hive reads its catalog at start; the fixture appears after a refresh.
    sync_and_add_the_reference_worker(&fleet);
    let refreshed = json(&rbee(&["worker", "refresh", "--hive", "h1", "--json"]).expect_code(0));
    assert_eq!(refreshed["workers"], serde_json::json!(["llama-cpp", "reference"]));

    // A model from a path on the host, verified.
    let source = fleet.dir.path().join("tiny.gguf");
    std::fs::write(&source, b"a tiny model for the reference worker\n").unwrap();
    let sha = sha256_file(&source);
    let downloaded = rbee(&["model", "download", "--hive", "h1", source.to_str().unwrap(), "--sha256", &sha, "--json"]);
    let downloaded = json(&downloaded.expect_code(0));
    assert_eq!(downloaded["model"]["name"], "tiny.gguf");
    assert_eq!(downloaded["model"]["sha256"], sha.as_str());
    let models = json(&rbee(&["model", "list", "--hive", "h1", "--json"]).expect_code(0));
    assert_eq!(models["models"].as_array().unwrap().len(), 1, "{models}");

    // Nothing serves the model yet: the error says how to start a worker.
    let none = rbee(&["infer", "--model", "tiny", "hello"]).expect_code(1);
    assert!(none.stderr().contains("rbee worker spawn --hive h1"), "{}", none.stderr());

    // Spawn: returns once the worker's first heartbeat says it is ready.
    let spawned = rbee(&["worker", "spawn", "--hive", "h1", "--type", "reference", "--model", "tiny.gguf", "--json"]);
    let worker = json(&spawned.expect_code(0))["worker"].clone();
    assert_eq!(worker["state"], "ready", "{worker}");
    let id = worker["id"].as_str().unwrap().to_owned();
    let pid = u32::try_from(worker["pid"].as_u64().unwrap()).unwrap();
    assert!(worker["model"].as_str().unwrap().ends_with("/.local/share/rbee/models/tiny.gguf"), "{worker}");

    // Its heartbeats reach the hive, and the hive's reach the queen.
    let listed = json(&rbee(&["worker", "list", "--hive", "h1", "--json"]).expect_code(0));
    assert!(listed["workers"][0]["last_heartbeat_ms"].as_u64().is_some(), "{listed}");
    wait_for("the worker in the queen's registry", Duration::from_secs(5), || {
        let hives: serde_json::Value =
            serde_json::from_str(rbee(&["hive", "get", "h1", "--json"]).stdout().trim()).ok()?;
        (hives[0]["processes"][0]["state"] == "ready").then_some(())
    });

    // Inference streams through queen and hive: tokens arrive as separate events, in order.
    let infer = rbee(&["infer", "--model", "tiny", "hello big world"]).expect_code(0);
    assert_eq!(infer.stdout().trim(), "echo: hello big world");
    let streamed = rbee(&["infer", "--model", "tiny.gguf", "--hive", "h1", "one two", "--json"]).expect_code(0);
    let tokens: Vec<String> = streamed
        .json_lines()
        .iter()
        .filter(|l| l["event"] == "hive" && l["data"]["kind"] == "token")
        .map(|l| l["data"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tokens, ["echo:", " one", " two"]);

    // The queen's OpenAI-compatible endpoint routes the same way, streaming or not.
    let ask = |stream: bool| serde_json::json!({"model": "tiny", "stream": stream, "messages": [{"role": "user", "content": "hi there"}]});
    let (status, body) = chat_completions(&fleet, ask(false));
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "echo: hi there");
    let (status, body) = chat_completions(&fleet, ask(true));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.matches("chat.completion.chunk").count(), 4, "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    let (status, body) = chat_completions(&fleet, serde_json::json!({"model": "absent", "messages": []}));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("rbee worker spawn"), "{body}");

    // A hive restart re-adopts the live worker.
    rbee(&["hive", "stop", "h1"]).expect_code(0);
    assert!(alive(pid), "the worker outlives its hive");
    rbee(&["hive", "start", "h1"]).expect_code(0);
    let adopted = wait_for("the worker re-adopted and ready", Duration::from_secs(10), || {
        let got = json(&rbee(&["worker", "get", "--hive", "h1", &id, "--json"]));
        (got["worker"]["state"] == "ready").then_some(got)
    });
    assert_eq!(adopted["worker"]["adopted"], true, "{adopted}");
    wait_for("the re-adopted worker in the queen's registry", Duration::from_secs(5), || {
        let hives: serde_json::Value =
            serde_json::from_str(rbee(&["hive", "get", "h1", "--json"]).stdout().trim()).ok()?;
        (hives[0]["processes"][0]["state"] == "ready").then_some(())
    });
    assert_eq!(rbee(&["infer", "--model", "tiny", "still here"]).expect_code(0).stdout().trim(), "echo: still here");

    // Delete: SIGTERM to its process group; it is gone, and so is its entry.
    let deleted = json(&rbee(&["worker", "delete", "--hive", "h1", &id, "--json"]).expect_code(0));
    assert_eq!(deleted["worker"]["state"], "stopped");
    assert!(!alive(pid), "worker {pid} still runs");
    let gone = rbee(&["worker", "get", "--hive", "h1", &id]).expect_code(1);
    assert!(gone.stderr().contains("no worker"), "{}", gone.stderr());

    // A crash is detected and its exit status reported, by the hive and in the queen's registry.
    let spawned = rbee(&["worker", "spawn", "--hive", "h1", "--type", "reference", "--model", "tiny.gguf", "--json"]);
    let worker = json(&spawned.expect_code(0))["worker"].clone();
    let id = worker["id"].as_str().unwrap().to_owned();
    Command::new("kill").args(["-9", &worker["pid"].to_string()]).status().unwrap();
    let crashed = wait_for("the crash reported", Duration::from_secs(5), || {
        let got = json(&rbee(&["worker", "get", "--hive", "h1", &id, "--json"]));
        (got["worker"]["state"] == "crashed").then_some(got)
    });
    assert_eq!(crashed["worker"]["signal"], 9, "{crashed}");
    let text = rbee(&["worker", "list", "--hive", "h1"]).expect_code(0);
    assert!(text.stdout().contains("CRASHED (signal 9)"), "{}", text.stdout());
    wait_for("the crash in the queen's registry", Duration::from_secs(5), || {
        let hives: serde_json::Value =
            serde_json::from_str(rbee(&["hive", "get", "h1", "--json"]).stdout().trim()).ok()?;
        (hives[0]["processes"][0]["state"] == "crashed").then_some(())
    });
    rbee(&["worker", "delete", "--hive", "h1", &id]).expect_code(0);

    // The llama-cpp launcher runs the engine sync installed (a stand-in that cannot serve):
    // the spawn fails with the engine's own words.
    let failed = rbee(&["worker", "spawn", "--hive", "h1", "--type", "llama-cpp", "--model", "tiny.gguf"]);
    let failed = failed.expect_code(1);
    assert!(failed.stderr().contains("exited with status 3"), "{}", failed.stderr());
    assert!(failed.stderr().contains(crate::fleet::STAND_IN_SAYS), "{}", failed.stderr());
    let listed = json(&rbee(&["worker", "list", "--hive", "h1", "--json"]).expect_code(0));
    assert_eq!(listed["workers"], serde_json::json!([]), "a worker that failed to start is not kept");
    // Its engine deleted on the host: the launcher names it and says what to do.
    let engines = fleet.host("h1").path(".local/share/rbee/engines/llama-cpp");
    for entry in std::fs::read_dir(&engines).unwrap().flatten().filter(|e| e.file_name() != "current") {
        std::fs::remove_dir_all(entry.path()).unwrap();
    }
    let gone = rbee(&["worker", "spawn", "--hive", "h1", "--type", "llama-cpp", "--model", "tiny.gguf"]);
    let gone = gone.expect_code(1);
    assert!(gone.stderr().contains("exited with status 127"), "{}", gone.stderr());
    assert!(gone.stderr().contains("bin/llama-server"), "{}", gone.stderr());
    assert!(gone.stderr().contains("rbee sync"), "{}", gone.stderr());

    // A GPU the host does not have is refused, naming what it has.
    let args = ["worker", "spawn", "--hive", "h1", "--type", "reference", "--model", "m", "--device", "cuda:99"];
    let no_gpu = rbee(&args).expect_code(1);
    assert!(no_gpu.stderr().contains("device cuda:99 is not on this host"), "{}", no_gpu.stderr());

    // An undeclared type is refused with what to do.
    let refused = rbee(&["worker", "spawn", "--hive", "h1", "--type", "vllm", "--model", "tiny.gguf"]).expect_code(1);
    assert!(refused.stderr().contains("not installed on this hive"), "{}", refused.stderr());
}

/// An engine (or a hostile host) printed terminal escapes into its log, and `rbee` passed the
/// log tail of the failed spawn to the terminal raw: they are shown escaped now, and JSON
/// output carries them JSON-escaped.
#[test]
fn control_characters_from_a_worker_log_are_escaped_on_the_terminal() {
    let fleet = Fleet::new(1, &[("llama-cpp", "latest")]);
    let rbee = through_queen(&fleet);
    sync_and_add_the_reference_worker(&fleet);
    let host = fleet.host("h1");
    let record = std::fs::read_to_string(host.path(".local/share/rbee/engines/llama-cpp/current")).unwrap();
    let program = record.lines().next().unwrap().split('\t').nth(4).unwrap().to_owned();
    let program = host.path(&program);
    let hostile = "#!/bin/sh\nif [ \"${1:-}\" = --version ]; then echo 'version: 100 (stand-in)'; exit 0; fi\n\
                   printf 'hostile \\033]0;pwned\\007 \\033[2J\\rrewritten\\n' >&2\nexit 3\n";
    std::fs::write(&program, hostile).unwrap();

    let spawn = ["worker", "spawn", "--hive", "h1", "--type", "llama-cpp", "--model", "tiny.gguf"];
    let failed = rbee(&spawn).expect_code(1);
    let stderr = failed.stderr();
    assert!(stderr.contains("hostile \\u{1b}]0;pwned\\u{7} \\u{1b}[2J\\u{d}rewritten"), "{stderr:?}");
    let raw = |text: &str| text.chars().any(|c| c.is_control() && c != '\n' && c != '\t');
    assert!(!raw(&stderr) && !raw(&failed.stdout()), "no control character reaches the terminal: {stderr:?}");

    let mut args = spawn.to_vec();
    args.push("--json");
    let failed = rbee(&args).expect_code(1);
    assert!(!raw(&failed.stdout()), "{:?}", failed.stdout());
    let error = json(&failed)["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("hostile \u{1b}]0;pwned\u{7} \u{1b}[2J\rrewritten"), "the JSON keeps the text: {error:?}");
}

#[test]
fn an_attached_hive_runs_inside_the_queen_and_a_sync_refreshes_its_catalog() {
    let fleet = Fleet::new(1, &[("llama-cpp", "latest")]);
    let rbee_conf = fleet.config_dir().join("rbee.conf");
    let text = std::fs::read_to_string(&rbee_conf).unwrap();
    let text = text.replace("[queen]\n", "[queen]\nmode = \"attached-hive\"\nhive_alias = \"h1\"\n");
    std::fs::write(&rbee_conf, text).unwrap();
    let rbee = |args: &[&str]| {
        let mut cmd = fleet.via_queen(args);
        cmd.env("RBEE_HEARTBEAT_MS", "500");
        Run(cmd.output().unwrap())
    };
    let h1 = fleet.host("h1");

    // The sync installs the attached hive's workers, but no hive binary and no daemon.
    let synced = rbee(&["sync"]).expect_code(0);
    assert!(h1.path(".local/share/rbee/workers/rbee-worker-llama-cpp").is_file());
    assert!(!h1.path(".local/bin/rbee-hive").exists(), "{}", synced.stdout());
    assert!(h1.pid().is_none(), "no separate hive process");
    rbee(&["sync", "--dry-run"]).expect_code(0);

    // The queen's own process answers as hive h1, and the sync refreshed its catalog.
    let queen_pid: u64 = std::fs::read_to_string(
        fleet.dir.path().join(format!("operator/.local/state/rbee-queen/queen-{}.pid", fleet.queen_port)),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let entry = wait_for("h1 with its new catalog in the registry", Duration::from_secs(5), || {
        let hives: serde_json::Value =
            serde_json::from_str(rbee(&["hive", "get", "h1", "--json"]).stdout().trim()).ok()?;
        (hives[0]["workers"] == serde_json::json!(["llama-cpp"])).then(|| hives[0].clone())
    });
    assert_eq!(entry["pid"].as_u64(), Some(queen_pid), "{entry}");

    // It runs workers like any hive.
    std::fs::copy(bin_dir().join("rbee-worker-reference"), h1.path(".local/share/rbee/workers/rbee-worker-reference"))
        .unwrap();
    rbee(&["worker", "refresh", "--hive", "h1"]).expect_code(0);
    rbee(&["worker", "spawn", "--hive", "h1", "--type", "reference", "--model", "m"]).expect_code(0);
    assert_eq!(rbee(&["infer", "--model", "m", "attached"]).expect_code(0).stdout().trim(), "echo: attached");

    // It starts and stops with the queen.
    let stop = rbee(&["hive", "stop", "h1"]).expect_code(1);
    assert!(
        stop.stdout().contains("inside the queen") || stop.stderr().contains("inside the queen"),
        "{}",
        stop.stdout()
    );
}

/// Processes in process group `pgid` that are not zombies.
fn group_members(pgid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
            (fields.first() != Some(&"Z") && fields.get(2)? == &pgid.to_string()).then_some(pid)
        })
        .collect()
}

/// Under dash (Debian's /bin/sh) `rbee uninstall` deleted the worker records and left the
/// engines running with their GPU memory. Now the worker's whole process group goes, an
/// engine that ignores SIGTERM included, before its record does.
#[test]
fn uninstall_stops_every_worker_process_even_an_engine_that_ignores_sigterm() {
    let fleet = Fleet::new(1, &[("llama-cpp", "latest")]);
    let rbee = through_queen(&fleet);
    let h1 = fleet.host("h1");
    sync_and_add_the_reference_worker(&fleet);
    rbee(&["worker", "refresh", "--hive", "h1"]).expect_code(0);
    let source = fleet.dir.path().join("stubborn.gguf");
    std::fs::write(&source, b"spawn-engine-ignoring-sigterm\n").unwrap();
    let sha = sha256_file(&source);
    rbee(&["model", "download", "--hive", "h1", source.to_str().unwrap(), "--sha256", &sha]).expect_code(0);
    let spawned =
        rbee(&["worker", "spawn", "--hive", "h1", "--type", "reference", "--model", "stubborn.gguf", "--json"]);
    let worker = json(&spawned.expect_code(0))["worker"].clone();
    let pid = u32::try_from(worker["pid"].as_u64().unwrap()).unwrap();
    let members = wait_for("the worker's engine", Duration::from_secs(5), || {
        let m = group_members(pid);
        (m.len() >= 2).then_some(m)
    });

    let out = rbee(&["uninstall"]).expect_code(0);
    assert_eq!(group_members(pid), Vec::<u32>::new(), "left running: {members:?}\n{}", out.stderr());
    let records = std::fs::read_dir(h1.path(".local/state/rbee/workers"))
        .map_or(0, |d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "json")).count());
    assert_eq!(records, 0, "worker records left");
}

/// An operation in flight on a hive that freezes (a host that hangs, a cut network) used to
/// leave the queen, and `rbee`, waiting for ever: the hive's heartbeats stop, and the
/// operation ends with an error that says so.
#[test]
fn an_operation_on_a_hive_that_freezes_ends_when_its_heartbeats_stop() {
    let fleet = Fleet::new(1, &[("reference", "latest")]);
    // The worker loads for 60 s; the hive (started by the queen's sync) passes the variable on.
    let rbee = |args: &[&str]| {
        let mut cmd = fleet.via_queen(args);
        cmd.env("RBEE_HEARTBEAT_MS", "500").env("REFERENCE_WORKER_LOAD_MS", "60000");
        Run(cmd.output().unwrap())
    };
    rbee(&["sync"]).expect_code(0);
    wait_for("h1 in the registry", Duration::from_secs(10), || {
        rbee(&["hive", "get", "h1"]).code().eq(&0).then_some(())
    });
    let hive = fleet.host("h1").pid().expect("the hive runs");
    let spawn = {
        let mut cmd = fleet.via_queen(&["worker", "spawn", "--hive", "h1", "--type", "reference", "--model", "m"]);
        cmd.env("RBEE_HEARTBEAT_MS", "500").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    // The spawn is waiting for the loading worker; then the hive freezes.
    std::thread::sleep(Duration::from_secs(2));
    Command::new("kill").args(["-STOP", &hive.to_string()]).status().unwrap();
    let started = Instant::now();
    let out = Run(spawn.wait_with_output().unwrap());
    Command::new("kill").args(["-CONT", &hive.to_string()]).status().unwrap();
    assert!(started.elapsed() < Duration::from_secs(30), "the spawn waited {:?}", started.elapsed());
    let out = out.expect_code(1);
    assert!(out.stderr().contains("stopped sending heartbeats during the operation"), "{}", out.stderr());
}
