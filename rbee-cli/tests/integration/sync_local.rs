//! End to end on local hosts: the real `rbee` binary installs and starts real `rbee-hive`
//! processes, each host in its own home directory and port.

use crate::fleet::{Fleet, release_tree, sha256_file};

const WORKERS: &[(&str, &str)] = &[("llama-cpp", "0.1.0"), ("vllm", "latest")];

fn outcome<'a>(result: &'a serde_json::Value, alias: &str) -> &'a serde_json::Value {
    result["report"]["hives"].as_array().unwrap().iter().find(|h| h["alias"] == alias).expect("hive in report")
}

#[test]
fn three_hosts_sync_upgrade_one_worker_and_converge() {
    let mut fleet = Fleet::new(3, WORKERS);
    fleet.rbee(&["sync"]).expect_code(0);
    for h in &fleet.hosts {
        let health = h.health().unwrap_or_else(|| panic!("{} does not answer /health", h.alias));
        assert_eq!(health["sha256"], sha256_file(&h.path(".local/bin/rbee-hive")));
    }
    fleet.rbee(&["status"]).expect_code(0);

    fleet.set_worker("h2", "llama-cpp", "0.2.0");
    let dry = fleet.rbee(&["sync", "--dry-run"]).expect_code(2);
    let plan = dry.stdout();
    let changes: Vec<&str> = plan.lines().filter(|l| l.trim_start().starts_with(['+', '~', '-'])).collect();
    // The worker and its engine come from the same release.
    assert_eq!(changes.len(), 2, "exactly two changes expected:\n{plan}");
    assert!(changes[0].contains("~ upgrade   worker llama-cpp 0.1.0"), "{plan}");
    assert!(changes[0].contains("-> 0.2.0"), "{plan}");
    assert!(changes[1].contains("~ upgrade   engine llama-cpp b100 -> cpu 0.2.0 (sha256:"), "{plan}");
    assert!(plan.contains("# hive h1 (localhost, local): in sync"), "{plan}");
    assert!(
        plan.contains("Plan: 0 to install, 2 to upgrade, 0 to remove, 0 to start, 0 to restart; 2 in sync."),
        "{plan}"
    );

    let run = fleet.rbee(&["sync", "--json"]).expect_code(0);
    let result = run.result();
    assert_eq!(outcome(&result, "h2")["outcome"], "ok");
    assert_eq!(outcome(&result, "h1")["steps_done"].as_array().unwrap().len(), 0);
    let want = release_tree().join("0.2.0/rbee-worker-llama-cpp");
    assert_eq!(
        sha256_file(&fleet.host("h2").path(".local/share/rbee/workers/rbee-worker-llama-cpp")),
        sha256_file(&want)
    );
    let record = std::fs::read_to_string(fleet.host("h2").path(".local/share/rbee/engines/llama-cpp/current")).unwrap();
    assert_eq!(record.split('\t').nth(3), Some("b200"), "{record}");
    fleet.rbee(&["status"]).expect_code(0);
}

#[test]
fn a_second_sync_changes_nothing_and_transfers_nothing() {
    let fleet = Fleet::new(2, WORKERS);
    fleet.rbee(&["sync"]).expect_code(0);
    let pids: Vec<_> = fleet.hosts.iter().map(|h| h.pid()).collect();
    let again = fleet.rbee(&["sync"]).expect_code(0);
    assert!(
        again.stdout().contains("Nothing to do: every hive is in sync (0.0 MiB transferred)."),
        "{}",
        again.stdout()
    );
    let json = fleet.rbee(&["sync", "--json"]).expect_code(0).result();
    assert_eq!(json["bytes_transferred"], 0);
    let after: Vec<_> = fleet.hosts.iter().map(|h| h.pid()).collect();
    assert_eq!(pids, after, "no hive was restarted");
}

