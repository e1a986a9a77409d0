//! The queen's own state on the operator's machine: apart from a hive's, a pid file per port
//! that is never obeyed blindly, and one token however many queens start at once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::fleet::{Fleet, Run, alive, free_port};

const WORKERS: &[(&str, &str)] = &[("llama-cpp", "latest")];

fn queen_dir(fleet: &Fleet) -> PathBuf {
    fleet.dir.path().join("operator/.local/state/rbee-queen")
}

/// A `rbee` going through the queen of the config in `config` (another config of the same
/// operator).
fn rbee_with(fleet: &Fleet, config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rbee"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("HOME", fleet.dir.path().join("operator"))
        .env_remove("XDG_STATE_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("RBEE_CONFIG_DIR")
        .env_remove("RBEE_IN_PROCESS");
    cmd
}

/// `rbee uninstall --purge` of a hive on the queen's own machine removed the queen's token and
/// pid file with the hive's state: every command then got 401 and `rbee queen stop` said
/// "not running" while the queen still listened.
#[test]
fn purging_a_hive_on_the_queens_machine_leaves_the_queen_usable_and_stoppable() {
    let mut fleet = Fleet::new(1, WORKERS);
    fleet.hosts[0].home = fleet.dir.path().join("operator");
    fleet.write_config();
    Run(fleet.via_queen(&["sync"]).output().unwrap()).expect_code(0);
    let token = queen_dir(&fleet).join("queen.token");
    let pid_file = queen_dir(&fleet).join(format!("queen-{}.pid", fleet.queen_port));
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();

    Run(fleet.via_queen(&["uninstall", "--purge"]).output().unwrap()).expect_code(0);
    let h1 = fleet.host("h1");
    assert!(!h1.path(".local/state/rbee").exists(), "the hive's state is purged");
    assert!(!h1.path(".local/bin/rbee-hive").exists());
    assert!(token.exists() && pid_file.exists(), "the queen's files survive a hive purge");

    let status = Run(fleet.via_queen(&["queen", "status"]).output().unwrap()).expect_code(0);
    assert!(status.stdout().contains(&format!("pid {pid}")), "{}", status.stdout());
    Run(fleet.via_queen(&["status"]).output().unwrap()).expect_code(2);
    let stopped = Run(fleet.via_queen(&["queen", "stop"]).output().unwrap()).expect_code(0);
    assert!(stopped.stdout().contains(&format!("queen-rbee (pid {pid}) stopped")), "{}", stopped.stdout());
    assert!(!alive(pid), "queen {pid} still runs");
    assert!(!pid_file.exists());
}

/// `rbee queen stop` killed whatever pid the pid file held (an unrelated `sleep`), and the
/// queen of another config.
#[test]
fn queen_stop_signals_only_that_configs_queen() {
    let fleet = Fleet::new(1, WORKERS);
    let pid_file = queen_dir(&fleet).join(format!("queen-{}.pid", fleet.queen_port));
    std::fs::create_dir_all(queen_dir(&fleet)).unwrap();

    // A stale pid file naming an unrelated process: not obeyed, removed.
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(&pid_file, format!("{}\n", bystander.id())).unwrap();
    let said = Run(fleet.via_queen(&["queen", "stop"]).output().unwrap()).expect_code(0);
    assert!(said.stdout().contains("not running"), "{}", said.stdout());
    assert!(bystander.try_wait().unwrap().is_none(), "an unrelated process was signalled");
    assert!(!pid_file.exists(), "a stale pid file is removed");
    for junk in ["1", "0", "-1", "abc", ""] {
        std::fs::write(&pid_file, junk).unwrap();
        Run(fleet.via_queen(&["queen", "stop"]).output().unwrap()).expect_code(0);
    }
    bystander.kill().unwrap();
    let _ = bystander.wait();

    // Two configs of one operator, two queens: stopping one leaves the other.
    let other = fleet.dir.path().join("other-config");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(fleet.config_dir().join("hives.conf"), other.join("hives.conf")).unwrap();
    let other_port = free_port();
    std::fs::write(other.join("rbee.conf"), format!("[queen]\nport = {other_port}\n")).unwrap();
    Run(fleet.via_queen(&["queen", "start"]).output().unwrap()).expect_code(0);
    Run(rbee_with(&fleet, &other, &["queen", "start"]).output().unwrap()).expect_code(0);
    let other_pid: u32 = std::fs::read_to_string(queen_dir(&fleet).join(format!("queen-{other_port}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mine: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert_ne!(mine, other_pid);
    Run(fleet.via_queen(&["queen", "stop"]).output().unwrap()).expect_code(0);
    assert!(!alive(mine));
    assert!(alive(other_pid), "the other config's queen was stopped");
    Run(rbee_with(&fleet, &other, &["queen", "status"]).output().unwrap()).expect_code(0);
    Run(rbee_with(&fleet, &other, &["queen", "stop"]).output().unwrap()).expect_code(0);
    assert!(!alive(other_pid));
}

/// Two `rbee queen ensure` at once on a machine with no queen: both start one, one listens,
/// and the token on disk must be that queen's (it ended with 401 in 2 runs of 6).
#[test]
fn two_queens_starting_at_once_end_with_one_queen_and_its_token() {
    let fleet = Fleet::new(1, WORKERS);
    for round in 0..4 {
        let _ = std::fs::remove_file(queen_dir(&fleet).join("queen.token"));
        let runs: Vec<_> = (0..2)
            .map(|_| {
                fleet.via_queen(&["queen", "ensure"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
            })
            .collect();
        for r in runs {
            Run(r.wait_with_output().unwrap()).expect_code(0);
        }
        let status = Run(fleet.via_queen(&["queen", "status"]).output().unwrap());
        assert_eq!(status.code(), 0, "round {round}: {}", status.stderr());
        let jobs = Run(fleet.via_queen(&["jobs"]).output().unwrap());
        assert_eq!(jobs.code(), 0, "round {round}: the token does not match the queen: {}", jobs.stderr());
        Run(fleet.via_queen(&["queen", "stop"]).output().unwrap()).expect_code(0);
    }
}

/// `rbee status` hung for good when a host's install record held a non-ASCII digest (the
/// queen's job panicked while shortening it and never ended). Now the host is reported as not
/// checkable, naming the record, and the command returns.
#[test]
fn status_with_a_non_ascii_digest_on_a_host_returns_an_error_quickly() {
    let fleet = Fleet::new(1, WORKERS);
    Run(fleet.via_queen(&["sync"]).output().unwrap()).expect_code(0);
    let record = fleet.host("h1").path(".local/state/rbee/installed/rbee-hive");
    let text = std::fs::read_to_string(&record).unwrap();
    let (_, rest) = text.split_once(' ').unwrap();
    std::fs::write(&record, format!("{} {rest}", "é".repeat(32))).unwrap();
    let mut child = fleet.via_queen(&["status"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("rbee status did not return within 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let run = Run(child.wait_with_output().unwrap()).expect_code(1);
    let all = format!("{}{}", run.stdout(), run.stderr());
    assert!(all.contains("not a sha256 digest") && all.contains("installed/rbee-hive"), "{all}");
}
