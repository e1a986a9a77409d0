//! Forwarded operations: what the hive does for `POST /v1/operations`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbee_core::package::OperationResult;
use rbee_core::proto::hive::{HiveEvent, WorkerState};
use rbee_core::proto::operation::Operation;

use crate::workers::Workers;

/// A running hive's state, shared by its routes.
pub struct Hive {
    /// Its alias (in results and heartbeats).
    pub alias: String,
    /// Its worker processes.
    pub workers: Arc<Workers>,
    /// The worker catalog, scanned at start and on `WorkerCatalogRefresh`.
    pub catalog: Mutex<Vec<String>>,
    /// Where models live.
    pub models_dir: PathBuf,
}

impl Hive {
    /// The catalog as last scanned.
    pub fn catalog(&self) -> Vec<String> {
        self.catalog.lock().expect("catalog lock").clone()
    }
}

/// Runs one forwarded operation, sending progress through `emit`.
pub async fn handle(hive: &Hive, op: Operation, emit: &(dyn Fn(HiveEvent) + Send + Sync)) -> OperationResult {
    let alias = hive.alias.clone();
    let name = alias.clone();
    let result = match op {
        Operation::WorkerSpawn { worker_type, model, device, ready_timeout_ms, .. } => {
            let checked = match device.strip_prefix("cuda:").and_then(|n| n.parse::<u32>().ok()) {
                Some(n) => check_gpu(n).await,
                None => Ok(()),
            };
            match checked.and_then(|()| hive.workers.spawn(&hive.catalog(), &worker_type, &model, &device)) {
                Ok(p) => {
                    emit(HiveEvent::Log {
                        message: format!(
                            "spawned worker {} (pid {}, port {}); waiting for its first heartbeat",
                            p.id, p.pid, p.port
                        ),
                    });
                    let timeout = Duration::from_millis(ready_timeout_ms.unwrap_or(120_000));
                    let ready = hive.workers.wait_ready(&p.id, timeout).await;
                    if ready.is_err() && hive.workers.get(&p.id).is_ok_and(|w| !w.state.is_alive()) {
                        // It died while starting and the error says how: nothing is left to keep.
                        let _ = hive.workers.delete(&p.id, Duration::ZERO).await;
                    }
                    ready.map(|worker| OperationResult::Worker { hive: alias, worker: Box::new(worker) })
                }
                Err(e) => Err(e),
            }
        }
        Operation::WorkerProcessList { .. } => {
            Ok(OperationResult::Workers { hive: alias, workers: hive.workers.list() })
        }
        Operation::WorkerProcessGet { worker_id, .. } => {
            hive.workers.get(&worker_id).map(|worker| OperationResult::Worker { hive: alias, worker: Box::new(worker) })
        }
        Operation::WorkerProcessDelete { worker_id, grace_ms, .. } => {
            let grace = Duration::from_millis(grace_ms.unwrap_or(10_000));
            hive.workers
                .delete(&worker_id, grace)
                .await
                .map(|worker| OperationResult::Worker { hive: alias, worker: Box::new(worker) })
        }
        Operation::WorkerCatalogRefresh { .. } => {
            let workers = hive.workers.scan_catalog();
            *hive.catalog.lock().expect("catalog lock") = workers.clone();
            hive.workers.notify();
            Ok(OperationResult::Catalog { hive: alias, workers })
        }
        Operation::ModelDownload { source, sha256, name, .. } => {
            let mut on_progress = |done, total| emit(HiveEvent::Progress { done, total });
            crate::models::download(&hive.models_dir, &source, sha256.as_ref(), name.as_deref(), &mut on_progress)
                .await
                .map(|model| OperationResult::Model { hive: alias, model })
        }
        Operation::ModelList { .. } => {
            Ok(OperationResult::Models { hive: alias, models: crate::models::list(&hive.models_dir) })
        }
        Operation::ModelGet { name, .. } => {
            crate::models::get(&hive.models_dir, &name).map(|model| OperationResult::Model { hive: alias, model })
        }
        Operation::ModelDelete { name, .. } => {
            crate::models::delete(&hive.models_dir, &name).map(|model| OperationResult::Model { hive: alias, model })
        }
        Operation::Infer { model, prompt, max_tokens, .. } => infer(hive, &model, &prompt, max_tokens, emit).await,
        other => Err(format!("{} is not an operation a hive runs", other.wire_name())),
    };
    result.unwrap_or_else(|message| OperationResult::error(format!("{name}: {message}")))
}

