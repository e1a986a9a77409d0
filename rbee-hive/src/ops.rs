//! Forwarded operations: what the hive does for `POST /v1/operations`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbee_core::package::OperationResult;
use rbee_core::proto::hive::{HiveEvent, WorkerState};
use rbee_core::proto::operation::Operation;

use crate::models::ModelError;
use crate::workers::{SpawnRequest, WorkerError, Workers};

/// Why a forwarded operation or a chat with a worker failed. Its text becomes the operation's
/// error (after the hive's alias) or the chat's 502 message, so each variant carries its
/// source's text too (callers print only `Display`); the source stays attached for callers
/// that inspect it.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Finding, starting, waiting for or stopping a worker failed.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// A model operation failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The spawn asked for a GPU this host does not have.
    #[error("device cuda:{index} is not on this host, which has {have}; use one of them or `--device cpu`")]
    NoSuchGpu {
        /// The GPU index asked for.
        index: u32,
        /// What the host has, in words (`these GPUs: ...` or `no NVIDIA GPU (...)`).
        have: String,
    },
    /// The operation is one the queen runs, not a hive.
    #[error("{0} is not an operation a hive runs")]
    NotForHive(String),
    /// The model's worker has not sent a ready heartbeat yet.
    #[error("the worker for {model} is still starting; try again when `rbee worker list` shows it ready")]
    WorkerStarting {
        /// The model.
        model: String,
    },
    /// No worker serves the model.
    #[error(
        "no ready worker serves model {model}; start one: `rbee worker spawn --hive {hive} --type {kind} --model \
         {model}`"
    )]
    NoReadyWorker {
        /// The model.
        model: String,
        /// This hive's alias.
        hive: String,
        /// A worker type to suggest (`TYPE` when none is installed).
        kind: String,
    },
    /// The chat request could not be encoded.
    #[error("{0}")]
    EncodeRequest(#[source] serde_json::Error),
    /// The worker stopped sending heartbeats (frozen, crashed or stopped) before it answered.
    #[error(
        "worker {0} stopped sending heartbeats before it answered (it is unresponsive, crashed or stopped): see `rbee worker get`"
    )]
    WorkerWentSilent(String),
    /// The worker answered the chat with an error status.
    #[error("worker {worker} answered {status}: {body}")]
    WorkerStatus {
        /// The worker.
        worker: String,
        /// The status code.
        status: u16,
        /// Its answer's body.
        body: String,
    },
    /// The worker's streamed answer broke off.
    #[error("worker {worker}: {source}")]
    Stream {
        /// The worker.
        worker: String,
        /// Why.
        #[source]
        source: rbee_http::HttpError,
    },
    /// The worker streamed something that is not a JSON chunk.
    #[error("worker {worker} sent a bad chunk: {source}")]
    BadChunk {
        /// The worker.
        worker: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The worker is known but has exited.
    #[error("worker {0} is not running")]
    NotRunning(String),
    /// The request to the worker failed.
    #[error("{0}")]
    Send(#[source] rbee_http::HttpError),
}

/// A running hive's state, shared by its routes.
pub struct Hive {
    /// Its alias (in results and heartbeats).
    pub alias: String,
    /// Its home directory (engine records are under it).
    pub home: std::path::PathBuf,
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
        rbee_core::locked(&self.catalog).clone()
    }
}

