//! A fleet of local hosts for end-to-end tests: each host is a directory used as its home and
//! a port for its hive; the real `rbee` binary syncs them from a release tree built from the
//! workspace's own binaries (two versions: 0.1.0, and 0.2.0 whose files differ by a trailer).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The release tree's files; the reference worker (a test fixture) is in it so deployments can
/// declare it like any worker type.
pub const ARTIFACTS: [&str; 5] =
    ["rbee-hive", "rbee-worker-llama-cpp", "rbee-worker-vllm", "rbee-worker-comfyui", "rbee-worker-reference"];

pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rbee")).parent().expect("bin dir").to_path_buf()
}

pub fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))))
}

/// The release tree shared by every test of this process.
pub fn release_tree() -> &'static Path {
    static TREE: OnceLock<PathBuf> = OnceLock::new();
    TREE.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rbee-release-tree");
        let _ = std::fs::remove_dir_all(&root);
        for (version, trailer) in [("0.1.0", None), ("0.2.0", Some(b"\0rbee-test-release-0.2.0".as_slice()))] {
            let dir = root.join(version);
            std::fs::create_dir_all(&dir).unwrap();
            let mut sums = String::new();
            for name in ARTIFACTS {
                let built = bin_dir().join(name);
                let mut bytes = std::fs::read(&built).unwrap_or_else(|e| {
                    panic!("{} is missing ({e}): build the workspace binaries first (`cargo build --workspace --bins`; scripts/test does)", built.display())
                });
                if let Some(t) = trailer {
                    bytes.extend_from_slice(t);
                }
                std::fs::write(dir.join(name), &bytes).unwrap();
                sums.push_str(&format!("{}  {name}\n", hex::encode(Sha256::digest(&bytes))));
            }
            let engine = stand_in_engine(&dir, if trailer.is_some() { 200 } else { 100 });
            sums.push_str(&format!("{}  {STAND_IN_ENGINE}\n", hex::encode(Sha256::digest(&engine))));
            std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
        }
        std::fs::write(root.join("latest"), "0.1.0\n").unwrap();
        root
    })
}

/// The llama-cpp engine of the test release tree.
pub const STAND_IN_ENGINE: &str = "engine-llama-cpp-cpu.tar.gz";
/// What the stand-in engine prints when a worker launches it.
pub const STAND_IN_SAYS: &str = "stand-in llama-server: it only answers --version";

/// A stand-in `llama-server` packed as an engine tarball in `dir`: it answers `--version`
/// (`version: <build>`) and exits 3 otherwise. The real one is built by
/// `scripts/build-llama-server` and used by the tests that serve tokens.
fn stand_in_engine(dir: &Path, build: u32) -> Vec<u8> {
    let stage = dir.join("engine-stage");
    std::fs::create_dir_all(stage.join("bin")).unwrap();
    let program = stage.join("bin/llama-server");
    let text = format!(
        "#!/bin/sh\nif [ \"${{1:-}}\" = --version ]; then echo 'version: {build} (stand-in)'; exit 0; fi\necho '{STAND_IN_SAYS}' >&2\nexit 3\n"
    );
    std::fs::write(&program, text).unwrap();
    std::fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tarball = dir.join(STAND_IN_ENGINE);
    let status = std::process::Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "-czf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&stage)
        .arg("bin")
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_dir_all(&stage).unwrap();
    std::fs::read(&tarball).unwrap()
}

