//! End to end over SSH: test hosts in network namespaces with real sshd (see rbee-testbed),
//! the real `rbee` binary, and the faults a fleet meets. These need root; where root or sshd
//! is missing they are skipped with the reason, except under CI, where they fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rbee_testbed::{TestHost, Testbed};

use crate::fleet::{Run, release_tree, sha256_file};

/// One SSH fleet test at a time: each already runs its hosts concurrently.
pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

const WORKERS: &str = r#"[{ type = "llama-cpp" }, { type = "vllm" }]"#;

pub(crate) struct SshFleet {
    pub(crate) bed: Testbed,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) source: PathBuf,
    pub(crate) ssh_timeout: u32,
    /// Host name → (address, port) to reach it at instead of its own (a proxy).
    pub(crate) via: std::collections::BTreeMap<String, (String, u16)>,
    /// This fleet's queen port; the queen listens on every address, advertising the bridge.
    pub(crate) queen_port: u16,
    /// Each hive's `workers`.
    pub(crate) workers: String,
    /// Appended to hives.conf (`[[deployment]]` tables) and to rbee.conf's `[queen]`.
    pub(crate) deployments: String,
    pub(crate) queen_settings: String,
}

fn testbed(n: usize) -> Option<Testbed> {
    if let Err(reason) = rbee_testbed::check() {
        assert!(std::env::var_os("CI").is_none(), "CI must run the SSH tests, but: {reason}");
        eprintln!("SKIPPED: SSH end-to-end test: {reason}");
        return None;
    }
    Some(Testbed::new(n).unwrap_or_else(|e| panic!("test hosts: {e}")))
}

impl SshFleet {
    pub(crate) fn new(n: usize) -> Option<Self> {
        let bed = testbed(n)?;
        let fleet = Self {
            bed,
            dir: tempfile::tempdir().unwrap(),
            source: release_tree().to_path_buf(),
            ssh_timeout: 10,
            via: Default::default(),
            queen_port: crate::fleet::free_port(),
            workers: WORKERS.to_owned(),
            deployments: String::new(),
            queen_settings: String::new(),
        };
        fleet.write_config();
        Some(fleet)
    }

    pub(crate) fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    pub(crate) fn write_config(&self) {
        let mut hives = String::new();
        for h in &self.bed.hosts {
            let (addr, port) = self.via.get(&h.name).cloned().unwrap_or_else(|| (h.ip.clone(), 22));
            hives.push_str(&format!(
                "[[hive]]\nalias = \"{}\"\nhostname = \"{addr}\"\nssh_port = {port}\nssh_user = \"root\"\nssh_key = \"{}\"\nhive_port = 8600\nworkers = {}\n\n",
                h.name,
                self.bed.user_key.display(),
                self.workers,
            ));
        }
        hives.push_str(&self.deployments);
        let rbee = format!(
            "[queen]\nport = {qp}\nbind = \"0.0.0.0\"\nadvertise_url = \"http://{gw}:{qp}\"\n{}\n[package]\nsource = \"{}\"\nssh_timeout = {}\nhealth_check_timeout = 20\n\n[ssh]\nknown_hosts = \"{}\"\n",
            self.queen_settings,
            self.source.display(),
            self.ssh_timeout,
            self.bed.known_hosts.display(),
            qp = self.queen_port,
            gw = self.bed.gateway,
        );
        std::fs::create_dir_all(self.config_dir()).unwrap();
        std::fs::write(self.config_dir().join("hives.conf"), hives).unwrap();
        std::fs::write(self.config_dir().join("rbee.conf"), rbee).unwrap();
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rbee"));
        cmd.arg("--config")
            .arg(self.config_dir())
            .args(args)
            .env("HOME", self.dir.path().join("operator"))
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("XDG_STATE_HOME")
            .env_remove("RBEE_TEST_FAULT")
            .env("RBEE_IN_PROCESS", "1");
        cmd
    }

    pub(crate) fn rbee(&self, args: &[&str]) -> Run {
        Run(self.command(args).output().unwrap())
    }

