//! The executor's logic against scripted hosts: retries, failure isolation, ordering.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::artifact::{ArtifactSource, resolve, sha256_hex};
use crate::config;
use crate::transport::{CommandOutput, MockTransport, TransportError};

/// The lock taken, then the observation of an empty host, in the one command that does both.
const LOCKED_EMPTY_HOST: &str = "rbee-locked\nrbee-observe 1\nend\n";

fn fixture() -> (tempfile::TempDir, Desired, ArtifactSource) {
    let dir = tempfile::tempdir().unwrap();
    let v = dir.path().join("1.0.0");
    std::fs::create_dir_all(&v).unwrap();
    let mut sums = String::new();
    for name in ["rbee-hive", "rbee-worker-vllm"] {
        std::fs::write(v.join(name), name.as_bytes()).unwrap();
        sums.push_str(&format!("{}  {name}\n", sha256_hex(name.as_bytes())));
    }
    std::fs::write(v.join("SHA256SUMS"), sums).unwrap();
    std::fs::write(dir.path().join("latest"), "1.0.0").unwrap();
    let hives = "[[hive]]\nalias = \"a\"\nhostname = \"a.lab\"\nworkers = [{ type = \"vllm\" }]\n\
                 [[hive]]\nalias = \"b\"\nhostname = \"b.lab\"\nworkers = [{ type = \"vllm\" }]\n";
    let config = config::parse(None, (Path::new("hives.conf"), hives)).unwrap();
    let source = ArtifactSource::directory(dir.path());
    let desired = resolve(&config, &source).unwrap();
    (dir, desired, source)
}

fn health(desired: &Desired) -> CommandOutput {
    CommandOutput::ok(format!(
        "{{\"status\":\"ok\",\"version\":\"1.0.0\",\"sha256\":\"{}\",\"pid\":4242}}\n",
        desired.hives["a"].hive.sha256
    ))
}

/// A host that accepts a full install.
fn good_host(name: &str, desired: &Desired) -> MockTransport {
    accepts_install(MockTransport::new(name), desired)
}

fn accepts_install(mock: MockTransport, desired: &Desired) -> MockTransport {
    mock.on_run("# rbee-step: try-lock", Ok(CommandOutput::ok(LOCKED_EMPTY_HOST)))
        .on_run("# rbee-step: install-binary", Ok(CommandOutput::ok("")))
        .on_run("# rbee-step: start-hive", Ok(CommandOutput::ok("")))
        .on_run("# rbee-step: wait-healthy", Ok(health(desired)))
        .on_run("# rbee-step: unlock", Ok(CommandOutput::ok("")))
}