#[test]
fn a_killed_hive_is_reported_and_only_it_is_restarted() {
    let fleet = Fleet::new(3, WORKERS);
    fleet.rbee(&["sync"]).expect_code(0);
    let (h1_pid, h3_pid) = (fleet.host("h1").pid(), fleet.host("h3").pid());
    fleet.host("h2").kill_hive();

    let status = fleet.rbee(&["status"]).expect_code(2);
    let text = status.stdout();
    let h2_line = text.lines().position(|l| l.starts_with("h2")).expect("h2 listed");
    assert!(text.lines().nth(h2_line).unwrap().contains("drift"), "{text}");
    assert!(text.lines().nth(h2_line + 1).unwrap().contains("hive not running"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("h1") && l.contains("in sync")), "{text}");

    let result = fleet.rbee(&["sync", "--json"]).expect_code(0).result();
    let steps = |alias: &str| outcome(&result, alias)["steps_done"].as_array().unwrap().clone();
    assert!(steps("h1").is_empty() && steps("h3").is_empty(), "{result:#}");
    assert_eq!(
        steps("h2").iter().map(|s| s.as_str().unwrap()).collect::<Vec<_>>(),
        ["h2/lock", "h2/start", "h2/wait-healthy"]
    );
    assert_eq!((fleet.host("h1").pid(), fleet.host("h3").pid()), (h1_pid, h3_pid));
    assert!(fleet.host("h2").health().is_some());
}

