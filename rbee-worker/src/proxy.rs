//! The bridge between the contract and a real engine: the engine listens on a private port of
//! 127.0.0.1; the worker serves the contract on its own port and proxies to it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt};

use crate::contract::{Backend, ContractError, WorkerEnv};
use crate::{Engine, WorkerArgs};

/// Why a worker stopped other than by its engine exiting or SIGTERM. The launcher prints only
/// `Display`, so each variant carries its source's text too; the source stays attached.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// Asking the kernel for a port for the engine failed.
    #[error("{0}")]
    EnginePort(#[source] std::io::Error),
    /// The engine could not be started.
    #[error("cannot start {program}: {source}")]
    Start {
        /// The engine's program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the engine failed.
    #[error("{0}")]
    Wait(#[source] std::io::Error),
    /// The contract server failed (or the hive disowned the worker).
    #[error(transparent)]
    Contract(#[from] ContractError),
    /// The contract server returned without being asked to.
    #[error("the contract server stopped")]
    ContractStopped,
    /// The contract server's task panicked or was cancelled.
    #[error("{0}")]
    ContractTask(#[source] tokio::task::JoinError),
}

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

fn free_port() -> Result<u16, ProxyError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(ProxyError::EnginePort)?;
    Ok(listener.local_addr().map_err(ProxyError::EnginePort)?.port())
}

/// Starts the engine and serves the contract in front of it. Returns the exit code: the
/// engine's when it exits on its own, 0 after SIGTERM.
pub(crate) async fn run(engine: Engine, args: WorkerArgs, output: rbee_log::Output) -> Result<u8, ProxyError> {
    // Listen for SIGTERM before the engine starts (the first poll installs the handler), so
    // that a stop that comes at once is an orderly one too.
    let mut terminated = std::pin::pin!(crate::contract::terminated());
    std::future::poll_fn(|cx| {
        let _ = terminated.as_mut().poll(cx);
        std::task::Poll::Ready(())
    })
    .await;
    let engine_port = free_port()?;
    let (program, argv) = engine.command(&args, engine_port);
    let program_name = program.display().to_string();
    tracing::info!(worker = %args.worker_id, "starting {program_name} {}", argv.join(" "));
    let env = crate::engine_env(&args.device, std::env::vars_os());
    // The engine is started through this launcher's own binary (`--rbee-exec-engine`), which
    // arms the parent-death signal and execs the engine, so that the engine never outlives
    // the launcher, even one killed with SIGKILL (`kill_on_drop` covers only orderly exits).
    let mut command = match std::env::current_exe() {
        Ok(me) => {
            let mut c = tokio::process::Command::new(me);
            c.arg(crate::EXEC_ENGINE).arg(std::process::id().to_string()).arg(&program);
            c
        }
        Err(_) => tokio::process::Command::new(&program),
    };
    // The engine's output is read here and written to the worker's log through the same
    // capped, rotated output as the launcher's own lines (an engine that inherited the log
    // file would keep writing to it after a rotation). The engine stays in the worker's
    // process group, so the hive's SIGTERM to the group reaches it too.
    command
        .args(&argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for name in &env.remove {
        command.env_remove(name);
    }
    command.envs(env.set.iter().map(|(name, value)| (name, value)));
    // Spawned from the launcher's main thread (`block_on`), which lives as long as the launcher:
    // the parent-death signal fires when the spawning *thread* exits, so this must never move
    // to a thread that may end earlier (e.g. `spawn_blocking`).
    let mut child = command.spawn().map_err(|source| ProxyError::Start { program: program_name.clone(), source })?;
    let copies: Vec<_> = [
        child.stdout.take().map(|o| Box::new(o) as Box<dyn AsyncRead + Send + Unpin>),
        child.stderr.take().map(|e| Box::new(e) as _),
    ]
    .into_iter()
    .flatten()
    .map(|stream| tokio::spawn(copy_lines(stream, output.clone(), args.worker_id.clone())))
    .collect();
    let backend = Arc::new(EngineProxy { base: format!("http://127.0.0.1:{engine_port}"), engine });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(crate::contract::serve(args.clone(), WorkerEnv::from_env(), backend, async move {
        let _ = stop_rx.await;
    }));
    let code = tokio::select! {
        status = child.wait() => {
            let status = status.map_err(ProxyError::Wait)?;
            // The engine's last words (why it exited) are written before this line.
            for copy in copies {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), copy).await;
            }
            tracing::warn!(worker = %args.worker_id, "{program_name} exited ({status})");
            u8::try_from(status.code().unwrap_or(1)).unwrap_or(1).max(1)
        }
        () = &mut terminated => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            0
        }
        served = &mut server => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let why = match served {
                Ok(Err(e)) => ProxyError::Contract(e),
                Ok(Ok(())) => ProxyError::ContractStopped,
                Err(e) => ProxyError::ContractTask(e),
            };
            return Err(why);
        }
    };
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(code)
}

/// The longest engine line kept whole; longer ones are cut there (the rest follows as more
/// lines).
const MAX_LINE: usize = 64 * 1024;

/// Copies the engine's output, line by line, into the worker's log: as it is in the text
/// format, as a JSON event (`target` `engine`, the worker's id) in the JSON format.
async fn copy_lines(stream: impl AsyncRead + Unpin, output: rbee_log::Output, worker: String) {
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        match output.format() {
            rbee_log::LogFormat::Text => {
                let _ = output.write(&line);
            }
            rbee_log::LogFormat::Json => {
                let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                tracing::info!(target: "engine", worker = %worker, "{text}");
            }
        }
    }
}
