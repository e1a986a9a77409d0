//! Test fixture: the reference worker. It honours the worker contract (arguments, token,
//! `/health`, heartbeats to the hive, streaming `/v1/chat/completions`) with a deterministic
//! "model": the answer to a prompt is `echo:` followed by the prompt's words, one token per
//! word. Tests install it into a hive's worker catalog as `rbee-worker-reference`; it is not
//! shipped.
//!
//! `REFERENCE_WORKER_LOAD_MS` delays readiness (default 200 ms), like a model loading.
//!
//! Engine arguments (after `--`, see `docs/worker-contract.md`) steer it:
//! `--load-ms N` overrides `REFERENCE_WORKER_LOAD_MS`; `--fail-at-start` makes it exit with
//! status 3 after about 100 ms without ever becoming ready, as an engine refusing its arguments
//! would. Any other engine argument is printed and ignored.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use clap::Parser;
use rbee_worker::WorkerArgs;
use rbee_worker::contract::{Backend, WorkerEnv, sse_chunk};

struct Echo {
    model: String,
    loaded_at: Instant,
}

/// The deterministic answer: `echo:` and then each word of the prompt, as separate tokens.
fn tokens(prompt: &str, max_tokens: Option<u64>) -> Vec<String> {
    let mut out = vec!["echo:".to_owned()];
    out.extend(prompt.split_whitespace().map(|w| format!(" {w}")));
    out.truncate(usize::try_from(max_tokens.unwrap_or(u64::MAX)).unwrap_or(usize::MAX).max(1));
    out
}

#[async_trait::async_trait]
impl Backend for Echo {
    async fn ready(&self) -> bool {
        Instant::now() >= self.loaded_at
    }

    async fn chat(&self, body: Bytes) -> Response {
        let request: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                let err = serde_json::json!({"error": {"message": format!("bad request body: {e}")}});
                return (axum::http::StatusCode::BAD_REQUEST, axum::Json(err)).into_response();
            }
        };
        let prompt = request["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned();
        let tokens = tokens(&prompt, request["max_tokens"].as_u64());
        let id = "chatcmpl-reference";
        if request["stream"].as_bool() == Some(true) {
            let mut frames: Vec<String> = tokens.iter().map(|t| sse_chunk(id, &self.model, Some(t), None)).collect();
            frames.push(sse_chunk(id, &self.model, None, Some("stop")));
            frames.push("data: [DONE]\n\n".to_owned());
            // One frame at a time, a little apart, so the stream is a stream.
            let stream = futures_util::stream::unfold(frames.into_iter(), |mut frames| async move {
                let frame = frames.next()?;
                tokio::time::sleep(Duration::from_millis(5)).await;
                Some((Ok::<_, std::convert::Infallible>(Bytes::from(frame)), frames))
            });
            ([("content-type", "text/event-stream")], axum::body::Body::from_stream(stream)).into_response()
        } else {
            let text: String = tokens.concat();
            axum::Json(serde_json::json!({
                "id": id,
                "object": "chat.completion",
                "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"completion_tokens": tokens.len()},
            }))
            .into_response()
        }
    }
}

/// What the engine arguments ask of the reference worker.
#[derive(Debug, Default, PartialEq, Eq)]
struct EngineArgs {
    /// `--fail-at-start`.
    fail_at_start: bool,
    /// `--load-ms N`.
    load_ms: Option<u64>,
    /// `--chatty BYTES`: log about this many bytes once serving, as a chatty engine would.
    chatty: Option<u64>,
    /// Everything else, ignored.
    ignored: Vec<String>,
}

impl EngineArgs {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut parsed = Self::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--fail-at-start" => parsed.fail_at_start = true,
                "--load-ms" => {
                    let value = args.next().ok_or("--load-ms needs a number of milliseconds")?;
                    let ms =
                        value.parse().map_err(|_| format!("--load-ms {value:?} is not a number of milliseconds"))?;
                    parsed.load_ms = Some(ms);
                }
                "--chatty" => {
                    let value = args.next().ok_or("--chatty needs a number of bytes")?;
                    parsed.chatty =
                        Some(value.parse().map_err(|_| format!("--chatty {value:?} is not a number of bytes"))?);
                }
                _ => parsed.ignored.push(arg.clone()),
            }
        }
        Ok(parsed)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = WorkerArgs::parse();
    rbee_log::init(rbee_log::LogFormat::from_env());
    let engine = match EngineArgs::parse(&args.engine_args) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    if !engine.ignored.is_empty() {
        tracing::info!(worker = %args.worker_id, "ignoring engine arguments {:?}", engine.ignored);
    }
    if engine.fail_at_start {
        tracing::warn!(worker = %args.worker_id, "failing at start as asked");
        tokio::time::sleep(Duration::from_millis(100)).await;
        return ExitCode::from(3);
    }
    let load_ms = engine
        .load_ms
        .or_else(|| std::env::var("REFERENCE_WORKER_LOAD_MS").ok().and_then(|v| v.parse().ok()))
        .unwrap_or(200);
    let backend =
        Arc::new(Echo { model: args.model.clone(), loaded_at: Instant::now() + Duration::from_millis(load_ms) });
    tracing::info!(worker = %args.worker_id, model = %args.model, port = args.port, "reference worker serving");
    let chatty =
        engine.chatty.or_else(|| std::env::var("REFERENCE_WORKER_CHATTY_BYTES").ok().and_then(|v| v.parse().ok()));
    if let Some(bytes) = chatty {
        let id = args.worker_id.clone();
        tokio::spawn(async move {
            let line = "x".repeat(100);
            for i in 0..bytes.div_ceil(150) {
                tracing::info!(worker = %id, "chatty line {i}: {line}");
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            tracing::info!(worker = %id, "chatty: done");
        });
    }
    // A model that asks for it gets an "engine": a child in the worker's process group that
    // ignores SIGTERM, as a stuck engine would; stopping the worker must still end it.
    let mut engine = None;
    if std::fs::read_to_string(&args.model).is_ok_and(|m| m.contains("spawn-engine-ignoring-sigterm")) {
        match std::process::Command::new("sh").args(["-c", "trap '' TERM; exec sleep 600"]).spawn() {
            Ok(child) => {
                tracing::info!(worker = %args.worker_id, "engine pid {}", child.id());
                engine = Some(child);
            }
            Err(e) => tracing::error!(worker = %args.worker_id, "cannot start the engine: {e}"),
        }
    }
    let _engine = engine;
    match rbee_worker::contract::serve(args, WorkerEnv::from_env(), backend, rbee_worker::contract::terminated()).await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn answer_is_echo_of_the_words() {
        assert_eq!(super::tokens("hello  big world", None).concat(), "echo: hello big world");
        assert_eq!(super::tokens("hello big world", Some(2)).concat(), "echo: hello");
    }

    #[test]
    fn engine_args() {
        let args = |a: &[&str]| super::EngineArgs::parse(&a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        let parsed = args(&["--load-ms", "50", "--ctx-size", "8", "--fail-at-start"]).unwrap();
        assert_eq!((parsed.fail_at_start, parsed.load_ms, parsed.chatty), (true, Some(50), None));
        assert_eq!(parsed.ignored, ["--ctx-size", "8"]);
        assert_eq!(args(&[]).unwrap(), super::EngineArgs::default());
        assert!(args(&["--load-ms"]).is_err());
        assert!(args(&["--load-ms", "soon"]).is_err());
    }
}
