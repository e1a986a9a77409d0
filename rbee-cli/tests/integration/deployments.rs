//! Deployments end to end: `[[deployment]]` in hives.conf → `rbee sync` → the queen's
//! reconciler → real hives → the reference worker, with faults: a replica killed, a worker that
//! always exits, a hive that stops answering and comes back, the queen killed, a rolling update
//! that cannot start and one that can, both under continuous load.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, Load, Run, alive, wait_for};

/// `rbee` through the fleet's queen, with fast heartbeats (hive → queen, worker → hive).
fn rbee(fleet: &Fleet, args: &[&str]) -> Run {
    let mut cmd = fleet.via_queen(args);
    cmd.env("RBEE_HEARTBEAT_MS", "500").env("RBEE_WORKER_HEARTBEAT_MS", "500");
    Run(cmd.output().unwrap())
}

fn json(run: &Run) -> serde_json::Value {
    let line = run.stdout().lines().rfind(|l| l.starts_with('{') || l.starts_with('[')).unwrap_or_default().to_owned();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout(), run.stderr()))
}

/// The queen's log of the running test, shown when a wait times out.
static QUEEN_LOG: std::sync::Mutex<Option<std::path::PathBuf>> = std::sync::Mutex::new(None);

/// The line of a deployment in a sync's or status's output.
fn row(run: &Run, name: &str) -> String {
    run.stdout().lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_default().to_owned()
}

fn deployment(fleet: &Fleet, name: &str) -> serde_json::Value {
    json(&rbee(fleet, &["deployment", "get", name, "--json"]))
}

