//! Inference routing and the OpenAI-compatible `POST /v1/chat/completions`.
//!
//! Clients name a model, not a machine: the queen alone knows (from heartbeats) which workers
//! are ready and where, so it picks one, spreading requests over several, and says exactly
//! which command would start one when none serves the model. `rbee infer` jobs and chat
//! completions share this routing so both reach the same workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rbee_core::execute::now_ms;
use rbee_core::proto::hive::WorkerState;
use rbee_http::ApiError;

use crate::forward::to_hive;
use crate::metrics::Outcome;
use crate::registry::{HiveError, Registry};
use crate::routes::Queen;

/// Whose turn it is among several workers serving a model: each routed request takes the next.
#[derive(Default)]
pub(crate) struct Turns(AtomicU64);

impl Turns {
    fn next(&self) -> usize {
        self.0.fetch_add(1, Ordering::Relaxed) as usize
    }
}

/// The worker a request goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Routed {
    /// The hive it runs on.
    pub(crate) hive: String,
    /// Its id on that hive.
    pub(crate) worker: String,
}

/// Why no worker could take a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RouteError {
    /// The hive the request was restricted to is unknown or stale.
    #[error(transparent)]
    Hive(#[from] HiveError),
    /// The restricted-to hive came back between two looks at the registry.
    #[error("no hive {alias}")]
    NoHive {
        /// Its alias.
        alias: String,
    },
    /// A worker for the model exists but has not loaded it yet.
    #[error("the worker for {model} is still starting; try again once `rbee worker list` shows it ready")]
    Starting {
        /// The model asked for.
        model: String,
    },
    /// Nothing serves the model.
    #[error(
        "no ready worker serves model {model}{}; start one: `rbee worker spawn --hive {hive} --type {kind} --model {model}`",
        only.as_ref().map_or(String::new(), |a| format!(" on hive {a}"))
    )]
    NoWorker {
        /// The model asked for.
        model: String,
        /// The hive the request was restricted to, if any.
        only: Option<String>,
        /// A hive to suggest spawning on (`HIVE` when none is fresh).
        hive: String,
        /// A worker type to suggest (`TYPE` when that hive has none).
        kind: String,
    },
}

/// How loaded a worker is: `None` when it takes no new requests (draining, stopping, or
/// excluded after a failure), else its requests in flight.
pub(crate) type Load<'a> = &'a (dyn Fn(&str, &str) -> Option<u64> + Sync);

/// Picks the hive and worker for `model` at `now_ms`: among the ready workers serving it on
/// fresh hives (only `only` if given) that take requests, the one with the fewest requests in
/// flight, taking turns between equals. A deployment's name reaches its replicas.
pub(crate) fn route(
    registry: &Registry,
    turns: &Turns,
    model: &str,
    only: Option<&str>,
    now_ms: u64,
    load: Load<'_>,
) -> Result<Routed, RouteError> {
    let fresh: Vec<_> =
        registry.fresh(now_ms).into_iter().filter(|beat| only.is_none_or(|a| a == beat.alias)).collect();
    let candidates: Vec<(u64, Routed)> = fresh
        .iter()
        .flat_map(|beat| {
            beat.processes.iter().filter(|p| p.state == WorkerState::Ready && p.serves(model)).filter_map(|p| {
                Some((load(&beat.alias, &p.id)?, Routed { hive: beat.alias.clone(), worker: p.id.clone() }))
            })
        })
        .collect();
    if let Some(least) = candidates.iter().map(|(n, _)| *n).min() {
        let tied: Vec<&Routed> = candidates.iter().filter(|(n, _)| *n == least).map(|(_, r)| r).collect();
        return Ok(tied[turns.next() % tied.len()].clone());
    }
    if let Some(alias) = only
        && fresh.is_empty()
    {
        registry.fresh_addr(alias, now_ms)?;
        return Err(RouteError::NoHive { alias: alias.to_owned() });
    }
    let starting =
        fresh.iter().any(|b| b.processes.iter().any(|p| p.serves(model) && p.state == WorkerState::Starting));
    if starting {
        return Err(RouteError::Starting { model: model.to_owned() });
    }
    let (hive, kind) = fresh.first().map_or(("HIVE".to_owned(), "TYPE".to_owned()), |b| {
        (b.alias.clone(), b.workers.first().cloned().unwrap_or_else(|| "TYPE".into()))
    });
    Err(RouteError::NoWorker { model: model.to_owned(), only: only.map(str::to_owned), hive, kind })
}