    /// Through the queen (started on this fleet's port), with fast heartbeats.
    pub(crate) fn via_queen(&self, args: &[&str]) -> Run {
        let mut cmd = self.command(args);
        cmd.env_remove("RBEE_IN_PROCESS").env("RBEE_HEARTBEAT_MS", "500").env("RBEE_WORKER_HEARTBEAT_MS", "500");
        Run(cmd.output().unwrap())
    }

    pub(crate) fn host(&self, name: &str) -> &TestHost {
        self.bed.host(name)
    }

    /// A release tree whose latest is 0.2.0 (every artifact changes).
    pub(crate) fn upgrade_source(&mut self) {
        let tree = self.dir.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        for v in ["0.1.0", "0.2.0"] {
            let _ = std::os::unix::fs::symlink(release_tree().join(v), tree.join(v));
        }
        std::fs::write(tree.join("latest"), "0.2.0\n").unwrap();
        self.source = tree;
        self.write_config();
    }
}

/// The hive's `/health`, asked on the host itself (a linked hive serves plain HTTP only to
/// local clients; the network gets TLS).
pub(crate) fn health(host: &TestHost) -> Option<serde_json::Value> {
    let probe = PathBuf::from(env!("CARGO_BIN_EXE_rbee")).with_file_name("rbee-hive");
    let out = Command::new("ip")
        .args(["netns", "exec", &host.netns])
        .arg(probe)
        .args(["probe", "--port", "8600", "--timeout-ms", "3000"])
        .output()
        .ok()?;
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

pub(crate) fn report<'a>(result: &'a serde_json::Value, alias: &str) -> &'a serde_json::Value {
    result["report"]["hives"].as_array().unwrap().iter().find(|h| h["alias"] == alias).expect("hive in report")
}

