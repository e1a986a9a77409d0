//! Calling hives: the queen does not run workers or models itself, it hands those operations
//! to the hive concerned and relays what comes back.
//!
//! Every call carries the queen's token and goes to the address the hive's heartbeats come
//! from. What a hive answers about its workers is written into the registry straight away, so
//! the next command does not wait a heartbeat to see it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rbee_core::execute::now_ms;
use rbee_core::package::OperationResult;
use rbee_core::proto::hive::HiveEvent;
use rbee_core::proto::operation::Operation;
use rbee_http::ApiError;

use crate::api::JobEventBody;
use crate::chat::{Routed, route_soon};
use crate::jobs::Job;
use crate::routes::Queen;

/// A request to hive `alias`'s API at `addr`, with that hive's credential; over TLS (the hive
/// verified as the holder of its alias's certificate from the queen's CA, the queen presenting
/// its own) when the hive said it serves TLS.
pub(crate) async fn to_hive(
    queen: &Queen,
    alias: &str,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<rbee_http::Response, rbee_http::HttpError> {
    let bearer = rbee_core::proto::bearer(&queen.trust.credential(alias));
    let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    let tls = queen.registry.tls(alias);
    let url = format!("{}://{addr}{path}", if tls { "https" } else { "http" });
    let sent = async {
        if tls {
            let name = rbee_core::credentials::hive_tls_name(alias);
            rbee_http::send_with_name(&queen.trust.client, &name, method, &url, &headers, body).await
        } else {
            rbee_http::send(method, &url, &headers, body).await
        }
    };
    // A hive answers at once (a stream's events follow): one that accepts the connection and
    // then says nothing is wedged.
    tokio::time::timeout(HIVE_ANSWER_TIMEOUT, sent)
        .await
        .unwrap_or_else(|_| Err(rbee_http::HttpError::Timeout { url: url.clone(), after: HIVE_ANSWER_TIMEOUT }))
}

/// How long a hive may take to answer a request's head.
const HIVE_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// `GET /v1/hives/{alias}/capabilities`: forwarded to the hive's own API, even if it is stale
/// (it may still answer, and the error says more than "stale" would).
pub(crate) async fn hive_capabilities(State(queen): State<Arc<Queen>>, Path(alias): Path<String>) -> Response {
    let Some(addr) = queen.registry.addr(&alias) else {
        let msg = format!("no hive {alias} in the registry: it has not sent a heartbeat (see `rbee hive list`)");
        return ApiError::new(StatusCode::NOT_FOUND, msg).into_response();
    };
    let answer = async {
        let response = to_hive(&queen, &alias, addr, "GET", "/v1/capabilities", Vec::new()).await?;
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

/// `GET /v1/hives/{alias}/logs?worker=ID&tail=N&follow=true`: the hive's answer (NDJSON
/// [`rbee_core::proto::hive::LogEvent`]s) passed through as it streams; the hive's errors
/// (no such worker) keep their status.
pub(crate) async fn hive_logs(
    State(queen): State<Arc<Queen>>,
    Path(alias): Path<String>,
    axum::extract::Query(query): axum::extract::Query<rbee_core::proto::hive::LogQuery>,
) -> Response {
    let Some(addr) = queen.registry.addr(&alias) else {
        let msg = format!("no hive {alias} in the registry: it has not sent a heartbeat (see `rbee hive list`)");
        return ApiError::new(StatusCode::NOT_FOUND, msg).into_response();
    };
    let path = format!("/v1/logs?{}", query.to_query());
    match to_hive(&queen, &alias, addr, "GET", &path, Vec::new()).await {
        Ok(response) if response.status().is_success() || response.status() == StatusCode::NOT_FOUND => {
            rbee_http::passthrough(response).map(axum::body::Body::new)
        }
        Ok(response) => {
            let status = response.status().as_u16();
            let body = rbee_http::collect(response).await.unwrap_or_default();
            let msg = format!("hive {alias} answered {status}: {}", String::from_utf8_lossy(&body));
            ApiError::new(StatusCode::BAD_GATEWAY, msg).into_response()
        }
        Err(e) => ApiError::new(StatusCode::BAD_GATEWAY, format!("hive {alias} at {addr}: {e}")).into_response(),
    }
}

/// Runs a forwarded operation on its hive: the hive's events join the job's stream, and its
/// result is the job's result. Cancelling the job closes the connection, which stops the
/// operation on the hive.
pub(crate) async fn forward(queen: &Queen, job: &Job) -> OperationResult {
    let mut operation = job.operation.clone();
    let alias = match &mut operation {
        Operation::Infer { hive_alias, model, .. } => match route_soon(queen, model, hive_alias.as_deref()).await {
            Ok(Routed { hive: alias, worker }) => {
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
        match queen.registry.fresh_addr(&alias, now_ms()) {
            Ok(a) => break a,
            Err(_) if tokio::time::Instant::now() < deadline && queen.registry.warming_up(now_ms()) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return OperationResult::error(e),
        }
    };
    let on_event = |event| job.push(JobEventBody::Hive { hive: alias.clone(), event });
    run_on_hive(queen, &alias, addr, &operation, &on_event, &job.cancel).await
}

/// Runs `operation` on the hive at `addr`: its events go to `on_event`, its result updates the
/// registry and is returned. Setting `cancel` closes the connection, which stops the operation
/// on the hive.
pub(crate) async fn run_on_hive(
    queen: &Queen,
    alias: &str,
    addr: std::net::SocketAddr,
    operation: &Operation,
    on_event: &(dyn Fn(HiveEvent) + Send + Sync),
    cancel: &AtomicBool,
) -> OperationResult {
    let body = serde_json::to_vec(operation).unwrap_or_default();
    let response = match to_hive(queen, alias, addr, "POST", "/v1/operations", body).await {
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
            // An operation may be quiet for long (a worker loading a model), so the stream has
            // no idle timeout of its own: the hive's heartbeats say whether it is still there.
            () = went_silent(queen, alias) => {
                return OperationResult::error(format!(
                    "hive {alias} stopped sending heartbeats during the operation: the host is down or cut off, and the operation's outcome there is unknown (see `rbee hive get {alias}`)"
                ));
            }
        };
        match line {
            Ok(Some(line)) if line.trim().is_empty() => {}
            Ok(Some(line)) => match serde_json::from_str::<HiveEvent>(&line) {
                Ok(HiveEvent::Result { result }) => {
                    queen.registry.note_result(alias, &result);
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

/// Returns once the registry holds `alias` as stale (it was fresh when the wait began).
async fn went_silent(queen: &Queen, alias: &str) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if matches!(queen.registry.fresh_addr(alias, now_ms()), Err(crate::registry::HiveError::Stale { .. })) {
            return;
        }
    }
}

/// After a sync changed hosts' workers, tells those hives to re-read their worker catalog, so
/// a worker type just installed can be spawned without restarting the hive.
pub(crate) async fn refresh_catalogs(queen: &Queen, job: &Job, result: &OperationResult) {
    let OperationResult::Sync(outcome) = result else { return };
    let Some(report) = &outcome.report else { return };
    for hive in &report.hives {
        let changed = hive.steps_done.iter().any(|s| s.contains("/worker/") || s.contains("/remove-worker/"));
        if !changed {
            continue;
        }
        let Ok(addr) = queen.registry.fresh_addr(&hive.alias, now_ms()) else { continue };
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
