//! Metrics end to end: a real Prometheus (Debian's `prometheus`) scrapes the queen and a hive
//! with their tokens and sees a chat completion sent through the queen; `/metrics` answers 401
//! without the token, and 200 without it once `[queen] metrics_public = true`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, Run, free_port, queen_chat, sha256_file, wait_for};

/// `rbee` through the fleet's queen, with fast heartbeats (hive → queen, worker → hive).
fn rbee(fleet: &Fleet, args: &[&str]) -> Run {
    let mut cmd = fleet.via_queen(args);
    cmd.env("RBEE_HEARTBEAT_MS", "500").env("RBEE_WORKER_HEARTBEAT_MS", "500");
    Run(cmd.output().unwrap())
}

/// GET `path` on 127.0.0.1:`port`, with `token` as the bearer if given: (status, body).
fn try_get(port: u16, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let bearer = token.map(|t| format!("Bearer {}", t.trim()));
        let headers: Vec<(&str, &str)> = bearer.as_deref().map(|b| ("authorization", b)).into_iter().collect();
        let response = rbee_http::send("GET", &url, &headers, Vec::new()).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = rbee_http::collect(response).await.map_err(|e| e.to_string())?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}

fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    try_get(port, path, token).unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"))
}

/// A Prometheus server scraping the given targets every second; killed when dropped (also
/// when the test panics).
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    /// Starts one with its config and data in `dir`; `targets` are (job, port, token file).
    fn start(dir: &Path, targets: &[(&str, u16, &Path)]) -> Self {
        let mut config = String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, port, token_file) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    authorization:\n      type: Bearer\n      credentials_file: {}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
                token_file.display()
            ));
        }
        std::fs::create_dir_all(dir).unwrap();
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let log = dir.join("prometheus.log");
        let port = free_port();
        let program = option_env!("RBEE_PROMETHEUS").unwrap_or("prometheus");
        let child = Command::new(program)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e} (apt-get install prometheus)"));
        Self { child, port, log }
    }

    /// Waits until every job's target is `up` (scraped, with the token).
    fn wait_up(&mut self, jobs: &[&str]) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            // Nothing yet while it starts.
            let up = if self.answers() { self.query("up") } else { Vec::new() };
            if jobs.iter().all(|job| up.iter().any(|(m, v)| m["job"] == *job && *v == 1.0)) {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "targets not up within 60 s: {up:?}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn answers(&self) -> bool {
        try_get(self.port, "/-/ready", None).is_ok_and(|(status, _)| status == 200)
    }

    /// The samples of an instant query: (labels, value).
    fn query(&self, query: &str) -> Vec<(serde_json::Value, f64)> {
        let encoded: String = query
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let (status, body) = get(self.port, &format!("/api/v1/query?query={encoded}"), None);
        assert_eq!(status, 200, "query {query}: {body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        answer["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("query {query}: {body}"))
            .iter()
            .map(|s| (s["metric"].clone(), s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)))
            .collect()
    }

    /// The one value of a query (0 when it has no sample yet).
    fn value(&self, query: &str) -> f64 {
        self.query(query).first().map_or(0.0, |(_, v)| *v)
    }

    /// Its own log, to tell why a wait failed.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[cfg_attr(rbee_no_prometheus, ignore = "no `prometheus` binary: apt-get install prometheus (scripts/test says so)")]