/// `Err` unless this host has GPU `index` (from `nvidia-smi`), naming the GPUs it has.
async fn check_gpu(index: u32) -> Result<(), String> {
    let caps = crate::capabilities::detect().await;
    if caps.gpus.iter().any(|g| g.index == index) {
        return Ok(());
    }
    let have = if caps.gpus.is_empty() {
        format!("no NVIDIA GPU ({})", caps.gpu_error.as_deref().unwrap_or("nvidia-smi lists none"))
    } else {
        let list: Vec<String> = caps.gpus.iter().map(|g| format!("cuda:{} {}", g.index, g.name)).collect();
        format!("these GPUs: {}", list.join(", "))
    };
    Err(format!("device cuda:{index} is not on this host, which has {have}; use one of them or `--device cpu`"))
}

/// Runs a prompt on a ready worker serving `model`, streaming its tokens.
async fn infer(
    hive: &Hive,
    model: &str,
    prompt: &str,
    max_tokens: Option<u32>,
    emit: &(dyn Fn(HiveEvent) + Send + Sync),
) -> Result<OperationResult, String> {
    let Some(worker) = hive.workers.ready_for(model) else {
        let starting = hive.workers.list().into_iter().any(|p| p.serves(model) && p.state == WorkerState::Starting);
        if starting {
            return Err(format!(
                "the worker for {model} is still starting; try again when `rbee worker list` shows it ready"
            ));
        }
        let types = hive.catalog();
        let kind = types.first().map_or("TYPE", String::as_str);
        return Err(format!(
            "no ready worker serves model {model}; start one: `rbee worker spawn --hive {} --type {kind} --model {model}`",
            hive.alias
        ));
    };
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": true,
        "max_tokens": max_tokens,
    });
    let (status, mut lines) = chat(hive, &worker.id, serde_json::to_vec(&body).map_err(|e| e.to_string())?).await?;
    if status != 200 {
        let mut text = String::new();
        while let Ok(Some(l)) = lines.next_line().await {
            text.push_str(&l);
        }
        return Err(format!("worker {} answered {status}: {text}", worker.id));
    }
    let mut text = String::new();
    while let Some(line) = lines.next_line().await.map_err(|e| format!("worker {}: {e}", worker.id))? {
        let Some(data) = line.strip_prefix("data:").map(str::trim) else { continue };
        if data == "[DONE]" {
            break;
        }
        let chunk: serde_json::Value =
            serde_json::from_str(data).map_err(|e| format!("worker {} sent a bad chunk: {e}", worker.id))?;
        if let Some(token) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(token);
            emit(HiveEvent::Token { text: token.to_owned() });
        }
    }
    Ok(OperationResult::Inferred { hive: hive.alias.clone(), worker_id: worker.id, text })
}

/// Sends an OpenAI chat-completions body to a worker; its answer as it streams.
pub async fn chat(hive: &Hive, worker_id: &str, body: Vec<u8>) -> Result<(u16, rbee_http::Lines), String> {
    let response = send_chat(hive, worker_id, body).await?;
    Ok((response.status().as_u16(), rbee_http::Lines::new(response)))
}

/// The raw response of a worker's `/v1/chat/completions`.
pub async fn send_chat(hive: &Hive, worker_id: &str, body: Vec<u8>) -> Result<rbee_http::Response, String> {
    let worker = hive.workers.get(worker_id)?;
    if !worker.state.is_alive() {
        return Err(format!("worker {worker_id} is not running"));
    }
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", worker.port);
    let bearer = hive.workers.token().map(rbee_core::proto::bearer);
    let mut headers = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    rbee_http::send("POST", &url, &headers, body).await.map_err(|e| e.to_string())
}
