//! Safe fleet upgrades on the SSH test hosts: an upgrade whose hive does not come up is rolled
//! back on every host; rolling batches keep at most `max_unavailable` hives down at once;
//! `max_failed` stops an upgrade early and leaves the rest untouched.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::fleet::{release_tree, sha256_file};
use crate::sync_ssh::{SERIAL, SshFleet, health, report};

/// A release tree whose latest, 0.3.0, has an `rbee-hive` that exits at once (the workers are
/// 0.1.0's); 0.1.0 is the test release.
fn broken_release(fleet: &mut SshFleet) {
    let tree = fleet.dir.path().join("broken-tree");
    let v3 = tree.join("0.3.0");
    std::fs::create_dir_all(&v3).unwrap();
    let _ = std::os::unix::fs::symlink(release_tree().join("0.1.0"), tree.join("0.1.0"));
    let mut sums = String::new();
    for line in std::fs::read_to_string(release_tree().join("0.1.0/SHA256SUMS")).unwrap().lines() {
        let (_, name) = line.split_once("  ").unwrap();
        if name == "rbee-hive" {
            continue;
        }
        std::os::unix::fs::symlink(release_tree().join("0.1.0").join(name), v3.join(name)).unwrap();
        sums.push_str(line);
        sums.push('\n');
    }
    let hive = b"#!/bin/sh\necho 'rbee-hive 0.3.0: broken on purpose' >&2\nexit 1\n";
    std::fs::write(v3.join("rbee-hive"), hive).unwrap();
    sums.push_str(&format!("{}  rbee-hive\n", hex::encode(Sha256::digest(hive))));
    std::fs::write(v3.join("SHA256SUMS"), sums).unwrap();
    std::fs::write(tree.join("latest"), "0.3.0\n").unwrap();
    fleet.source = tree;
    fleet.write_config();
}

#[cfg_attr(rbee_no_testbed, ignore = "needs root, openssh-server and iproute2 for SSH test hosts")]
#[test]
fn a_hive_that_exits_at_once_is_rolled_back_on_every_host_and_again_on_the_next_sync() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut fleet) = SshFleet::new(3) else { return };
    fleet.workers = r#"[{ type = "reference" }]"#.into();
    // Longer than the 10 s a start waits for the new hive's pid file, so its log is shown.
    fleet.ssh_timeout = 20;
    fleet.write_config();
    fleet.rbee(&["sync"]).expect_code(0);
    // The test hosts run no systemd: every hive is a detached process, and status says so.
    let status = fleet.rbee(&["status", "--verbose"]).expect_code(0);
    let detached = status.stdout().matches("supervisor: detached process").count();
    assert_eq!(detached, fleet.bed.hosts.len(), "{}", status.stdout());
    let old = sha256_file(&release_tree().join("0.1.0/rbee-hive"));
    broken_release(&mut fleet);
    for round in 0..2 {
        // Every hive rolled back: the run failed everywhere (exit 1), and says what to do.
        let run = fleet.rbee(&["sync", "--json"]).expect_code(1);
        let result = run.result();
        for h in &fleet.bed.hosts {
            let r = report(&result, &h.name);
            assert_eq!(r["outcome"], "rolled_back", "round {round}: {r}");
            assert_eq!(r["version"], "0.1.0", "{r}");
            let reason = r["reason"].as_str().unwrap();
            assert!(reason.contains("rbee-hive 0.3.0 did not start"), "{reason}");
            assert!(reason.contains("broken on purpose"), "the new hive's log: {reason}");
            assert!(reason.contains("pin a version in hives.conf or fix the release"), "{reason}");
            let health = health(h).unwrap_or_else(|| panic!("{} is down after the rollback", h.name));
            assert_eq!(health["sha256"], old, "{} runs the old hive again", h.name);
            assert_eq!(sha256_file(&h.root.join(".local/bin/rbee-hive")), old);
        }
        let text = fleet.rbee(&["sync"]).expect_code(1);
        assert!(text.stdout().contains("ROLLED BACK to rbee-hive 0.1.0"), "{}", text.stdout());
    }

    // A good upgrade, then `rbee rollback` on purpose: the old hive runs again; a second
    // rollback has nothing left to return to and changes nothing.
    fleet.upgrade_source();
    fleet.rbee(&["sync"]).expect_code(0);
    let new = sha256_file(&release_tree().join("0.2.0/rbee-hive"));
    assert_eq!(health(&fleet.bed.hosts[0]).unwrap()["sha256"], new);
    fleet.rbee(&["rollback", "--hive", "h1"]).expect_code(0);
    assert_eq!(health(&fleet.bed.hosts[0]).unwrap()["sha256"], old, "h1 back on 0.1.0");
    assert_eq!(health(&fleet.bed.hosts[1]).unwrap()["sha256"], new, "h2 not selected");
    let again = fleet.rbee(&["rollback", "--hive", "h1"]).expect_code(0);
    assert!(again.stdout().contains("h1: in sync"), "{}", again.stdout());
    assert_eq!(health(&fleet.bed.hosts[0]).unwrap()["sha256"], old, "h1 still on 0.1.0");
}

