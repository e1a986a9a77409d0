//! The job API.
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
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rbee_core::operation::Operation;
use rbee_core::package::{ConnectFn, OperationResult, RunContext, run_operation};
use rbee_http::ApiError;
use tokio::sync::Notify;

use rbee_core::execute::{QueenLink, now_ms};

use crate::api::{Heartbeat, HiveEntry, JobEvent, JobEventBody, JobSummary, QueenHealth, Submitted};

/// How a queen runs.
#[derive(Clone)]
pub struct QueenConfig {
    /// Where to listen.
    pub addr: std::net::SocketAddr,
    /// The API token; requests without it get 401 (except `/health`).
    pub token: String,
    /// How jobs reach hosts: a connector for each job's config.
    pub connect: Arc<ConnectFn>,
    /// Interval of SSE keepalive comments.
    pub keepalive: Duration,
    /// How often hives started by this queen send heartbeats.
    pub heartbeat: Duration,
    /// The URL hives use to reach this queen; default `http://<addr>`.
    pub advertise_url: Option<String>,
}

/// Finished jobs kept for `GET /v1/jobs` and replay.
const KEEP_FINISHED_JOBS: usize = 500;

struct Job {
    id: String,
    operation: Operation,
    submitted_ms: u64,
    events: Mutex<Vec<JobEvent>>,
    done: AtomicBool,
    cancel: Arc<AtomicBool>,
    changed: Notify,
}

impl Job {
    fn push(&self, body: JobEventBody) {
        let mut events = self.events.lock().expect("events lock");
        let seq = events.len() as u64;
        events.push(JobEvent { seq, body });
        drop(events);
        self.changed.notify_waiters();
    }
}

struct Queen {
    config: QueenConfig,
    url: String,
    jobs: Mutex<BTreeMap<String, Arc<Job>>>,
    next: AtomicU64,
    hives: Mutex<BTreeMap<String, (u64, std::net::IpAddr, Heartbeat)>>,
    started_ms: u64,
}

/// A bound, not yet serving, queen: `addr` is known (port 0 picks a free one).
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
}

impl Server {
    /// Serves until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let service = self.router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(self.listener, service).with_graceful_shutdown(shutdown).await
    }
}

/// Binds the queen's API.
pub async fn bind(config: QueenConfig) -> std::io::Result<Server> {
    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    let addr = listener.local_addr()?;
    let url = config.advertise_url.clone().unwrap_or_else(|| format!("http://{addr}"));
    let queen = Arc::new(Queen {
        config,
        url,
        jobs: Mutex::new(BTreeMap::new()),
        next: AtomicU64::new(1),
        hives: Mutex::new(BTreeMap::new()),
        started_ms: now_ms(),
    });
    let api = Router::new()
        .route("/v1/heartbeats", post(heartbeat))
        .route("/v1/hives", get(hives))
        .route("/v1/hives/{alias}/capabilities", get(hive_capabilities))
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(job_summary).delete(cancel))
        .route("/v1/jobs/{id}/events", get(events))
        .route("/v1/chat/completions", post(chat_completions))
        .route_layer(axum::middleware::from_fn_with_state(queen.clone(), auth));
    let router = Router::new().route("/health", get(health)).merge(api).with_state(queen);
    Ok(Server { listener, router, addr })
}

async fn auth(State(queen): State<Arc<Queen>>, request: Request, next: Next) -> Response {
    let expected = rbee_core::proto::bearer(&queen.config.token);
    let given = request.headers().get("authorization").and_then(|v| v.to_str().ok());
    if given != Some(expected.as_str()) {
        return ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong token").into_response();
    }
    next.run(request).await
}

async fn health() -> Json<QueenHealth> {
    Json(QueenHealth { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into(), pid: std::process::id() })
}

