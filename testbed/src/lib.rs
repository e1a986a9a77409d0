//! Test hosts on one Linux machine: each host is a network namespace on a bridge, with its own
//! mount namespace (a private directory bound over `/root`), PID and UTS namespaces, and an
//! sshd. Needs root, `ip`, `unshare`, `nsenter` and `/usr/sbin/sshd`; [`check`] says what is
//! missing. Faults are methods on [`TestHost`]: kill, partition, slow link, new host key,
//! refusing the user key, a full disk.

mod check;
mod link;

pub use check::check;
use check::run;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use link::LossyLink;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn keygen(path: &Path) -> Result<(), String> {
    run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", "rbee-testbed", "-f", &path.display().to_string()])?;
    Ok(())
}

/// One test host.
#[derive(Debug)]
pub struct TestHost {
    /// Host name (also its UTS hostname).
    pub name: String,
    /// Its address on the bridge.
    pub ip: String,
    /// Network namespace.
    pub netns: String,
    /// The root-namespace end of its veth pair.
    pub veth: String,
    /// The directory bound over `/root` inside the host.
    pub root: PathBuf,
    dir: PathBuf,
}

impl TestHost {
    fn sshd_config(&self) -> PathBuf {
        self.dir.join("sshd_config")
    }

    /// Starts (or restarts) the host: its namespaces and sshd. Waits until sshd listens.
    pub fn start(&self) -> Result<(), String> {
        let log = self.dir.join("sshd.log");
        let _ = std::fs::remove_file(&log);
        let inner = format!(
            "hostname {}; mount --bind {} /root && exec /usr/sbin/sshd -D -e -f {}",
            self.name,
            self.root.display(),
            self.sshd_config().display()
        );
        let logf = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        Command::new("ip")
            .args(["netns", "exec", &self.netns, "unshare", "--mount", "--pid", "--uts", "--fork", "--kill-child"])
            .args(["--mount-proc", "--propagation", "private", "sh", "-c", &inner])
            .stdin(Stdio::null())
            .stdout(logf.try_clone().map_err(|e| e.to_string())?)
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("starting sshd for {}: {e}", self.name))?;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Server listening")) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("sshd of {} did not start: {}", self.name, std::fs::read_to_string(&log).unwrap_or_default()))
    }

    /// PIDs (in the root namespace) of every process of the host.
    pub fn pids(&self) -> Vec<String> {
        run("ip", &["netns", "pids", &self.netns]).unwrap_or_default().split_whitespace().map(str::to_owned).collect()
    }

    /// Kills every process of the host (sshd, the hive, anything it started).
    pub fn kill(&self) {
        let pids = self.pids();
        if !pids.is_empty() {
            let mut args = vec!["-9"];
            args.extend(pids.iter().map(String::as_str));
            let _ = run("kill", &args);
        }
        let started = Instant::now();
        while !self.pids().is_empty() && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Cuts (`true`) or heals (`false`) the host's link.
    pub fn partition(&self, cut: bool) -> Result<(), String> {
        run("ip", &["link", "set", &self.veth, if cut { "down" } else { "up" }]).map(drop)
    }

    /// Applies `tc netem` arguments to the host's outgoing traffic, e.g. `delay 100ms loss 5%`.
    /// Fails on kernels built without netem; [`LossyLink`] is the fallback.
    pub fn netem(&self, spec: &str) -> Result<(), String> {
        let mut args = vec!["netns", "exec", &self.netns, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem"];
        args.extend(spec.split_whitespace());
        run("ip", &args).map(drop)
    }

    /// Limits the rate of traffic towards the host (token bucket, e.g. `40mbit`) to slow
    /// uploads to it; `None` removes the limit.
    pub fn limit_inbound(&self, rate: Option<&str>) -> Result<(), String> {
        match rate {
            Some(rate) => run(
                "tc",
                &[
                    "qdisc", "replace", "dev", &self.veth, "root", "tbf", "rate", rate, "burst", "64kb", "latency",
                    "500ms",
                ],
            )
            .map(drop),
            None => run("tc", &["qdisc", "del", "dev", &self.veth, "root"]).map(drop),
        }
    }

    /// Runs a shell command inside the host (its mount and PID namespaces).
    pub fn exec(&self, script: &str) -> Result<String, String> {
        let pids = self.pids();
        let pid = pids.first().ok_or_else(|| format!("{} is not running", self.name))?;
        run("nsenter", &["-t", pid, "-m", "-p", "-n", "-u", "sh", "-c", script])
    }

    /// Gives sshd a new host key and restarts it (the fault "host key changed").
    pub fn change_host_key(&self) -> Result<(), String> {
        let key = self.dir.join("host_ed25519");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(self.dir.join("host_ed25519.pub"));
        keygen(&key)?;
        self.kill();
        self.start()
    }

    /// Makes the host accept (or refuse) the test user's key.
    pub fn authorize(&self, public_key: &str) -> Result<(), String> {
        let ssh = self.root.join(".ssh");
        std::fs::write(ssh.join("authorized_keys"), public_key).map_err(|e| e.to_string())
    }

    /// Mounts a tmpfs of `size_kib` over `path` inside the host (e.g. `/root/.local/bin`),
    /// copying what was there into it (the fault "disk full").
    pub fn fill_disk(&self, path: &str, size_kib: u64) -> Result<(), String> {
        let script = format!(
            "set -e; mkdir -p {path} /tmp/rbee-testbed-save; cp -a {path}/. /tmp/rbee-testbed-save/; \
             mount -t tmpfs -o size={size_kib}k tmpfs {path}; cp -a /tmp/rbee-testbed-save/. {path}/; \
             rm -rf /tmp/rbee-testbed-save"
        );
        self.exec(&script).map(drop)
    }

    /// Size in KiB of the files under `path` inside the host.
    pub fn used_kib(&self, path: &str) -> Result<u64, String> {
        let out = self.exec(&format!("du -sk {path} | cut -f1"))?;
        out.trim().parse().map_err(|e| format!("du: {e}"))
    }
}

/// A set of test hosts on one bridge.
#[derive(Debug)]
pub struct Testbed {
    /// Working directory (keys, configs, host roots).
    pub dir: PathBuf,
    /// The hosts.
    pub hosts: Vec<TestHost>,
    /// A known_hosts file with every host's key.
    pub known_hosts: PathBuf,
    /// The private key every host accepts for root.
    pub user_key: PathBuf,
    bridge: String,
    /// The root namespace's address on the bridge: how hosts reach this machine.
    pub gateway: String,
    _tmp: Option<tempfile::TempDir>,
}

impl Testbed {
    /// Creates `n` hosts in a new temporary directory.
    pub fn new(n: usize) -> Result<Self, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut bed = Self::up(n, tmp.path())?;
        bed._tmp = Some(tmp);
        Ok(bed)
    }

    /// Creates `n` hosts under `dir`.
    pub fn up(n: usize, dir: &Path) -> Result<Self, String> {
        check()?;
        assert!(n <= 200, "at most 200 hosts");
        let c = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{}{}", pid % 10_000, c % 100);
        let net = format!("10.{}.{}", 64 + pid % 128, c % 250);
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        std::fs::create_dir_all("/run/sshd").map_err(|e| e.to_string())?;
        let user_key = dir.join("user_ed25519");
        if !user_key.exists() {
            keygen(&user_key)?;
        }
        let public = std::fs::read_to_string(dir.join("user_ed25519.pub")).map_err(|e| e.to_string())?;
        let bridge = format!("rb{tag}");
        let _ = run("ip", &["link", "del", &bridge]);
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        let mut bed = Self {
            dir: dir.to_path_buf(),
            hosts: Vec::new(),
            known_hosts: dir.join("known_hosts"),
            user_key,
            bridge: bridge.clone(),
            gateway: format!("{net}.1"),
            _tmp: None,
        };
        run("ip", &["addr", "add", &format!("{net}.1/24"), "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        let mut known = String::new();
        for i in 1..=n {
            let name = format!("h{i}");
            let host = TestHost {
                ip: format!("{net}.{}", 10 + i),
                netns: format!("rbee-{tag}-{name}"),
                veth: format!("rv{tag}{name}"),
                root: dir.join(&name).join("root"),
                dir: dir.join(&name),
                name,
            };
            bed.hosts.push(host);
            let host = bed.hosts.last().expect("host");
            let ssh = host.root.join(".ssh");
            std::fs::create_dir_all(&ssh).map_err(|e| e.to_string())?;
            run("chmod", &["700", &host.root.display().to_string(), &ssh.display().to_string()])?;
            host.authorize(&public)?;
            keygen(&host.dir.join("host_ed25519"))?;
            let config = format!(
                "ListenAddress 0.0.0.0\nPort 22\nHostKey {key}\nPidFile {dir}/sshd.pid\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nSubsystem sftp internal-sftp\n\
                 MaxStartups 200:30:400\nMaxSessions 20\nAuthorizedKeysFile .ssh/authorized_keys\n",
                key = host.dir.join("host_ed25519").display(),
                dir = host.dir.display()
            );
            std::fs::write(host.sshd_config(), config).map_err(|e| e.to_string())?;
            let _ = run("ip", &["netns", "del", &host.netns]);
            run("ip", &["netns", "add", &host.netns])?;
            run("ip", &["link", "add", &host.veth, "type", "veth", "peer", "name", "eth0", "netns", &host.netns])?;
            run("ip", &["link", "set", &host.veth, "master", &bridge, "up"])?;
            run("ip", &["-n", &host.netns, "addr", "add", &format!("{}/24", host.ip), "dev", "eth0"])?;
            run("ip", &["-n", &host.netns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &host.netns, "link", "set", "lo", "up"])?;
            host.start()?;
            let pubkey = std::fs::read_to_string(host.dir.join("host_ed25519.pub")).map_err(|e| e.to_string())?;
            let mut parts = pubkey.split_whitespace();
            known.push_str(&format!("{} {} {}\n", host.ip, parts.next().unwrap_or(""), parts.next().unwrap_or("")));
        }
        std::fs::write(&bed.known_hosts, known).map_err(|e| e.to_string())?;
        Ok(bed)
    }

    /// The host called `name`.
    /// The bridge the hosts are on (to capture their traffic).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn host(&self, name: &str) -> &TestHost {
        self.hosts.iter().find(|h| h.name == name).expect("no such test host")
    }

    /// The user's public key line.
    pub fn user_public_key(&self) -> String {
        std::fs::read_to_string(self.dir.join("user_ed25519.pub")).unwrap_or_default()
    }

    /// Removes every host and the bridge; ends only the processes of the test hosts.
    pub fn down(&mut self) {
        for h in &self.hosts {
            h.kill();
            let _ = run("ip", &["link", "del", &h.veth]);
            let _ = run("ip", &["netns", "del", &h.netns]);
        }
        self.hosts.clear();
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.down();
    }
}
