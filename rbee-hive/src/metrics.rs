//! The hive's Prometheus metrics: `GET /metrics`, in the OpenMetrics text format.
//!
//! Everything here is a fact the hive already holds or can look up, so each scrape reads it
//! afresh: its worker processes by state, the bytes of each model in its models directory, and
//! each GPU's utilisation, memory and temperature from `nvidia-smi` (asked at most every few
//! seconds, however many scrapers ask; a host without `nvidia-smi` exports no GPU metrics).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rbee_core::proto::hive::WorkerState;

/// The content type of [`HiveMetrics::render`]'s text.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `nvidia-smi` query behind the GPU metrics.
const NVIDIA_SMI_ARGS: &[&str] =
    &["--query-gpu=index,utilization.gpu,memory.used,memory.total,temperature.gpu", "--format=csv,noheader,nounits"];

/// How long one `nvidia-smi` answer serves scrapes.
const GPU_MAX_AGE: Duration = Duration::from_secs(5);

const MIB: u64 = 1024 * 1024;

/// One GPU as `nvidia-smi` reports it; a field it reports as `[N/A]` (or `[Not Supported]`)
/// is `None` and not exported.
#[derive(Debug, Clone, PartialEq)]
struct GpuSample {
    index: u32,
    utilization_percent: Option<f64>,
    memory_used_mib: Option<u64>,
    memory_total_mib: Option<u64>,
    temperature_celsius: Option<f64>,
}

/// Parses `nvidia-smi` output for [`NVIDIA_SMI_ARGS`]; lines that are not five fields with an
/// index (an error message, say) are skipped: they describe no GPU.
fn parse_gpu_samples(output: &str) -> Vec<GpuSample> {
    output
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, utilization, used, total, temperature] = f.as_slice() else { return None };
            Some(GpuSample {
                index: index.parse().ok()?,
                utilization_percent: utilization.parse().ok(),
                memory_used_mib: used.parse().ok(),
                memory_total_mib: total.parse().ok(),
                temperature_celsius: temperature.parse().ok(),
            })
        })
        .collect()
}

