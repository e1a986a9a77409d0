//! Runs the examples that need no remote host and checks what they print, so they cannot
//! silently rot. `cargo build --workspace --bins --examples` must have run (scripts/test does).

use std::path::PathBuf;
use std::process::{Command, Output};

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = debug.join("examples").join(name);
    assert!(path.exists(), "{} is not built: run `cargo build --workspace --bins --examples`", path.display());
    path
}

fn run(name: &str, args: &[&str]) -> (Output, String) {
    let home = tempfile::tempdir().unwrap();
    let out =
        Command::new(example(name)).args(args).env("HOME", home.path()).env_remove("XDG_STATE_HOME").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, text)
}

fn local_config() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/config/local").to_owned()
}

#[test]
fn plan_only_prints_the_plan_as_text_and_json() {
    let (out, text) = run("plan_only", &[&local_config()]);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("+ install   hive rbee-hive"), "{text}");
    assert!(text.contains("Plan: 2 to install"), "{text}");
    assert!(text.contains("\"summary\""), "{text}");
}

#[test]
fn sync_with_events_prints_one_line_per_step_and_the_report() {
    let (out, text) = run("sync_with_events", &[]);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("[demo] start  install hive rbee-hive"), "{text}");
    assert!(text.contains("[demo] done   demo/wait-healthy"), "{text}");
    assert!(text.contains("overall: Ok"), "{text}");
}

#[test]
fn custom_transport_records_what_the_sync_did() {
    let (out, text) = run("custom_transport", &[]);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("sync: Ok"), "{text}");
    assert!(text.contains("stream # rbee-step: install-binary"), "{text}");
}

#[test]
fn drift_check_exits_non_zero_on_drift() {
    let (out, text) = run("drift_check", &[&local_config()]);
    assert_eq!(out.status.code(), Some(2), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("local: {\"state\":\"not_installed\"}"), "{text}");
}
