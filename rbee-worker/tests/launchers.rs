//! The launchers as the hive runs them: a missing engine is named (exit 127), and the bridge
//! puts the contract in front of an engine's own health check and OpenAI endpoint.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::response::IntoResponse;
use rbee_worker::contract::{WorkerEnv, router};
use rbee_worker::proxy::EngineProxy;
use rbee_worker::{Engine, WorkerArgs};

#[test]
fn each_launcher_names_its_missing_engine() {
    let empty = tempfile::tempdir().unwrap();
    for (bin, missing) in [
        (env!("CARGO_BIN_EXE_rbee-worker-llama-cpp"), "`llama-server` not found"),
        (env!("CARGO_BIN_EXE_rbee-worker-vllm"), "`vllm` not found"),
        (env!("CARGO_BIN_EXE_rbee-worker-comfyui"), "`python3` not found"),
    ] {
        let out = Command::new(bin)
            .args(["--worker-id", "w1", "--model", "/m/model.gguf", "--port", "1"])
            .env("PATH", empty.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(127), "{bin}: {stderr}");
        assert!(stderr.contains(missing), "{bin}: {stderr}");
        assert!(stderr.contains("this worker needs"), "{bin}: {stderr}");
    }
}

#[test]
fn comfyui_arguments() {
    let args = WorkerArgs {
        worker_id: "w".into(),
        model: "m".into(),
        device: "cpu".into(),
        port: 1,
        hive_url: None,
        engine_args: Vec::new(),
    };
    let (program, argv) = Engine::ComfyUi.command(&args, 7000);
    assert_eq!(program, "python3");
    assert_eq!(argv[1..].join(" "), "--listen 127.0.0.1 --port 7000 --cpu");
}

/// A stand-in engine: `/health` answers 503 until `loaded`, then 200; chat completions
/// stream one chunk.
async fn fake_engine(loaded: Arc<AtomicBool>) -> String {
    let app = axum::Router::new()
        .route(
            "/health",
            axum::routing::get(move || {
                let loaded = loaded.clone();
                async move {
                    if loaded.load(Ordering::Relaxed) {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }),
        )
        .route(
            "/v1/chat/completions",
            axum::routing::post(|body: String| async move {
                assert!(body.contains("\"stream\":true"), "{body}");
                let sse = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
                ([("content-type", "text/event-stream")], sse).into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn the_bridge_reports_engine_health_and_proxies_completions_with_the_token() {
    let loaded = Arc::new(AtomicBool::new(false));
    let base = fake_engine(loaded.clone()).await;
    let args = WorkerArgs {
        worker_id: "w1".into(),
        model: "/m/x.gguf".into(),
        device: "cpu".into(),
        port: 0,
        hive_url: None,
        engine_args: Vec::new(),
    };
    let env = WorkerEnv { token: Some("secret".into()), heartbeat_ms: 1000 };
    let app = router(args, &env, Arc::new(EngineProxy { base, engine: Engine::LlamaCpp }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let health = rbee_http::send("GET", &format!("{url}/health"), &[], Vec::new()).await.unwrap();
    assert_eq!(health.status(), 503, "loading while the engine loads");
    loaded.store(true, Ordering::Relaxed);
    let health = rbee_http::send("GET", &format!("{url}/health"), &[], Vec::new()).await.unwrap();
    assert_eq!(health.status(), 200);
    let body = String::from_utf8(rbee_http::collect(health).await.unwrap()).unwrap();
    assert!(body.contains("\"worker_id\":\"w1\""), "{body}");

    let request = br#"{"model":"x","stream":true,"messages":[{"role":"user","content":"hello"}]}"#.to_vec();
    let chat = format!("{url}/v1/chat/completions");
    let refused = rbee_http::send("POST", &chat, &[], request.clone()).await.unwrap();
    assert_eq!(refused.status(), 401);
    let answer = rbee_http::send("POST", &chat, &[("authorization", "Bearer secret")], request).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "text/event-stream");
    let body = String::from_utf8(rbee_http::collect(answer).await.unwrap()).unwrap();
    assert!(body.contains("\"content\":\"hi\"") && body.ends_with("data: [DONE]\n\n"), "{body}");
}

struct AlwaysReady;

#[async_trait::async_trait]
impl rbee_worker::contract::Backend for AlwaysReady {
    async fn ready(&self) -> bool {
        true
    }
    async fn chat(&self, _body: axum::body::Bytes) -> axum::response::Response {
        axum::http::StatusCode::NOT_IMPLEMENTED.into_response()
    }
}

#[tokio::test]
async fn a_worker_its_hive_disowns_stops_instead_of_running_unmanaged() {
    let hive = axum::Router::new()
        .route("/v1/workers/{id}/heartbeat", axum::routing::post(|| async { axum::http::StatusCode::NOT_FOUND }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hive_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hive).await });
    let args = WorkerArgs {
        worker_id: "w1".into(),
        model: "m".into(),
        device: "cpu".into(),
        port: 0,
        hive_url: Some(hive_url),
        engine_args: Vec::new(),
    };
    let env = WorkerEnv { token: None, heartbeat_ms: 50 };
    let served = rbee_worker::contract::serve(args, env, Arc::new(AlwaysReady), std::future::pending());
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), served).await.expect("the worker stopped");
    let err = result.unwrap_err();
    assert!(matches!(err, rbee_worker::contract::ContractError::Disowned { .. }), "{err:?}");
    assert!(err.to_string().contains("does not know worker w1"), "{err}");
}