/// This host's GPUs now; none when `nvidia-smi` is not installed, fails or does not answer in
/// time.
async fn gpu_samples() -> Vec<GpuSample> {
    let mut command = tokio::process::Command::new("nvidia-smi");
    command.args(NVIDIA_SMI_ARGS).stdin(std::process::Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(crate::capabilities::NVIDIA_SMI_TIMEOUT, command.output()).await {
        Ok(Ok(out)) if out.status.success() => parse_gpu_samples(&String::from_utf8_lossy(&out.stdout)),
        _ => Vec::new(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuLabel {
    gpu: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

/// What a scrape shows.
#[derive(Debug, Default, Clone, PartialEq)]
struct Observed {
    /// Every worker process's state.
    workers: Vec<WorkerState>,
    /// `(model name, bytes on disk)`.
    models: Vec<(String, u64)>,
    gpus: Vec<GpuSample>,
}

const WORKER_STATES: [&str; 5] = ["starting", "ready", "unresponsive", "crashed", "stopped"];

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The hive's registry and its metrics.
struct HiveMetrics {
    registry: Registry,
    /// One scrape at a time sets the gauges and encodes.
    scrape: Mutex<()>,
    workers: Family<StateLabel, Gauge>,
    gpu_utilization: Family<GpuLabel, Gauge<f64, AtomicU64>>,
    gpu_memory_used: Family<GpuLabel, Gauge>,
    gpu_memory_total: Family<GpuLabel, Gauge>,
    gpu_temperature: Family<GpuLabel, Gauge<f64, AtomicU64>>,
    model_bytes: Family<ModelLabel, Gauge>,
    /// The last `nvidia-smi` answer and when it came; held while asking, so concurrent
    /// scrapes ask once.
    gpus: tokio::sync::Mutex<Option<(Instant, Vec<GpuSample>)>>,
}

impl Default for HiveMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let workers = Family::<StateLabel, Gauge>::default();
        let gpu_utilization = Family::<GpuLabel, Gauge<f64, AtomicU64>>::default();
        let gpu_memory_used = Family::<GpuLabel, Gauge>::default();
        let gpu_memory_total = Family::<GpuLabel, Gauge>::default();
        let gpu_temperature = Family::<GpuLabel, Gauge<f64, AtomicU64>>::default();
        let model_bytes = Family::<ModelLabel, Gauge>::default();
        registry.register("rbee_hive_workers", "Worker processes on this hive, by state", workers.clone());
        registry.register(
            "rbee_hive_gpu_utilization_ratio",
            "GPU utilisation over nvidia-smi's last sample period, 0 to 1",
            gpu_utilization.clone(),
        );
        registry.register("rbee_hive_gpu_memory_used_bytes", "GPU memory in use", gpu_memory_used.clone());
        registry.register("rbee_hive_gpu_memory_total_bytes", "GPU memory in all", gpu_memory_total.clone());
        registry.register("rbee_hive_gpu_temperature_celsius", "GPU core temperature", gpu_temperature.clone());
        registry.register(
            "rbee_hive_model_bytes",
            "Size of each model in the hive's models directory",
            model_bytes.clone(),
        );
        Self {
            registry,
            scrape: Mutex::new(()),
            workers,
            gpu_utilization,
            gpu_memory_used,
            gpu_memory_total,
            gpu_temperature,
            model_bytes,
            gpus: tokio::sync::Mutex::new(None),
        }
    }
}

impl HiveMetrics {
    /// The GPUs, from `nvidia-smi` unless its last answer is recent.
    async fn gpus(&self) -> Vec<GpuSample> {
        let mut last = self.gpus.lock().await;
        if let Some((at, gpus)) = last.as_ref()
            && at.elapsed() < GPU_MAX_AGE
        {
            return gpus.clone();
        }
        let gpus = gpu_samples().await;
        *last = Some((Instant::now(), gpus.clone()));
        gpus
    }

    /// The metrics in the OpenMetrics text format, set from `observed`.
    fn render(&self, observed: &Observed) -> String {
        let _one = rbee_core::locked(&self.scrape);
        for state in WORKER_STATES {
            let n = observed.workers.iter().filter(|w| w.name() == state).count();
            self.workers.get_or_create(&StateLabel { state }).set(gauge(n as u64));
        }
        // GPUs and models that are gone disappear from the next scrape.
        for family in [&self.gpu_utilization, &self.gpu_temperature] {
            family.clear();
        }
        for family in [&self.gpu_memory_used, &self.gpu_memory_total] {
            family.clear();
        }
        for g in &observed.gpus {
            let label = GpuLabel { gpu: g.index.to_string() };
            if let Some(percent) = g.utilization_percent {
                self.gpu_utilization.get_or_create(&label).set(percent / 100.0);
            }
            if let Some(mib) = g.memory_used_mib {
                self.gpu_memory_used.get_or_create(&label).set(gauge(mib.saturating_mul(MIB)));
            }
            if let Some(mib) = g.memory_total_mib {
                self.gpu_memory_total.get_or_create(&label).set(gauge(mib.saturating_mul(MIB)));
            }
            if let Some(celsius) = g.temperature_celsius {
                self.gpu_temperature.get_or_create(&label).set(celsius);
            }
        }
        self.model_bytes.clear();
        for (name, bytes) in &observed.models {
            self.model_bytes.get_or_create(&ModelLabel { model: name.clone() }).set(gauge(*bytes));
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

struct Scraped {
    hive: Arc<crate::ops::Hive>,
    metrics: HiveMetrics,
}

/// `GET /metrics`, behind `token` when there is one.
pub(crate) fn router(hive: Arc<crate::ops::Hive>, token: Option<String>) -> axum::Router {
    let state = Arc::new(Scraped { hive, metrics: HiveMetrics::default() });
    let router = axum::Router::new().route("/metrics", axum::routing::get(metrics)).with_state(state);
    rbee_http::require_token(router, token)
}

async fn metrics(State(scraped): State<Arc<Scraped>>) -> Response {
    let gpus = scraped.metrics.gpus().await;
    let hive = scraped.hive.clone();
    // Stats of the model files: off the async threads.
    let models = tokio::task::spawn_blocking(move || crate::models::list(&hive.models_dir))
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.name, m.size))
        .collect();
    let workers = scraped.hive.workers.list().into_iter().map(|p| p.state).collect();
    let text = scraped.metrics.render(&Observed { workers, models, gpus });
    ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_models_and_gpus_are_encoded() {
        let metrics = HiveMetrics::default();
        let crashed = WorkerState::Crashed { exit_code: Some(1), signal: None, message: "exit 1".into() };
        let observed = Observed {
            workers: vec![WorkerState::Ready, WorkerState::Ready, crashed],
            models: vec![("tiny.gguf".into(), 1234)],
            gpus: parse_gpu_samples("0, 37, 1024, 143771, 41\n1, [N/A], 0, 143771, [N/A]\n"),
        };
        let text = metrics.render(&observed);
        for line in [
            "# TYPE rbee_hive_workers gauge",
            r#"rbee_hive_workers{state="ready"} 2"#,
            r#"rbee_hive_workers{state="crashed"} 1"#,
            r#"rbee_hive_workers{state="starting"} 0"#,
            r#"rbee_hive_model_bytes{model="tiny.gguf"} 1234"#,
            r#"rbee_hive_gpu_utilization_ratio{gpu="0"} 0.37"#,
            r#"rbee_hive_gpu_memory_used_bytes{gpu="0"} 1073741824"#,
            r#"rbee_hive_gpu_memory_total_bytes{gpu="1"} 150754820096"#,
            r#"rbee_hive_gpu_temperature_celsius{gpu="0"} 41.0"#,
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        // What nvidia-smi could not say is left out, not made up.
        assert!(!text.contains(r#"rbee_hive_gpu_utilization_ratio{gpu="1"}"#), "{text}");
        assert!(!text.contains(r#"rbee_hive_gpu_temperature_celsius{gpu="1"}"#), "{text}");
    }

    #[test]
    fn a_host_without_gpus_exports_no_gpu_samples() {
        let metrics = HiveMetrics::default();
        let text = metrics.render(&Observed::default());
        assert!(!text.lines().any(|l| l.starts_with("rbee_hive_gpu_")), "{text}");
        assert!(text.contains(r#"rbee_hive_workers{state="ready"} 0"#), "{text}");
        assert!(
            parse_gpu_samples("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
                .is_empty()
        );
        assert!(parse_gpu_samples("No devices were found").is_empty());
    }

    #[test]
    fn a_queen_link_written_before_metrics_public_still_reads_and_keeps_the_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("queen.link"), r#"{"url": "http://127.0.0.1:8500", "interval_ms": 5000}"#)
            .unwrap();
        std::fs::write(dir.path().join("hive.token"), "secret\n").unwrap();
        let link = crate::load_link(dir.path()).expect("the link reads");
        assert!(!link.metrics_public);
        assert_eq!(link.token, "secret");
    }
}