#[test]
fn a_digest_mismatch_fails_one_host_which_keeps_its_binary_then_retry_failed_fixes_it() {
    let mut fleet = Fleet::new(3, WORKERS);
    fleet.rbee(&["sync"]).expect_code(0);
    let worker = ".local/share/rbee/workers/rbee-worker-llama-cpp";
    let old = sha256_file(&fleet.host("h2").path(worker));
    for alias in ["h1", "h2", "h3"] {
        fleet.set_worker(alias, "llama-cpp", "0.2.0");
    }

    let run = fleet.command(&["sync", "--json"]).env("RBEE_TEST_FAULT", "h2=corrupt-upload").output().unwrap();
    let run = crate::fleet::Run(run).expect_code(3);
    let result = run.result();
    assert_eq!(result["overall"], "partial");
    let h2 = outcome(&result, "h2");
    assert_eq!(h2["outcome"], "failed");
    assert_eq!(h2["step"], "h2/worker/llama-cpp");
    assert!(h2["reason"].as_str().unwrap().contains("sha256 mismatch"), "{h2}");
    assert_eq!(outcome(&result, "h1")["outcome"], "ok");
    assert_eq!(outcome(&result, "h3")["outcome"], "ok");
    assert_eq!(sha256_file(&fleet.host("h2").path(worker)), old, "h2 keeps its old binary");
    let leftovers: Vec<_> = std::fs::read_dir(fleet.host("h2").path(".local/share/rbee/workers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no partial file: {leftovers:?}");

    let retry = fleet.rbee(&["sync", "--retry-failed", "--json"]).expect_code(0).result();
    assert_eq!(outcome(&retry, "h2")["outcome"], "ok");
    assert_eq!(outcome(&retry, "h1")["outcome"], "skipped");
    assert_eq!(outcome(&retry, "h3")["outcome"], "skipped");
    fleet.rbee(&["status"]).expect_code(0);
}

#[test]
fn an_install_interrupted_before_rename_leaves_the_old_binary_working() {
    let mut fleet = Fleet::new(1, &[]);
    fleet.rbee(&["sync"]).expect_code(0);
    let h1 = fleet.host("h1");
    let old = sha256_file(&h1.path(".local/bin/rbee-hive"));
    let old_pid = h1.pid();
    // A source whose latest is 0.2.0: the hive binary itself is upgraded.
    let tree = fleet.dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    for v in ["0.1.0", "0.2.0"] {
        std::os::unix::fs::symlink(release_tree().join(v), tree.join(v)).unwrap();
    }
    std::fs::write(tree.join("latest"), "0.2.0\n").unwrap();
    fleet.set_source(tree);

    let run = fleet.command(&["sync", "--json"]).env("RBEE_TEST_FAULT", "h1=stop-before-rename").output().unwrap();
    let result = crate::fleet::Run(run).expect_code(1).result();
    let h1 = fleet.host("h1");
    assert!(outcome(&result, "h1")["reason"].as_str().unwrap().contains("interrupted before rename"), "{result:#}");
    assert_eq!(sha256_file(&h1.path(".local/bin/rbee-hive")), old, "old binary in place");
    assert_eq!(h1.pid(), old_pid, "the running hive was not touched");
    assert!(h1.health().is_some(), "old hive still answers");

    let result = fleet.rbee(&["sync", "--json"]).expect_code(0).result();
    assert_eq!(outcome(&result, "h1")["outcome"], "ok");
    let h1 = fleet.host("h1");
    assert_eq!(sha256_file(&h1.path(".local/bin/rbee-hive")), sha256_file(&release_tree().join("0.2.0/rbee-hive")));
    let health = h1.health().expect("new hive answers");
    assert_eq!(health["sha256"], sha256_file(&release_tree().join("0.2.0/rbee-hive")), "restarted on the new binary");
    let staging: Vec<_> = std::fs::read_dir(h1.path(".local/bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(staging.is_empty(), "staging files cleaned up: {staging:?}");
}

#[test]
fn two_syncs_at_once_do_not_interleave() {
    let fleet = Fleet::new(3, WORKERS);
    // Both outputs are read as they come: a run blocked on a full pipe would hold its locks.
    let spawn = || {
        let child = fleet.command(&["sync", "--json"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
        std::thread::spawn(move || crate::fleet::Run(child.wait_with_output().unwrap()))
    };
    let (a, b) = (spawn(), spawn());
    let a = a.join().unwrap().expect_code(0);
    let b = b.join().unwrap().expect_code(0);
    // Per host, the span from "lock taken" to "hive done" of one run never overlaps the other's.
    let spans = |run: &crate::fleet::Run, alias: &str| {
        let lines = run.json_lines();
        let locked = lines.iter().find(|e| e["event"] == "step_finished" && e["step"] == format!("{alias}/lock"));
        let done = lines.iter().find(|e| e["event"] == "hive_done" && e["alias"] == alias).expect("hive_done");
        locked.map(|l| (l["at_ms"].as_u64().unwrap(), done["at_ms"].as_u64().unwrap()))
    };
    for h in &fleet.hosts {
        if let (Some((a0, a1)), Some((b0, b1))) = (spans(&a, &h.alias), spans(&b, &h.alias)) {
            assert!(a1 <= b0 || b1 <= a0, "{}: runs overlap: {a0}..{a1} and {b0}..{b1}", h.alias);
        }
        assert!(h.health().is_some());
    }
    fleet.rbee(&["status"]).expect_code(0);
}

#[test]
fn uninstall_removes_what_it_installed_and_purge_removes_state() {
    let fleet = Fleet::new(2, WORKERS);
    fleet.rbee(&["sync"]).expect_code(0);
    let pid = fleet.host("h1").pid().unwrap();
    fleet.rbee(&["uninstall", "--hive", "h1"]).expect_code(0);
    let h1 = fleet.host("h1");
    assert!(!crate::fleet::alive(pid), "hive stopped");
    for rel in
        [".local/bin/rbee-hive", ".local/share/rbee", ".local/state/rbee/installed", ".local/state/rbee/hive.pid"]
    {
        assert!(!h1.path(rel).exists(), "{rel} left behind");
    }
    assert!(h1.path(".local/state/rbee/hive.log").exists(), "state is kept without --purge");
    assert!(fleet.host("h2").health().is_some(), "h2 untouched");
    let status = fleet.rbee(&["status", "--hive", "h1"]).expect_code(2);
    assert!(status.stdout().contains("h1  not installed"), "{}", status.stdout());

    fleet.rbee(&["uninstall", "--purge"]).expect_code(0);
    for h in &fleet.hosts {
        assert!(!h.path(".local/state/rbee").exists(), "{}: state left behind", h.alias);
        assert!(!h.path(".local/share/rbee").exists(), "{}: data left behind", h.alias);
        assert!(!h.path(".local/bin/rbee-hive").exists());
    }
    let status = fleet.rbee(&["status"]).expect_code(2);
    assert!(status.stdout().contains("h1  not installed") && status.stdout().contains("h2  not installed"));
}

/// The README's main command, as a new user runs it: the example config for a hive on this
/// machine, the default artifact source (the build directory), the user's own home.
#[test]
fn the_readme_example_syncs_a_localhost_hive_from_the_build_directory() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let port = crate::fleet::free_port();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/config/local/hives.conf")).unwrap();
    assert!(example.contains("hive_port = 8600"));
    std::fs::write(config.join("hives.conf"), example.replace("hive_port = 8600", &format!("hive_port = {port}")))
        .unwrap();
    // The queen is started automatically, on a port of this test's own.
    std::fs::write(config.join("rbee.conf"), format!("[queen]\nport = {}\n", crate::fleet::free_port())).unwrap();
    let rbee = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rbee"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("HOME", &home)
            .env_remove("XDG_STATE_HOME")
            .env_remove("RBEE_IN_PROCESS")
            .output()
            .unwrap();
        crate::fleet::Run(out)
    };
    let host = crate::fleet::Host { alias: "local".into(), home: home.clone(), port, workers: Vec::new() };
    struct Stop<'a>(&'a crate::fleet::Host, &'a dyn Fn(&[&str]) -> crate::fleet::Run);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            (self.1)(&["queen", "stop"]);
            self.0.kill_hive();
            self.0.kill_workers();
        }
    }
    let _stop = Stop(&host, &rbee);
    let dry = rbee(&["sync", "--dry-run"]).expect_code(2);
    assert!(dry.stdout().contains("+ install   hive rbee-hive"), "{}", dry.stdout());
    rbee(&["sync"]).expect_code(0);
    let status = rbee(&["status"]).expect_code(0);
    assert!(status.stdout().contains("local  in sync, healthy (pid"), "{}", status.stdout());
    assert!(home.join(".local/share/rbee/workers/rbee-worker-reference").is_file());
    assert!(host.health().is_some());
    let queen = rbee(&["queen", "status"]).expect_code(0);
    assert!(queen.stdout().contains("queen-rbee"), "the main command went through the queen: {}", queen.stdout());
    // The example's deployment answers, as the README says.
    assert!(status.stdout().contains("hello  1/1 ready  ready"), "{}", status.stdout());
    let answer = rbee(&["infer", "--model", "hello", "hi there"]).expect_code(0);
    assert_eq!(answer.stdout().trim(), "echo: hi there");
}

#[test]
fn removed_imperative_commands_say_what_to_do_instead() {
    let fleet = Fleet::new(1, &[]);
    for cmd in [["install-hive", "gpu-1"], ["install-worker", "vllm"]] {
        let run = fleet.rbee(&cmd).expect_code(1);
        assert!(run.stderr().contains("was removed") && run.stderr().contains("rbee sync"), "{}", run.stderr());
    }
}

#[test]
fn hive_stop_and_start_act_on_one_hive() {
    let fleet = Fleet::new(2, &[]);
    fleet.rbee(&["sync"]).expect_code(0);
    let h2_pid = fleet.host("h2").pid();
    fleet.rbee(&["hive", "stop", "h1"]).expect_code(0);
    assert!(fleet.host("h1").health().is_none(), "h1 stopped");
    assert_eq!(fleet.host("h2").pid(), h2_pid, "h2 untouched");
    let status = fleet.rbee(&["hive", "status", "h1"]).expect_code(2);
    assert!(status.stdout().contains("hive not running"), "{}", status.stdout());
    fleet.rbee(&["hive", "start", "h1"]).expect_code(0);
    assert!(fleet.host("h1").health().is_some(), "h1 started");
    fleet.rbee(&["hive", "status", "h1"]).expect_code(0);
}

/// A static file server over plain HTTP that counts requests per path.
struct Served {
    port: u16,
    hits: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>,
}

fn serve_dir(root: std::path::PathBuf) -> Served {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let counted = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (root, counted) = (root.clone(), counted.clone());
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap_or(0);
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) <= 2 {
                        break;
                    }
                }
                *counted.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
                let mut out = stream;
                match std::fs::read(root.join(path.trim_start_matches('/'))) {
                    Ok(body) => {
                        let _ = write!(
                            out,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = out.write_all(&body);
                    }
                    Err(_) => {
                        let _ = write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                }
            });
        }
    });
    Served { port, hits }
}

