//! The job store: every operation a client submits becomes a job whose events are kept, so a
//! client can disconnect and replay them, several clients can watch one job, and nothing is
//! lost between submitting and subscribing.
//!
//! ```text
//! POST /v1/jobs ──▶ Job { events: Vec<JobEvent> } ◀── runner task: run_operation(op, on_event)
//!                        │ appended in order, notify
//! GET /v1/jobs/{id}/events ──▶ SSE: replay from 0, then live; keepalive comments; ends after
//!                              the `result` event — never on silence
//! DELETE /v1/jobs/{id} ──▶ cancel flag: no new step starts, locks released
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use rbee_core::execute::{QueenLink, now_ms};
use rbee_core::package::{OperationResult, RunContext, run_operation};
use rbee_core::proto::operation::Operation;
use rbee_http::ApiError;
use tokio::sync::Notify;

use crate::api::{JobEvent, JobEventBody, JobSummary, Submitted};
use crate::forward::{forward, refresh_catalogs};
use crate::routes::Queen;

/// Finished jobs kept for `GET /v1/jobs` and replay.
const KEEP_FINISHED_JOBS: usize = 500;

/// One submitted operation and everything it has said so far.
pub(crate) struct Job {
    id: String,
    pub(crate) operation: Operation,
    submitted_ms: u64,
    events: Mutex<Vec<JobEvent>>,
    done: AtomicBool,
    /// Set by `DELETE /v1/jobs/{id}`; the runner checks it between steps.
    pub(crate) cancel: Arc<AtomicBool>,
    changed: Notify,
}

impl Job {
    fn new(id: String, operation: Operation, submitted_ms: u64) -> Self {
        Self {
            id,
            operation,
            submitted_ms,
            events: Mutex::new(Vec::new()),
            done: AtomicBool::new(false),
            cancel: Arc::default(),
            changed: Notify::new(),
        }
    }

    /// Appends an event. Its seq is its index, taken under the same lock as the append, so seqs
    /// are gapless and in order however many tasks push.
    pub(crate) fn push(&self, body: JobEventBody) {
        let mut events = self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let seq = events.len() as u64;
        events.push(JobEvent { seq, body });
        drop(events);
        self.changed.notify_waiters();
    }

    fn summary(&self) -> JobSummary {
        let exit_code =
            self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner).last().and_then(|e| match &e.body {
                JobEventBody::Result { exit_code, .. } => Some(*exit_code),
                _ => None,
            });
        let state = match (self.done.load(Ordering::Acquire), self.cancel.load(Ordering::Relaxed)) {
            (true, true) => "cancelled",
            (true, false) => "done",
            (false, _) => "running",
        };
        JobSummary {
            job_id: self.id.clone(),
            operation: self.operation.wire_name(),
            state: state.into(),
            exit_code,
            submitted_ms: self.submitted_ms,
        }
    }
}

/// Every job the queen remembers, by id.
#[derive(Default)]
pub(crate) struct Jobs {
    jobs: Mutex<BTreeMap<String, Arc<Job>>>,
    /// Makes ids unique when two jobs are submitted in the same millisecond.
    next: AtomicU64,
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new job for `operation`, submitted at `now_ms`, stored.
    fn create(&self, operation: Operation, now_ms: u64) -> Arc<Job> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("job-{now_ms}-{n}");
        let job = Arc::new(Job::new(id.clone(), operation, now_ms));
        let mut jobs = self.lock();
        // Keep every running job and the most recent finished ones, so a long-lived queen's
        // memory stays bounded.
        let finished: Vec<String> =
            jobs.values().filter(|j| j.done.load(Ordering::Acquire)).map(|j| j.id.clone()).collect();
        let excess = finished.len().saturating_sub(KEEP_FINISHED_JOBS);
        let mut oldest: Vec<(u64, String)> = finished.into_iter().map(|id| (jobs[&id].submitted_ms, id)).collect();
        oldest.sort();
        for (_, id) in oldest.into_iter().take(excess) {
            jobs.remove(&id);
        }
        jobs.insert(id, job.clone());
        job
    }

    fn find(&self, id: &str) -> Option<Arc<Job>> {
        self.lock().get(id).cloned()
    }

    fn all(&self) -> Vec<Arc<Job>> {
        self.lock().values().cloned().collect()
    }
}

