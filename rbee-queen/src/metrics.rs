//! The queen's Prometheus metrics: `GET /metrics`, in the OpenMetrics text format.
//!
//! ```text
//! chat.rs   ─▶ requests, latency, tokens   (counted as each answer ends)
//! jobs.rs   ─▶ jobs by kind and outcome    (counted as each job ends)
//! reconcile ─▶ actions by kind             (counted as each is taken)
//! scrape    ─▶ hives by state, requests in flight per worker, desired/ready replicas
//!              (set from the registry and the reconciler's state, then encoded)
//! ```
//!
//! Counters and histograms are updated where their events happen (an atomic add behind a
//! read lock); the gauges are facts the queen already holds, so they are read at scrape time
//! rather than kept up to date on every change.
//!
//! Tokens: the queen never tokenises. For a streamed answer it counts the Server-Sent Events
//! whose `delta.content` is a non-empty string (llama.cpp's and vLLM's servers send one per
//! token; the opening role-only and closing events carry none); for a non-streamed one, the
//! answer's `usage.completion_tokens`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of [`QueenMetrics::render`]'s text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The longest SSE line looked at whole; the rest of a longer one is not read (a token's event
/// is far shorter).
const MAX_LINE: usize = 64 * 1024;
/// The most of a non-streamed answer kept to read its `usage`.
const MAX_JSON: usize = 1024 * 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    hive: String,
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabel {
    deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

/// How a chat completion ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered with a 2xx status and sent to its end.
    Ok,
    /// The worker answered an error status, or its answer broke off.
    Error,
    /// The client went away before the whole answer was sent.
    Cancelled,
    /// Not JSON, or no `model`.
    BadRequest,
    /// Nothing ready serves the model.
    NoWorker,
    /// The replica (and the one retry) failed before answering.
    Unavailable,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
            Outcome::BadRequest => "bad_request",
            Outcome::NoWorker => "no_worker",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// What the gauges show, read from the queen's state at scrape time.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Observed {
    /// Hives heard from within three heartbeat intervals.
    pub(crate) fresh_hives: u64,
    /// Hives silent for longer.
    pub(crate) stale_hives: u64,
    /// `(hive, worker, requests in flight)`: every worker of a fresh hive, and any other with
    /// requests still in flight.
    pub(crate) in_flight: Vec<(String, String, u64)>,
    /// `(deployment, desired replicas, ready replicas)`.
    pub(crate) deployments: Vec<(String, u32, u32)>,
}

/// The queen's registry and its metrics.
pub(crate) struct QueenMetrics {
    registry: Registry,
    /// One scrape at a time sets the gauges and encodes.
    scrape: Mutex<()>,
    hives: Family<StateLabel, Gauge>,
    jobs: Family<JobLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<ModelLabel, Histogram, fn() -> Histogram>,
    tokens: Family<ModelLabel, Counter>,
    in_flight: Family<WorkerLabels, Gauge>,
    desired: Family<DeploymentLabel, Gauge>,
    ready: Family<DeploymentLabel, Gauge>,
    actions: Family<ActionLabel, Counter>,
}