async fn submit(State(queen): State<Arc<Queen>>, Json(operation): Json<Operation>) -> Response {
    if let Err(removed) = operation.check_supported() {
        return ApiError::new(StatusCode::BAD_REQUEST, removed.to_string()).into_response();
    }
    let n = queen.next.fetch_add(1, Ordering::Relaxed);
    let id = format!("job-{}-{n}", now_ms());
    let job = Arc::new(Job {
        id: id.clone(),
        operation,
        submitted_ms: now_ms(),
        events: Mutex::new(Vec::new()),
        done: AtomicBool::new(false),
        cancel: Arc::default(),
        changed: Notify::new(),
    });
    {
        let mut jobs = queen.jobs.lock().expect("jobs lock");
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
        jobs.insert(id.clone(), job.clone());
    }
    let connect = queen.config.connect.clone();
    let link = QueenLink {
        url: queen.url.clone(),
        interval_ms: u64::try_from(queen.config.heartbeat.as_millis()).unwrap_or(5000),
        token: queen.config.token.clone(),
    };
    let queen = queen.clone();
    tokio::spawn(async move {
        let ctx = RunContext {
            cancel: job.cancel.clone(),
            queen_link: Some(link),
            http: Some(Arc::new(crate::http::HyperGet::default())),
            ..RunContext::default()
        };
        let on_event = |event| job.push(JobEventBody::Sync { event });
        let result = match job.operation.should_forward_to_hive() {
            true => forward(&queen, &job).await,
            false => {
                let result = run_operation(&job.operation, connect.as_ref(), &ctx, &on_event).await;
                refresh_catalogs(&queen, &job, &result).await;
                result
            }
        };
        job.push(JobEventBody::Result { exit_code: result.exit_code(), result });
        job.done.store(true, Ordering::Release);
        job.changed.notify_waiters();
    });
    let events_url = format!("/v1/jobs/{id}/events");
    (StatusCode::CREATED, Json(Submitted { job_id: id, events_url })).into_response()
}

async fn heartbeat(
    State(queen): State<Arc<Queen>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    Json(beat): Json<Heartbeat>,
) -> StatusCode {
    queen.hives.lock().expect("hives lock").insert(beat.alias.clone(), (now_ms(), peer.ip(), beat));
    StatusCode::NO_CONTENT
}

/// The hive registry: every hive that sent a heartbeat; stale after three missed beats.
async fn hives(State(queen): State<Arc<Queen>>) -> Json<Vec<HiveEntry>> {
    let now = now_ms();
    let hives = queen.hives.lock().expect("hives lock");
    Json(
        hives
            .values()
            .map(|(seen, ip, beat)| {
                let age_ms = now.saturating_sub(*seen);
                HiveEntry {
                    stale: age_ms > 3 * beat.interval_ms,
                    age_ms,
                    heartbeat: beat.clone(),
                    address: ip.to_string(),
                }
            })
            .collect(),
    )
}

/// Forwards to the hive's own API, with the token, at the address its heartbeats come from.
async fn hive_capabilities(State(queen): State<Arc<Queen>>, Path(alias): Path<String>) -> Response {
    let target = queen
        .hives
        .lock()
        .expect("hives lock")
        .get(&alias)
        .map(|(_, ip, beat)| std::net::SocketAddr::new(*ip, beat.port));
    let Some(addr) = target else {
        let msg = format!("no hive {alias} in the registry: it has not sent a heartbeat (see `rbee hive list`)");
        return ApiError::new(StatusCode::NOT_FOUND, msg).into_response();
    };
    let answer = async {
        let response = to_hive(&queen, addr, "GET", "/v1/capabilities", Vec::new()).await?;
        let status = response.status().as_u16();
        Ok::<_, rbee_http::HttpError>((status, rbee_http::collect(response).await?))
    };
    let url = format!("http://{addr}/v1/capabilities");
    let answer = tokio::time::timeout(Duration::from_secs(30), answer)
        .await
        .unwrap_or_else(|_| Err(rbee_http::HttpError::Timeout { url, after: Duration::from_secs(30) }));
    match answer {
        Ok((200, body)) => match serde_json::from_slice::<rbee_core::proto::hive::Capabilities>(&body) {
            Ok(v) => Json(v).into_response(),
            Err(e) => ApiError::new(StatusCode::BAD_GATEWAY, format!("hive {alias}: unexpected capabilities: {e}"))
                .into_response(),
        },
        Ok((status, body)) => {
            let msg = format!("hive {alias} answered {status}: {}", String::from_utf8_lossy(&body));
            ApiError::new(StatusCode::BAD_GATEWAY, msg).into_response()
        }
        Err(e) => ApiError::new(StatusCode::BAD_GATEWAY, format!("hive {alias} at {addr}: {e}")).into_response(),
    }
}