#[test]
fn an_http_source_is_downloaded_once_per_artifact_into_a_sha256_cache() {
    let mut fleet = Fleet::new(2, WORKERS);
    let served = serve_dir(release_tree().to_path_buf());
    fleet.set_source(format!("http://127.0.0.1:{}", served.port).into());
    let dry = fleet.rbee(&["sync", "--dry-run"]).expect_code(2);
    assert!(dry.stdout().contains("+ install   hive rbee-hive 0.1.0"), "{}", dry.stdout());
    let synced = fleet.rbee(&["sync"]).expect_code(0);
    assert!(
        synced.stderr().contains("over plain HTTP (allow_insecure_source = true): anyone on the network path"),
        "a plain HTTP source is warned about: {}",
        synced.stderr()
    );
    let hits = served.hits.lock().unwrap().clone();
    for artifact in ["rbee-hive", "rbee-worker-llama-cpp", "rbee-worker-vllm"] {
        assert_eq!(hits.get(&format!("/0.1.0/{artifact}")), Some(&1), "{artifact} fetched once for 2 hives: {hits:?}");
        let sha = sha256_file(&release_tree().join("0.1.0").join(artifact));
        assert!(
            fleet.dir.path().join("operator/.cache/rbee/artifacts").join(&sha).is_file(),
            "{artifact} cached by sha256"
        );
    }
    // A reinstall uses the cache: no artifact is downloaded again.
    served.hits.lock().unwrap().clear();
    fleet.rbee(&["sync", "--force"]).expect_code(0);
    let hits = served.hits.lock().unwrap().clone();
    assert!(hits.keys().all(|p| p == "/latest" || p.ends_with("/SHA256SUMS")), "{hits:?}");
    fleet.rbee(&["status"]).expect_code(0);
}