/// Files under a host's root other than its `.ssh`.
fn files_left(root: &Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(root)
        .args(["-path", &format!("{}/.ssh", root.display()), "-prune", "-o", "-type", "f", "-print"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

fn assert_others_ok(result: &serde_json::Value, except: &str) {
    for h in result["report"]["hives"].as_array().unwrap() {
        if h["alias"] != except {
            assert_eq!(h["outcome"], "ok", "{} was affected: {h}", h["alias"]);
        }
    }
}

#[cfg_attr(rbee_no_testbed, ignore = "needs root, openssh-server and iproute2 for SSH test hosts")]
#[test]
fn five_hosts_sync_concurrently_then_status_and_uninstall_leave_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fleet) = SshFleet::new(5) else { return };
    let run = fleet.rbee(&["sync", "--json"]).expect_code(0);
    let events = run.json_lines();
    // Concurrency from the events' timestamps: every hive's work overlaps every other's.
    let span = |alias: &str| {
        let at = |kind: &str| {
            events
                .iter()
                .find(|e| e["event"] == kind && e["alias"] == alias)
                .map(|e| e["at_ms"].as_u64().unwrap())
                .unwrap()
        };
        (at("hive_started"), at("hive_done"))
    };
    let spans: Vec<(u64, u64)> = fleet.bed.hosts.iter().map(|h| span(&h.name)).collect();
    let latest_start = spans.iter().map(|s| s.0).max().unwrap();
    let earliest_done = spans.iter().map(|s| s.1).min().unwrap();
    assert!(latest_start < earliest_done, "hives did not overlap: {spans:?}");
    for h in &fleet.bed.hosts {
        let health = health(h).unwrap_or_else(|| panic!("{} does not answer /health", h.name));
        assert_eq!(health["sha256"], sha256_file(&release_tree().join("0.1.0/rbee-hive")));
    }
    fleet.rbee(&["status"]).expect_code(0);
    let again = fleet.rbee(&["sync", "--json"]).expect_code(0).result();
    assert_eq!(again["bytes_transferred"], 0);

    fleet.rbee(&["uninstall", "--purge"]).expect_code(0);
    for h in &fleet.bed.hosts {
        assert_eq!(files_left(&h.root), Vec::<String>::new(), "{} still has files", h.name);
        assert!(health(h).is_none(), "{} hive still answers", h.name);
    }
    let status = fleet.rbee(&["status"]).expect_code(2);
    assert_eq!(status.stdout().matches("not installed").count(), 5, "{}", status.stdout());
}

impl Drop for SshFleet {
    fn drop(&mut self) {
        let _ = self.command(&["queen", "stop"]).output();
    }
}

#[cfg_attr(rbee_no_testbed, ignore = "needs root, openssh-server and iproute2 for SSH test hosts")]
#[test]
fn remote_hives_report_to_the_queen_over_the_network() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fleet) = SshFleet::new(3) else { return };
    // Everything on the hosts' bridge is captured, from the first sync to the last answer.
    let pcap = fleet.dir.path().join("bridge.pcap");
    let mut capture = Command::new("tcpdump")
        .args(["-i", fleet.bed.bridge(), "-U", "-s", "0", "-w"])
        .arg(&pcap)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tcpdump (the CI installs it: apt-get install tcpdump)");
    wait_until("tcpdump listening", Duration::from_secs(10), || pcap.exists());
    fleet.via_queen(&["sync"]).expect_code(0);
    let started = Instant::now();
    loop {
        let list = fleet.via_queen(&["hive", "list", "--json"]).expect_code(0);
        let hives: serde_json::Value = serde_json::from_str(list.stdout().trim()).unwrap();
        let fresh: Vec<String> = hives
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["stale"] == false)
            .map(|h| format!("{}@{}", h["alias"].as_str().unwrap(), h["address"].as_str().unwrap()))
            .collect();
        let want: Vec<String> = fleet.bed.hosts.iter().map(|h| format!("{}@{}", h.name, h.ip)).collect();
        if fresh == want {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "fresh hives {fresh:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let caps = fleet.via_queen(&["hive", "capabilities", "h2", "--json"]).expect_code(0);
    assert!(caps.stdout().contains("\"cpu_cores\""), "{}", caps.stdout());

    // Worker operations and inference are forwarded over the network to the remote hive,
    // which runs the worker inside that host.
    let h2 = fleet.host("h2");
    let catalog = h2.root.join(".local/share/rbee/workers");
    let reference = PathBuf::from(env!("CARGO_BIN_EXE_rbee")).parent().unwrap().join("rbee-worker-reference");
    std::fs::copy(&reference, catalog.join("rbee-worker-reference")).expect("the reference worker is built");
    fleet.via_queen(&["worker", "refresh", "--hive", "h2"]).expect_code(0);
    let spawned =
        fleet.via_queen(&["worker", "spawn", "--hive", "h2", "--type", "reference", "--model", "m", "--json"]);
    let spawned = spawned.expect_code(0).stdout();
    let spawned: serde_json::Value = serde_json::from_str(spawned.trim().lines().last().unwrap()).unwrap();
    let id = spawned["worker"]["id"].as_str().unwrap().to_owned();
    let answer = fleet.via_queen(&["infer", "--model", "m", "--hive", "h2", "over the network"]).expect_code(0);
    assert_eq!(answer.stdout().trim(), "echo: over the network");
    fleet.via_queen(&["worker", "delete", "--hive", "h2", &id]).expect_code(0);

    // Each hive has a credential of its own: not another hive's, not the operator's token.
    let admin = std::fs::read_to_string(fleet.dir.path().join("operator/.local/state/rbee-queen/queen.token")).unwrap();
    let credentials: Vec<String> = fleet
        .bed
        .hosts
        .iter()
        .map(|h| std::fs::read_to_string(h.root.join(".local/state/rbee/hive.token")).unwrap().trim().to_owned())
        .collect();
    let distinct: std::collections::BTreeSet<&String> = credentials.iter().collect();
    assert_eq!(distinct.len(), credentials.len(), "one credential per hive");
    assert!(!credentials.contains(&admin.trim().to_owned()), "the admin token never leaves this machine");
    // A heartbeat for h2 with h1's credential is refused, and a hive's credential cannot submit
    // a job.
    let post = |path: &str, bearer: &str, body: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", fleet.queen_port)).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {bearer}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.split(' ').nth(1).unwrap_or_default().to_owned()
    };
    let beat = |alias: &str| {
        serde_json::json!({"alias": alias, "version": "0.1.0", "sha256": "0".repeat(64), "pid": 1, "port": 8600,
            "interval_ms": 500, "workers": []})
        .to_string()
    };
    assert_eq!(post("/v1/heartbeats", &credentials[0], &beat("h2")), "401", "h1's credential for h2's heartbeat");
    assert_eq!(post("/v1/heartbeats", admin.trim(), &beat("h2")), "401", "the admin token is not a hive's");
    assert_eq!(
        post("/v1/heartbeats", &credentials[1], &beat("h2")),
        "200",
        "h2's own (answered with the interval to beat at)"
    );
    let job = r#"{"type":"package_validate"}"#;
    assert_eq!(post("/v1/jobs", &credentials[0], job), "401", "a hive's credential submits no job");

    // Nothing secret crossed the bridge in clear: no credential, no token, no prompt, no answer.
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill").args(["-INT", &capture.id().to_string()]).status();
    let _ = capture.wait();
    let captured = std::fs::read(&pcap).unwrap();
    assert!(captured.len() > 10_000, "the capture saw the sync ({} bytes)", captured.len());
    let seen = |needle: &str| captured.windows(needle.len()).any(|w| w == needle.as_bytes());
    for secret in credentials.iter().map(String::as_str).chain([admin.trim(), "over the network", "echo: over"]) {
        assert!(!seen(secret), "{secret:?} crossed the bridge in clear");
    }
    assert!(!seen("\"alias\":\"h2\""), "heartbeats are encrypted too");
}