/// True while `pid` runs (a zombie waiting for its parent to reap it does not count).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `within`.
pub fn wait_for<T>(what: &str, within: std::time::Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = std::time::Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `(status, body)` of one HTTP/1.1 request to a daemon on 127.0.0.1:`port`.
pub fn http(port: u16, method: &str, path: &str, bearer: Option<&str>, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let auth = bearer.map(|b| format!("Authorization: Bearer {b}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{text}"));
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One local host.
pub struct Host {
    pub alias: String,
    pub home: PathBuf,
    pub port: u16,
    /// worker type → version.
    pub workers: Vec<(String, String)>,
}

impl Host {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.home.join(rel)
    }

    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.path(".local/state/rbee/hive.pid")).ok()?.trim().parse().ok()
    }

    /// GET /health straight over TCP; `None` if nothing answers.
    pub fn health(&self) -> Option<serde_json::Value> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(3))).ok()?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        if head.split(' ').nth(1) != Some("200") {
            return None;
        }
        serde_json::from_str(body).ok()
    }

    /// Kills the worker processes in the hive's registry (each leads its own process group).
    pub fn kill_workers(&self) {
        let dir = self.path(".local/state/rbee/workers");
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let record: Option<serde_json::Value> =
                std::fs::read(entry.path()).ok().and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(pid) = record.and_then(|r| r["pid"].as_u64()) {
                let _ = Command::new("kill").args(["-9", "--", &format!("-{pid}")]).status();
            }
        }
    }

    pub fn kill_hive(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            // Wait until it is gone, so that observation cannot race its exit.
            for _ in 0..100 {
                if !alive(pid) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// Several local hosts and the config that declares them.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub hosts: Vec<Host>,
    /// The artifact source the config names.
    pub source: PathBuf,
    /// This fleet's queen port.
    pub queen_port: u16,
    /// Appended to hives.conf (`[[deployment]]` tables).
    pub deployments: String,
    /// Appended to rbee.conf's `[queen]` table.
    pub queen_settings: String,
}

impl Fleet {
    pub fn new(n: usize, workers: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let hosts = (1..=n)
            .map(|i| Host {
                alias: format!("h{i}"),
                home: dir.path().join(format!("h{i}")),
                port: free_port(),
                workers: workers.iter().map(|(t, v)| (t.to_string(), v.to_string())).collect(),
            })
            .collect();
        let fleet = Self {
            dir,
            hosts,
            source: release_tree().to_path_buf(),
            queen_port: free_port(),
            deployments: String::new(),
            queen_settings: String::new(),
        };
        fleet.write_config();
        fleet
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    pub fn host(&self, alias: &str) -> &Host {
        self.hosts.iter().find(|h| h.alias == alias).expect("host")
    }

    pub fn set_worker(&mut self, alias: &str, kind: &str, version: &str) {
        let h = self.hosts.iter_mut().find(|h| h.alias == alias).expect("host");
        for w in &mut h.workers {
            if w.0 == kind {
                w.1 = version.to_owned();
            }
        }
        self.write_config();
    }

    /// Points the config at another artifact source (a directory or a URL).
    pub fn set_source(&mut self, source: PathBuf) {
        self.source = source;
        self.write_config();
    }

    pub fn write_config(&self) {
        let mut hives = String::new();
        for h in &self.hosts {
            let workers: Vec<String> =
                h.workers.iter().map(|(t, v)| format!("{{ type = \"{t}\", version = \"{v}\" }}")).collect();
            hives.push_str(&format!(
                "[[hive]]\nalias = \"{}\"\nhostname = \"localhost\"\nhive_port = {}\nlocal_home = \"{}\"\nworkers = [{}]\n\n",
                h.alias,
                h.port,
                h.home.display(),
                workers.join(", ")
            ));
        }
        hives.push_str(&self.deployments);
        let dir = self.config_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hives.conf"), hives).unwrap();
        let insecure =
            if self.source.to_string_lossy().starts_with("http://") { "allow_insecure_source = true\n" } else { "" };
        let rbee = format!(
            "[queen]\nport = {}\n{}\n[package]\nsource = \"{}\"\n{insecure}ssh_timeout = 20\nhealth_check_timeout = 20\n",
            self.queen_port,
            self.queen_settings,
            self.source.display()
        );
        std::fs::write(dir.join("rbee.conf"), rbee).unwrap();
    }

    /// A `rbee` command with this fleet's config and an operator home of its own.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rbee"));
        cmd.arg("--config")
            .arg(self.config_dir())
            .args(args)
            .env("HOME", self.dir.path().join("operator"))
            .env_remove("XDG_STATE_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("RBEE_CONFIG_DIR")
            .env_remove("RBEE_TEST_FAULT")
            // The package manager in this process: test hooks apply, and each test is alone.
            // The queen's own tests run it through the queen.
            .env("RBEE_IN_PROCESS", "1");
        cmd
    }

    /// A `rbee` command that goes through the queen (started on this fleet's own port).
    pub fn via_queen(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(args);
        cmd.env_remove("RBEE_IN_PROCESS");
        cmd
    }

    pub fn rbee(&self, args: &[&str]) -> Run {
        Run(self.command(args).output().expect("run rbee"))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Stop this fleet's queen, if a test started one.
        let _ = self.command(&["queen", "stop"]).output();
        for h in &self.hosts {
            h.kill_hive();
            h.kill_workers();
        }
    }
}

/// The output of one `rbee` run.
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Asserts the exit code, showing the output when it differs.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(self.code(), code, "exit code\n--- stdout\n{}\n--- stderr\n{}", self.stdout(), self.stderr());
        self
    }
    /// `--json` runs: every stdout line parsed.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }
    /// The final `result` line of a `--json` sync.
    pub fn result(&self) -> serde_json::Value {
        self.json_lines().into_iter().rfind(|v| v["event"] == "result").expect("a result line")
    }
}

/// A client sending chat completions to a deployment the whole time, counting failures.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl Load {
    /// Starts sending requests for `model` to the queen on `queen_port` whose operator home is `operator`.
    pub fn start(operator: &std::path::Path, queen_port: u16, model: &str) -> Self {
        let token = std::fs::read_to_string(operator.join(".local/state/rbee-queen/queen.token")).unwrap();
        let url = format!("http://127.0.0.1:{queen_port}/v1/chat/completions");
        let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "are you there"}]});
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let bearer = format!("Bearer {}", token.trim());
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = runtime.block_on(async {
                    let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
                    let response = rbee_http::send("POST", &url, &headers, serde_json::to_vec(&body).unwrap())
                        .await
                        .map_err(|e| e.to_string())?;
                    let status = response.status().as_u16();
                    let worker = response.headers().get("x-rbee-worker").map(|v| v.to_str().unwrap_or("").to_owned());
                    let body = rbee_http::collect(response).await.map_err(|e| e.to_string())?;
                    let body = String::from_utf8_lossy(&body).into_owned();
                    if status == 200 && body.contains("echo: are you there") && worker.is_some() {
                        Ok(())
                    } else {
                        Err(format!("{status} (worker {worker:?}): {body}"))
                    }
                });
                match answer {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            (ok, failed)
        });
        Self { stop, thread }
    }

    /// Stops, and returns the requests that succeeded and how the others failed.
    pub fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// POST /v1/chat/completions to the queen on `port` whose operator home is `operator`, with
/// its token: (status, body).
pub fn queen_chat(operator: &Path, port: u16, body: serde_json::Value) -> (u16, String) {
    let token = std::fs::read_to_string(operator.join(".local/state/rbee-queen/queen.token")).unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let bearer = format!("Bearer {}", token.trim());
        let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
        let response = rbee_http::send("POST", &url, &headers, serde_json::to_vec(&body).unwrap()).await.unwrap();
        let status = response.status().as_u16();
        let body = rbee_http::collect(response).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}