/// True during the queen's first heartbeat interval (plus a second), while hives that
/// reported to a previous queen are still finding this one.
fn started_recently(queen: &Queen) -> bool {
    now_ms().saturating_sub(queen.started_ms) < u64::try_from(queen.config.heartbeat.as_millis()).unwrap_or(0) + 1000
}

/// A hive's API address, if it is in the registry and fresh.
fn hive_addr(queen: &Queen, alias: &str) -> Result<std::net::SocketAddr, String> {
    let hives = queen.hives.lock().expect("hives lock");
    let Some((seen, ip, beat)) = hives.get(alias) else {
        let known: Vec<&str> = hives.keys().map(String::as_str).collect();
        let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
        return Err(format!(
            "no hive {alias} in the registry (known: {known}): it has not sent a heartbeat; run `rbee sync` or \
             `rbee hive start {alias}`"
        ));
    };
    let age = now_ms().saturating_sub(*seen);
    if age > 3 * beat.interval_ms {
        return Err(format!(
            "hive {alias} is stale: its last heartbeat was {:.1}s ago; check it with `rbee hive status {alias}`",
            age as f64 / 1000.0
        ));
    }
    Ok(std::net::SocketAddr::new(*ip, beat.port))
}

/// Picks the hive and worker for a model: a ready worker serving it on a fresh hive (only
/// `only` if given), taking turns between several.
fn route(queen: &Queen, model: &str, only: Option<&str>) -> Result<(String, String), String> {
    let now = now_ms();
    let hives = queen.hives.lock().expect("hives lock");
    let fresh: Vec<&(u64, std::net::IpAddr, Heartbeat)> = hives
        .values()
        .filter(|(seen, _, beat)| now.saturating_sub(*seen) <= 3 * beat.interval_ms)
        .filter(|(_, _, beat)| only.is_none_or(|a| a == beat.alias))
        .collect();
    let candidates: Vec<(String, String)> = fresh
        .iter()
        .flat_map(|(_, _, beat)| {
            beat.processes
                .iter()
                .filter(|p| p.state == rbee_core::hive_api::WorkerState::Ready && p.serves(model))
                .map(|p| (beat.alias.clone(), p.id.clone()))
        })
        .collect();
    if !candidates.is_empty() {
        let turn = queen.next.fetch_add(1, Ordering::Relaxed) as usize;
        return Ok(candidates[turn % candidates.len()].clone());
    }
    if let Some(alias) = only
        && !fresh.iter().any(|(_, _, b)| b.alias == alias)
    {
        drop(hives);
        hive_addr(queen, alias)?;
        return Err(format!("no hive {alias}"));
    }
    let starting = fresh.iter().any(|(_, _, b)| {
        b.processes.iter().any(|p| p.serves(model) && p.state == rbee_core::hive_api::WorkerState::Starting)
    });
    if starting {
        return Err(format!(
            "the worker for {model} is still starting; try again once `rbee worker list` shows it ready"
        ));
    }
    let (hive, kind) = fresh.first().map_or(("HIVE".to_owned(), "TYPE".to_owned()), |(_, _, b)| {
        (b.alias.clone(), b.workers.first().cloned().unwrap_or_else(|| "TYPE".into()))
    });
    Err(format!(
        "no ready worker serves model {model}{}; start one: `rbee worker spawn --hive {hive} --type {kind} --model {model}`",
        only.map_or(String::new(), |a| format!(" on hive {a}"))
    ))
}

/// [`route`], waiting out the first heartbeat interval of a queen that just started.
async fn route_soon(queen: &Queen, model: &str, only: Option<&str>) -> Result<(String, String), String> {
    loop {
        match route(queen, model, only) {
            Err(_) if started_recently(queen) => tokio::time::sleep(Duration::from_millis(100)).await,
            result => return result,
        }
    }
}