/// `(hive, worker id)` of a deployment's replicas in `state`.
fn replicas(d: &serde_json::Value, state: &str) -> BTreeSet<(String, String)> {
    d["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["state"] == state)
        .map(|i| (i["hive"].as_str().unwrap().to_owned(), i["worker_id"].as_str().unwrap().to_owned()))
        .collect()
}

/// Every worker process on every hive, as the hives themselves list them: `(hive, id) → pid`.
fn workers(fleet: &Fleet) -> Vec<((String, String), u64, serde_json::Value)> {
    let mut all = Vec::new();
    for h in &fleet.hosts {
        let listed = json(&rbee(fleet, &["worker", "list", "--hive", &h.alias, "--json"]).expect_code(0));
        for w in listed["workers"].as_array().unwrap() {
            let key = (h.alias.clone(), w["id"].as_str().unwrap().to_owned());
            all.push((key, w["pid"].as_u64().unwrap(), w.clone()));
        }
    }
    all
}

fn set_deployments(fleet: &mut Fleet, model: &str, extra: &str) {
    fleet.deployments = format!(
        "[[deployment]]\nname = \"chat\"\nmodel = \"{model}\"\nworker = \"reference\"\nreplicas = 2\n{extra}\n\
         [[deployment]]\nname = \"embed\"\nmodel = \"{model}\"\nworker = \"reference\"\n\n"
    );
    fleet.write_config();
}

#[test]
fn deployments_are_kept_served_through_crashes_lost_hives_a_queen_restart_and_rolling_updates() {
    let mut fleet = Fleet::new(2, &[("reference", "latest")]);
    *QUEEN_LOG.lock().unwrap() = Some(fleet.dir.path().join("operator/.local/state/rbee-queen/queen.log"));
    fleet.queen_settings = "reschedule_after = 3\n".into();
    let model = fleet.dir.path().join("tiny.gguf");
    std::fs::write(&model, b"a tiny model for the reference worker\n").unwrap();
    let model = model.to_str().unwrap().to_owned();
    set_deployments(&mut fleet, &model, "");

    // (a) Two deployments, 3 replicas over 2 hives: all ready after one sync.
    let synced = rbee(&fleet, &["sync"]).expect_code(0);
    assert!(row(&synced, "chat").contains("2/2 ready  ready: revision 1"), "{}", synced.stdout());
    let chat = deployment(&fleet, "chat");
    assert_eq!((chat["phase"].as_str(), chat["ready"].as_u64()), (Some("ready"), Some(2)), "{chat}");
    let hives: BTreeSet<String> = replicas(&chat, "ready").into_iter().map(|(h, _)| h).collect();
    assert_eq!(hives.len(), 2, "spread over both hives: {chat}");
    assert_eq!(deployment(&fleet, "embed")["ready"], 1);
    // A second sync plans nothing; status is clean.
    let again = rbee(&fleet, &["sync", "--dry-run", "--json"]).expect_code(0);
    assert!(!again.stdout().contains("deployment_steps\": [\n"), "{}", again.stdout());
    rbee(&fleet, &["sync"]).expect_code(0);
    let status = rbee(&fleet, &["status"]).expect_code(0);
    assert!(row(&status, "embed").contains("1/1 ready  ready"), "{}", status.stdout());
    let listed = json(&rbee(&fleet, &["deployment", "list", "--json"]).expect_code(0));
    assert_eq!(listed.as_array().unwrap().len(), 2);
    // Requests for a deployment reach its replicas; the answer names the replica.
    let load = Load::start(&fleet.dir.path().join("operator"), fleet.queen_port, "chat");
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed) = load.finish();
    assert!(ok > 0 && failed.is_empty(), "{ok} ok, failed: {failed:?}");

    // (b) A replica killed with SIGKILL is ready again within 10 s, restart count 1.
    let (hive, id) = replicas(&chat, "ready").into_iter().next().unwrap();
    let worker = json(&rbee(&fleet, &["worker", "get", "--hive", &hive, &id, "--json"]).expect_code(0));
    Command::new("kill").args(["-9", &worker["worker"]["pid"].to_string()]).status().unwrap();
    let killed = Instant::now();
    let healed = wait_for("chat healed", Duration::from_secs(10), || {
        let d = deployment(&fleet, "chat");
        (d["ready"] == 2 && d["restarts"] == 1 && !replicas(&d, "ready").contains(&(hive.clone(), id.clone())))
            .then_some(d)
    });
    eprintln!("replica killed → serving again: {:?}", killed.elapsed());
    assert!(healed["last_failure"].as_str().unwrap().contains("signal 9"), "{healed}");

    // (d) A hive that stops answering: its replica is placed on the other hive within
    // reschedule_after + 15 s; when it comes back the surplus is stopped, no duplicates.
    let chat = deployment(&fleet, "chat");
    let (lost_hive, _) = replicas(&chat, "ready").into_iter().find(|(h, _)| h == "h2").expect("a replica on h2");
    let hive_pid = fleet.host(&lost_hive).pid().unwrap().to_string();
    Command::new("kill").args(["-STOP", &hive_pid]).status().unwrap();
    let stopped = Instant::now();
    let moved = wait_for("chat rescheduled", Duration::from_secs(3 + 15), || {
        let d = deployment(&fleet, "chat");
        let ready = replicas(&d, "ready");
        (ready.len() == 2 && ready.iter().all(|(h, _)| h == "h1")).then_some(d)
    });
    eprintln!("hive lost → serving on another: {:?}", stopped.elapsed());
    assert_eq!(replicas(&moved, "lost").len(), 1, "{moved}");
    Command::new("kill").args(["-CONT", &hive_pid]).status().unwrap();
    wait_for("the surplus stopped", Duration::from_secs(15), || {
        let d = deployment(&fleet, "chat");
        let live: Vec<_> = workers(&fleet)
            .into_iter()
            .filter(|(_, pid, w)| w["replica"]["deployment"] == "chat" && w["state"] == "ready" && alive(*pid as u32))
            .collect();
        (d["ready"] == 2 && live.len() == 2 && d["instances"].as_array().unwrap().len() == 2).then_some(())
    });

    // (c) A deployment whose worker always exits: restarts come further and further apart,
    // it shows crash-loop, and the others are untouched.
    let before: BTreeSet<_> = workers(&fleet).into_iter().map(|(k, _, _)| k).collect();
    fleet.deployments.push_str(&format!(
        "[[deployment]]\nname = \"broken\"\nmodel = \"{model}\"\nworker = \"reference\"\nhives = [\"h1\"]\nargs = [\"--fail-at-start\"]\n\n"
    ));
    fleet.write_config();
    let synced = rbee(&fleet, &["sync"]).expect_code(3);
    assert!(synced.stdout().contains("crash-loop"), "{}", synced.stdout());
    let mut seen: Vec<(u64, Instant)> = Vec::new();
    wait_for("four restarts of broken", Duration::from_secs(30), || {
        let restarts = deployment(&fleet, "broken")["restarts"].as_u64().unwrap();
        if seen.last().is_none_or(|(n, _)| *n != restarts) {
            seen.push((restarts, Instant::now()));
        }
        (restarts >= 5).then_some(())
    });
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].1 - w[0].1).collect();
    eprintln!("restarts {seen:?}, gaps {gaps:?}");
    assert!(
        gaps.len() >= 2 && gaps[gaps.len() - 1] > gaps[0] + Duration::from_millis(1500),
        "the backoff grows: {gaps:?}"
    );
    let broken = deployment(&fleet, "broken");
    assert_eq!(broken["phase"], "crash-loop", "{broken}");
    assert!(broken["message"].as_str().unwrap().contains("exited with status 3"), "{broken}");
    let after: BTreeSet<_> = workers(&fleet)
        .into_iter()
        .filter(|(_, _, w)| w["replica"]["deployment"] != "broken")
        .map(|(k, _, _)| k)
        .collect();
    assert_eq!(after, before, "chat and embed untouched");
    set_deployments(&mut fleet, &model, "");
    rbee(&fleet, &["sync"]).expect_code(0);
    assert!(workers(&fleet).iter().all(|(_, _, w)| w["replica"]["deployment"] != "broken"), "broken is stopped");

    // (e) The queen killed and restarted: nothing started twice, nothing stopped.
    let before: Vec<_> = workers(&fleet).into_iter().map(|(k, pid, _)| (k, pid)).collect();
    let pid_file = fleet.dir.path().join(format!("operator/.local/state/rbee-queen/queen-{}.pid", fleet.queen_port));
    let queen_pid = std::fs::read_to_string(&pid_file).unwrap();
    Command::new("kill").args(["-9", queen_pid.trim()]).status().unwrap();
    wait_for("the queen gone", Duration::from_secs(5), || (!alive(queen_pid.trim().parse().unwrap())).then_some(()));
    rbee(&fleet, &["queen", "start"]).expect_code(0);
    std::thread::sleep(Duration::from_secs(4));
    for name in ["chat", "embed"] {
        let d = deployment(&fleet, name);
        assert_eq!(d["phase"], "ready", "{d}");
    }
    let after: Vec<_> = workers(&fleet).into_iter().map(|(k, pid, _)| (k, pid)).collect();
    assert_eq!(after, before, "the restarted queen adopted every replica");
    assert!(before.iter().all(|(_, pid)| alive(*pid as u32)));

    // (f) A rolling update to a revision that cannot start, under load: it fails, the old
    // replicas go on serving, no request fails.
    let old: BTreeSet<_> = replicas(&deployment(&fleet, "chat"), "ready");
    let load = Load::start(&fleet.dir.path().join("operator"), fleet.queen_port, "chat");
    set_deployments(&mut fleet, &model, "args = [\"--fail-at-start\"]\n");
    let synced = rbee(&fleet, &["sync"]).expect_code(3);
    assert!(synced.stdout().contains("rollout failed"), "{}", synced.stdout());
    let chat = deployment(&fleet, "chat");
    assert!(chat["message"].as_str().unwrap().ends_with("serving revision 1"), "{chat}");
    assert_eq!(replicas(&chat, "ready"), old, "{chat}");
    rbee(&fleet, &["status"]).expect_code(2);

    // (g) A good rolling update under the same load: every replica replaced, none failed.
    set_deployments(&mut fleet, &model, "args = [\"--load-ms\", \"300\"]\n");
    rbee(&fleet, &["sync"]).expect_code(0);
    let (ok, failed) = load.finish();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), ok + failed.len() as u64);
    let chat = deployment(&fleet, "chat");
    let new = replicas(&chat, "ready");
    assert_eq!(new.len(), 2, "{chat}");
    assert!(new.is_disjoint(&old), "{chat}");
    assert!(chat["instances"].as_array().unwrap().iter().all(|i| i["revision"] == chat["revision"]), "{chat}");
    rbee(&fleet, &["status"]).expect_code(0);

    // A sync that installs another version of the worker replaces the replicas that run the
    // old one, new before old, under load.
    let before = replicas(&deployment(&fleet, "embed"), "ready");
    let load = Load::start(&fleet.dir.path().join("operator"), fleet.queen_port, "embed");
    fleet.set_worker("h1", "reference", "0.2.0");
    fleet.set_worker("h2", "reference", "0.2.0");
    rbee(&fleet, &["sync"]).expect_code(0);
    wait_for("embed on the new worker version", Duration::from_secs(20), || {
        let d = deployment(&fleet, "embed");
        let now = replicas(&d, "ready");
        (d["phase"] == "ready" && now.len() == 1 && now.is_disjoint(&before)).then_some(())
    });
    let (ok, failed) = load.finish();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), ok + failed.len() as u64);
    let chat = deployment(&fleet, "chat");
    let new = replicas(&chat, "ready");

    // Rollback on purpose: the previous spec comes back as a new revision.
    rbee(&fleet, &["deployment", "rollback", "chat"]).expect_code(0);
    wait_for("rolled back", Duration::from_secs(20), || {
        let d = deployment(&fleet, "chat");
        (d["phase"] == "ready" && replicas(&d, "ready").is_disjoint(&new)).then_some(())
    });
}