/// A deployment's replicas, `(hive, worker id, state)`, as the queen reports them.
fn replicas(fleet: &SshFleet, name: &str) -> Vec<(String, String, String)> {
    let got = fleet.via_queen(&["deployment", "get", name, "--json"]);
    let d: serde_json::Value = serde_json::from_str(got.stdout().trim()).unwrap_or_default();
    d["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap_or_default().to_owned();
            (s("hive"), s("worker_id"), s("state"))
        })
        .collect()
}

pub(crate) fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg_attr(rbee_no_testbed, ignore = "needs root, openssh-server and iproute2 for SSH test hosts")]
#[test]
fn deployments_on_remote_hives_heal_move_off_a_dead_host_survive_the_queen_and_roll_out_under_load() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut fleet) = SshFleet::new(2) else { return };
    fleet.workers = r#"[{ type = "reference" }]"#.into();
    fleet.queen_settings = "reschedule_after = 3\n".into();
    fleet.deployments =
        "[[deployment]]\nname = \"chat\"\nmodel = \"/models/tiny.gguf\"\nworker = \"reference\"\nreplicas = 2\n".into();
    fleet.write_config();
    // (a) One sync: both replicas ready, one per host; a second sync plans nothing.
    fleet.via_queen(&["sync"]).expect_code(0);
    let ready = |f: &SshFleet| replicas(f, "chat").into_iter().filter(|r| r.2 == "ready").collect::<Vec<_>>();
    let first = ready(&fleet);
    assert_eq!(first.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["h1", "h2"], "{first:?}");
    fleet.via_queen(&["sync", "--dry-run"]).expect_code(0);
    fleet.via_queen(&["status"]).expect_code(0);
    let answer = fleet.via_queen(&["infer", "--model", "chat", "over the network"]).expect_code(0);
    assert_eq!(answer.stdout().trim(), "echo: over the network");

    // (b) A replica killed inside its host is replaced within 10 s.
    let (_, id, _) = first[0].clone();
    // Its pid is the host's own (a PID namespace of its own); found here by its command line.
    let killed = Command::new("pkill").args(["-9", "-f", "--", &format!("--worker-id {id} ")]).status().unwrap();
    assert!(killed.success(), "no process of worker {id}");
    wait_until("the killed replica replaced", Duration::from_secs(10), || {
        let now = ready(&fleet);
        now.len() == 2 && !now.iter().any(|r| r.1 == id)
    });

    // (d) A host killed: its replica runs on the other host within reschedule_after + 15 s.
    fleet.host("h2").kill();
    wait_until("chat moved to h1", Duration::from_secs(3 + 15), || {
        let now = ready(&fleet);
        now.len() == 2 && now.iter().all(|r| r.0 == "h1")
    });
    // The host back, its hive restarted by a sync: still 2 replicas, no duplicates.
    fleet.host("h2").start().unwrap();
    fleet.via_queen(&["sync"]).expect_code(0);
    std::thread::sleep(Duration::from_secs(2));
    let now = replicas(&fleet, "chat");
    assert_eq!(now.iter().filter(|r| r.2 == "ready").count(), 2, "{now:?}");
    assert_eq!(now.len(), 2, "no duplicates: {now:?}");

    // (c) A worker that always exits: crash-loop, the other deployment untouched.
    let before = ready(&fleet);
    let chat = fleet.deployments.clone();
    fleet.deployments.push_str(
        "[[deployment]]\nname = \"broken\"\nmodel = \"/models/tiny.gguf\"\nworker = \"reference\"\nargs = [\"--fail-at-start\"]\n",
    );
    fleet.write_config();
    let synced = fleet.via_queen(&["sync"]).expect_code(3);
    assert!(synced.stdout().contains("crash-loop"), "{}", synced.stdout());
    assert_eq!(ready(&fleet), before, "chat untouched");
    fleet.deployments = chat.clone();
    fleet.write_config();
    fleet.via_queen(&["sync"]).expect_code(0);

    // (e) The queen killed and restarted: the same replicas, none started or stopped.
    let pid_file = fleet.dir.path().join(format!("operator/.local/state/rbee-queen/queen-{}.pid", fleet.queen_port));
    let queen_pid = std::fs::read_to_string(&pid_file).unwrap();
    Command::new("kill").args(["-9", queen_pid.trim()]).status().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    fleet.via_queen(&["queen", "start"]).expect_code(0);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(ready(&fleet), before, "adopted, not restarted");

    // (f) A rollout that cannot start, under load: it fails, the old replicas serve, no request
    // fails. (g) A good one under the same load: every replica replaced, none failed.
    let load = crate::fleet::Load::start(&fleet.dir.path().join("operator"), fleet.queen_port, "chat");
    fleet.deployments = format!("{chat}args = [\"--fail-at-start\"]\n");
    fleet.write_config();
    let synced = fleet.via_queen(&["sync"]).expect_code(3);
    assert!(synced.stdout().contains("rollout failed"), "{}", synced.stdout());
    assert_eq!(ready(&fleet), before, "the old replicas serve");
    fleet.deployments = format!("{chat}args = [\"--load-ms\", \"300\"]\n");
    fleet.write_config();
    fleet.via_queen(&["sync"]).expect_code(0);
    let (ok, failed) = load.finish();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), ok + failed.len() as u64);
    let after = ready(&fleet);
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|r| !before.iter().any(|b| b.1 == r.1)), "all replaced: {after:?}");
}

