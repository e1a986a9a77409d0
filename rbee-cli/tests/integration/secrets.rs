//! No secret on a host is ever readable by others, not even for an instant: while a sync
//! through the queen installs a hive, the hive is stopped and started again and a worker is
//! spawned, a thread watches the hive's state directory as fast as it can for a token, key,
//! worker record or temporary file of one with any group or other permission bit. And each
//! worker has a credential of its own: in its private record, never the hive's, opening only
//! its heartbeat route.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::fleet::{Fleet, Run, bin_dir, wait_for};
use crate::workers::json;

/// Whether a file's name says it holds a secret: a token, a key, a worker record (which holds
/// the worker's token), or a temporary file on its way to being one of them.
fn holds_a_secret(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let in_workers = path.parent().and_then(Path::file_name).is_some_and(|d| d == "workers");
    if name.ends_with(".token") || name.ends_with(".key") || (in_workers && name.ends_with(".json")) {
        return true;
    }
    // Temporary files next to them: `.NAME.upload-…`, `.NAME.tmp-…`.
    name.starts_with('.')
        && (name.contains(".token.") || name.contains(".key.") || (in_workers && name.contains(".json.")))
}

/// What the watcher found: files open to others (path and mode), and whether it saw
/// `hive.token` at all.
#[derive(Default)]
struct Findings {
    exposed: Vec<(PathBuf, u32)>,
    saw_hive_token: bool,
    rounds: u64,
}

fn scan(dir: &Path, found: &mut Findings) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        // Not following links; a file may vanish between listing and stat.
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            scan(&path, found);
        } else if meta.is_file() && holds_a_secret(&path) {
            if path.file_name().is_some_and(|n| n == "hive.token") {
                found.saw_hive_token = true;
            }
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 && !found.exposed.iter().any(|(p, m)| *p == path && *m == mode) {
                found.exposed.push((path, mode));
            }
        }
    }
}

/// Watches `root` until `stop` is set.
fn watch(root: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Findings> {
    std::thread::spawn(move || {
        let mut found = Findings::default();
        while !stop.load(Ordering::Relaxed) {
            scan(&root, &mut found);
            found.rounds += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
        scan(&root, &mut found);
        found
    })
}

/// A request to a daemon on this machine: its status code.
fn status(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> u16 {
    crate::fleet::http(port, method, path, token, body).0
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn secrets_on_a_host_are_never_readable_by_others_and_each_worker_has_its_own() {
    let fleet = Fleet::new(1, &[("llama-cpp", "latest")]);
    let h1 = fleet.host("h1");
    let rbee = |args: &[&str]| {
        let mut cmd = fleet.via_queen(args);
        cmd.env("RBEE_HEARTBEAT_MS", "500");
        Run(cmd.output().unwrap())
    };
    let state = h1.path(".local/state/rbee");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(state.clone(), stop.clone());

    rbee(&["sync"]).expect_code(0);
    let in_registry = || {
        wait_for("h1 in the registry", Duration::from_secs(15), || {
            rbee(&["hive", "get", "h1"]).code().eq(&0).then_some(())
        })
    };
    in_registry();
    rbee(&["hive", "stop", "h1"]).expect_code(0);
    rbee(&["hive", "start", "h1"]).expect_code(0);
    in_registry();

    // A worker: the reference worker in the catalog, then spawned through the queen.
    let catalog = h1.path(".local/share/rbee/workers");
    std::fs::copy(bin_dir().join("rbee-worker-reference"), catalog.join("rbee-worker-reference"))
        .expect("the reference worker is built with the workspace (`cargo build --workspace --bins`)");
    rbee(&["worker", "refresh", "--hive", "h1"]).expect_code(0);
    let spawned = rbee(&["worker", "spawn", "--hive", "h1", "--type", "reference", "--model", "m", "--json"]);
    let worker = json(&spawned.expect_code(0))["worker"].clone();
    assert_eq!(worker["state"], "ready", "{worker}");
    let id = worker["id"].as_str().unwrap().to_owned();

    stop.store(true, Ordering::Relaxed);
    let found = watcher.join().unwrap();
    assert!(found.saw_hive_token, "the watcher never saw hive.token ({} rounds)", found.rounds);
    assert!(found.exposed.is_empty(), "secrets readable by others: {:?}", found.exposed);

    // The worker's record: private, with a token of its own, not the hive's.
    let hive_token = std::fs::read_to_string(state.join("hive.token")).unwrap().trim().to_owned();
    assert_eq!(mode(&state.join("hive.token")), 0o600);
    assert_eq!(mode(&state.join("workers")), 0o700);
    let record_file = state.join(format!("workers/{id}.json"));
    assert_eq!(mode(&record_file), 0o600);
    let record_text = std::fs::read_to_string(&record_file).unwrap();
    assert!(!record_text.contains(&hive_token), "{record_text}");
    let record: serde_json::Value = serde_json::from_str(&record_text).unwrap();
    let own = record["token"].as_str().unwrap_or_else(|| panic!("no token in {record_text}")).to_owned();
    assert!(!own.is_empty());
    assert_ne!(own, hive_token);
    // Nothing the queen reports carries it.
    let listed = rbee(&["worker", "list", "--hive", "h1", "--json"]).expect_code(0);
    assert!(!listed.stdout().contains(&own), "{}", listed.stdout());

    // Each credential opens its own door only.
    assert_eq!(status(h1.port, "GET", "/v1/catalog", Some(&hive_token), ""), 200);
    assert_eq!(status(h1.port, "GET", "/v1/catalog", Some(&own), ""), 401);
    let beat_path = format!("/v1/workers/{id}/heartbeat");
    let beat = serde_json::json!({"worker_id": id, "status": "ready"}).to_string();
    assert_eq!(status(h1.port, "POST", &beat_path, Some(&hive_token), &beat), 401);
    assert_eq!(status(h1.port, "POST", &beat_path, None, &beat), 401);
    assert_eq!(status(h1.port, "POST", &beat_path, Some(&own), &beat), 204);

    rbee(&["worker", "delete", "--hive", "h1", &id]).expect_code(0);
}
