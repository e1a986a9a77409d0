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
//!
//! Memory is bounded ([`JobLimits`]): a job keeps its first events and its latest ones up to
//! a size, and one `log` event in the replay says how many were dropped between them (each
//! stream numbers what it sends, so `seq` stays gapless); the `result` event is always kept.
//! Finished jobs are forgotten oldest first beyond a count and a total size.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use rbee_core::execute::now_ms;
use rbee_core::package::{OperationResult, RunContext, run_operation};
use rbee_core::proto::operation::Operation;
use rbee_http::ApiError;
use tokio::sync::Notify;

use crate::api::{JobEvent, JobEventBody, JobSummary, Submitted};
use crate::forward::{forward, refresh_catalogs};
use crate::routes::Queen;

/// Finished jobs kept for `GET /v1/jobs` and replay.
const KEEP_FINISHED_JOBS: usize = 500;

/// How much of its jobs' events the queen keeps, so that a chatty or hostile host cannot make
/// it use unbounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JobLimits {
    /// Finished jobs kept for `GET /v1/jobs` and replay (500).
    pub(crate) finished_jobs: usize,
    /// The events one job keeps, in bytes (8 MiB): beyond it, events after its first ones are
    /// dropped, oldest first, and the replay says how many.
    pub(crate) job_bytes: usize,
    /// Of those, the bytes of a job's first events, kept whole (1 MiB).
    pub(crate) head_bytes: usize,
    /// The events all jobs keep, in bytes (256 MiB): beyond it, the oldest finished jobs are
    /// forgotten when the next job is submitted. Running jobs are never dropped, so the queen
    /// holds at most this plus `job_bytes` per running job.
    pub(crate) total_bytes: usize,
}

impl Default for JobLimits {
    fn default() -> Self {
        Self { finished_jobs: KEEP_FINISHED_JOBS, job_bytes: 8 << 20, head_bytes: 1 << 20, total_bytes: 256 << 20 }
    }
}

/// What one kept event counts for beyond its JSON, so that many tiny events count too.
const EVENT_OVERHEAD: usize = 64;

/// One kept event: its place in the job (its index among every event pushed), and its size.
struct Kept {
    seq: u64,
    size: usize,
    body: JobEventBody,
}

/// A job's events within [`JobLimits::job_bytes`]: the first ones (`head`, up to
/// [`JobLimits::head_bytes`]), then, after any dropped ones, the latest (`tail`). The newest
/// event (the `result`, at the end) is never dropped.
#[derive(Default)]
struct EventLog {
    head: Vec<Kept>,
    /// Set once an event did not fit in `head`: from then on every event goes to `tail`, so
    /// `head` holds exactly the events `0..head.len()`.
    head_full: bool,
    tail: VecDeque<Kept>,
    /// Events pushed so far: the next one's seq.
    pushed: u64,
    /// Bytes kept, head and tail.
    bytes: usize,
    /// Bytes kept in `head`.
    head_bytes: usize,
}

impl EventLog {
    fn push(&mut self, body: JobEventBody, limits: &JobLimits) {
        let seq = self.pushed;
        self.pushed += 1;
        let event = JobEvent { seq, body };
        let size = serde_json::to_string(&event).map_or(0, |json| json.len()) + EVENT_OVERHEAD;
        let kept = Kept { seq, size, body: event.body };
        if !self.head_full && self.head_bytes + size <= limits.head_bytes.min(limits.job_bytes) {
            self.head_bytes += size;
            self.head.push(kept);
        } else {
            self.head_full = true;
            self.tail.push_back(kept);
        }
        self.bytes += size;
        while self.bytes > limits.job_bytes && self.tail.len() > 1 {
            let dropped = self.tail.pop_front().expect("more than one");
            self.bytes -= dropped.size;
        }
    }