/// [`route`], waiting out the first heartbeat interval of a queen that just started, while
/// the worker's hive may not have reported yet.
pub(crate) async fn route_soon(queen: &Queen, model: &str, only: Option<&str>) -> Result<Routed, RouteError> {
    loop {
        let load = |hive: &str, worker: &str| queen.deployments.load(hive, worker);
        match route(&queen.registry, &queen.turns, model, only, now_ms(), &load) {
            Err(_) if queen.registry.warming_up(now_ms()) => tokio::time::sleep(Duration::from_millis(100)).await,
            result => return result,
        }
    }
}

/// OpenAI-compatible chat completions: routed like `Infer` to a ready worker serving the
/// request's `model`, through its hive; the answer (streaming or not) is passed through.
pub(crate) async fn chat_completions(State(queen): State<Arc<Queen>>, body: axum::body::Bytes) -> Response {
    let started = std::time::Instant::now();
    let error = |status: StatusCode, kind: &'static str, message: String| {
        ApiError::openai(status, kind, message).into_response()
    };
    let request: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            queen.metrics.request("", Outcome::BadRequest);
            return error(StatusCode::BAD_REQUEST, "invalid_request_error", format!("bad JSON: {e}"));
        }
    };
    let Some(model) = request["model"].as_str() else {
        queen.metrics.request("", Outcome::BadRequest);
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "`model` is required".into());
    };
    // A replica that fails before answering is tried once more, on another replica.
    let mut failed: Vec<Routed> = Vec::new();
    loop {
        let load = |hive: &str, worker: &str| {
            let excluded = failed.iter().any(|f| f.hive == hive && f.worker == worker);
            if excluded { None } else { queen.deployments.load(hive, worker) }
        };
        let routed = match route(&queen.registry, &queen.turns, model, None, now_ms(), &load) {
            Ok(r) => r,
            Err(e) if failed.is_empty() => {
                // Any name a client sends is not a label: only a declared deployment's is.
                let label = if queen.deployments.is_declared(model) { model } else { "" };
                queen.metrics.request(label, Outcome::NoWorker);
                return error(StatusCode::NOT_FOUND, "model_not_found", deployment_error(&queen, model, e));
            }
            Err(_) => {
                queen.metrics.request(model, Outcome::Unavailable);
                return error(
                    StatusCode::BAD_GATEWAY,
                    "worker_unavailable",
                    format!("replica {} failed and no other is ready", failed[0].worker),
                );
            }
        };
        let guard = queen.deployments.begin_request(&routed.hive, &routed.worker);
        let sent = match queen.registry.fresh_addr(&routed.hive, now_ms()) {
            Ok(addr) => {
                let path = format!("/v1/workers/{}/chat/completions", routed.worker);
                to_hive(&queen, &routed.hive, addr, "POST", &path, body.to_vec()).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        // Failed before answering: no connection, or its hive could not reach the worker.
        let failure = match &sent {
            Ok(r) if r.status() == StatusCode::BAD_GATEWAY => {
                Some(format!("worker {} answered {}", routed.worker, r.status()))
            }
            Ok(_) => None,
            Err(e) => Some(e.clone()),
        };
        if let Some(why) = failure
            && failed.is_empty()
        {
            drop(guard);
            tracing::warn!(hive = %routed.hive, worker = %routed.worker, "{why}; trying another replica");
            failed.push(routed);
            continue;
        }
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                queen.metrics.request(model, Outcome::Unavailable);
                return error(StatusCode::BAD_GATEWAY, "hive_unavailable", format!("hive {}: {e}", routed.hive));
            }
        };
        let mut response = rbee_http::passthrough(response);
        if let Ok(value) = axum::http::HeaderValue::from_str(&format!("{}/{}", routed.hive, routed.worker)) {
            response.headers_mut().insert("x-rbee-worker", value);
        }
        // The request counts as in flight until its whole answer has been sent; then (or when
        // the client goes away) it is counted, timed and its tokens added.
        use http_body_util::BodyExt;
        let (parts, body) = response.into_parts();
        let header = |name| parts.headers.get(name).and_then(|v: &axum::http::HeaderValue| v.to_str().ok());
        let content_type = header(axum::http::header::CONTENT_TYPE).unwrap_or("");
        let length = header(axum::http::header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
        let answer = queen.metrics.answer(model, started, parts.status.is_success(), content_type, length);
        let stream = Box::pin(body.into_data_stream());
        let stream =
            futures_util::stream::unfold((stream, answer, guard), |(mut stream, mut answer, guard)| async move {
                let Some(chunk) = futures_util::StreamExt::next(&mut stream).await else {
                    answer.finished();
                    return None;
                };
                match &chunk {
                    Ok(bytes) => answer.chunk(bytes),
                    Err(_) => answer.broken(),
                }
                Some((chunk, (stream, answer, guard)))
            });
        return axum::http::Response::from_parts(parts, axum::body::Body::from_stream(stream));
    }
}

