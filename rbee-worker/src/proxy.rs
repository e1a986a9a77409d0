//! The bridge between the contract and a real engine: the engine listens on a private port of
//! 127.0.0.1; the worker serves the contract on its own port and proxies to it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::contract::{Backend, WorkerEnv};
use crate::{Engine, WorkerArgs};

/// Proxies the contract to an engine at `base`.
pub struct EngineProxy {
    /// `http://127.0.0.1:<engine port>`.
    pub base: String,
    /// The engine.
    pub engine: Engine,
}

#[async_trait::async_trait]
impl Backend for EngineProxy {
    async fn ready(&self) -> bool {
        let url = format!("{}{}", self.base, self.engine.health_path());
        match rbee_http::send("GET", &url, &[], Vec::new()).await {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }

    async fn chat(&self, body: Bytes) -> Response {
        if !self.engine.serves_chat() {
            let message = "this worker's engine (ComfyUI) serves workflows through its own API, not chat completions";
            return rbee_http::ApiError::openai(StatusCode::NOT_IMPLEMENTED, "not_supported", message).into_response();
        }
        let url = format!("{}/v1/chat/completions", self.base);
        match rbee_http::send("POST", &url, &[("content-type", "application/json")], body.to_vec()).await {
            Ok(response) => rbee_http::passthrough(response).map(axum::body::Body::new),
            Err(e) => rbee_http::ApiError::openai(StatusCode::BAD_GATEWAY, "engine_error", format!("engine: {e}"))
                .into_response(),
        }
    }
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// Starts the engine and serves the contract in front of it. Returns the exit code: the
/// engine's when it exits on its own, 0 after SIGTERM.
pub(crate) async fn run(engine: Engine, args: WorkerArgs) -> Result<u8, String> {
    let engine_port = free_port()?;
    let (program, argv) = engine.command(&args, engine_port);
    eprintln!("worker {}: starting {program} {}", args.worker_id, argv.join(" "));
    let mut child = tokio::process::Command::new(&program)
        .args(&argv)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let backend = Arc::new(EngineProxy { base: format!("http://127.0.0.1:{engine_port}"), engine });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(crate::contract::serve(args.clone(), WorkerEnv::from_env(), backend, async move {
        let _ = stop_rx.await;
    }));
    let code = tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|e| e.to_string())?;
            eprintln!("worker {}: {program} exited ({status})", args.worker_id);
            u8::try_from(status.code().unwrap_or(1)).unwrap_or(1).max(1)
        }
        () = crate::contract::terminated() => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            0
        }
        served = &mut server => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let why = match served {
                Ok(Err(e)) => e,
                Ok(Ok(())) => "the contract server stopped".to_owned(),
                Err(e) => e.to_string(),
            };
            return Err(why);
        }
    };
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(code)
}