#[cfg_attr(rbee_no_testbed, ignore = "needs root, openssh-server and iproute2 for SSH test hosts")]
#[test]
fn an_upgrade_of_ten_hosts_keeps_at_most_max_unavailable_hives_down() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut fleet) = SshFleet::new(10) else { return };
    fleet.workers = r#"[{ type = "reference" }]"#.into();
    fleet.write_config();
    fleet.rbee(&["sync"]).expect_code(0);
    fleet.upgrade_source();
    let conf = fleet.config_dir().join("rbee.conf");
    let text = std::fs::read_to_string(&conf).unwrap().replace("[package]\n", "[package]\nmax_unavailable = 2\n");
    std::fs::write(&conf, text).unwrap();

    // Sampled from outside every 100 ms: how many hives fail /health at the same moment.
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicUsize::new(0));
    let ips: Vec<_> = fleet.bed.hosts.iter().map(|h| h.ip.clone()).collect();
    let sampler = {
        let (stop, worst) = (stop.clone(), worst.clone());
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                let down = std::thread::scope(|s| {
                    let probes: Vec<_> = ips.iter().map(|ip| s.spawn(move || !answers(ip))).collect();
                    probes.into_iter().map(|p| p.join().unwrap()).filter(|down| *down).count()
                });
                worst.fetch_max(down, Ordering::Relaxed);
                rounds += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            rounds
        })
    };
    let run = fleet.rbee(&["sync", "--json"]).expect_code(0);
    stop.store(true, Ordering::Relaxed);
    let rounds = sampler.join().unwrap();
    assert!(rounds > 10, "the sampler ran {rounds} rounds");
    assert!(worst.load(Ordering::Relaxed) <= 2, "{} hives were down at once", worst.load(Ordering::Relaxed));
    assert!(worst.load(Ordering::Relaxed) >= 1, "the sampler saw a restart");
    let new = sha256_file(&release_tree().join("0.2.0/rbee-hive"));
    let result = run.result();
    for h in &fleet.bed.hosts {
        assert_eq!(report(&result, &h.name)["outcome"], "ok");
        assert_eq!(health(h).unwrap()["sha256"], new, "{} upgraded", h.name);
    }
}

/// `GET /health` on port 8600 answers 200 within 300 ms.
fn answers(ip: &str) -> bool {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = format!("{ip}:8600").parse().unwrap();
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
    if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200")
}

#[cfg_attr(rbee_no_testbed, ignore = "needs root, openssh-server and iproute2 for SSH test hosts")]
#[test]
fn max_failed_stops_an_upgrade_after_the_first_failure_and_leaves_the_rest_untouched() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut fleet) = SshFleet::new(4) else { return };
    fleet.workers = r#"[{ type = "reference" }]"#.into();
    fleet.write_config();
    fleet.rbee(&["sync"]).expect_code(0);
    fleet.upgrade_source();
    let conf = fleet.config_dir().join("rbee.conf");
    // The config lets every hive restart at once: only `--batch 1` below makes it one at a time
    // (else both broken hosts would fail together and none would be held).
    let text = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("[package]\n", "[package]\nmax_failed = 1\nmax_unavailable = \"100%\"\n");
    std::fs::write(&conf, text).unwrap();
    let old = sha256_file(&release_tree().join("0.1.0/rbee-hive"));
    // Two broken hosts (their uploads arrive corrupted); one hive upgraded at a time.
    let out = fleet
        .command(&["sync", "--json", "--batch", "1"])
        .env("RBEE_TEST_FAULT", "h2=corrupt-upload,h3=corrupt-upload")
        .output()
        .unwrap();
    let run = crate::fleet::Run(out).expect_code(3);
    let result = run.result();
    let outcomes: Vec<String> =
        fleet.bed.hosts.iter().map(|h| report(&result, &h.name)["outcome"].as_str().unwrap().to_owned()).collect();
    assert_eq!(outcomes.iter().filter(|o| *o == "failed").count(), 1, "{outcomes:?}");
    let held: Vec<_> = fleet.bed.hosts.iter().filter(|h| report(&result, &h.name)["outcome"] == "held").collect();
    assert!(!held.is_empty(), "{outcomes:?}");
    assert!(
        held.iter().any(|h| h.name == "h2" || h.name == "h3"),
        "the second broken host is never started: {outcomes:?}"
    );
    for h in held {
        let reason = report(&result, &h.name)["reason"].as_str().unwrap().to_owned();
        assert!(reason.contains("max_failed = 1"), "{reason}");
        assert_eq!(sha256_file(&h.root.join(".local/bin/rbee-hive")), old, "{} untouched", h.name);
        assert_eq!(health(h).unwrap()["sha256"], old, "{} still runs the old hive", h.name);
    }
}