async fn run(
    desired: &Desired,
    source: &ArtifactSource,
    hosts: Vec<(&str, Arc<MockTransport>)>,
) -> (SyncReport, Vec<SyncEvent>) {
    let actual = Actual {
        hives: hosts
            .iter()
            .map(|(a, _)| (a.to_string(), HiveState::Reachable(crate::state::Observed::default())))
            .collect(),
    };
    let planned = Planned::new(Intent::Sync(PlanOptions::default()), desired, &actual, None);
    let transports: BTreeMap<String, Arc<dyn Transport>> =
        hosts.into_iter().map(|(a, t)| (a.to_owned(), t as Arc<dyn Transport>)).collect();
    let events = Mutex::new(Vec::new());
    let on_event = |e| events.lock().unwrap().push(e);
    let options = ExecuteOptions { retries: 2, ..ExecuteOptions::default() };
    let report = execute(desired, &planned, &transports, source, &options, &on_event).await;
    (report, events.into_inner().unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_is_retried_with_backoff() {
    let (_dir, desired, source) = fixture();
    // The lock fails once with a connection error before good_host's lock succeeds.
    let failing_once = MockTransport::new("a").on_run(
        "# rbee-step: try-lock",
        Err(TransportError::Connect { host: "a".into(), reason: "connection reset".into() }),
    );
    let a = Arc::new(accepts_install(failing_once, &desired));
    let b = Arc::new(good_host("b", &desired));
    let started = tokio::time::Instant::now();
    let (report, events) = run(&desired, &source, vec![("a", a.clone()), ("b", b.clone())]).await;
    assert_eq!(report.overall(), Overall::Ok, "{report:#?}");
    let retries: Vec<_> =
        events.iter().filter(|e| matches!(e.kind, SyncEventKind::StepFailed { will_retry: true, .. })).collect();
    assert_eq!(retries.len(), 1, "{events:#?}");
    assert!(started.elapsed() >= Duration::from_millis(500), "backed off before retrying");
    a.verify().unwrap();
    b.verify().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_deterministic_failure_is_not_retried_and_other_hives_finish() {
    let (_dir, desired, source) = fixture();
    let a = Arc::new(
        MockTransport::new("a")
            .on_run("# rbee-step: try-lock", Ok(CommandOutput::ok(LOCKED_EMPTY_HOST)))
            // Both binaries in one command, the worker (the second) failing its check.
            .on_run(
                "# rbee-step: install-binary",
                Ok(CommandOutput {
                    status: 65,
                    stdout: b"rbee-install-failed 2\nsha256 mismatch for x".to_vec(),
                    stderr: Vec::new(),
                }),
            )
            .on_run("# rbee-step: unlock", Ok(CommandOutput::ok(""))),
    );
    let b = Arc::new(good_host("b", &desired));
    let (report, events) = run(&desired, &source, vec![("a", a.clone()), ("b", b.clone())]).await;
    assert_eq!(report.overall(), Overall::Partial);
    let HiveOutcome::Failed { step, reason } = &report.hives[0].outcome else { panic!("{report:#?}") };
    assert!(reason.contains("sha256 mismatch"), "{reason}");
    assert_eq!(step, "a/worker/vllm", "the file that failed its check is the step that failed");
    // The hive binary, sent in the same command, is reported as not installed, not as done.
    let failed: Vec<&str> = events
        .iter()
        .filter(|e| e.alias == "a")
        .filter_map(|e| match &e.kind {
            SyncEventKind::StepFailed { step, .. } => Some(step.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(failed, ["a/hive-binary", "a/worker/vllm"], "{events:#?}");
    assert!(!report.hives[0].steps_done.iter().any(|s| s.contains("binary") || s.contains("worker")));
    assert_eq!(report.hives[1].outcome, HiveOutcome::Ok { changed: true });
    assert!(events.iter().all(|e| !matches!(e.kind, SyncEventKind::StepFailed { will_retry: true, .. })));
    // Nothing after the failed wave ran on a: no start.
    a.verify().unwrap();
    b.verify().unwrap();
    let starts = a.calls().iter().filter(|c| format!("{c:?}").contains("setsid")).count();
    assert_eq!(starts, 0);
}

#[tokio::test(start_paused = true)]
async fn binaries_are_in_place_before_the_hive_starts() {
    let (_dir, desired, source) = fixture();
    let a = Arc::new(good_host("a", &desired));
    let b = Arc::new(good_host("b", &desired));
    let (report, _) = run(&desired, &source, vec![("a", a.clone()), ("b", b)]).await;
    assert_eq!(report.overall(), Overall::Ok);
    let calls: Vec<String> = a.calls().iter().map(|c| format!("{c:?}")).collect();
    let pos = |needle: &str| calls.iter().rposition(|c| c.contains(needle)).unwrap();
    assert!(pos("sha256 mismatch for") < pos("setsid"));
    assert!(pos("setsid") < pos("probe --port"));
    // Both binaries, in one command that receives them one after the other.
    let installs: Vec<&String> = calls.iter().filter(|c| c.contains("# rbee-step: install-binary")).collect();
    assert_eq!(installs.len(), 1, "{calls:#?}");
    assert!(installs[0].contains(".rbee-hive.rbee-tmp-") && installs[0].contains(".rbee-worker-vllm.rbee-tmp-"));
}

#[tokio::test(start_paused = true)]
async fn the_last_step_releases_the_lock_in_its_own_command() {
    let (_dir, desired, source) = fixture();
    let mut answer = health(&desired);
    answer.stdout.extend_from_slice(b"rbee-unlocked\n");
    // No unlock command is expected: the wait for /health released the lock.
    let a = Arc::new(
        MockTransport::new("a")
            .on_run("# rbee-step: try-lock", Ok(CommandOutput::ok(LOCKED_EMPTY_HOST)))
            .on_run("# rbee-step: install-binary", Ok(CommandOutput::ok("")))
            .on_run("# rbee-step: start-hive", Ok(CommandOutput::ok("")))
            .on_run("# rbee-step: wait-healthy", Ok(answer)),
    );
    // A host whose answer does not say so is unlocked as before.
    let b = Arc::new(good_host("b", &desired));
    let (report, _) = run(&desired, &source, vec![("a", a.clone()), ("b", b.clone())]).await;
    assert_eq!(report.overall(), Overall::Ok, "{report:#?}");
    a.verify().unwrap();
    b.verify().unwrap();
    let wait = a.calls().iter().map(|c| format!("{c:?}")).find(|c| c.contains("wait-healthy")).unwrap();
    assert!(wait.contains(&steps::lock_owner()[..12]) && wait.contains(&Layout::lock_dir()), "{wait}");
}

#[tokio::test]
async fn observation_trusts_the_install_record_until_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let t = crate::transport::LocalTransport::new(dir.path());
    let bytes = b"worker v1".to_vec();
    let artifact = crate::state::Artifact {
        name: "rbee-worker-vllm".into(),
        version: "1.2.3".into(),
        sha256: crate::artifact::sha256_of(&bytes),
        size: bytes.len() as u64,
    };
    let target = Layout::worker_binary("vllm");
    let data = crate::transport::UploadData::Bytes(&bytes);
    let files = [steps::BinaryInstall { artifact: &artifact, data, target: &target }];
    steps::install_binaries(&t, &files, Duration::from_secs(5), &|_| {}, None).await.unwrap();
    let observe = || crate::observe::observe(&t, 1, Duration::from_secs(5));
    let HiveState::Reachable(o) = observe().await else { panic!() };
    assert_eq!(o.workers["vllm"].sha256, artifact.sha256);
    assert_eq!(o.workers["vllm"].version.as_deref(), Some("1.2.3"), "version from the install record");

    // The record is trusted: a record saying another digest is believed while the file's
    // size, mtime and inode match it...
    let rec = dir.path().join(Layout::installed_dir()).join("rbee-worker-vllm");
    let text = std::fs::read_to_string(&rec).unwrap();
    std::fs::write(&rec, text.replacen(artifact.sha256.as_str(), &"0".repeat(64), 1)).unwrap();
    let HiveState::Reachable(o) = observe().await else { panic!() };
    assert_eq!(o.workers["vllm"].sha256, "0".repeat(64));

    // ...and a file replaced behind rbee's back is hashed again and reported as it is.
    std::fs::remove_file(dir.path().join(&target)).unwrap();
    std::fs::write(dir.path().join(&target), b"tampered!").unwrap();
    let HiveState::Reachable(o) = observe().await else { panic!() };
    assert_eq!(o.workers["vllm"].sha256, sha256_hex(b"tampered!"));
    assert_eq!(o.workers["vllm"].version, None);
}
