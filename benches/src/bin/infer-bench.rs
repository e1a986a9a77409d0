//! What routing costs an inference request: the same non-streaming chat completion sent
//! straight to a worker, through its hive's proxy, through the queen's OpenAI-compatible
//! endpoint, and as an `Infer` job (submit + event stream, what `rbee infer` does). The
//! worker is the reference worker fixture (an instant echo), so the figures are rbee's own
//! overhead. Queen and hive run in this process, as real HTTP servers on 127.0.0.1.
//!
//! `cargo build --release --workspace --bins && target/release/infer-bench [REQUESTS]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_core::proto::operation::Operation;

const TOKEN: &str = "bench-token";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn post(url: &str, body: &serde_json::Value) -> Vec<u8> {
    let bearer = format!("Bearer {TOKEN}");
    let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    let response = rbee_http::send("POST", url, &headers, serde_json::to_vec(body).unwrap()).await.unwrap();
    assert!(response.status().is_success(), "{url}: {}", response.status());
    rbee_http::collect(response).await.unwrap()
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
    println!("| {name} | {:.2} | {:.2} | {:.2} |", at(0.5), at(0.95), at(0.99));
}

#[tokio::main]
async fn main() {
    let requests: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(300);
    let bin_dir = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let home = tempfile::tempdir().unwrap();
    let catalog = home.path().join(rbee_core::layout::Layout::WORKERS_DIR);
    std::fs::create_dir_all(&catalog).unwrap();
    std::fs::copy(bin_dir.join("rbee-worker-reference"), catalog.join("rbee-worker-reference"))
        .expect("build the workspace binaries first: cargo build --release --workspace --bins");

    let queen = rbee_queen::bind(rbee_queen::QueenConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
        connect: Arc::new(|_: &rbee_core::config::Config| {
            Arc::new(rbee_core::fleet::LocalConnector) as Arc<dyn rbee_core::fleet::Connector>
        }),
        keepalive: Duration::from_secs(10),
        heartbeat: Duration::from_millis(500),
        max_heartbeats_per_second: rbee_core::proto::operation::DEFAULT_MAX_HEARTBEATS_PER_SECOND,
        advertise_url: None,
        reschedule_after: Duration::from_secs(60),
        state_dir: Some(home.path().join("queen")),
        metrics_public: false,
    })
    .await
    .unwrap();
    let queen_url = format!("http://{}", queen.addr);
    let hive_token = queen.hive_credential("bench");
    tokio::spawn(queen.run(std::future::pending()));
    let hive_port = free_port();
    let hive = rbee_hive::HiveConfig {
        addr: format!("127.0.0.1:{hive_port}").parse().unwrap(),
        pid_file: None,
        alias: Some("bench".into()),
        link: Some(rbee_hive::QueenLink {
            url: queen_url.clone(),
            interval_ms: 500,
            metrics_public: false,
            token: hive_token,
        }),
        home: home.path().to_path_buf(),
        worker_heartbeat_ms: 500,
    };
    tokio::spawn(rbee_hive::serve(hive, std::future::pending()));

    let client = rbee_queen::client::QueenClient::new(queen_url.trim_start_matches("http://").parse().unwrap(), TOKEN);
    let run = |op: Operation| {
        let client = client.clone();
        async move {
            let job = client.submit(&op).await.unwrap();
            match client.stream(&job.job_id, |_| {}).await.unwrap().body {
                rbee_queen::api::JobEventBody::Result { result, .. } => result,
                _ => unreachable!(),
            }
        }
    };
    // Wait for the hive's first heartbeat, then spawn the worker.
    while !client.hives().await.is_ok_and(|h| !h.is_empty()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spawn = Operation::WorkerSpawn {
        hive_alias: "bench".into(),
        worker_type: "reference".into(),
        model: "tiny".into(),
        device: "cpu".into(),
        ready_timeout_ms: Some(30_000),
        args: Vec::new(),
        replica: None,
        no_wait: false,
    };
    let rbee_core::package::OperationResult::Worker { worker, .. } = run(spawn).await else {
        panic!("the worker did not start");
    };

    let body = serde_json::json!({"model": "tiny", "messages": [{"role": "user", "content": "one two three"}]});
    let paths = [
        ("worker directly", format!("http://127.0.0.1:{}/v1/chat/completions", worker.port)),
        ("through the hive", format!("http://127.0.0.1:{hive_port}/v1/workers/{}/chat/completions", worker.id)),
        ("through queen and hive (/v1/chat/completions)", format!("{queen_url}/v1/chat/completions")),
    ];
    println!("{requests} sequential requests each; milliseconds");
    println!();
    println!("| path | p50 | p95 | p99 |");
    println!("|---|---:|---:|---:|");
    for (name, url) in &paths {
        for _ in 0..20 {
            post(url, &body).await; // warm up
        }
        let mut samples = Vec::with_capacity(requests);
        for _ in 0..requests {
            let started = Instant::now();
            let answer = post(url, &body).await;
            samples.push(started.elapsed());
            assert!(String::from_utf8_lossy(&answer).contains("echo: one two three"));
        }
        report(name, samples);
    }
    let infer =
        Operation::Infer { hive_alias: None, model: "tiny".into(), prompt: "one two three".into(), max_tokens: None };
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        let result = run(infer.clone()).await;
        samples.push(started.elapsed());
        assert!(
            matches!(result, rbee_core::package::OperationResult::Inferred { ref text, .. } if text == "echo: one two three")
        );
    }
    report("Infer job: submit + event stream (streaming, 4 tokens 5 ms apart)", samples);
    let stop =
        Operation::WorkerProcessDelete { hive_alias: "bench".into(), worker_id: worker.id, grace_ms: Some(2000) };
    run(stop).await;
}