fn latency_histogram() -> Histogram {
    // 5 ms … 82 s: a short answer from a warm worker up to a long non-streamed generation.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Default for QueenMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let hives = Family::<StateLabel, Gauge>::default();
        let jobs = Family::<JobLabels, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<ModelLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let tokens = Family::<ModelLabel, Counter>::default();
        let in_flight = Family::<WorkerLabels, Gauge>::default();
        let desired = Family::<DeploymentLabel, Gauge>::default();
        let ready = Family::<DeploymentLabel, Gauge>::default();
        let actions = Family::<ActionLabel, Counter>::default();
        registry.register("rbee_hives", "Hives in the queen's registry, by state (fresh or stale)", hives.clone());
        registry.register("rbee_jobs", "Jobs finished, by operation and outcome", jobs.clone());
        registry.register(
            "rbee_inference_requests",
            "Chat completions, by model and outcome (model is empty when nothing serves or declares it)",
            requests.clone(),
        );
        registry.register(
            "rbee_inference_duration_seconds",
            "Time from a chat completion's arrival to the end of its answer, by model",
            latency.clone(),
        );
        registry.register(
            "rbee_tokens_streamed",
            "Completion tokens of answered chat completions, by model (SSE content events, or usage.completion_tokens)",
            tokens.clone(),
        );
        registry.register(
            "rbee_worker_requests_in_flight",
            "Chat completions being answered, per worker",
            in_flight.clone(),
        );
        registry.register("rbee_deployment_replicas_desired", "Replicas declared, per deployment", desired.clone());
        registry.register(
            "rbee_deployment_replicas_ready",
            "Replicas ready and taking requests, per deployment",
            ready.clone(),
        );
        registry.register("rbee_reconcile_actions", "Actions the reconciler took, by kind", actions.clone());
        Self {
            registry,
            scrape: Mutex::new(()),
            hives,
            jobs,
            requests,
            latency,
            tokens,
            in_flight,
            desired,
            ready,
            actions,
        }
    }
}

impl QueenMetrics {
    /// A job ended with `exit_code`; `kind` is its operation's wire name.
    pub(crate) fn job_finished(&self, kind: &str, exit_code: u8) {
        let outcome = match exit_code {
            rbee_core::proto::exit::OK => "ok",
            rbee_core::proto::exit::DRIFT => "drift",
            rbee_core::proto::exit::PARTIAL => "partial",
            _ => "error",
        };
        self.jobs.get_or_create(&JobLabels { kind: kind.to_owned(), outcome }).inc();
    }

    /// The reconciler takes `action`.
    pub(crate) fn action(&self, action: &rbee_core::proto::deployment::Action) {
        use rbee_core::proto::deployment::Action;
        let action = match action {
            Action::Download { .. } => "download",
            Action::Start { .. } => "start",
            Action::Clear { .. } => "clear",
            Action::Drain { .. } => "drain",
            Action::Stop { .. } => "stop",
            Action::RolloutFailed { .. } => "rollout_failed",
            Action::RolloutDone { .. } => "rollout_done",
        };
        self.actions.get_or_create(&ActionLabel { action }).inc();
    }

    /// A chat completion that ended before reaching a worker.
    pub(crate) fn request(&self, model: &str, outcome: Outcome) {
        self.requests.get_or_create(&RequestLabels { model: model.to_owned(), outcome: outcome.label() }).inc();
    }

    /// Follows a worker's answer (its status, `content-type` and `content-length`) to a chat
    /// completion for `model` that arrived at `started`; it is counted when the returned
    /// [`Answer`] is dropped.
    pub(crate) fn answer(
        self: &Arc<Self>,
        model: &str,
        started: Instant,
        success: bool,
        content_type: &str,
        content_length: Option<u64>,
    ) -> Answer {
        let body = if content_type.starts_with("text/event-stream") {
            Body::Events { line: Vec::new() }
        } else if content_type.starts_with("application/json") {
            Body::Json { bytes: Vec::new() }
        } else {
            Body::Other
        };
        Answer {
            metrics: self.clone(),
            model: model.to_owned(),
            started,
            success,
            body,
            tokens: 0,
            length: content_length,
            sent: 0,
            finished: false,
            broken: false,
        }
    }

