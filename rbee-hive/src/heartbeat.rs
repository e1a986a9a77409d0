//! Heartbeats to the queen: every `interval_ms`, `POST {queen}/v1/heartbeats` with the token.
//! A queen that is down is retried at the next beat; the hive never stops for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the queen is, how often to beat, and the token both sides require. Read from
/// `queen.link` (JSON: url, interval_ms) and `hive.token` in the hive's state directory,
/// which a sync run by the queen writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueenLink {
    /// The queen's base URL, e.g. `http://127.0.0.1:8500`.
    pub url: String,
    /// Heartbeat interval.
    pub interval_ms: u64,
    /// The API token.
    #[serde(skip)]
    pub token: String,
}

impl QueenLink {
    /// Reads the link from `state_dir`, if a queen installed one.
    pub fn load(state_dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(state_dir.join("queen.link")).ok()?;
        let mut link: QueenLink = serde_json::from_str(&text).ok()?;
        link.token = std::fs::read_to_string(state_dir.join("hive.token")).ok()?.trim().to_owned();
        (!link.token.is_empty()).then_some(link)
    }
}

pub use rbee_core::operation::Heartbeat;

async fn post(link: &QueenLink, beat: &Heartbeat) -> Result<(), String> {
    let url = format!("{}/v1/heartbeats", link.url.trim_end_matches('/'));
    let bearer = format!("Bearer {}", link.token);
    let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    let body = serde_json::to_vec(beat).map_err(|e| e.to_string())?;
    let send = async {
        let response = rbee_http::send("POST", &url, &headers, body).await?;
        let status = response.status();
        let _ = rbee_http::collect(response).await;
        if status.is_success() { Ok(()) } else { Err(format!("queen answered {status}")) }
    };
    tokio::time::timeout(Duration::from_secs(3), send).await.map_err(|_| "no answer within 3s".to_owned())?
}

/// Versions from the install records (`sha size mtime ctime inode version` per file).
fn installed_versions(records: &Path, kinds: &[String]) -> std::collections::BTreeMap<String, String> {
    kinds
        .iter()
        .filter_map(|kind| {
            let text = std::fs::read_to_string(records.join(format!("rbee-worker-{kind}"))).ok()?;
            let version = text.split_whitespace().nth(5)?.to_owned();
            Some((kind.clone(), version))
        })
        .collect()
}

/// Beats until the process ends: every interval, and at once when a worker changes state.
pub(crate) async fn run(
    link: QueenLink,
    mut beat: Heartbeat,
    hive: std::sync::Arc<crate::ops::Hive>,
    records: PathBuf,
) {
    let mut ticker = tokio::time::interval(Duration::from_millis(link.interval_ms.max(100)));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = hive.workers.beat_now.notified() => {}
        }
        beat.workers = hive.catalog();
        beat.installed = installed_versions(&records, &beat.workers);
        beat.processes = hive.workers.list();
        if let Err(e) = post(&link, &beat).await {
            eprintln!("rbee-hive: heartbeat to {} failed: {e}", link.url);
        }
    }
}