/// Runs a forwarded operation on its hive: the hive's events join the job's stream, and its
/// result is the job's result. Cancelling the job closes the connection, which stops the
/// operation on the hive.
async fn forward(queen: &Queen, job: &Job) -> OperationResult {
    let mut operation = job.operation.clone();
    let alias = match &mut operation {
        Operation::Infer { hive_alias, model, .. } => match route_soon(queen, model, hive_alias.as_deref()).await {
            Ok((alias, worker)) => {
                job.push(JobEventBody::Log { message: format!("routing to worker {worker} on hive {alias}") });
                *hive_alias = Some(alias.clone());
                alias
            }
            Err(e) => return OperationResult::error(e),
        },
        op => op.hive_alias().unwrap_or_default().to_owned(),
    };
    // A queen that just started learns of its hives within one heartbeat interval.
    let deadline = tokio::time::Instant::now() + queen.config.heartbeat + Duration::from_secs(1);
    let addr = loop {
        match hive_addr(queen, &alias) {
            Ok(a) => break a,
            Err(_) if tokio::time::Instant::now() < deadline && started_recently(queen) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return OperationResult::error(e),
        }
    };
    let on_event = |event| job.push(JobEventBody::Hive { hive: alias.clone(), event });
    run_on_hive(queen, &alias, addr, &operation, &on_event, &job.cancel).await
}

/// A request to a hive's API, with the queen's token.
async fn to_hive(
    queen: &Queen,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<rbee_http::Response, rbee_http::HttpError> {
    let bearer = rbee_core::proto::bearer(&queen.config.token);
    let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    rbee_http::send(method, &format!("http://{addr}{path}"), &headers, body).await
}

/// Runs `operation` on the hive at `addr`: its events go to `on_event`, its result updates the
/// registry and is returned. Setting `cancel` closes the connection, which stops the operation
/// on the hive.
async fn run_on_hive(
    queen: &Queen,
    alias: &str,
    addr: std::net::SocketAddr,
    operation: &Operation,
    on_event: &(dyn Fn(rbee_core::hive_api::HiveEvent) + Send + Sync),
    cancel: &AtomicBool,
) -> OperationResult {
    let body = serde_json::to_vec(operation).unwrap_or_default();
    let response = match to_hive(queen, addr, "POST", "/v1/operations", body).await {
        Ok(r) => r,
        Err(e) => return OperationResult::error(format!("hive {alias} at {addr}: {e}")),
    };
    let status = response.status();
    if !status.is_success() {
        let body = rbee_http::collect(response).await.unwrap_or_default();
        return OperationResult::error(format!("hive {alias} answered {status}: {}", String::from_utf8_lossy(&body)));
    }
    let mut lines = rbee_http::Lines::new(response);
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line,
            () = async { while !cancel.load(Ordering::Relaxed) { tokio::time::sleep(Duration::from_millis(100)).await } } => {
                return OperationResult::error(format!("cancelled; hive {alias} stopped the operation"));
            }
        };
        match line {
            Ok(Some(line)) if line.trim().is_empty() => {}
            Ok(Some(line)) => match serde_json::from_str::<rbee_core::hive_api::HiveEvent>(&line) {
                Ok(rbee_core::hive_api::HiveEvent::Result { result }) => {
                    note_processes(queen, alias, &result);
                    return result;
                }
                Ok(event) => on_event(event),
                Err(e) => return OperationResult::error(format!("hive {alias} sent a bad event: {e}")),
            },
            Ok(None) => return OperationResult::error(format!("hive {alias} ended the operation without a result")),
            Err(e) => return OperationResult::error(format!("hive {alias}: {e}")),
        }
    }
}

/// A forwarded operation's answer about worker processes updates the registry at once, so a
/// command right after `rbee worker spawn` sees the worker without waiting for a heartbeat.
fn note_processes(queen: &Queen, alias: &str, result: &OperationResult) {
    let mut hives = queen.hives.lock().expect("hives lock");
    let Some((_, _, beat)) = hives.get_mut(alias) else { return };
    match result {
        OperationResult::Workers { workers, .. } => beat.processes = workers.clone(),
        OperationResult::Worker { worker, .. } => {
            beat.processes.retain(|p| p.id != worker.id);
            if worker.state != rbee_core::hive_api::WorkerState::Stopped {
                beat.processes.push((**worker).clone());
            }
        }
        OperationResult::Catalog { workers, .. } => beat.workers = workers.clone(),
        _ => {}
    }
}