#[cfg_attr(rbee_no_testbed, ignore = "needs root, openssh-server and iproute2 for SSH test hosts")]
#[test]
fn fault_a_dead_host_is_unreachable_and_the_next_sync_converges() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fleet) = SshFleet::new(3) else { return };
    fleet.host("h2").kill();
    let result = fleet.rbee(&["sync", "--json"]).expect_code(3).result();
    assert_eq!(report(&result, "h2")["outcome"], "unreachable");
    assert_others_ok(&result, "h2");
    fleet.host("h2").start().unwrap();
    fleet.rbee(&["sync", "--retry-failed"]).expect_code(0);
    fleet.rbee(&["status"]).expect_code(0);
}

/// Waits until a file whose name contains `needle` appears under `dir` (an upload started).
fn wait_for_file(dir: &Path, needle: &str, within: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        let out = Command::new("find").arg(dir).args(["-name", &format!("*{needle}*")]).output().unwrap();
        if !out.stdout.is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[cfg_attr(rbee_no_testbed, ignore = "needs root, openssh-server and iproute2 for SSH test hosts")]
#[test]
fn fault_b_a_host_killed_during_an_upload_fails_without_a_partial_file() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fleet) = SshFleet::new(3) else { return };
    let h2 = fleet.host("h2");
    h2.limit_inbound(Some("40mbit")).unwrap();
    let child = fleet.command(&["sync", "--json"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    assert!(wait_for_file(&h2.root, ".upload-", Duration::from_secs(30)), "no upload started on h2");
    h2.kill();
    let result = Run(child.wait_with_output().unwrap()).expect_code(3).result();
    let r = report(&result, "h2");
    assert!(r["outcome"] == "failed" || r["outcome"] == "unreachable", "{r}");
    assert!(!r["reason"].as_str().unwrap_or_default().is_empty(), "{r}");
    assert_others_ok(&result, "h2");
    for target in [
        ".local/bin/rbee-hive",
        ".local/share/rbee/workers/rbee-worker-vllm",
        ".local/share/rbee/workers/rbee-worker-llama-cpp",
    ] {
        let path = h2.root.join(target);
        assert!(
            !path.exists()
                || sha256_file(&path) == sha256_file(&release_tree().join("0.1.0").join(path.file_name().unwrap())),
            "partial {target}"
        );
    }
    h2.limit_inbound(None).unwrap();
    h2.start().unwrap();
    fleet.rbee(&["sync"]).expect_code(0);
    let leftovers: Vec<String> =
        files_left(&h2.root).into_iter().filter(|f| f.contains(".upload-") || f.contains(".rbee-tmp-")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    fleet.rbee(&["status"]).expect_code(0);
}

#[cfg_attr(rbee_no_testbed, ignore = "needs root, openssh-server and iproute2 for SSH test hosts")]
#[test]
fn fault_c_a_partition_hits_the_deadline_and_is_reported_without_hanging() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut fleet) = SshFleet::new(3) else { return };
    fleet.ssh_timeout = 3;
    fleet.write_config();
    let h2 = fleet.host("h2");
    h2.limit_inbound(Some("40mbit")).unwrap();
    let started = Instant::now();
    let child = fleet.command(&["sync", "--json"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    assert!(wait_for_file(&h2.root, ".upload-", Duration::from_secs(30)), "no upload started on h2");
    h2.partition(true).unwrap();
    let run = Run(child.wait_with_output().unwrap()).expect_code(3);
    let result = run.result();
    let elapsed = started.elapsed();
    let r = report(&result, "h2");
    assert!(r["outcome"] == "failed" || r["outcome"] == "unreachable", "{r}");
    assert!(!r["reason"].as_str().unwrap().is_empty(), "{r}");
    // The deadline is what ended the stalled step (retries then meet the cut link).
    let deadline_hit = run.json_lines().iter().any(|e| {
        e["event"] == "step_failed"
            && e["alias"] == "h2"
            && e["error"]
                .as_str()
                .is_some_and(|m| m.contains("did not finish within") || m.contains("no answer within"))
    });
    assert!(deadline_hit, "no deadline reported for h2: {}", run.stdout());
    assert_others_ok(&result, "h2");
    assert!(elapsed < Duration::from_secs(120), "sync took {elapsed:?}");
    h2.partition(false).unwrap();
    h2.limit_inbound(None).unwrap();
    fleet.rbee(&["sync"]).expect_code(0);
}

#[cfg_attr(rbee_no_testbed, ignore = "needs root, openssh-server and iproute2 for SSH test hosts")]
#[test]
fn fault_d_a_changed_host_key_is_refused_and_nothing_runs_there() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fleet) = SshFleet::new(3) else { return };
    fleet.host("h2").change_host_key().unwrap();
    let result = fleet.rbee(&["sync", "--json"]).expect_code(3).result();
    let r = report(&result, "h2");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("HOST KEY CHANGED"), "{reason}");
    assert!(reason.contains(&format!("line 2 of {}", fleet.bed.known_hosts.display())), "{reason}");
    assert!(!fleet.host("h2").root.join(".local").exists(), "something ran on h2");
    assert_others_ok(&result, "h2");
    // Fix known_hosts the way the message says, then the next sync converges.
    let pubkey = std::fs::read_to_string(fleet.bed.dir.join("h2/host_ed25519.pub")).unwrap();
    let mut parts = pubkey.split_whitespace();
    let known = std::fs::read_to_string(&fleet.bed.known_hosts).unwrap();
    let fixed: Vec<String> = known
        .lines()
        .map(|l| {
            if l.starts_with(&format!("{} ", fleet.host("h2").ip)) {
                format!("{} {} {}", fleet.host("h2").ip, parts.next().unwrap(), parts.next().unwrap())
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&fleet.bed.known_hosts, fixed.join("\n") + "\n").unwrap();
    fleet.rbee(&["sync"]).expect_code(0);
}

#[cfg_attr(rbee_no_testbed, ignore = "needs root, openssh-server and iproute2 for SSH test hosts")]
#[test]
fn fault_e_a_key_the_host_does_not_accept_names_user_and_host() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fleet) = SshFleet::new(3) else { return };
    fleet.host("h2").authorize("").unwrap();
    let result = fleet.rbee(&["sync", "--json"]).expect_code(3).result();
    let reason = report(&result, "h2")["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("authentication failed for user root on"), "{reason}");
    assert!(reason.contains(&fleet.host("h2").ip), "{reason}");
    assert_others_ok(&result, "h2");
    fleet.host("h2").authorize(&fleet.bed.user_public_key()).unwrap();
    fleet.rbee(&["sync"]).expect_code(0);
}