/// Runs one forwarded operation, sending progress through `emit`.
pub async fn handle(hive: &Hive, op: Operation, emit: &(dyn Fn(HiveEvent) + Send + Sync)) -> OperationResult {
    let alias = hive.alias.clone();
    let name = alias.clone();
    let result = match op {
        Operation::WorkerSpawn { worker_type, model, device, ready_timeout_ms, args, replica, no_wait, .. } => {
            let checked = match device.strip_prefix("cuda:").and_then(|n| n.parse::<u32>().ok()) {
                Some(n) => check_gpu(&hive.home, n).await,
                None => Ok(()),
            };
            let request = SpawnRequest { worker_type, model, device, args, replica };
            let spawned = checked.and_then(|()| hive.workers.spawn(&hive.catalog(), request).map_err(OpError::from));
            match spawned {
                Ok(p) if no_wait => {
                    // The caller follows it in the list (and the queen by heartbeats): a crash
                    // stays listed, with its exit status, until a `WorkerProcessDelete`.
                    emit(HiveEvent::Log {
                        message: format!(
                            "spawned worker {} (pid {}, port {}); not waiting for it",
                            p.id, p.pid, p.port
                        ),
                    });
                    Ok(OperationResult::Worker { hive: alias, worker: Box::new(p) })
                }
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
                    ready
                        .map(|worker| OperationResult::Worker { hive: alias, worker: Box::new(worker) })
                        .map_err(OpError::from)
                }
                Err(e) => Err(e),
            }
        }
        Operation::WorkerProcessList { .. } => {
            Ok(OperationResult::Workers { hive: alias, workers: hive.workers.list() })
        }
        Operation::WorkerProcessGet { worker_id, .. } => hive
            .workers
            .get(&worker_id)
            .map(|worker| OperationResult::Worker { hive: alias, worker: Box::new(worker) })
            .map_err(OpError::from),
        Operation::WorkerProcessDelete { worker_id, grace_ms, .. } => {
            let grace = Duration::from_millis(grace_ms.unwrap_or(10_000));
            hive.workers
                .delete(&worker_id, grace)
                .await
                .map(|worker| OperationResult::Worker { hive: alias, worker: Box::new(worker) })
                .map_err(OpError::from)
        }
        Operation::WorkerCatalogRefresh { .. } => {
            let workers = hive.workers.scan_catalog();
            *rbee_core::locked(&hive.catalog) = workers.clone();
            hive.workers.notify();
            Ok(OperationResult::Catalog { hive: alias, workers })
        }
        Operation::ModelDownload { source, sha256, name, .. } => {
            let mut on_progress = |done, total| emit(HiveEvent::Progress { done, total });
            crate::models::download(&hive.models_dir, &source, sha256.as_ref(), name.as_deref(), &mut on_progress)
                .await
                .map(|model| OperationResult::Model { hive: alias, model })
                .map_err(OpError::from)
        }
        Operation::ModelList { .. } => {
            Ok(OperationResult::Models { hive: alias, models: crate::models::list(&hive.models_dir) })
        }
        Operation::ModelGet { name, .. } => crate::models::get(&hive.models_dir, &name)
            .map(|model| OperationResult::Model { hive: alias, model })
            .map_err(OpError::from),
        Operation::ModelDelete { name, .. } => crate::models::delete(&hive.models_dir, &name)
            .map(|model| OperationResult::Model { hive: alias, model })
            .map_err(OpError::from),
        Operation::Infer { model, prompt, max_tokens, .. } => infer(hive, &model, &prompt, max_tokens, emit).await,
        other => Err(OpError::NotForHive(other.wire_name())),
    };
    result.unwrap_or_else(|message| OperationResult::error(format!("{name}: {message}")))
}

/// `Err` unless this host has GPU `index` (from `nvidia-smi`), naming the GPUs it has.
async fn check_gpu(home: &std::path::Path, index: u32) -> Result<(), OpError> {
    let caps = crate::capabilities::detect(home).await;
    if caps.gpus.iter().any(|g| g.index == index) {
        return Ok(());
    }
    let have = if caps.gpus.is_empty() {
        format!("no NVIDIA GPU ({})", caps.gpu_error.as_deref().unwrap_or("nvidia-smi lists none"))
    } else {
        let list: Vec<String> = caps.gpus.iter().map(|g| format!("cuda:{} {}", g.index, g.name)).collect();
        format!("these GPUs: {}", list.join(", "))
    };
    Err(OpError::NoSuchGpu { index, have })
}