/// A static file server over TLS with a certificate for 127.0.0.1 made by `openssl`.
fn serve_dir_tls(root: std::path::PathBuf, dir: &std::path::Path) -> (u16, std::path::PathBuf) {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let (cert, key, ca) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("ca.pem"));
    let ext = dir.join("leaf.ext");
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    let d = dir.display();
    let script = format!(
        "set -e; cd {d}; ec='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'
         openssl req -x509 $ec -days 1 -subj /CN=rbee-test-ca -keyout ca.key -out ca.pem
         openssl req $ec -subj /CN=127.0.0.1 -keyout key.pem -out leaf.csr
         openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile leaf.ext -out cert.pem"
    );
    let made = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
    assert!(made.status.success(), "openssl: {}", String::from_utf8_lossy(&made.stderr));
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(&cert).unwrap().map(Result::unwrap).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, root) = (acceptor.clone(), root.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let mut reader = tokio::io::BufReader::new(tls);
                    let mut line = String::new();
                    let _ = reader.read_line(&mut line).await;
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).await.unwrap_or(0) <= 2 {
                            break;
                        }
                    }
                    let mut out = reader.into_inner();
                    let response = match std::fs::read(root.join(path.trim_start_matches('/'))) {
                        Ok(body) => {
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            r.extend(body);
                            r
                        }
                        Err(_) => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                    };
                    let _ = out.write_all(&response).await;
                    let _ = out.shutdown().await;
                });
            }
        });
    });
    (port, ca)
}

#[test]
fn an_https_source_is_verified_against_the_trusted_roots() {
    let mut fleet = Fleet::new(1, WORKERS);
    let (port, ca) = serve_dir_tls(release_tree().to_path_buf(), fleet.dir.path());
    fleet.set_source(format!("https://127.0.0.1:{port}").into());
    // Not trusted: refused, with the TLS reason.
    let refused = fleet.rbee(&["sync", "--dry-run"]).expect_code(1);
    assert!(refused.stderr().contains("TLS with 127.0.0.1"), "{}", refused.stderr());
    // Trusted through SSL_CERT_FILE: syncs.
    let ok = fleet.command(&["sync"]).env("SSL_CERT_FILE", &ca).output().unwrap();
    crate::fleet::Run(ok).expect_code(0);
    assert!(fleet.host("h1").health().is_some());
}