#[cfg_attr(rbee_no_testbed, ignore = "needs root, openssh-server and iproute2 for SSH test hosts")]
#[test]
fn fault_f_a_full_disk_fails_clearly_and_keeps_the_old_binary() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut fleet) = SshFleet::new(3) else { return };
    fleet.rbee(&["sync"]).expect_code(0);
    let h2 = fleet.host("h2");
    let used = h2.used_kib("/root/.local/bin").unwrap();
    h2.fill_disk("/root/.local/bin", used + 512).unwrap();
    fleet.upgrade_source();
    let result = fleet.rbee(&["sync", "--json"]).expect_code(3).result();
    let r = report(&result, "h2");
    assert_eq!(r["outcome"], "failed", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("No space left on device"), "{r}");
    let h2 = fleet.host("h2");
    let inside = h2.exec("sha256sum /root/.local/bin/rbee-hive | cut -d' ' -f1").unwrap();
    assert_eq!(inside.trim(), sha256_file(&release_tree().join("0.1.0/rbee-hive")), "old binary intact");
    assert!(health(h2).is_some(), "old hive still serves");
    assert_others_ok(&result, "h2");
    h2.exec("umount /root/.local/bin").unwrap();
    fleet.rbee(&["sync"]).expect_code(0);
    assert_eq!(health(fleet.host("h2")).unwrap()["sha256"], sha256_file(&release_tree().join("0.2.0/rbee-hive")));
}

