//! Heartbeats to the queen: every `interval_ms`, `POST {queen}/v1/heartbeats` with the token.
//! A queen that is down is retried at the next beat; the hive never stops for it. The queen's
//! answer ([`HeartbeatAck`]) says when to beat next: a queen with a large fleet paces it with
//! a longer interval than the link's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rbee_core::layout::Layout;
use rbee_core::proto::hive::InstallRecord;

pub use rbee_core::proto::hive::QueenLink;

/// Reads the queen's link from `state_dir` (`queen.link` and `hive.token`), if a queen
/// installed one.
pub fn load_link(state_dir: &Path) -> Option<QueenLink> {
    let text = std::fs::read_to_string(state_dir.join("queen.link")).ok()?;
    let mut link: QueenLink = serde_json::from_str(&text).ok()?;
    link.token = std::fs::read_to_string(state_dir.join("hive.token")).ok()?.trim().to_owned();
    (!link.token.is_empty()).then_some(link)
}

pub use rbee_core::proto::operation::Heartbeat;
use rbee_core::proto::operation::{HeartbeatAck, heartbeat_interval_ms};

/// Why a heartbeat did not reach the queen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BeatError {
    /// The request failed.
    #[error(transparent)]
    Http(#[from] rbee_http::HttpError),
    /// The queen refused it (404: it does not know this hive; 401: another token).
    #[error("queen answered {0}")]
    Status(u16),
    /// No answer in time.
    #[error("no answer within 3s")]
    Timeout,
}

/// Posts `beat`; returns the queen's answer, or `None` when it gave none (an older queen's 204).
async fn post(
    link: &QueenLink,
    tls: Option<&crate::tls::HiveTls>,
    beat: &Heartbeat,
) -> Result<Option<HeartbeatAck>, BeatError> {
    let url = format!("{}/v1/heartbeats", link.url.trim_end_matches('/'));
    let bearer = rbee_core::proto::bearer(&link.token);
    let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    let body = serde_json::to_vec(beat).unwrap_or_default();
    let send = async {
        let response = match tls.filter(|_| url.starts_with("https://")) {
            Some(tls) => {
                let name = rbee_core::credentials::QUEEN_TLS_NAME;
                rbee_http::send_with_name(&tls.client, name, "POST", &url, &headers, body).await?
            }
            None => rbee_http::send("POST", &url, &headers, body).await?,
        };
        let status = response.status();
        let body = rbee_http::collect(response).await.unwrap_or_default();
        if !status.is_success() {
            return Err(BeatError::Status(status.as_u16()));
        }
        Ok(serde_json::from_slice::<HeartbeatAck>(&body).ok())
    };
    tokio::time::timeout(Duration::from_secs(3), send).await.map_err(|_| BeatError::Timeout)?
}

/// Versions from the install records (`sha size mtime ctime inode version` per file).
fn installed_versions(records: &Path, kinds: &[String]) -> std::collections::BTreeMap<String, String> {
    kinds
        .iter()
        .filter_map(|kind| {
            let text = std::fs::read_to_string(records.join(Layout::worker_file_name(kind))).ok()?;
            let record = InstallRecord::parse(&text).ok()?;
            Some((kind.clone(), record.version))
        })
        .collect()
}

/// How often the GPU list (memory in use included) is read again for the heartbeats.
const GPU_REFRESH: Duration = Duration::from_secs(60);

/// The GPUs the heartbeats report, read by `nvidia-smi` at most every [`GPU_REFRESH`] and never
/// for longer than [`crate::capabilities::NVIDIA_SMI_TIMEOUT`].
struct GpuCache {
    gpus: Vec<rbee_core::proto::hive::Gpu>,
    read_at: Option<tokio::time::Instant>,
    /// The last error printed, so a lasting failure is printed once.
    error: Option<String>,
}

impl GpuCache {
    fn new() -> Self {
        Self { gpus: Vec::new(), read_at: None, error: None }
    }

    /// Reads the GPUs again if the list is older than [`GPU_REFRESH`] (or was never read). A
    /// timeout keeps the last list (a slow `nvidia-smi` does not make GPUs vanish); a failing
    /// `nvidia-smi` (a broken driver) empties it.
    async fn refresh(&mut self) -> &[rbee_core::proto::hive::Gpu] {
        if self.read_at.is_some_and(|t| t.elapsed() < GPU_REFRESH) {
            return &self.gpus;
        }
        self.read_at = Some(tokio::time::Instant::now());
        let error = match crate::capabilities::gpus(crate::capabilities::NVIDIA_SMI_TIMEOUT).await {
            Ok(gpus) => {
                self.gpus = gpus;
                None
            }
            Err(e @ crate::capabilities::GpuError::Timeout(_)) => Some(e.to_string()),
            Err(e) => {
                self.gpus.clear();
                Some(e.to_string())
            }
        };
        if let Some(e) = &error
            && self.error.as_ref() != Some(e)
        {
            tracing::warn!("cannot list GPUs for the heartbeat: {e}");
        }
        self.error = error;
        &self.gpus
    }
}

/// Beats until the process ends: every interval, and at once when a worker changes state.
/// GPUs are read at the start and then at most every minute; models on every beat (a directory
/// listing: no file is read whole).
pub(crate) async fn run(
    link: QueenLink,
    tls: Option<crate::tls::HiveTls>,
    mut beat: Heartbeat,
    hive: std::sync::Arc<crate::ops::Hive>,
    records: PathBuf,
) {
    let mut gpus = GpuCache::new();
    let mut interval_ms = heartbeat_interval_ms(link.interval_ms);
    let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = hive.workers.beat_now.notified() => {}
        }
        // First, as it may take a few seconds: the rest is then as of the beat.
        beat.gpus = gpus.refresh().await.to_vec();
        beat.workers = hive.catalog();
        beat.installed = installed_versions(&records, &beat.workers);
        beat.processes = hive.workers.list();
        beat.models = crate::models::list(&hive.models_dir);
        beat.interval_ms = interval_ms;
        match post(&link, tls.as_ref(), &beat).await {
            Ok(Some(ack)) => {
                let told = heartbeat_interval_ms(ack.interval_ms);
                if told != interval_ms {
                    tracing::info!(queen = %link.url, "the queen asks for a heartbeat every {told} ms (was {interval_ms} ms)");
                    interval_ms = told;
                    let every = Duration::from_millis(told);
                    ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(queen = %link.url, "heartbeat failed: {e}"),
        }
    }
}