/// After a sync changed hosts' workers, tells those hives to re-read their worker catalog.
async fn refresh_catalogs(queen: &Queen, job: &Job, result: &OperationResult) {
    let OperationResult::Sync(outcome) = result else { return };
    let Some(report) = &outcome.report else { return };
    for hive in &report.hives {
        let changed = hive.steps_done.iter().any(|s| s.contains("/worker/") || s.contains("/remove-worker/"));
        if !changed {
            continue;
        }
        let Ok(addr) = hive_addr(queen, &hive.alias) else { continue };
        let op = Operation::WorkerCatalogRefresh { hive_alias: hive.alias.clone() };
        let never = AtomicBool::new(false);
        let message = match run_on_hive(queen, &hive.alias, addr, &op, &|_| {}, &never).await {
            OperationResult::Catalog { .. } => format!("{}: worker catalog refreshed", hive.alias),
            OperationResult::Error { message, .. } => {
                format!("{}: worker catalog refresh failed: {message}", hive.alias)
            }
            _ => format!("{}: worker catalog refresh gave no catalog", hive.alias),
        };
        job.push(JobEventBody::Log { message });
    }
}

/// OpenAI-compatible chat completions: routed like `Infer` to a ready worker serving the
/// request's `model`, through its hive; the answer (streaming or not) is passed through.
async fn chat_completions(State(queen): State<Arc<Queen>>, body: axum::body::Bytes) -> Response {
    let error = |status: StatusCode, kind: &'static str, message: String| {
        ApiError::openai(status, kind, message).into_response()
    };
    let request: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", format!("bad JSON: {e}")),
    };
    let Some(model) = request["model"].as_str() else {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "`model` is required".into());
    };
    let (alias, worker) = match route(&queen, model, None) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::NOT_FOUND, "model_not_found", e),
    };
    let addr = match hive_addr(&queen, &alias) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_GATEWAY, "hive_unavailable", e),
    };
    let path = format!("/v1/workers/{worker}/chat/completions");
    match to_hive(&queen, addr, "POST", &path, body.to_vec()).await {
        Ok(response) => rbee_http::passthrough(response).map(axum::body::Body::new),
        Err(e) => error(StatusCode::BAD_GATEWAY, "hive_unavailable", format!("hive {alias}: {e}")),
    }
}

fn summary(job: &Job) -> JobSummary {
    let exit_code = job.events.lock().expect("events lock").last().and_then(|e| match &e.body {
        JobEventBody::Result { exit_code, .. } => Some(*exit_code),
        _ => None,
    });
    let state = match (job.done.load(Ordering::Acquire), job.cancel.load(Ordering::Relaxed)) {
        (true, true) => "cancelled",
        (true, false) => "done",
        (false, _) => "running",
    };
    JobSummary {
        job_id: job.id.clone(),
        operation: job.operation.wire_name(),
        state: state.into(),
        exit_code,
        submitted_ms: job.submitted_ms,
    }
}

async fn list(State(queen): State<Arc<Queen>>) -> Json<Vec<JobSummary>> {
    let jobs: Vec<Arc<Job>> = queen.jobs.lock().expect("jobs lock").values().cloned().collect();
    Json(jobs.iter().map(|j| summary(j)).collect())
}

fn find(queen: &Queen, id: &str) -> Option<Arc<Job>> {
    queen.jobs.lock().expect("jobs lock").get(id).cloned()
}

async fn job_summary(State(queen): State<Arc<Queen>>, Path(id): Path<String>) -> Response {
    match find(&queen, &id) {
        Some(job) => Json(summary(&job)).into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, format!("no job {id}")).into_response(),
    }
}

async fn cancel(State(queen): State<Arc<Queen>>, Path(id): Path<String>) -> Response {
    match find(&queen, &id) {
        Some(job) => {
            job.cancel.store(true, Ordering::Relaxed);
            job.push(JobEventBody::Log { message: "cancel requested: no new step will start".into() });
            (StatusCode::ACCEPTED, Json(summary(&job))).into_response()
        }
        None => ApiError::new(StatusCode::NOT_FOUND, format!("no job {id}")).into_response(),
    }
}

async fn events(State(queen): State<Arc<Queen>>, Path(id): Path<String>) -> Response {
    let Some(job) = find(&queen, &id) else {
        return ApiError::new(StatusCode::NOT_FOUND, format!("no job {id}")).into_response();
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
                let batch = job.events.lock().expect("events lock")[next..].to_vec();
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