/// `POST /v1/jobs`: answers at once with the job's id; the operation runs in its own task, on
/// the hive concerned or here.
pub(crate) async fn submit(State(queen): State<Arc<Queen>>, Json(operation): Json<Operation>) -> Response {
    if let Err(removed) = operation.check_supported() {
        return ApiError::new(StatusCode::BAD_REQUEST, removed.to_string()).into_response();
    }
    let job = queen.jobs.create(operation, now_ms());
    let id = job.id.clone();
    let connect = queen.config.connect.clone();
    let link = QueenLink {
        url: queen.url.clone(),
        interval_ms: u64::try_from(queen.config.heartbeat.as_millis()).unwrap_or(5000),
        token: queen.config.token.clone(),
    };
    let queen = queen.clone();
    tokio::spawn(async move {
        let work_job = job.clone();
        let result = guarded(async move {
            let job = work_job;
            let mut ctx = RunContext::default();
            ctx.cancel = job.cancel.clone();
            ctx.queen_link = Some(link);
            ctx.http = Some(Arc::new(crate::http::HyperGet::default()));
            let on_event = |event| job.push(JobEventBody::Sync { event });
            match job.operation.should_forward_to_hive() {
                true => forward(&queen, &job).await,
                false => {
                    let result = run_operation(&job.operation, connect.as_ref(), &ctx, &on_event).await;
                    refresh_catalogs(&queen, &job, &result).await;
                    crate::deploy_sync::after_package(&queen, &job, result).await
                }
            }
        })
        .await;
        job.push(JobEventBody::Result { exit_code: result.exit_code(), result });
        job.done.store(true, Ordering::Release);
        job.changed.notify_waiters();
    });
    let events_url = format!("/v1/jobs/{id}/events");
    (StatusCode::CREATED, Json(Submitted { job_id: id, events_url })).into_response()
}

/// Runs a job's work as a task of its own, so that a panic in it (a bug) ends the job with an
/// error result naming it instead of leaving the job `running` forever and its client waiting.
pub(crate) async fn guarded<F>(work: F) -> OperationResult
where
    F: std::future::Future<Output = OperationResult> + Send + 'static,
{
    match tokio::spawn(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            OperationResult::error(format!("internal error (a bug in rbee, please report it): {message}"))
        }
        Err(e) => OperationResult::error(format!("the job was stopped: {e}")),
    }
}

/// `GET /v1/jobs`.
pub(crate) async fn list(State(queen): State<Arc<Queen>>) -> Json<Vec<JobSummary>> {
    Json(queen.jobs.all().iter().map(|j| j.summary()).collect())
}

fn no_job(id: &str) -> Response {
    ApiError::new(StatusCode::NOT_FOUND, format!("no job {id}")).into_response()
}

/// `GET /v1/jobs/{id}`.
pub(crate) async fn job_summary(State(queen): State<Arc<Queen>>, Path(id): Path<String>) -> Response {
    match queen.jobs.find(&id) {
        Some(job) => Json(job.summary()).into_response(),
        None => no_job(&id),
    }
}

/// `DELETE /v1/jobs/{id}`: only asks; the job ends (with a `result` event) once its current
/// step has.
pub(crate) async fn cancel(State(queen): State<Arc<Queen>>, Path(id): Path<String>) -> Response {
    match queen.jobs.find(&id) {
        Some(job) => {
            job.cancel.store(true, Ordering::Relaxed);
            job.push(JobEventBody::Log { message: "cancel requested: no new step will start".into() });
            (StatusCode::ACCEPTED, Json(job.summary())).into_response()
        }
        None => no_job(&id),
    }
}