    /// The events from seq `from` on, in order: with one `log` event standing for those that
    /// were dropped (if any of them are at or after `from`).
    fn since(&self, from: u64, limits: &JobLimits) -> Vec<JobEventBody> {
        let head_end = self.head.len() as u64;
        let mut out: Vec<JobEventBody> =
            self.head.iter().skip(usize::try_from(from).unwrap_or(usize::MAX)).map(|k| k.body.clone()).collect();
        let tail_start = self.tail.front().map_or(self.pushed, |k| k.seq);
        let missed = tail_start.saturating_sub(from.max(head_end));
        if missed > 0 {
            out.push(JobEventBody::Log {
                message: format!(
                    "{missed} events dropped here: this job said more than the {} MiB the queen keeps per job (its first \
                     and latest events are kept)",
                    limits.job_bytes >> 20
                ),
            });
        }
        out.extend(self.tail.iter().filter(|k| k.seq >= from).map(|k| k.body.clone()));
        out
    }

    fn last(&self) -> Option<&JobEventBody> {
        self.tail.back().or(self.head.last()).map(|k| &k.body)
    }
}

/// One submitted operation and everything it has said so far.
pub(crate) struct Job {
    id: String,
    pub(crate) operation: Operation,
    submitted_ms: u64,
    limits: JobLimits,
    events: Mutex<EventLog>,
    done: AtomicBool,
    /// Set by `DELETE /v1/jobs/{id}`; the runner checks it between steps.
    pub(crate) cancel: Arc<AtomicBool>,
    changed: Notify,
}

