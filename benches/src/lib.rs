//! What the benchmark programs in `src/bin` share: a real `queen-rbee` as a child process with
//! its own HOME and config ([`QueenProcess`]), and its figures from `/proc` ([`Proc`],
//! [`watch`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rbee_queen::client::QueenClient;

/// A process's CPU time (user + system) and memory, read from `/proc/<pid>`.
pub struct Proc {
    /// Its pid.
    pub pid: u32,
    ticks_per_s: f64,
}

impl Proc {
    /// The process `pid`.
    pub fn new(pid: u32) -> Self {
        let ticks_per_s = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        Self { pid, ticks_per_s }
    }

    /// CPU seconds used so far (utime + stime of `stat`).
    pub fn cpu_s(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap();
        // Fields after the command name (which may hold spaces): state is field 3, utime 14.
        let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
        let ticks: u64 = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
        ticks as f64 / self.ticks_per_s
    }

    /// A numeric field of `status` (`VmRSS:`, `VmHWM:` in KiB; `Threads:`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Its threads.
    pub fn threads(&self) -> u64 {
        self.status_kib("Threads:")
    }

    /// Its open file descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map_or(0, Iterator::count)
    }
}

/// The whole machine's CPU time (user, nice, system, irq, softirq and steal of every process:
/// the test hosts' sshd and hives included) and the processes forked so far, from
/// `/proc/stat`: what a run cost the machine, not only one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCounters {
    /// Busy CPU seconds since boot.
    pub cpu_s: f64,
    /// Processes forked since boot.
    pub forks: u64,
}

impl MachineCounters {
    /// The counters now.
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let mut c = Self::default();
        let tick = 100.0; // USER_HZ on Linux
        for line in stat.lines() {
            let mut f = line.split_whitespace();
            match f.next() {
                Some("cpu") => {
                    // user nice system idle iowait irq softirq steal
                    let v: Vec<f64> = f.filter_map(|x| x.parse().ok()).collect();
                    let busy: f64 = [0usize, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
                    c.cpu_s = busy / tick;
                }
                Some("processes") => c.forks = f.next().and_then(|x| x.parse().ok()).unwrap_or(0),
                _ => {}
            }
        }
        c
    }

    /// What was used between `before` and `self`.
    pub fn since(self, before: Self) -> Self {
        Self { cpu_s: self.cpu_s - before.cpu_s, forks: self.forks.saturating_sub(before.forks) }
    }
}

/// CPU in % of one core, mean and max RSS (MiB) over a window, sampled every second.
pub struct Window {
    /// CPU time over wall time, in % of one core.
    pub cpu_pct: f64,
    /// Mean of the RSS samples.
    pub rss_mean_mib: f64,
    /// Largest RSS sample.
    pub rss_max_mib: f64,
}

/// Watches `process` for `window`.
pub async fn watch(process: &Proc, window: Duration) -> Window {
    let started = Instant::now();
    let cpu0 = process.cpu_s();
    let mut rss = Vec::new();
    while started.elapsed() < window {
        rss.push(process.status_kib("VmRSS:") as f64 / 1024.0);
        tokio::time::sleep(Duration::from_secs(1).min(window.saturating_sub(started.elapsed()))).await;
    }
    let cpu_pct = (process.cpu_s() - cpu0) / started.elapsed().as_secs_f64() * 100.0;
    rss.push(process.status_kib("VmRSS:") as f64 / 1024.0);
    Window {
        cpu_pct,
        rss_mean_mib: rss.iter().sum::<f64>() / rss.len() as f64,
        rss_max_mib: rss.iter().copied().fold(0.0, f64::max),
    }
}

/// A real `queen-rbee` (the release binary beside the running program) in a temporary
/// directory of its own: HOME (token, hive key, deployments.json), config and log. Killed when
/// dropped.
pub struct QueenProcess {
    /// The process.
    pub child: tokio::process::Child,
    /// Its `/proc` figures.
    pub proc: Proc,
    /// Where it listens (127.0.0.1).
    pub addr: std::net::SocketAddr,
    /// Its admin token.
    pub token: String,
    /// The key its hives' credentials are derived from
    /// ([`rbee_core::credentials::hive_credential`]).
    pub hive_key: String,
    /// Its HOME.
    pub home: PathBuf,
    /// Its config directory (`hives.conf`, `rbee.conf` with its port).
    pub config: PathBuf,
    /// Its stderr.
    pub log_path: PathBuf,
    /// When it was started.
    pub started: Instant,
    _work: tempfile::TempDir,
}

impl QueenProcess {
    /// Starts the queen and waits until it answers `/health` with its token. `queen_conf` is
    /// added to the `[queen]` table of its `rbee.conf` (which already sets its port).
    pub async fn start(queen_conf: &str) -> Self {
        let queen_bin = std::env::current_exe().unwrap().parent().unwrap().join("queen-rbee");
        assert!(
            queen_bin.exists(),
            "build the queen first: cargo build --release -p rbee-queen --bin queen-rbee ({} is missing)",
            queen_bin.display()
        );
        let work = tempfile::tempdir().unwrap();
        let home = work.path().join("home");
        let config = work.path().join("config");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&config).unwrap();
        // The hives reach the queen by heartbeats; this one entry only makes the config valid.
        std::fs::write(
            config.join("hives.conf"),
            "[[hive]]\nalias = \"unused\"\nhostname = \"localhost\"\ntransport = \"local\"\nworkers = [{ type = \"reference\" }]\n",
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::fs::write(config.join("rbee.conf"), format!("[queen]\nport = {port}\n{queen_conf}")).unwrap();
        let log_path = work.path().join("queen.log");
        let started = Instant::now();
        let child = tokio::process::Command::new(&queen_bin)
            .arg("--port")
            .arg(port.to_string())
            .arg("--config")
            .arg(&config)
            .env("HOME", &home)
            .env_remove("XDG_STATE_HOME")
            .env_remove("RBEE_HEARTBEAT_MS")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let state = home.join(".local/state/rbee-queen");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let token = loop {
            if let Ok(t) = std::fs::read_to_string(state.join("queen.token"))
                && !t.trim().is_empty()
                && QueenClient::new(addr, t.trim()).health().await.is_ok()
            {
                break t.trim().to_owned();
            }
            assert!(started.elapsed() < Duration::from_secs(10), "the queen did not start; see {}", log_path.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let hive_key = std::fs::read_to_string(state.join("hive-credentials.key")).unwrap().trim().to_owned();
        let proc = Proc::new(child.id().unwrap());
        Self { child, proc, addr, token, hive_key, home, config, log_path, started, _work: work }
    }

    /// A client with the admin token.
    pub fn client(&self) -> QueenClient {
        QueenClient::new(self.addr, self.token.clone())
    }

    /// Hive `alias`'s credential, as a sync would install it.
    pub fn hive_credential(&self, alias: &str) -> String {
        rbee_core::credentials::hive_credential(&self.hive_key, alias)
    }
}