/// A route error, with the deployment's own status when `model` names a deployment.
fn deployment_error(queen: &Queen, model: &str, e: RouteError) -> String {
    if queen.deployments.is_declared(model)
        && let Ok(status) = queen.deployments.status_of(model)
    {
        return format!("deployment {model} has no ready replica: {}", status.message);
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::{INTERVAL_MS, beat, ip, worker};

    const NOW: u64 = 100_000;

    fn routed(hive: &str, worker: &str) -> Routed {
        Routed { hive: hive.into(), worker: worker.into() }
    }

    #[test]
    fn picks_only_ready_workers_for_the_model_on_fresh_hives() {
        let registry = Registry::new(0, INTERVAL_MS);
        let turns = Turns::default();
        registry.record(
            beat(
                "alpha",
                7000,
                vec![
                    worker("starting", "llama", WorkerState::Starting),
                    worker("other-model", "qwen", WorkerState::Ready),
                    worker("unresponsive", "llama", WorkerState::Unresponsive),
                    worker("stopped", "llama", WorkerState::Stopped),
                ],
            ),
            ip(1),
            NOW,
        );
        // Stale: three missed beats and a millisecond.
        registry.record(
            beat("old", 7001, vec![worker("on-stale", "llama", WorkerState::Ready)]),
            ip(2),
            NOW - 3 * INTERVAL_MS - 1,
        );
        registry.record(beat("zeta", 7002, vec![worker("good", "/models/llama.gguf", WorkerState::Ready)]), ip(3), NOW);
        for _ in 0..5 {
            assert_eq!(route(&registry, &turns, "llama", None, NOW, &|_, _| Some(0)), Ok(routed("zeta", "good")));
        }
        assert_eq!(route(&registry, &turns, "qwen", None, NOW, &|_, _| Some(0)), Ok(routed("alpha", "other-model")));
    }

    #[test]
    fn takes_turns_between_several_ready_workers() {
        let registry = Registry::new(0, INTERVAL_MS);
        let turns = Turns::default();
        registry.record(beat("alpha", 7000, vec![worker("a1", "llama", WorkerState::Ready)]), ip(1), NOW);
        registry.record(beat("beta", 7001, vec![worker("b1", "llama", WorkerState::Ready)]), ip(2), NOW);
        let picks: Vec<Routed> =
            (0..4).map(|_| route(&registry, &turns, "llama", None, NOW, &|_, _| Some(0)).expect("routed")).collect();
        assert_eq!(
            picks,
            vec![routed("alpha", "a1"), routed("beta", "b1"), routed("alpha", "a1"), routed("beta", "b1")]
        );
    }

    #[test]
    fn honours_a_hive_restriction() {
        let registry = Registry::new(0, INTERVAL_MS);
        let turns = Turns::default();
        registry.record(beat("alpha", 7000, vec![worker("a1", "llama", WorkerState::Ready)]), ip(1), NOW);
        registry.record(beat("beta", 7001, vec![worker("b1", "llama", WorkerState::Ready)]), ip(2), NOW);
        registry.record(beat("gamma", 7002, vec![]), ip(3), NOW);
        for _ in 0..3 {
            assert_eq!(route(&registry, &turns, "llama", Some("beta"), NOW, &|_, _| Some(0)), Ok(routed("beta", "b1")));
        }

        let err = route(&registry, &turns, "llama", Some("gamma"), NOW, &|_, _| Some(0)).unwrap_err();
        assert_eq!(
            err,
            RouteError::NoWorker {
                model: "llama".into(),
                only: Some("gamma".into()),
                hive: "gamma".into(),
                kind: "llama-cpp".into()
            }
        );
        assert!(err.to_string().contains("no ready worker serves model llama on hive gamma;"), "{err}");
    }

    #[test]
    fn restriction_to_an_unknown_or_stale_hive_says_so() {
        let registry = Registry::new(0, INTERVAL_MS);
        let turns = Turns::default();
        registry.record(beat("alpha", 7000, vec![worker("a1", "llama", WorkerState::Ready)]), ip(1), NOW);
        let err = route(&registry, &turns, "llama", Some("ghost"), NOW, &|_, _| Some(0)).unwrap_err();
        assert!(matches!(&err, RouteError::Hive(HiveError::Unknown { alias, .. }) if alias == "ghost"), "{err:?}");

        let later = NOW + 3 * INTERVAL_MS + 1;
        let err = route(&registry, &turns, "llama", Some("alpha"), later, &|_, _| Some(0)).unwrap_err();
        assert!(matches!(&err, RouteError::Hive(HiveError::Stale { alias, .. }) if alias == "alpha"), "{err:?}");
        assert!(err.to_string().contains("`rbee hive status alpha`"), "{err}");
    }

    #[test]
    fn no_worker_for_the_model_names_rbee_worker_spawn() {
        let registry = Registry::new(0, INTERVAL_MS);
        let turns = Turns::default();
        let err = route(&registry, &turns, "llama", None, NOW, &|_, _| Some(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no ready worker serves model llama; start one: `rbee worker spawn --hive HIVE --type TYPE --model llama`"
        );

        registry.record(beat("alpha", 7000, vec![worker("q", "qwen", WorkerState::Ready)]), ip(1), NOW);
        let err = route(&registry, &turns, "llama", None, NOW, &|_, _| Some(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no ready worker serves model llama; start one: `rbee worker spawn --hive alpha --type llama-cpp --model llama`"
        );
    }

    #[test]
    fn a_starting_worker_is_waited_for_not_replaced() {
        let registry = Registry::new(0, INTERVAL_MS);
        let turns = Turns::default();
        registry.record(beat("alpha", 7000, vec![worker("w", "llama", WorkerState::Starting)]), ip(1), NOW);
        let err = route(&registry, &turns, "llama", None, NOW, &|_, _| Some(0)).unwrap_err();
        assert_eq!(err, RouteError::Starting { model: "llama".into() });
        assert!(err.to_string().contains("`rbee worker list`"), "{err}");
    }

    #[test]
    fn the_least_loaded_worker_wins_and_workers_taking_no_requests_are_skipped() {
        let registry = Registry::new(0, INTERVAL_MS);
        let turns = Turns::default();
        registry.record(beat("alpha", 7000, vec![worker("a1", "llama", WorkerState::Ready)]), ip(1), NOW);
        registry.record(beat("beta", 7001, vec![worker("b1", "llama", WorkerState::Ready)]), ip(2), NOW);
        let busy_alpha = |hive: &str, _: &str| Some(if hive == "alpha" { 3 } else { 1 });
        for _ in 0..4 {
            assert_eq!(route(&registry, &turns, "llama", None, NOW, &busy_alpha), Ok(routed("beta", "b1")));
        }
        let beta_draining = |hive: &str, _: &str| (hive != "beta").then_some(9);
        for _ in 0..4 {
            assert_eq!(route(&registry, &turns, "llama", None, NOW, &beta_draining), Ok(routed("alpha", "a1")));
        }
        assert!(route(&registry, &turns, "llama", None, NOW, &|_, _| None).is_err());
    }
}
