//! Peak RSS of `rbee sync` while it installs one large artifact: a release tree whose
//! `vllm` worker binary is N MiB (default 1024) of pseudo-random data (vllm's engine is not
//! managed, so that binary is the one big upload), synced to one local host (local
//! transport, a home directory of its own) and, when this machine can make test hosts (root,
//! sshd: see rbee-testbed), to one SSH test host. Each sync runs `rbee --in-process sync`
//! under GNU time; its "maximum resident set size" is reported.
//!
//! Build the binaries first (`cargo build -p rbee-cli -p rbee-hive -p rbee-benches --bins`,
//! or with `--release`), then run this program from the same target directory:
//! `target/debug/upload-rss [MiB] [DIR]`, DIR being where `rbee` and `rbee-hive` are (by
//! default beside this program; another build's, to compare two versions). See
//! BENCHMARKS.md.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The directory holding `rbee` and `rbee-hive`: the second argument, else this program's.
fn bin_dir() -> PathBuf {
    match std::env::args_os().nth(2) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe().expect("exe").parent().expect("dir").to_path_buf(),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A release tree (version 1.0.0): the real hive binary, and a worker binary of `mib` MiB,
/// written one MiB at a time so that this program never holds it.
fn make_source(dir: &Path, mib: u64) -> PathBuf {
    let src = dir.join("source");
    let v = src.join("1.0.0");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::copy(bin_dir().join("rbee-hive"), v.join("rbee-hive")).expect("build rbee-hive first");
    let mut out = std::io::BufWriter::new(std::fs::File::create(v.join("rbee-worker-vllm")).unwrap());
    let mut seed = 0x1234_5678_9abc_def0_u64;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for word in chunk.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            word.copy_from_slice(&seed.to_le_bytes());
        }
        out.write_all(&chunk).unwrap();
    }
    out.into_inner().unwrap().sync_all().unwrap();
    let sums = Command::new("sh")
        .arg("-c")
        .arg("sha256sum rbee-hive rbee-worker-vllm")
        .current_dir(&v)
        .output()
        .expect("sha256sum");
    assert!(sums.status.success(), "sha256sum failed");
    std::fs::write(v.join("SHA256SUMS"), sums.stdout).unwrap();
    std::fs::write(src.join("latest"), "1.0.0\n").unwrap();
    src
}

/// A config directory with `hive` (one `[[hive]]` entry) and `source`.
fn write_config(dir: &Path, hive: &str, source: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("hives.conf"), hive).unwrap();
    let rbee = format!("[package]\nsource = \"{}\"\nhealth_check_timeout = 60\n{extra}", source.display());
    std::fs::write(dir.join("rbee.conf"), rbee).unwrap();
    dir.to_path_buf()
}

/// One `rbee sync` under GNU time: (wall seconds, peak RSS in KiB).
fn measure(config: &Path, operator: &Path, work: &Path) -> (f64, u64) {
    let stats = work.join("time.out");
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %M", "-o"])
        .arg(&stats)
        .arg(bin_dir().join("rbee"))
        .arg("--config")
        .arg(config)
        .args(["--in-process", "sync", "--json"])
        .env("HOME", operator)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("RBEE_CONFIG_DIR")
        .output()
        .expect("run /usr/bin/time rbee");
    assert!(
        out.status.success(),
        "rbee sync failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&stats).unwrap_or_default();
    let f: Vec<&str> = text.lines().last().unwrap_or("").split_whitespace().collect();
    let wall = f.first().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let rss = f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    (wall, rss)
}

fn uninstall(config: &Path, operator: &Path) {
    let _ = Command::new(bin_dir().join("rbee"))
        .arg("--config")
        .arg(config)
        .args(["--in-process", "uninstall", "--purge"])
        .env("HOME", operator)
        .env_remove("SSH_AUTH_SOCK")
        .output();
}

fn report(what: &str, mib: u64, (wall, rss): (f64, u64)) {
    println!("| {what} | {mib} MiB | {:.1} MiB | {wall:.1} s |", rss as f64 / 1024.0);
}

fn main() {
    let mib: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let work = tempfile::tempdir().unwrap();
    let operator = work.path().join("operator");
    let source = make_source(work.path(), mib);
    println!("| host | artifact | rbee peak RSS | sync wall time |");
    println!("|---|---:|---:|---:|");

    let home = work.path().join("local-home");
    let hive = format!(
        "[[hive]]\nalias = \"local\"\nhostname = \"localhost\"\nhive_port = {}\nlocal_home = \"{}\"\nworkers = [{{ type = \"vllm\" }}]\n",
        free_port(),
        home.display()
    );
    let config = write_config(&work.path().join("config-local"), &hive, &source, "");
    let local = measure(&config, &operator, work.path());
    uninstall(&config, &operator);
    report("local", mib, local);

    match rbee_testbed::check() {
        Err(e) => println!("(no SSH test host: {e})"),
        Ok(()) => {
            let bed = rbee_testbed::Testbed::up(1, &work.path().join("bed")).unwrap();
            let h = &bed.hosts[0];
            let hive = format!(
                "[[hive]]\nalias = \"{}\"\nhostname = \"{}\"\nssh_user = \"root\"\nssh_key = \"{}\"\nworkers = [{{ type = \"vllm\" }}]\n",
                h.name,
                h.ip,
                bed.user_key.display()
            );
            let extra = format!("[ssh]\nknown_hosts = \"{}\"\n", bed.known_hosts.display());
            let config = write_config(&work.path().join("config-ssh"), &hive, &source, &extra);
            let ssh = measure(&config, &operator, work.path());
            report("ssh (test host)", mib, ssh);
            // The hive dies with the test host's namespaces when the bed goes down.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