#[cfg_attr(rbee_no_testbed, ignore = "needs root, openssh-server and iproute2 for SSH test hosts")]
#[test]
fn fault_g_latency_and_loss_on_one_host_still_converge() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut fleet) = SshFleet::new(3) else { return };
    // tc netem where the kernel has it; else the same link emulated in user space.
    let _link = match fleet.host("h2").netem("delay 100ms loss 5%") {
        Ok(()) => None,
        Err(e) => {
            eprintln!("netem unavailable ({e}); using a user-space lossy link for h2");
            let target: std::net::SocketAddr = format!("{}:22", fleet.host("h2").ip).parse().unwrap();
            let link = rbee_testbed::LossyLink::start(target, Duration::from_millis(100), 0.05).unwrap();
            let pubkey = std::fs::read_to_string(fleet.bed.dir.join("h2/host_ed25519.pub")).unwrap();
            let mut parts = pubkey.split_whitespace();
            let line =
                format!("[127.0.0.1]:{} {} {}\n", link.addr.port(), parts.next().unwrap(), parts.next().unwrap());
            let mut known = std::fs::read_to_string(&fleet.bed.known_hosts).unwrap();
            known.push_str(&line);
            std::fs::write(&fleet.bed.known_hosts, known).unwrap();
            fleet.via.insert("h2".into(), ("127.0.0.1".into(), link.addr.port()));
            fleet.ssh_timeout = 30;
            fleet.write_config();
            Some(link)
        }
    };
    let result = fleet.rbee(&["sync", "--json"]).expect_code(0).result();
    assert_eq!(report(&result, "h2")["outcome"], "ok");
    fleet.rbee(&["status"]).expect_code(0);
}

