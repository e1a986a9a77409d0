//! Engines in the lifecycle, with the real llama.cpp `llama-server` (built from pinned sources
//! by scripts/build-llama-server) on a tiny random-weight GGUF model written with Python's
//! `gguf` package, on an SSH test host: sync installs it from a release tree made by
//! scripts/release, a worker serves tokens through rbee, deleting it leaves no engine behind,
//! and an engine deleted or altered on the host is drift that the next sync repairs. The vLLM
//! engine is provisioned the same way into a real venv by real pip, from a wheelhouse holding
//! a stand-in `vllm` distribution (the real vLLM cannot run on a CPU-only machine).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::fleet::bin_dir;
use crate::sync_ssh::{SERIAL, SshFleet, wait_until};
use crate::workers::json;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn env_file(var: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var_os(var).unwrap_or_else(|| panic!("{var} is not set: run scripts/test")));
    assert!(path.is_file(), "{var}={} is not a file", path.display());
    path
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

/// A release tree (scripts/release) with the workspace's binaries, the real llama-server as
/// engine-llama-cpp-cpu.tar.gz and a wheelhouse with a stand-in vLLM; and the tiny model.
fn release_and_model(dir: &Path) -> (PathBuf, PathBuf) {
    let python = env_file("RBEE_TEST_PYTHON");
    let server = env_file("RBEE_LLAMA_SERVER");
    let wheels = dir.join("wheelhouse");
    run_ok(Command::new(&python).arg(repo().join("testbed/scripts/make-vllm-wheel.py")).arg(&wheels));
    let model = dir.join("tiny.gguf");
    run_ok(Command::new(&python).arg(repo().join("testbed/scripts/make-tiny-gguf.py")).arg(&model));
    let tree = dir.join("release");
    let target = bin_dir().parent().unwrap().to_path_buf();
    run_ok(
        Command::new(repo().join("scripts/release"))
            .arg(&tree)
            .args(["--version", "0.1.0", "--profile", "debug", "--llama-server"])
            .arg(&server)
            .arg("--wheelhouse")
            .arg(&wheels)
            .env("CARGO_TARGET_DIR", target),
    );
    (tree, model)
}

fn chat(fleet: &SshFleet, body: serde_json::Value) -> (u16, String) {
    crate::fleet::queen_chat(&fleet.dir.path().join("operator"), fleet.queen_port, body)
}

/// Processes (of any namespace) whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let out = Command::new("pgrep").args(["-a", "-f", "--", needle]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.contains("pgrep")).map(str::to_owned).collect()
}