    /// The metrics in the OpenMetrics text format, the gauges set from `observed`.
    pub(crate) fn render(&self, observed: &Observed) -> String {
        let _one = rbee_core::locked(&self.scrape);
        self.hives.get_or_create(&StateLabel { state: "fresh" }).set(gauge(observed.fresh_hives));
        self.hives.get_or_create(&StateLabel { state: "stale" }).set(gauge(observed.stale_hives));
        // Workers and deployments that are gone disappear from the next scrape.
        self.in_flight.clear();
        for (hive, worker, n) in &observed.in_flight {
            self.in_flight.get_or_create(&WorkerLabels { hive: hive.clone(), worker: worker.clone() }).set(gauge(*n));
        }
        self.desired.clear();
        self.ready.clear();
        for (name, desired, ready) in &observed.deployments {
            let label = DeploymentLabel { deployment: name.clone() };
            self.desired.get_or_create(&label).set(i64::from(*desired));
            self.ready.get_or_create(&label).set(i64::from(*ready));
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

enum Body {
    /// Server-Sent Events: the line being read.
    Events {
        line: Vec<u8>,
    },
    /// A JSON answer, kept (up to [`MAX_JSON`]) to read its `usage` at the end.
    Json {
        bytes: Vec<u8>,
    },
    Other,
}

/// A worker's answer on its way to the client: counted, timed and its tokens added when
/// dropped (at its end, or when the client goes away).
pub(crate) struct Answer {
    metrics: Arc<QueenMetrics>,
    model: String,
    started: Instant,
    success: bool,
    body: Body,
    tokens: u64,
    /// The answer's `content-length`: once that much is sent the server may drop the body
    /// without reading its end, so that counts as finished too.
    length: Option<u64>,
    sent: u64,
    finished: bool,
    broken: bool,
}

impl Answer {
    /// A chunk of the answer went by.
    pub(crate) fn chunk(&mut self, chunk: &[u8]) {
        self.sent += chunk.len() as u64;
        if self.length.is_some_and(|n| self.sent >= n) {
            self.finished = true;
        }
        match &mut self.body {
            Body::Events { line } => self.tokens += count_content_events(line, chunk),
            Body::Json { bytes } => {
                let room = MAX_JSON.saturating_sub(bytes.len());
                bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Body::Other => {}
        }
    }

    /// Reading the answer from the hive failed.
    pub(crate) fn broken(&mut self) {
        self.broken = true;
    }

    /// The whole answer was sent.
    pub(crate) fn finished(&mut self) {
        self.finished = true;
    }

    fn outcome(&self) -> Outcome {
        match (self.success && !self.broken, self.finished) {
            (false, _) => Outcome::Error,
            (true, false) => Outcome::Cancelled,
            (true, true) => Outcome::Ok,
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        let outcome = self.outcome();
        if let Body::Json { bytes } = &self.body
            && outcome == Outcome::Ok
        {
            self.tokens += completion_tokens(bytes);
        }
        let m = &self.metrics;
        m.request(&self.model, outcome);
        let model = ModelLabel { model: std::mem::take(&mut self.model) };
        m.latency.get_or_create(&model).observe(self.started.elapsed().as_secs_f64());
        let tokens = m.tokens.get_or_create(&model);
        if self.tokens > 0 {
            tokens.inc_by(self.tokens);
        }
    }
}

/// `GET /metrics`.
pub(crate) async fn metrics(
    axum::extract::State(queen): axum::extract::State<Arc<crate::routes::Queen>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let text = queen.metrics.render(&observe(&queen));
    ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// The gauges' values, from the registry and the reconciler.
fn observe(queen: &crate::routes::Queen) -> Observed {
    let mut observed = Observed::default();
    let mut requests = queen.deployments.requests_in_flight();
    for entry in queen.registry.entries(rbee_core::execute::now_ms()) {
        if entry.stale {
            observed.stale_hives += 1;
            continue;
        }
        observed.fresh_hives += 1;
        let alias = entry.heartbeat.alias;
        for p in entry.heartbeat.processes.into_iter().filter(|p| p.state.is_alive()) {
            let n = requests.remove(&(alias.clone(), p.id.clone())).unwrap_or(0);
            observed.in_flight.push((alias.clone(), p.id, n));
        }
    }
    observed.in_flight.extend(requests.into_iter().map(|((hive, worker), n)| (hive, worker, n)));
    observed.deployments = queen.deployments.statuses().into_iter().map(|s| (s.name, s.replicas, s.ready)).collect();
    observed
}

/// `usage.completion_tokens` of a non-streamed answer (0 when it has none).
fn completion_tokens(bytes: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Usage {
        completion_tokens: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        usage: Option<Usage>,
    }
    serde_json::from_slice::<Answer>(bytes).ok().and_then(|a| a.usage?.completion_tokens).unwrap_or(0)
}

/// Reads `chunk` of an SSE stream whose unfinished line is `line`; returns how many events it
/// ended that carry a non-empty `content` string.
fn count_content_events(line: &mut Vec<u8>, chunk: &[u8]) -> u64 {
    let mut count = 0;
    for piece in chunk.split_inclusive(|b| *b == b'\n') {
        let (text, ends) = match piece.strip_suffix(b"\n") {
            Some(text) => (text, true),
            None => (piece, false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&text[..text.len().min(room)]);
        if ends {
            if carries_content(line) {
                count += 1;
            }
            line.clear();
        }
    }
    count
}

/// True for a `data:` line with `"content": "<at least one character>"` in it.
fn carries_content(line: &[u8]) -> bool {
    const KEY: &[u8] = b"\"content\"";
    let Some(mut rest) = line.strip_prefix(b"data:") else { return false };
    while let Some(at) = rest.windows(KEY.len()).position(|w| w == KEY) {
        rest = &rest[at + KEY.len()..];
        if let Some(value) = rest.trim_ascii_start().strip_prefix(b":") {
            let value = value.trim_ascii_start();
            if value.starts_with(b"\"") && !value.starts_with(b"\"\"") {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(content: Option<&str>) -> String {
        let delta = content.map_or(serde_json::json!({}), |c| serde_json::json!({"content": c}));
        format!("data: {}\n\n", serde_json::json!({"choices": [{"index": 0, "delta": delta}]}))
    }

    #[test]
    fn every_family_is_encoded_after_updates() {
        let metrics = Arc::new(QueenMetrics::default());
        metrics.job_finished("sync", 0);
        metrics.job_finished("sync", 3);
        metrics.request("", Outcome::NoWorker);
        {
            let mut answer = metrics.answer("chat", Instant::now(), true, "application/json", None);
            answer.chunk(br#"{"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 7}}"#);
            answer.finished();
        }
        let text = metrics.render(&Observed {
            fresh_hives: 2,
            stale_hives: 1,
            in_flight: vec![("h1".into(), "w1".into(), 3)],
            deployments: vec![("chat".into(), 2, 1)],
        });
        for line in [
            "# TYPE rbee_hives gauge",
            r#"rbee_hives{state="fresh"} 2"#,
            r#"rbee_hives{state="stale"} 1"#,
            "# TYPE rbee_jobs counter",
            r#"rbee_jobs_total{kind="sync",outcome="ok"} 1"#,
            r#"rbee_jobs_total{kind="sync",outcome="partial"} 1"#,
            r#"rbee_inference_requests_total{model="chat",outcome="ok"} 1"#,
            r#"rbee_inference_requests_total{model="",outcome="no_worker"} 1"#,
            "# TYPE rbee_inference_duration_seconds histogram",
            r#"rbee_inference_duration_seconds_count{model="chat"} 1"#,
            r#"rbee_tokens_streamed_total{model="chat"} 7"#,
            r#"rbee_worker_requests_in_flight{hive="h1",worker="w1"} 3"#,
            r#"rbee_deployment_replicas_desired{deployment="chat"} 2"#,
            r#"rbee_deployment_replicas_ready{deployment="chat"} 1"#,
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        // Gone from the queen's state, gone from the next scrape.
        let text = metrics.render(&Observed::default());
        assert!(!text.contains("worker=\"w1\""), "{text}");
        assert!(!text.contains("deployment=\"chat\""), "{text}");
        assert!(text.contains(r#"rbee_hives{state="fresh"} 0"#), "{text}");
    }

    #[test]
    fn reconcile_actions_are_counted_by_kind() {
        use rbee_core::proto::deployment::Action;
        let metrics = QueenMetrics::default();
        let done = Action::RolloutDone { deployment: "chat".into() };
        metrics.action(&done);
        metrics.action(&done);
        let text = metrics.render(&Observed::default());
        assert!(text.contains(r#"rbee_reconcile_actions_total{action="rollout_done"} 2"#), "{text}");
    }

    #[test]
    fn streamed_tokens_are_the_events_with_content_even_split_across_chunks() {
        let metrics = Arc::new(QueenMetrics::default());
        let stream = format!(
            "{}{}{}{}{}data: [DONE]\n\n",
            // llama.cpp opens with the role and a null content.
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n",
            sse(Some("Hel")),
            sse(Some("lo")),
            sse(Some("")),
            sse(None),
        );
        {
            let mut answer = metrics.answer("m", Instant::now(), true, "text/event-stream", None);
            for piece in stream.as_bytes().chunks(7) {
                answer.chunk(piece);
            }
            answer.finished();
        }
        let text = metrics.render(&Observed::default());
        assert!(text.contains(r#"rbee_tokens_streamed_total{model="m"} 2"#), "{text}");
        assert!(text.contains(r#"rbee_inference_requests_total{model="m",outcome="ok"} 1"#), "{text}");
    }

    #[test]
    fn an_answer_left_early_is_cancelled_and_a_failed_one_an_error() {
        let metrics = Arc::new(QueenMetrics::default());
        drop(metrics.answer("m", Instant::now(), true, "text/event-stream", None));
        let mut answer = metrics.answer("m", Instant::now(), false, "application/json", None);
        answer.chunk(br#"{"error": {"message": "no"}, "usage": {"completion_tokens": 5}}"#);
        answer.finished();
        drop(answer);
        let text = metrics.render(&Observed::default());
        assert!(text.contains(r#"rbee_inference_requests_total{model="m",outcome="cancelled"} 1"#), "{text}");
        assert!(text.contains(r#"rbee_inference_requests_total{model="m",outcome="error"} 1"#), "{text}");
        assert!(text.contains(r#"rbee_tokens_streamed_total{model="m"} 0"#), "{text}");
        assert!(text.contains(r#"rbee_inference_duration_seconds_count{model="m"} 2"#), "{text}");
    }

    /// The server drops an answer with a `content-length` once that much is sent, without
    /// reading its end: such answers were counted as cancelled.
    #[test]
    fn an_answer_sent_to_its_content_length_is_ok_without_its_end_being_read() {
        let metrics = Arc::new(QueenMetrics::default());
        let body = br#"{"usage": {"completion_tokens": 3}}"#;
        let mut answer = metrics.answer("m", Instant::now(), true, "application/json", Some(body.len() as u64));
        answer.chunk(&body[..10]);
        answer.chunk(&body[10..]);
        drop(answer);
        let text = metrics.render(&Observed::default());
        assert!(text.contains(r#"rbee_inference_requests_total{model="m",outcome="ok"} 1"#), "{text}");
        assert!(text.contains(r#"rbee_tokens_streamed_total{model="m"} 3"#), "{text}");
    }

    #[test]
    fn content_is_found_with_or_without_spaces_and_never_outside_data_lines() {
        assert!(carries_content(br#"data: {"delta": {"content": "x"}}"#));
        assert!(carries_content(br#"data:{"delta":{"content":"x"}}"#));
        assert!(!carries_content(br#"data: {"delta": {"content": ""}}"#));
        assert!(!carries_content(br#"data: {"delta": {"content": null}}"#));
        assert!(!carries_content(br#": keepalive "content": "x""#));
        assert!(!carries_content(b"data: [DONE]"));
    }
}