#[cfg_attr(rbee_no_testbed, ignore = "needs root, openssh-server and iproute2 for SSH test hosts")]
#[test]
fn fault_h_two_syncs_at_once_do_not_interleave() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fleet) = SshFleet::new(3) else { return };
    // Both outputs are read as they come: a run blocked on a full pipe would hold its locks.
    let spawn = || {
        let child = fleet.command(&["sync", "--json"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
        std::thread::spawn(move || Run(child.wait_with_output().unwrap()))
    };
    let (a, b) = (spawn(), spawn());
    let a = a.join().unwrap().expect_code(0);
    let b = b.join().unwrap().expect_code(0);
    let span = |run: &Run, alias: &str| {
        let lines = run.json_lines();
        let locked = lines.iter().find(|e| e["event"] == "step_finished" && e["step"] == format!("{alias}/lock"))?;
        let done = lines.iter().find(|e| e["event"] == "hive_done" && e["alias"] == alias)?;
        Some((locked["at_ms"].as_u64().unwrap(), done["at_ms"].as_u64().unwrap()))
    };
    for h in &fleet.bed.hosts {
        if let (Some((a0, a1)), Some((b0, b1))) = (span(&a, &h.name), span(&b, &h.name)) {
            assert!(a1 <= b0 || b1 <= a0, "{}: runs overlap", h.name);
        }
        assert!(health(h).is_some());
    }
    fleet.rbee(&["status"]).expect_code(0);
}

#[cfg_attr(rbee_no_testbed, ignore = "needs root, openssh-server and iproute2 for SSH test hosts")]
#[test]
fn agent_keys_ssh_config_aliases_and_accept_new() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(bed) = testbed(1) else { return };
    let h1 = bed.host("h1");
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("operator");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    // ~/.ssh/config names the host by an alias; no identity file anywhere: only the agent has the key.
    std::fs::write(home.join(".ssh/config"), format!("Host gpu-box\n  HostName {}\n  User root\n", h1.ip)).unwrap();
    let sock = dir.path().join("agent.sock");
    let agent =
        Command::new("ssh-agent").args(["-D", "-a"]).arg(&sock).stdout(std::process::Stdio::null()).spawn().unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
        }
    }
    let _agent = Kill(agent);
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let added = Command::new("ssh-add").arg(&bed.user_key).env("SSH_AUTH_SOCK", &sock).output().unwrap();
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));

    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("hives.conf"), "[[hive]]\nalias = \"box\"\nhostname = \"gpu-box\"\nworkers = []\n")
        .unwrap();
    let known = dir.path().join("known_hosts");
    std::fs::write(
        config.join("rbee.conf"),
        format!(
            "[package]\nsource = \"{}\"\nssh_timeout = 10\n[ssh]\nknown_hosts = \"{}\"\nhost_key_policy = \"accept-new\"\n",
            release_tree().display(),
            known.display()
        ),
    )
    .unwrap();
    let rbee = |args: &[&str]| {
        Run(Command::new(env!("CARGO_BIN_EXE_rbee"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("HOME", &home)
            .env("SSH_AUTH_SOCK", &sock)
            .env("RBEE_IN_PROCESS", "1")
            .output()
            .unwrap())
    };
    rbee(&["sync"]).expect_code(0);
    assert!(health(h1).is_some());
    let recorded = std::fs::read_to_string(&known).unwrap();
    assert!(recorded.contains(&h1.ip) && recorded.contains("ssh-ed25519"), "accept-new records the key: {recorded}");
    // Strict now that the key is known: still fine.
    let strict = std::fs::read_to_string(config.join("rbee.conf")).unwrap().replace("accept-new", "strict");
    std::fs::write(config.join("rbee.conf"), strict).unwrap();
    rbee(&["status"]).expect_code(0);
    // Strict with an empty known_hosts: refused, with the fix in the message.
    std::fs::write(&known, "").unwrap();
    let run = rbee(&["status"]).expect_code(1);
    assert!(run.stdout().contains("is not in") && run.stdout().contains("ssh-keyscan"), "{}", run.stdout());
}
