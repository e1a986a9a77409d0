//! Hive credentials end to end on a local hive: a hive synced without a queen requires a
//! credential of its own; a sync through the queen links it (planned as a re-link, its worker
//! left running); `rbee queen rotate-credentials` and a sync bring it back, worker untouched.

use std::time::Duration;

use crate::fleet::{Fleet, Run, alive, bin_dir, http as call, wait_for};

fn via_queen(fleet: &Fleet, args: &[&str]) -> Run {
    let mut cmd = fleet.via_queen(args);
    cmd.env("RBEE_HEARTBEAT_MS", "300");
    Run(cmd.output().unwrap())
}

fn credential(fleet: &Fleet) -> String {
    std::fs::read_to_string(fleet.host("h1").path(".local/state/rbee/hive.token")).unwrap().trim().to_owned()
}

/// The time of h1's last heartbeat in the queen's registry, if it is fresh.
fn fresh_beat(fleet: &Fleet) -> Option<u64> {
    let got = via_queen(fleet, &["hive", "get", "h1", "--json"]);
    let hives: serde_json::Value = serde_json::from_str(got.stdout().trim()).ok()?;
    let h = &hives[0];
    let age = h["age_ms"].as_u64()?;
    (h["stale"] == false).then(|| rbee_core::execute::now_ms().saturating_sub(age))
}

#[test]
fn an_unlinked_hive_requires_its_own_credential_and_sync_and_rotation_relink_it_without_touching_its_worker() {
    let fleet = Fleet::new(1, &[("llama-cpp", "latest")]);
    let h1 = fleet.host("h1");
    // The reference worker in h1's catalog before the hive first starts.
    let catalog = h1.path(".local/share/rbee/workers");
    std::fs::create_dir_all(&catalog).unwrap();
    std::fs::copy(bin_dir().join("rbee-worker-reference"), catalog.join("rbee-worker-reference")).unwrap();

    // Synced without a queen, the hive still requires a credential: one it made itself.
    fleet.rbee(&["sync"]).expect_code(0);
    let own = credential(&fleet);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(h1.path(".local/state/rbee/hive.token")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(call(h1.port, "GET", "/v1/catalog", None, "").0, 401);
    assert_eq!(call(h1.port, "GET", "/v1/catalog", Some(&own), "").0, 200);
    assert_eq!(call(h1.port, "GET", "/health", None, "").0, 200);

    // A worker on it, started through its API with that credential.
    let spawn = serde_json::json!({"type": "worker_spawn", "hive_alias": "h1", "worker_type": "reference",
        "model": "m", "device": "cpu"});
    let (status, body) = call(h1.port, "POST", "/v1/operations", Some(&own), &spawn.to_string());
    assert_eq!(status, 200, "{body}");
    let result: serde_json::Value =
        serde_json::from_str(body.lines().rfind(|l| l.contains("\"result\"")).unwrap()).unwrap();
    let pid = u32::try_from(result["result"]["worker"]["pid"].as_u64().expect("a worker")).unwrap();
    assert!(alive(pid));

    // Through the queen, the missing link is drift, and the plan says what the sync will do.
    let status = via_queen(&fleet, &["status"]).expect_code(2);
    assert!(status.stdout().contains("not linked to a queen"), "{}", status.stdout());
    let dry = via_queen(&fleet, &["sync", "--dry-run"]).expect_code(2);
    assert!(
        dry.stdout().contains("re-link to the queen: not linked to a queen; workers keep running"),
        "{}",
        dry.stdout()
    );
    via_queen(&fleet, &["sync"]).expect_code(0);
    let linked = credential(&fleet);
    assert_ne!(linked, own);
    assert!(h1.path(".local/state/rbee/tls/hive.key").exists());
    via_queen(&fleet, &["status"]).expect_code(0);
    wait_for("h1 heartbeats to the queen", Duration::from_secs(10), || fresh_beat(&fleet));
    assert!(alive(pid), "the worker kept running through the re-link");
    let answer = wait_for("the worker serves through the queen", Duration::from_secs(10), || {
        let out = via_queen(&fleet, &["infer", "--model", "m", "hello"]);
        (out.code() == 0).then(|| out.stdout())
    });
    assert_eq!(answer.trim(), "echo: hello");

    // Rotation: every hive's credential is replaced; until a sync links it again, its
    // heartbeats are refused and it is drift.
    via_queen(&fleet, &["queen", "rotate-credentials"]).expect_code(0);
    let status = via_queen(&fleet, &["status"]).expect_code(2);
    assert!(status.stdout().contains("its credential is not this queen's"), "{}", status.stdout());
    let rotated_at = rbee_core::execute::now_ms();
    via_queen(&fleet, &["sync"]).expect_code(0);
    assert_ne!(credential(&fleet), linked);
    wait_for("h1 heartbeats again", Duration::from_secs(10), || fresh_beat(&fleet).filter(|at| *at > rotated_at));
    assert!(alive(pid), "the worker kept running through the rotation");
    let answer = wait_for("the worker still serves", Duration::from_secs(10), || {
        let out = via_queen(&fleet, &["infer", "--model", "m", "still here"]);
        (out.code() == 0).then(|| out.stdout())
    });
    assert_eq!(answer.trim(), "echo: still here");
    let _ = via_queen(
        &fleet,
        &["worker", "delete", "--hive", "h1", "--grace", "1", result["result"]["worker"]["id"].as_str().unwrap()],
    );
    let _ = via_queen(&fleet, &["queen", "stop"]);
}
