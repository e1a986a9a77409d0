//! Interaction tests: what the package manager asks of its collaborators, stated as
//! expectations (mockall) where a simulated host would say less — how often it connects, and
//! that a refused host is never touched again.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::artifact::ArtifactSource;
use crate::execute::{ExecuteOptions, HiveOutcome};
use crate::fleet::MockConnector;
use crate::package::{SyncRequest, sync};
use crate::transport::{LocalTransport, TransportError};

fn config() -> crate::config::Config {
    let text = (1..=3)
        .map(|i| {
            format!("[[hive]]\nalias = \"h{i}\"\nhostname = \"h{i}.lab\"\nauto_start = false\nworkers = [{{ type = \"vllm\" }}]\n\n")
        })
        .collect::<String>();
    crate::config::parse(None, (Path::new("hives.conf"), &text)).unwrap()
}

fn source() -> ArtifactSource {
    ArtifactSource::memory("1.0.0", [("rbee-hive", b"hive".to_vec()), ("rbee-worker-vllm", b"vllm".to_vec())])
}

/// Each host is connected to once per sync — observation, the re-plan under the lock and every
/// step share that connection — and a host whose key was refused is not asked again and gets
/// nothing, while the others are installed.
#[tokio::test]
async fn one_connection_per_host_and_nothing_for_a_refused_host() {
    let dir = tempfile::tempdir().unwrap();
    let mut connector = MockConnector::new();
    for alias in ["h1", "h3"] {
        let home = dir.path().join(alias);
        connector
            .expect_connect()
            .withf(move |h| h.alias == alias)
            .times(1)
            .returning(move |_| Ok(Arc::new(LocalTransport::new(&home))));
    }
    connector
        .expect_connect()
        .withf(|h| h.alias == "h2")
        .times(1)
        .returning(|h| Err(TransportError::Refused { host: h.hostname.clone(), reason: "host key changed".into() }));
    let outcome = sync(&config(), &source(), &connector, &SyncRequest::default(), &ExecuteOptions::default(), &|_| {})
        .await
        .unwrap();
    let report = outcome.report.expect("a report");
    let outcome_of = |alias: &str| report.hives.iter().find(|h| h.alias == alias).map(|h| h.outcome.clone());
    assert!(matches!(outcome_of("h1"), Some(HiveOutcome::Ok { .. })), "{report:?}");
    assert!(matches!(outcome_of("h3"), Some(HiveOutcome::Ok { .. })), "{report:?}");
    assert!(!matches!(outcome_of("h2"), Some(HiveOutcome::Ok { .. })), "{report:?}");
    assert!(dir.path().join("h1/.local/share/rbee/workers/rbee-worker-vllm").is_file());
    assert!(!dir.path().join("h2").exists(), "nothing reached the refused host");
    connector.checkpoint();
}

/// A cancel before the run starts: every hive reports cancelled and no host gets a file.
#[tokio::test]
async fn no_step_runs_after_a_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let mut connector = MockConnector::new();
    let home = dir.path().to_owned();
    connector.expect_connect().times(3).returning(move |h| Ok(Arc::new(LocalTransport::new(home.join(&h.alias)))));
    let options = ExecuteOptions { step_timeout: Duration::from_secs(10), ..ExecuteOptions::default() };
    options.cancel.store(true, Ordering::Relaxed);
    let outcome = sync(&config(), &source(), &connector, &SyncRequest::default(), &options, &|_| {}).await.unwrap();
    let report = outcome.report.expect("a report");
    for h in &report.hives {
        assert!(
            matches!(&h.outcome, HiveOutcome::Failed { reason, .. } if reason == "cancelled"),
            "{}: {:?}",
            h.alias,
            h.outcome
        );
        assert!(!dir.path().join(&h.alias).join(".local/share/rbee/workers").exists(), "{} got files", h.alias);
    }
}