/// `GET /v1/jobs/{id}/events`: Server-Sent Events.
pub(crate) async fn events(State(queen): State<Arc<Queen>>, Path(id): Path<String>) -> Response {
    let Some(job) = queen.jobs.find(&id) else {
        return no_job(&id);
    };
    // Replay from the start, then follow; end right after the result event.
    let stream = futures_util::stream::unfold((job, 0usize, false), |(job, next, finished)| async move {
        if finished {
            return None;
        }
        loop {
            let batch: Vec<JobEvent> = {
                // Register for the wakeup before looking, so an event pushed in between is not missed.
                let notified = job.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let batch = job.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[next..].to_vec();
                if batch.is_empty() {
                    notified.await;
                    continue;
                }
                batch
            };
            let last = batch.iter().any(|e| matches!(e.body, JobEventBody::Result { .. }));
            let n = batch.len();
            let items: Vec<Result<Event, Infallible>> = batch
                .into_iter()
                .map(|e| Ok(Event::default().data(serde_json::to_string(&e).unwrap_or_default())))
                .collect();
            return Some((futures_util::stream::iter(items), (job, next + n, last)));
        }
    });
    use futures_util::StreamExt;
    Sse::new(stream.flatten()).keep_alive(KeepAlive::new().interval(queen.config.keepalive)).into_response()
}

#[cfg(test)]
mod tests {
    /// A panic in a job left it `running` forever (`rbee status` hung on a host whose install
    /// record held a non-ASCII digest): the job now ends with the panic as its error.
    #[tokio::test]
    async fn a_panicking_job_ends_with_an_error_result() {
        let result = super::guarded(async { panic!("index out of range in a digest") }).await;
        assert_eq!(result.exit_code(), 1);
        let text = serde_json::to_string(&result).unwrap();
        assert!(text.contains("internal error") && text.contains("index out of range in a digest"), "{text}");
        let ok = super::guarded(async { OperationResult::Valid { hives: vec![] } }).await;
        assert_eq!(ok.exit_code(), 0);
    }

    use super::*;

    fn op() -> Operation {
        Operation::WorkerCatalogRefresh { hive_alias: "alpha".into() }
    }

    fn log(message: &str) -> JobEventBody {
        JobEventBody::Log { message: message.into() }
    }

    #[test]
    fn seqs_are_gapless_across_concurrent_pushes() {
        let job = Arc::new(Job::new("job-1".into(), op(), 0));
        let pushers: Vec<_> = (0..4)
            .map(|_| {
                let job = job.clone();
                std::thread::spawn(move || (0..50).for_each(|_| job.push(log("x"))))
            })
            .collect();
        pushers.into_iter().for_each(|t| t.join().expect("pusher"));
        let seqs: Vec<u64> =
            job.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (0..200).collect::<Vec<u64>>());
    }

    #[test]
    fn summary_follows_the_job() {
        let jobs = Jobs::default();
        let job = jobs.create(op(), 1234);
        assert_eq!(job.id, "job-1234-1");
        assert_eq!(jobs.create(op(), 1234).id, "job-1234-2", "same millisecond, another id");
        assert_eq!(jobs.find(&job.id).map(|j| j.id.clone()), Some(job.id.clone()));
        assert!(jobs.find("job-0-0").is_none());

        let summary = job.summary();
        assert_eq!((summary.state.as_str(), summary.exit_code), ("running", None));
        assert_eq!(summary.operation, "worker_catalog_refresh");

        job.cancel.store(true, Ordering::Relaxed);
        assert_eq!(job.summary().state, "running", "cancelled only once it has ended");
        let result = rbee_core::package::OperationResult::error("cancelled");
        job.push(JobEventBody::Result { exit_code: result.exit_code(), result });
        job.done.store(true, Ordering::Release);
        let summary = job.summary();
        assert_eq!(summary.state, "cancelled");
        assert_eq!(summary.exit_code, Some(rbee_core::package::OperationResult::error("").exit_code()));
    }

    #[test]
    fn keeps_running_jobs_and_only_the_newest_finished_ones() {
        let jobs = Jobs::default();
        let running = jobs.create(op(), 0);
        let finished: Vec<Arc<Job>> = (1..=KEEP_FINISHED_JOBS as u64 + 2).map(|t| jobs.create(op(), t)).collect();
        finished.iter().for_each(|job| job.done.store(true, Ordering::Release));

        let newest = jobs.create(op(), 10_000);
        assert_eq!(jobs.all().len(), KEEP_FINISHED_JOBS + 2, "500 finished, the running one and the new one");
        assert!(jobs.find(&running.id).is_some(), "running jobs are never dropped, however old");
        assert!(jobs.find(&newest.id).is_some());
        assert!(jobs.find(&finished[0].id).is_none());
        assert!(jobs.find(&finished[1].id).is_none());
        assert!(jobs.find(&finished[2].id).is_some());
    }
}