fn prometheus_scrapes_the_queen_and_a_hive_with_their_tokens_and_sees_a_chat_request() {
    let mut fleet = Fleet::new(1, &[("reference", "latest")]);
    let model = fleet.dir.path().join("tiny.gguf");
    std::fs::write(&model, b"a tiny model for the reference worker\n").unwrap();
    fleet.deployments =
        format!("[[deployment]]\nname = \"chat\"\nmodel = \"{}\"\nworker = \"reference\"\n\n", model.display());
    fleet.write_config();
    let started = Instant::now();
    rbee(&fleet, &["sync"]).expect_code(0);
    // A model in the hive's models directory, for the model-bytes gauge.
    rbee(&fleet, &["model", "download", "--hive", "h1", model.to_str().unwrap(), "--sha256", &sha256_file(&model)])
        .expect_code(0);
    let operator = fleet.dir.path().join("operator");
    let queen_token_file = operator.join(".local/state/rbee-queen/queen.token");
    let queen_token = std::fs::read_to_string(&queen_token_file).unwrap();
    let hive = &fleet.hosts[0];
    let hive_token_file = hive.path(".local/state/rbee/hive.token");
    let hive_token = std::fs::read_to_string(&hive_token_file).unwrap();
    let (queen_port, hive_port) = (fleet.queen_port, hive.port);

    // The token is needed, as on every other route.
    assert_eq!(get(queen_port, "/metrics", None).0, 401);
    assert_eq!(get(hive_port, "/metrics", None).0, 401);
    assert_eq!(get(queen_port, "/metrics", Some("wrong")).0, 401);
    let (status, queen_text) = get(queen_port, "/metrics", Some(&queen_token));
    assert_eq!(status, 200, "{queen_text}");
    for line in [r#"rbee_hives{state="fresh"} 1"#, r#"rbee_deployment_replicas_desired{deployment="chat"} 1"#] {
        assert!(queen_text.lines().any(|l| l == line), "no {line:?} in\n{queen_text}");
    }
    assert!(queen_text.contains(r#"rbee_reconcile_actions_total{action="start"}"#), "{queen_text}");
    assert!(queen_text.contains(r#"rbee_jobs_total{kind="package_sync",outcome="ok"}"#), "{queen_text}");
    let (status, hive_text) = get(hive_port, "/metrics", Some(&hive_token));
    assert_eq!(status, 200, "{hive_text}");
    let size = std::fs::metadata(&model).unwrap().len();
    for line in [
        r#"rbee_hive_workers{state="ready"} 1"#.to_owned(),
        format!(r#"rbee_hive_model_bytes{{model="tiny.gguf"}} {size}"#),
    ] {
        assert!(hive_text.lines().any(|l| l == line), "no {line:?} in\n{hive_text}");
    }

    // A real Prometheus scrapes both with the token files.
    let mut prometheus = Prometheus::start(
        &fleet.dir.path().join("prometheus"),
        &[("queen", queen_port, &queen_token_file), ("hive", hive_port, &hive_token_file)],
    );
    let scraping = Instant::now();
    prometheus.wait_up(&["queen", "hive"]);
    eprintln!("prometheus: both targets up after {:?}", scraping.elapsed());
    assert_eq!(prometheus.value(r#"rbee_hive_workers{job="hive",state="ready"}"#), 1.0);
    let requests = r#"sum(rbee_inference_requests_total{job="queen",model="chat",outcome="ok"})"#;
    let tokens = r#"sum(rbee_tokens_streamed_total{job="queen",model="chat"})"#;
    let before = prometheus.value(requests);
    let tokens_before = prometheus.value(tokens);

    let request = serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": "are you there"}]});
    let (status, body) = queen_chat(&operator, queen_port, request.clone());
    assert_eq!(status, 200, "{body}");
    let mut streamed = request;
    streamed["stream"] = true.into();
    let (status, body) = queen_chat(&operator, queen_port, streamed);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("data: "), "{body}");

    let after = wait_for("the request counter rose in prometheus", Duration::from_secs(20), || {
        let now = prometheus.value(requests);
        (now >= before + 2.0).then_some(now)
    });
    let tokens_after = wait_for("the token counter rose in prometheus", Duration::from_secs(20), || {
        let now = prometheus.value(tokens);
        (now > tokens_before).then_some(now)
    });
    eprintln!("prometheus: requests {before} → {after}, tokens {tokens_before} → {tokens_after}");
    let latency = r#"sum(rbee_inference_duration_seconds_count{job="queen",model="chat"})"#;
    wait_for("the latency histogram counted both", Duration::from_secs(20), || {
        (prometheus.value(latency) >= 2.0).then_some(())
    });
    drop(prometheus);

    // metrics_public: no token needed for /metrics on the queen and on the hives it starts
    // (the hive learns it from queen.link, written when the queen starts it); other routes
    // still need it.
    fleet.queen_settings = "metrics_public = true\n".into();
    fleet.write_config();
    rbee(&fleet, &["queen", "stop"]).expect_code(0);
    rbee(&fleet, &["hive", "stop", "h1"]).expect_code(0);
    rbee(&fleet, &["hive", "start", "h1"]).expect_code(0);
    let (status, text) = get(queen_port, "/metrics", None);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("# TYPE rbee_hives gauge"), "{text}");
    let (status, text) = get(hive_port, "/metrics", None);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("# TYPE rbee_hive_workers gauge"), "{text}");
    assert_eq!(get(queen_port, "/v1/hives", None).0, 401);
    assert_eq!(get(hive_port, "/v1/catalog", None).0, 401);
    eprintln!("metrics test: {:?} in all", started.elapsed());
}