/// Runs a prompt on a ready worker serving `model`, streaming its tokens.
async fn infer(
    hive: &Hive,
    model: &str,
    prompt: &str,
    max_tokens: Option<u32>,
    emit: &(dyn Fn(HiveEvent) + Send + Sync),
) -> Result<OperationResult, OpError> {
    let Some(worker) = hive.workers.ready_for(model) else {
        let starting = hive.workers.list().into_iter().any(|p| p.serves(model) && p.state == WorkerState::Starting);
        if starting {
            return Err(OpError::WorkerStarting { model: model.to_owned() });
        }
        let types = hive.catalog();
        let kind = types.first().map_or("TYPE", String::as_str);
        return Err(OpError::NoReadyWorker {
            model: model.to_owned(),
            hive: hive.alias.clone(),
            kind: kind.to_owned(),
        });
    };
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": true,
        "max_tokens": max_tokens,
    });
    let (status, mut lines) =
        chat(hive, &worker.id, serde_json::to_vec(&body).map_err(OpError::EncodeRequest)?).await?;
    if status != 200 {
        let mut text = String::new();
        while let Ok(Some(l)) = lines.next_line().await {
            text.push_str(&l);
        }
        return Err(OpError::WorkerStatus { worker: worker.id, status, body: text });
    }
    let mut text = String::new();
    while let Some(line) =
        lines.next_line().await.map_err(|source| OpError::Stream { worker: worker.id.clone(), source })?
    {
        let Some(data) = line.strip_prefix("data:").map(str::trim) else { continue };
        if data == "[DONE]" {
            break;
        }
        let chunk: serde_json::Value =
            serde_json::from_str(data).map_err(|source| OpError::BadChunk { worker: worker.id.clone(), source })?;
        if let Some(token) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(token);
            emit(HiveEvent::Token { text: token.to_owned() });
        }
    }
    Ok(OperationResult::Inferred { hive: hive.alias.clone(), worker_id: worker.id, text })
}

/// Sends an OpenAI chat-completions body to a worker; its answer as it streams.
pub async fn chat(hive: &Hive, worker_id: &str, body: Vec<u8>) -> Result<(u16, rbee_http::Lines), OpError> {
    let response = send_chat(hive, worker_id, body).await?;
    Ok((response.status().as_u16(), rbee_http::Lines::new(response)))
}

/// The raw response of a worker's `/v1/chat/completions`.
pub async fn send_chat(hive: &Hive, worker_id: &str, body: Vec<u8>) -> Result<rbee_http::Response, OpError> {
    let worker = hive.workers.get(worker_id)?;
    if !worker.state.is_alive() {
        return Err(OpError::NotRunning(worker_id.to_owned()));
    }
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", worker.port);
    // The worker's own token: each worker requires only its own.
    let bearer = hive.workers.token_of(worker_id).map(|t| rbee_core::proto::bearer(&t));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    // Generating may take long before the first byte (a non-streaming answer comes whole), so
    // there is no timeout on the answer: the worker's heartbeats say whether it is still there.
    let went_silent = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            match hive.workers.get(worker_id) {
                Ok(w) if matches!(w.state, WorkerState::Ready | WorkerState::Starting) => {}
                _ => return,
            }
        }
    };
    tokio::select! {
        answer = rbee_http::send("POST", &url, &headers, body) => answer.map_err(OpError::Send),
        () = went_silent => Err(OpError::WorkerWentSilent(worker_id.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These texts reach users (and end-to-end tests) as operation errors: pinned word for word.
    #[test]
    fn messages_read_as_before() {
        let e = OpError::NoReadyWorker { model: "m.gguf".into(), hive: "gpu1".into(), kind: "llama-cpp".into() };
        assert_eq!(
            e.to_string(),
            "no ready worker serves model m.gguf; start one: `rbee worker spawn --hive gpu1 --type llama-cpp --model \
             m.gguf`"
        );
        let e = OpError::NoSuchGpu { index: 99, have: "these GPUs: cuda:0 H200".into() };
        assert_eq!(
            e.to_string(),
            "device cuda:99 is not on this host, which has these GPUs: cuda:0 H200; use one of them or `--device cpu`"
        );
        let e = OpError::from(crate::workers::WorkerError::BadDevice { device: "gpu0".into() });
        assert_eq!(e.to_string(), "device \"gpu0\" is not `cpu` or `cuda:N`");
    }
}