#[cfg_attr(rbee_no_testbed, ignore = "needs root, openssh-server and iproute2 for SSH test hosts")]
#[cfg_attr(rbee_no_llama, ignore = "needs llama-server and python gguf: run through scripts/test")]
#[test]
fn sync_installs_a_real_llama_server_that_serves_tokens_and_repairs_it_when_deleted_or_altered() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut fleet) = SshFleet::new(1) else { return };
    let (tree, model) = release_and_model(fleet.dir.path());
    fleet.source = tree;
    fleet.workers = r#"[{ type = "llama-cpp" }, { type = "vllm", engine = { pip = "vllm==0.0.1" } }]"#.into();
    fleet.write_config();

    // The plan names the engines; the sync installs them.
    let dry = fleet.via_queen(&["sync", "--dry-run"]).expect_code(2);
    assert!(dry.stdout().contains("+ install   engine llama-cpp cpu 0.1.0 (sha256:"), "{}", dry.stdout());
    assert!(dry.stdout().contains("+ install   engine vllm pip vllm==0.0.1 (from 1 wheels)"), "{}", dry.stdout());
    fleet.via_queen(&["sync"]).expect_code(0);
    fleet.via_queen(&["status"]).expect_code(0);
    wait_until("h1 in the registry", Duration::from_secs(10), || fleet.via_queen(&["hive", "get", "h1"]).code() == 0);
    let caps = fleet.via_queen(&["hive", "capabilities", "h1"]).expect_code(0);
    assert!(caps.stdout().contains("engine llama-cpp b11434"), "{}", caps.stdout());
    assert!(caps.stdout().contains("engine vllm 0.0.1"), "{}", caps.stdout());

    // A worker on the real engine: ready, tokens streamed by `rbee infer`, chat completions
    // answered through the queen, streaming and not.
    let model_arg = model.display().to_string();
    let spawned =
        fleet.via_queen(&["worker", "spawn", "--hive", "h1", "--type", "llama-cpp", "--model", &model_arg, "--json"]);
    let worker = json(&spawned.expect_code(0))["worker"].clone();
    let id = worker["id"].as_str().unwrap().to_owned();
    assert_eq!(worker["state"], "ready", "{worker}");
    let engine_dir = fleet.host("h1").root.join(".local/share/rbee/engines/llama-cpp");
    assert_eq!(processes_with("bin/llama-server --model").len(), 1, "one engine for the worker");
    // The engine samples (temperature > 0) from random weights, so now and then the first token
    // it draws is the model's end token and the answer is empty (seen once in CI): up to three
    // prompts, one of which must stream its tokens one by one.
    let (mut most, mut answers) = (0, Vec::new());
    for _ in 0..3 {
        let streamed = fleet.via_queen(&["infer", "--model", "tiny", "--hive", "h1", "hello", "--json"]).expect_code(0);
        let tokens =
            streamed.json_lines().iter().filter(|l| l["event"] == "hive" && l["data"]["kind"] == "token").count();
        most = most.max(tokens);
        answers.push(streamed.stdout());
        if tokens >= 2 {
            break;
        }
    }
    assert!(most >= 2, "tokens streamed one by one: {answers:#?}");
    let ask = |stream: bool| serde_json::json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": stream});
    // Each answer well formed; up to three asks (as above) for one that has tokens.
    let (mut most, mut bodies) = (0, Vec::new());
    for _ in 0..3 {
        let (status, body) = chat(&fleet, ask(false));
        assert_eq!(status, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["object"], "chat.completion", "{body}");
        most = most.max(answer["usage"]["completion_tokens"].as_u64().unwrap());
        bodies.push(body);
        if most > 0 {
            break;
        }
    }
    assert!(most > 0, "{bodies:#?}");
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let (status, body) = chat(&fleet, ask(true));
        assert_eq!(status, 200, "{body}");
        assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
        let chunks = body.matches("chat.completion.chunk").count();
        bodies.push(body);
        if chunks >= 2 {
            break;
        }
    }
    assert!(bodies.iter().any(|b| b.matches("chat.completion.chunk").count() >= 2), "{bodies:#?}");

    // Deleting the worker leaves no llama-server on the host.
    fleet.via_queen(&["worker", "delete", "--hive", "h1", &id]).expect_code(0);
    wait_until("no llama-server left", Duration::from_secs(10), || {
        processes_with("bin/llama-server --model").is_empty()
    });

    // The vLLM engine, from the wheelhouse into a real venv, runs behind its launcher.
    let vllm = fleet.via_queen(&["worker", "spawn", "--hive", "h1", "--type", "vllm", "--model", "stand-in", "--json"]);
    let vllm = json(&vllm.expect_code(0))["worker"].clone();
    assert_eq!(vllm["state"], "ready", "{vllm}");
    fleet.via_queen(&["worker", "delete", "--hive", "h1", vllm["id"].as_str().unwrap()]).expect_code(0);

    // An engine deleted on the host: drift naming it (exit 2); a sync repairs it.
    let record = std::fs::read_to_string(engine_dir.join("current")).unwrap();
    let id_dir = engine_dir.join(record.split('\t').next().unwrap());
    std::fs::remove_dir_all(&id_dir).unwrap();
    let drift = fleet.via_queen(&["status"]).expect_code(2);
    assert!(drift.stdout().contains("engine llama-cpp: its program is missing"), "{}", drift.stdout());
    fleet.via_queen(&["sync"]).expect_code(0);
    fleet.via_queen(&["status"]).expect_code(0);
    assert!(id_dir.join("bin/llama-server").is_file());

    // Altered: a byte appended to the program.
    let program = id_dir.join("bin/llama-server");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&program)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"\0"))
        .unwrap();
    let drift = fleet.via_queen(&["status"]).expect_code(2);
    assert!(drift.stdout().contains("engine llama-cpp: its program was altered"), "{}", drift.stdout());
    fleet.via_queen(&["sync"]).expect_code(0);
    fleet.via_queen(&["status"]).expect_code(0);
    fleet.via_queen(&["queen", "stop"]).expect_code(0);
}