impl Job {
    fn new(id: String, operation: Operation, submitted_ms: u64, limits: JobLimits) -> Self {
        Self {
            id,
            operation,
            submitted_ms,
            limits,
            events: Mutex::new(EventLog::default()),
            done: AtomicBool::new(false),
            cancel: Arc::default(),
            changed: Notify::new(),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, EventLog> {
        rbee_core::locked(&self.events)
    }

    /// Appends an event. Its place is taken under the same lock as the append, so events are
    /// in order however many tasks push.
    pub(crate) fn push(&self, body: JobEventBody) {
        self.log().push(body, &self.limits);
        self.changed.notify_waiters();
    }

    /// The events from the `from`-th pushed on (see [`EventLog::since`]), and where the next
    /// read starts.
    fn since(&self, from: u64) -> (Vec<JobEventBody>, u64) {
        let log = self.log();
        (log.since(from, &self.limits), log.pushed)
    }

    /// The bytes of events this job keeps.
    fn bytes(&self) -> usize {
        self.log().bytes
    }

    fn summary(&self) -> JobSummary {
        let exit_code = self.log().last().and_then(|body| match body {
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
    limits: JobLimits,
}

impl Jobs {
    /// No jobs yet, keeping at most what `limits` allow.
    #[cfg(test)]
    fn with_limits(limits: JobLimits) -> Self {
        Self { limits, ..Self::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Job>>> {
        rbee_core::locked(&self.jobs)
    }

    /// A new job for `operation`, submitted at `now_ms`, stored.
    fn create(&self, operation: Operation, now_ms: u64) -> Arc<Job> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("job-{now_ms}-{n}");
        let job = Arc::new(Job::new(id.clone(), operation, now_ms, self.limits));
        let mut jobs = self.lock();
        // Keep every running job and the most recent finished ones, within a count and a
        // total size, so a long-lived queen's memory stays bounded.
        let mut total: usize = jobs.values().map(|j| j.bytes()).sum();
        let mut finished: Vec<(u64, String, usize)> = jobs
            .values()
            .filter(|j| j.done.load(Ordering::Acquire))
            .map(|j| (j.submitted_ms, j.id.clone(), j.bytes()))
            .collect();
        finished.sort();
        let mut left = finished.len();
        for (_, id, bytes) in finished {
            if left <= self.limits.finished_jobs && total <= self.limits.total_bytes {
                break;
            }
            jobs.remove(&id);
            total -= bytes;
            left -= 1;
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
    let kind = job.operation.wire_name();
    tracing::info!(job = %id, kind, hive = job.operation.hive_alias(), "job started");
    let connect = queen.config.connect.clone();
    let link = queen.link_spec();
    let metrics = queen.metrics.clone();
    let queen = queen.clone();
    tokio::spawn(async move {
        let work_job = job.clone();
        let result = guarded(async move {
            let job = work_job;
            let mut ctx = RunContext::default();
            ctx.cancel = job.cancel.clone();
            ctx.link = Some(link);
            ctx.http = Some(Arc::new(crate::http::HyperGet::default()));
            let on_event = |event: rbee_core::proto::report::SyncEvent| {
                if !matches!(event.kind, rbee_core::proto::report::SyncEventKind::Progress { .. }) {
                    let what = serde_json::to_string(&event.kind).unwrap_or_default();
                    tracing::debug!(job = %job.id, hive = %event.alias, "{what}");
                }
                job.push(JobEventBody::Sync { event });
            };
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
        let exit_code = result.exit_code();
        metrics.job_finished(&kind, exit_code);
        match &result {
            OperationResult::Error { message, .. } => {
                tracing::warn!(job = %job.id, kind, exit_code, "job failed: {message}")
            }
            _ => tracing::info!(job = %job.id, kind, exit_code, "job finished"),
        }
        job.push(JobEventBody::Result { exit_code, result });
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
    use futures_util::StreamExt;
    let stream =
        replay(job).map(|e| Ok::<_, Infallible>(Event::default().data(serde_json::to_string(&e).unwrap_or_default())));
    Sse::new(stream).keep_alive(KeepAlive::new().interval(queen.config.keepalive)).into_response()
}

/// A job's events from the first, then live, ending right after the result event. They are
/// numbered by this stream (`seq` from 0, gapless), so a stretch of dropped events, replaced
/// by one `log` event that says so, leaves no hole.
fn replay(job: Arc<Job>) -> impl futures_util::Stream<Item = JobEvent> {
    // `next`: the next of the job's events to send; `sent`: how many this stream sent.
    let state = (job, 0u64, 0u64, false);
    let batches = futures_util::stream::unfold(state, |(job, next, sent, finished)| async move {
        if finished {
            return None;
        }
        loop {
            let (batch, next) = {
                // Register for the wakeup before looking, so an event pushed in between is not missed.
                let notified = job.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let (batch, after) = job.since(next);
                if batch.is_empty() {
                    notified.await;
                    continue;
                }
                (batch, after)
            };
            let last = batch.iter().any(|body| matches!(body, JobEventBody::Result { .. }));
            let n = batch.len() as u64;
            let events: Vec<JobEvent> =
                batch.into_iter().zip(sent..).map(|(body, seq)| JobEvent { seq, body }).collect();
            return Some((futures_util::stream::iter(events), (job, next, sent + n, last)));
        }
    });
    futures_util::StreamExt::flatten(batches)
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
        let job = Arc::new(Job::new("job-1".into(), op(), 0, JobLimits::default()));
        let pushers: Vec<_> = (0..4)
            .map(|_| {
                let job = job.clone();
                std::thread::spawn(move || (0..50).for_each(|_| job.push(log("x"))))
            })
            .collect();
        pushers.into_iter().for_each(|t| t.join().expect("pusher"));
        let log = job.log();
        let seqs: Vec<u64> = log.head.iter().chain(&log.tail).map(|k| k.seq).collect();
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

    fn small() -> JobLimits {
        JobLimits {
            finished_jobs: KEEP_FINISHED_JOBS,
            job_bytes: 8 * 1024,
            head_bytes: 2 * 1024,
            total_bytes: 64 * 1024,
        }
    }

    fn result() -> JobEventBody {
        let result = OperationResult::Valid { hives: vec![] };
        JobEventBody::Result { exit_code: result.exit_code(), result }
    }

    fn message(body: &JobEventBody) -> &str {
        match body {
            JobEventBody::Log { message } => message,
            _ => "",
        }
    }

    /// A hive printing endlessly grew a job's event log without bound: past its cap a job keeps
    /// its first and latest events, one event says how many were dropped, the result is kept.
    #[test]
    fn a_job_keeps_its_first_and_latest_events_within_its_cap() {
        let limits = small();
        let job = Job::new("job-1".into(), op(), 0, limits);
        for i in 0..1000 {
            job.push(log(&format!("line {i:04} {}", "x".repeat(40))));
        }
        job.push(result());
        assert!(job.bytes() <= limits.job_bytes, "{} bytes kept", job.bytes());

        let (all, next) = job.since(0);
        assert_eq!(next, 1001);
        assert!(message(&all[0]).starts_with("line 0000 "), "the first events are kept");
        assert!(matches!(all.last(), Some(JobEventBody::Result { .. })), "the result is always kept");
        let gaps: Vec<&str> = all.iter().map(message).filter(|m| m.contains("events dropped")).collect();
        assert_eq!(gaps.len(), 1, "one event stands for the dropped ones");
        let dropped: usize = gaps[0].split(' ').next().unwrap().parse().unwrap();
        assert_eq!(dropped + all.len() - 1, 1001, "kept + dropped = pushed: {}", gaps[0]);
        assert!(message(&all[all.len() - 2]).starts_with("line 0999 "), "the latest events are kept");

        // A reader that had already seen some of the dropped events is told only of the rest.
        let (later, _) = job.since(900);
        let gap = message(&later[0]);
        let after_900: usize = gap.split(' ').next().unwrap().parse().unwrap();
        assert!(after_900 < dropped && after_900 + later.len() - 1 == 101, "{gap}");
        // One past the end: nothing.
        assert!(job.since(1001).0.is_empty());
    }

    #[test]
    fn a_result_larger_than_the_cap_is_still_kept() {
        let job = Job::new("job-1".into(), op(), 0, small());
        job.push(log("start"));
        let huge = OperationResult::error("e".repeat(100 * 1024));
        job.push(JobEventBody::Result { exit_code: huge.exit_code(), result: huge });
        assert_eq!(job.summary().exit_code, Some(1));
        let (all, _) = job.since(0);
        assert_eq!(all.len(), 2, "nothing was dropped");
    }

    /// The stream renumbers what it sends: gapless from 0 (what clients check), the dropped
    /// events replaced by one, live events after the replay, and the end after the result.
    #[tokio::test]
    async fn the_replay_stays_gapless_where_events_were_dropped() {
        use futures_util::StreamExt;
        let job = Arc::new(Job::new("job-1".into(), op(), 0, small()));
        for i in 0..500 {
            job.push(log(&format!("line {i} {}", "y".repeat(40))));
        }
        let pusher = {
            let job = job.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                job.push(log("live"));
                job.push(result());
            })
        };
        let events: Vec<JobEvent> = replay(job.clone()).collect().await;
        pusher.await.unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>());
        assert!(events.iter().any(|e| message(&e.body).contains("events dropped here")));
        assert!(events.iter().any(|e| message(&e.body) == "live"));
        assert!(matches!(events.last().map(|e| &e.body), Some(JobEventBody::Result { .. })));
    }

    #[test]
    fn the_oldest_finished_jobs_go_when_all_jobs_keep_too_much() {
        let limits = small();
        let jobs = Jobs::with_limits(limits);
        let running = jobs.create(op(), 0);
        let fill = |job: &Job| (0..200).for_each(|i| job.push(log(&format!("{i} {}", "z".repeat(60)))));
        fill(&running);
        let finished: Vec<Arc<Job>> = (1..=20)
            .map(|t| {
                let job = jobs.create(op(), t);
                fill(&job);
                job.push(result());
                job.done.store(true, Ordering::Release);
                job
            })
            .collect();
        let newest = jobs.create(op(), 100);
        let total: usize = jobs.all().iter().map(|j| j.bytes()).sum();
        assert!(total <= limits.total_bytes, "{total} bytes kept");
        assert!(jobs.find(&running.id).is_some(), "running jobs are never dropped");
        assert!(jobs.find(&newest.id).is_some());
        assert!(jobs.find(&finished[0].id).is_none(), "the oldest finished job went first");
        assert!(jobs.find(&finished[19].id).is_some(), "the newest finished job is kept");
        let kept: Vec<bool> = finished.iter().map(|j| jobs.find(&j.id).is_some()).collect();
        assert!(kept.windows(2).all(|w| w[0] <= w[1]), "oldest first: {kept:?}");
    }
}
