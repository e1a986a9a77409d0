//! What a sync and a status do about deployments, after the package part: a dry run shows what
//! the reconciler would do; a run hands the config's deployments to the reconciler and waits
//! until they are ready (or failed), streaming what it does; a status adds each deployment's
//! readiness.

use std::sync::Arc;
use std::time::Duration;

use rbee_core::package::OperationResult;
use rbee_core::proto::deployment::{DeploymentSpec, DeploymentStatus, Phase};
use rbee_core::proto::operation::Operation;

use crate::api::JobEventBody;
use crate::jobs::Job;
use crate::routes::Queen;

/// How long a sync waits beyond the longest `ready_timeout` of its deployments.
const WAIT_SLACK: Duration = Duration::from_secs(30);
/// A deployment that no hive can take is given this long to find one (hives just installed
/// may not have reported yet).
const DEGRADED_GRACE: Duration = Duration::from_secs(15);

fn specs(config_path: Option<&std::path::Path>) -> Option<Vec<DeploymentSpec>> {
    let config = rbee_core::config::load(&rbee_core::config::ConfigFiles::locate(config_path)).ok()?;
    Some(config.deployments)
}

/// The deployments part of a sync or status; other results pass through.
pub(crate) async fn after_package(queen: &Arc<Queen>, job: &Job, result: OperationResult) -> OperationResult {
    match (&job.operation, result) {
        (Operation::PackageSync { config_path, dry_run, .. }, OperationResult::Sync(mut outcome)) => {
            let Some(specs) = specs(config_path.as_deref()) else { return OperationResult::Sync(outcome) };
            if *dry_run {
                outcome.deployment_steps = queen.deployments.preview(queen, &specs);
                return OperationResult::Sync(outcome);
            }
            if specs.is_empty() && queen.deployments.statuses().is_empty() {
                return OperationResult::Sync(outcome);
            }
            outcome.deployments = run(queen, job, specs).await;
            OperationResult::Sync(outcome)
        }
        (Operation::PackageStatus { config_path, .. }, OperationResult::Status(mut report)) => {
            let Some(specs) = specs(config_path.as_deref()) else { return OperationResult::Status(report) };
            report.deployments = statuses_of(queen, &specs);
            OperationResult::Status(report)
        }
        (_, result) => result,
    }
}

/// The status of each declared deployment; one the queen does not have yet is not ready.
fn statuses_of(queen: &Queen, specs: &[DeploymentSpec]) -> Vec<DeploymentStatus> {
    let known = queen.deployments.statuses();
    specs
        .iter()
        .map(|spec| {
            let status = known.iter().find(|s| s.name == spec.name);
            match status {
                Some(s) if s.model == spec.model && s.replicas == spec.replicas => s.clone(),
                _ => DeploymentStatus {
                    name: spec.name.clone(),
                    worker: spec.worker.clone(),
                    model: spec.model.clone(),
                    revision: status.map_or(0, |s| s.revision),
                    replicas: spec.replicas,
                    ready: status.map_or(0, |s| s.ready),
                    phase: Phase::Progressing,
                    message: "the config differs from what the queen runs: run `rbee sync`".into(),
                    restarts: status.map_or(0, |s| s.restarts),
                    last_failure: None,
                    instances: status.map(|s| s.instances.clone()).unwrap_or_default(),
                    eligible: Vec::new(),
                    rejected: Vec::new(),
                },
            }
        })
        .collect()
}

/// Applies `specs` and waits until every deployment is ready, has failed, or the wait is over.
async fn run(queen: &Arc<Queen>, job: &Job, specs: Vec<DeploymentSpec>) -> Vec<DeploymentStatus> {
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let longest = specs.iter().map(|s| s.ready_timeout_ms).max().unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(longest) + WAIT_SLACK;
    let mut log = queen.deployments.log.subscribe();
    let (changes, generation) = queen.deployments.apply(specs);
    for message in changes {
        job.push(JobEventBody::Log { message });
    }
    let started = tokio::time::Instant::now();
    loop {
        tokio::select! {
            line = log.recv() => {
                if let Ok(message) = line {
                    job.push(JobEventBody::Log { message });
                }
                continue;
            }
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        if !queen.deployments.decided_since(generation) {
            continue;
        }
        let statuses: Vec<DeploymentStatus> =
            queen.deployments.statuses().into_iter().filter(|s| names.contains(&s.name)).collect();
        let settled = statuses.iter().all(|s| match s.phase {
            Phase::Ready | Phase::RolloutFailed | Phase::CrashLoop => true,
            Phase::Degraded => started.elapsed() >= DEGRADED_GRACE,
            Phase::Progressing => false,
        });
        let cancelled = job.cancel.load(std::sync::atomic::Ordering::Relaxed);
        if settled || cancelled || tokio::time::Instant::now() >= deadline {
            if cancelled {
                job.push(JobEventBody::Log {
                    message: "cancelled: the queen goes on reconciling the deployments".into(),
                });
            }
            while let Ok(message) = log.try_recv() {
                job.push(JobEventBody::Log { message });
            }
            return statuses;
        }
    }
}
