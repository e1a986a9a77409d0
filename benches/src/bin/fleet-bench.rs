//! Fleet sync benchmark: `rbee sync` against the same job done by plain OpenSSH, on N test
//! hosts (network namespaces + sshd, see rbee-testbed), cold and warm, side by side.
//!
//! Each host gets the hive binary and two 8 MiB worker binaries; the hive is started and
//! polled until `/health` answers.
//!
//! - rbee cold: `rbee sync` on fresh hosts. rbee warm: `rbee sync` again (nothing to do).
//! - OpenSSH cold (the floor): per host, all hosts at once, one `ssh` that unpacks a tar
//!   stream and starts the hive, then `curl` polling `/health`.
//! - OpenSSH warm: per host, all at once, one `ssh` that hashes the three files, plus one
//!   `curl` of `/health`.
//!
//! Run as root: `scripts/bench-fleet` (or `cargo run --release -p rbee-benches --bin
//! fleet-bench -- 1 5 20`). Prints a Markdown table.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rbee_benches::MachineCounters;
use rbee_testbed::Testbed;

const RUNS: usize = 3;

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn sh(cmd: &mut Command) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn release_dir() -> PathBuf {
    std::env::current_exe().expect("exe").parent().expect("dir").to_path_buf()
}

/// A release tree: the real hive binary and two 8 MiB worker binaries (of worker types whose
/// engine is not managed, so the tree needs no engine tarball).
fn make_source(dir: &Path) -> PathBuf {
    let src = dir.join("source");
    let v = src.join("1.0.0");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::copy(release_dir().join("rbee-hive"), v.join("rbee-hive")).expect("build rbee-hive in release first");
    let mut seed = 0x1234_5678_u64;
    for name in ["rbee-worker-comfyui", "rbee-worker-vllm"] {
        let mut bytes = vec![0u8; 8 << 20];
        for b in bytes.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        std::fs::write(v.join(name), bytes).unwrap();
    }
    let sums = sh(Command::new("sh")
        .arg("-c")
        .arg("sha256sum rbee-hive rbee-worker-comfyui rbee-worker-vllm")
        .current_dir(&v));
    std::fs::write(v.join("SHA256SUMS"), sums.stdout).unwrap();
    std::fs::write(src.join("latest"), "1.0.0\n").unwrap();
    // The same files laid out as on a host, for the tar stream of the OpenSSH floor.
    let stage = dir.join("stage");
    std::fs::create_dir_all(stage.join(".local/bin")).unwrap();
    std::fs::create_dir_all(stage.join(".local/share/rbee/workers")).unwrap();
    std::fs::copy(v.join("rbee-hive"), stage.join(".local/bin/rbee-hive")).unwrap();
    for name in ["rbee-worker-comfyui", "rbee-worker-vllm"] {
        std::fs::copy(v.join(name), stage.join(".local/share/rbee/workers").join(name)).unwrap();
    }
    src
}

fn ssh(bed: &Testbed, ip: &str) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-i")
        .arg(&bed.user_key)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", bed.known_hosts.display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
        .arg(format!("root@{ip}"));
    c
}