#[test]
fn the_lock_keeps_latest_where_it_was_until_lock_update() {
    let mut fleet = Fleet::new(1, &[("vllm", "latest")]);
    // A release tree of this test's own, whose `latest` moves.
    let tree = fleet.dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    for v in ["0.1.0", "0.2.0"] {
        std::os::unix::fs::symlink(release_tree().join(v), tree.join(v)).unwrap();
    }
    std::fs::write(tree.join("latest"), "0.1.0\n").unwrap();
    fleet.set_source(tree.clone());
    let lock_file = fleet.config_dir().join("rbee.lock");
    let release = |v: &str, name: &str| sha256_file(&release_tree().join(v).join(name));
    let installed = |fleet: &Fleet| {
        let h1 = fleet.host("h1");
        (
            sha256_file(&h1.path(".local/bin/rbee-hive")),
            sha256_file(&h1.path(".local/share/rbee/workers/rbee-worker-vllm")),
        )
    };
    let v1 = (release("0.1.0", "rbee-hive"), release("0.1.0", "rbee-worker-vllm"));
    let v2 = (release("0.2.0", "rbee-hive"), release("0.2.0", "rbee-worker-vllm"));

    // The first sync writes the lock: what `latest` was.
    let first = fleet.rbee(&["sync"]).expect_code(0);
    assert!(first.stdout().contains("lock: added rbee-hive latest 0.1.0 (sha256:"), "{}", first.stdout());
    let lock = std::fs::read_to_string(&lock_file).unwrap();
    assert!(lock.starts_with("# generated by rbee; commit it next to hives.conf\n"), "{lock}");
    assert!(lock.contains("version = \"0.1.0\"") && !lock.contains("0.2.0"), "{lock}");
    assert!(lock.contains(&format!("sha256 = \"{}\"", v1.0)), "{lock}");
    assert_eq!(installed(&fleet), v1);

    // A new release: neither `sync --locked` nor a plain sync takes it.
    std::fs::write(tree.join("latest"), "0.2.0\n").unwrap();
    let locked = fleet.rbee(&["sync", "--locked", "--json"]).expect_code(0).result();
    assert_eq!(outcome(&locked, "h1")["steps_done"].as_array().unwrap().len(), 0, "{locked:#}");
    assert_eq!(installed(&fleet), v1);
    assert_eq!(std::fs::read_to_string(&lock_file).unwrap(), lock, "--locked leaves the lock alone");
    let dry = fleet.rbee(&["sync", "--dry-run"]).expect_code(0).stdout();
    assert!(dry.contains("# hive h1 (localhost, local): in sync"), "{dry}");
    assert!(!dry.contains("lock:"), "{dry}");

    // `rbee lock update` takes it; the plan shows the upgrade; sync installs it.
    let update = fleet.rbee(&["lock", "update"]).expect_code(0).stdout();
    assert!(update.contains("lock: rbee-hive latest 0.1.0 -> 0.2.0 (sha256:"), "{update}");
    assert!(update.contains("lock: rbee-worker-vllm latest 0.1.0 -> 0.2.0 (sha256:"), "{update}");
    let lock = std::fs::read_to_string(&lock_file).unwrap();
    assert!(lock.contains("version = \"0.2.0\"") && !lock.contains("0.1.0"), "{lock}");
    let dry = fleet.rbee(&["sync", "--dry-run"]).expect_code(2).stdout();
    assert!(dry.contains("~ upgrade   hive rbee-hive 0.1.0 (sha256:"), "{dry}");
    assert!(dry.contains("~ upgrade   worker vllm 0.1.0 (sha256:"), "{dry}");
    fleet.rbee(&["sync", "--locked"]).expect_code(0);
    assert_eq!(installed(&fleet), v2);
    assert_eq!(fleet.host("h1").health().expect("the new hive answers")["sha256"], v2.0);
    let again = fleet.rbee(&["lock", "update"]).expect_code(0).stdout();
    assert!(again.contains("rbee.lock is up to date"), "{again}");

    // A worker type the lock has never seen: `--locked` refuses it and installs nothing.
    fleet.hosts[0].workers.push(("llama-cpp".into(), "latest".into()));
    fleet.write_config();
    let refused = fleet.rbee(&["sync", "--locked"]).expect_code(1);
    assert!(
        refused.stderr().contains(
            "rbee-worker-llama-cpp latest is not in rbee.lock: run `rbee lock update` (or sync without --locked)"
        ),
        "{}",
        refused.stderr()
    );
    assert!(!fleet.host("h1").path(".local/share/rbee/workers/rbee-worker-llama-cpp").exists());
    assert_eq!(std::fs::read_to_string(&lock_file).unwrap(), lock, "the lock is left alone");
    assert_eq!(installed(&fleet), v2);
}