fn reset(bed: &Testbed) {
    let children: Vec<_> = bed
        .hosts
        .iter()
        .map(|h| {
            ssh(bed, &h.ip)
                .arg("p=$(cat ~/.local/state/rbee/hive.pid 2>/dev/null) && kill -9 $p; rm -rf ~/.local")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        let _ = c.wait();
    }
}

fn wait_healthy(ip: &str) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let ok = Command::new("curl")
            .args(["-sf", "-m", "2", &format!("http://{ip}:8600/health")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{ip} never became healthy");
}

fn openssh_cold(bed: &Testbed, stage: &Path) -> Duration {
    let started = Instant::now();
    let threads: Vec<_> = bed
        .hosts
        .iter()
        .map(|h| {
            let mut c = ssh(bed, &h.ip);
            c.arg("mkdir -p ~/.local/state/rbee && tar -C ~ -xf - && setsid -f ~/.local/bin/rbee-hive --port 8600 --pid-file ~/.local/state/rbee/hive.pid >/dev/null 2>&1 </dev/null");
            let stage = stage.to_path_buf();
            let ip = h.ip.clone();
            std::thread::spawn(move || {
                let mut tar = Command::new("tar").arg("-C").arg(&stage).args(["-cf", "-", "."]).stdout(Stdio::piped()).spawn().unwrap();
                let status = c.stdin(tar.stdout.take().unwrap()).status().unwrap();
                tar.wait().unwrap();
                assert!(status.success(), "ssh to {ip} failed");
                wait_healthy(&ip);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    started.elapsed()
}

fn openssh_warm(bed: &Testbed) -> Duration {
    let started = Instant::now();
    let threads: Vec<_> = bed
        .hosts
        .iter()
        .map(|h| {
            let mut c = ssh(bed, &h.ip);
            c.arg("sha256sum ~/.local/bin/rbee-hive ~/.local/share/rbee/workers/rbee-worker-*").stdout(Stdio::null());
            let ip = h.ip.clone();
            std::thread::spawn(move || {
                assert!(c.status().unwrap().success());
                let health = Command::new("curl")
                    .args(["-sf", "-m", "2", &format!("http://{ip}:8600/health")])
                    .output()
                    .unwrap();
                assert!(health.status.success());
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    started.elapsed()
}

/// Wall time, CPU seconds (user + system) and peak RSS in KiB of one `rbee sync`, measured
/// by GNU time.
struct Measured {
    wall: Duration,
    cpu_s: f64,
    max_rss_kib: u64,
}

fn rbee_sync(config: &Path, home: &Path, work: &Path) -> Measured {
    let stats = work.join("time.out");
    let launched_ms = rbee_core::execute::now_ms();
    let started = Instant::now();
    let out = sh(Command::new("/usr/bin/time")
        .args(["-f", "%U %S %M", "-o"])
        .arg(&stats)
        .arg(release_dir().join("rbee"))
        .arg("--config")
        .arg(config)
        .args(["sync", "--json"])
        .env("HOME", home)
        .env_remove("SSH_AUTH_SOCK"));
    let wall = started.elapsed();
    if let Some(path) = std::env::var_os("FLEET_BENCH_EVENTS") {
        // The events of the last run, for looking at where the time goes, and when `rbee`
        // started and ended on the same clock as the events (the phases before the first hive
        // is locked: the queen's job, connecting, observing, planning).
        let _ = std::fs::write(&path, &out.stdout);
        let exited_ms = rbee_core::execute::now_ms();
        let _ = std::fs::write(
            format!("{}.times", path.to_string_lossy()),
            format!("launched_ms {launched_ms}\nexited_ms {exited_ms}\n"),
        );
    }
    assert!(out.status.success(), "rbee sync failed: {}", String::from_utf8_lossy(&out.stdout));
    let text = std::fs::read_to_string(&stats).unwrap_or_default();
    let f: Vec<&str> = text.lines().last().unwrap_or("").split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Measured { wall, cpu_s: num(0) + num(1), max_rss_kib: num(2) as u64 }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1, 5, 20] } else { sizes };
    if let Err(e) = rbee_testbed::check() {
        eprintln!("fleet-bench needs test hosts: {e}");
        std::process::exit(1);
    }
    let work = tempfile::tempdir().unwrap();
    let source = make_source(work.path());
    let stage = work.path().join("stage");
    println!(
        "| hosts | rbee cold | OpenSSH cold (floor) | ratio | rbee warm | OpenSSH warm (floor) | ratio | rbee peak RSS | rbee CPU cold |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut machine_rows = Vec::new();
    for &n in &sizes {
        let bed = Testbed::up(n, &work.path().join(format!("bed{n}"))).unwrap();
        let config = work.path().join(format!("config{n}"));
        std::fs::create_dir_all(&config).unwrap();
        let mut hives = String::new();
        for h in &bed.hosts {
            hives.push_str(&format!(
                "[[hive]]\nalias = \"{}\"\nhostname = \"{}\"\nssh_user = \"root\"\nssh_key = \"{}\"\nworkers = [{{ type = \"comfyui\" }}, {{ type = \"vllm\" }}]\n",
                h.name,
                h.ip,
                bed.user_key.display()
            ));
        }
        std::fs::write(config.join("hives.conf"), hives).unwrap();
        std::fs::write(
            config.join("rbee.conf"),
            format!(
                "[package]\nsource = \"{}\"\nmax_concurrent_installs = {n}\n[ssh]\nknown_hosts = \"{}\"\n",
                source.display(),
                bed.known_hosts.display()
            ),
        )
        .unwrap();
        let home = work.path().join("home");
        let (mut rc, mut rw, mut oc, mut ow) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut rss, mut cpu) = (0u64, Vec::new());
        let (mut rbee_machine, mut floor_machine) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            reset(&bed);
            let before = MachineCounters::now();
            let cold = rbee_sync(&config, &home, work.path());
            rbee_machine.push(MachineCounters::now().since(before));
            if let Some(path) = std::env::var_os("FLEET_BENCH_EVENTS") {
                let _ = std::fs::copy(&path, format!("{}.cold", path.to_string_lossy()));
                let _ = std::fs::copy(
                    format!("{}.times", path.to_string_lossy()),
                    format!("{}.cold.times", path.to_string_lossy()),
                );
            }
            let warm = rbee_sync(&config, &home, work.path());
            rss = rss.max(cold.max_rss_kib).max(warm.max_rss_kib);
            cpu.push(Duration::from_secs_f64(cold.cpu_s));
            rc.push(cold.wall);
            rw.push(warm.wall);
            reset(&bed);
            let before = MachineCounters::now();
            let launched_ms = rbee_core::execute::now_ms();
            oc.push(openssh_cold(&bed, &stage));
            floor_machine.push(MachineCounters::now().since(before));
            if let Some(path) = std::env::var_os("FLEET_BENCH_EVENTS") {
                // When the floor's cold run began and ended, for a profile of the same window.
                let times = format!("launched_ms {launched_ms}\nexited_ms {}\n", rbee_core::execute::now_ms());
                let _ = std::fs::write(format!("{}.floor.times", path.to_string_lossy()), times);
            }
            ow.push(openssh_warm(&bed));
        }
        let (rc, oc, rw, ow) = (median(rc), median(oc), median(rw), median(ow));
        let ms = |d: Duration| format!("{} ms", d.as_millis());
        let ratio = |a: Duration, b: Duration| format!("{:.2}", a.as_secs_f64() / b.as_secs_f64());
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} | {:.1} MiB | {:.2} s |",
            ms(rc),
            ms(oc),
            ratio(rc, oc),
            ms(rw),
            ms(ow),
            ratio(rw, ow),
            rss as f64 / 1024.0,
            median(cpu).as_secs_f64()
        );
        let cpu_of = |v: &[MachineCounters]| median_f(v.iter().map(|c| c.cpu_s).collect());
        let forks_of = |v: &[MachineCounters]| median_f(v.iter().map(|c| c.forks as f64).collect());
        machine_rows.push(format!(
            "| {n} | {:.2} s | {:.2} s | {:.0} | {:.0} |",
            cpu_of(&rbee_machine),
            cpu_of(&floor_machine),
            forks_of(&rbee_machine),
            forks_of(&floor_machine)
        ));
        reset(&bed);
        // The queen the syncs started (it would hold the port for the next size's config).
        let _ = Command::new(release_dir().join("rbee"))
            .arg("--config")
            .arg(&config)
            .args(["queen", "stop"])
            .env("HOME", &home)
            .output();
    }
    println!();
    println!("Cold runs, the whole machine (medians): CPU seconds and processes started");
    println!();
    println!("| hosts | rbee cold CPU | floor cold CPU | rbee cold processes | floor cold processes |");
    println!("|---:|---:|---:|---:|---:|");
    for row in machine_rows {
        println!("{row}");
    }
}
