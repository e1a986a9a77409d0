//! Observing a host: ONE command through any transport, whose output is parsed by a pure
//! function. For every binary rbee manages the script trusts the install manifest's digest
//! when the file's size, mtime, ctime and inode are still those recorded at install, and hashes the
//! file otherwise (so a no-op sync reads a few records instead of hashing megabytes, and a
//! file changed behind rbee's back is still caught). It then checks the hive's pid and asks
//! the running hive for `/health` through the installed hive binary, so the probe runs on the
//! host and needs no open port towards the caller.

use std::time::Duration;

use crate::layout::{Layout, WORKER_PREFIX};
use crate::state::{HiveState, Installed, InstalledEngine, Observed, Supervisor};
use crate::transport::{CommandOutput, RemoteCommand, Transport, TransportError};
use rbee_proto::engine::EngineProblem;

/// The observation script. `$1` is the hive port, `$2` the hive binary, `$3` the worker
/// catalog, `$4` the worker binary prefix, `$5` the install records, `$6` the hive's pid file
/// `$7` the engines directory (paths from [`Layout`]), `$8` the hive's systemd unit. Output,
/// one fact per line: `file SHA PATH [VERSION]`, `engine TYPE ID ok|missing|altered VERSION
/// PROGRAM`, `gpu`, `running PID`, `health JSON` / `unhealthy TEXT`,
/// `supervisor systemd-system|systemd-user|detached`, `end`. The supervisor of a running hive
/// is systemd when it is the unit's main process; of a stopped one, what a start would use.
pub(crate) const OBSERVE_SCRIPT: &str = concat!(
    "# rbee-step: observe\n",
    sh_is_hive!(),
    sh_supervisor!(),
    sh_digest!(),
    r#"set -u
port=$1; bin=$2; catalog=$3; prefix=$4; records=$5; pidf=$6; engines=$7; unit=${8:-rbee-hive.service}
cd "$HOME" || { echo "error cannot enter home directory"; exit 3; }
echo "rbee-observe 1"
for f in "$bin" "$catalog/$prefix"*; do
  [ -f "$f" ] || continue
  rec=$records/${f##*/}
  st=$(stat -c '%s %.9Y %.9Z %i' "$f" 2>/dev/null || echo none)
  if [ -f "$rec" ] && read -r sha size mtime ctime ino version < "$rec" && [ "$size $mtime $ctime $ino" = "$st" ]; then
    echo "file $sha $f $version"
  else
    got=$(digest "$f")
    if [ -f "$rec" ] && read -r sha size mtime ctime ino version < "$rec" && [ "$sha" = "$got" ]; then echo "file $got $f $version"; else echo "file $got $f"; fi
  fi
done
case "$records" in */*) prev=${records%/*}/previous ;; *) prev=previous ;; esac
for rec in "$prev/"*.record; do
  [ -f "$rec" ] || continue
  name=${rec##*/}; name=${name%.record}
  [ -f "$prev/$name" ] || continue
  read -r sha _ _ _ _ version < "$rec" && echo "previous $name $sha ${version:-}"
done
tab=$(printf '\t')
for rec in "$engines"/*/current; do
  [ -f "$rec" ] || continue
  kind=${rec%/current}; kind=${kind##*/}
  IFS="$tab" read -r id sha st version program < "$rec" || true
  if [ -z "${program:-}" ] || [ ! -f "$program" ]; then state=missing
  elif [ "$(stat -c '%s %.9Y %.9Z %i' "$program" 2>/dev/null)" = "$st" ]; then state=ok
  elif [ "$(digest "$program")" = "$sha" ]; then state=ok
  else state=altered; fi
  echo "engine $kind ${id:-none} $state ${version:-unknown} ${program:-}"
done
if command -v nvidia-smi >/dev/null 2>&1 && timeout 5 nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then echo "gpu"; fi
pid=; { read -r pid < "$pidf"; } 2>/dev/null
if is_hive "$pid"; then
  echo "running $pid"
  if [ -x "$bin" ]; then
    if h=$("$bin" probe --port "$port" 2>&1); then echo "health $h"; else echo "unhealthy $h" | tr '\n' ' '; echo; fi
  fi
fi
sup=$(supervisor)
case "$sup" in
systemd-*) if is_hive "$pid" && [ "$(sc "$sup" show -p MainPID "$unit" 2>/dev/null)" != "MainPID=$pid" ]; then sup=detached; fi ;;
esac
echo "supervisor $sup"
echo "end"
"#
);

/// Output of the observation script that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ObserveError {
    /// The first line is not the script's marker (another shell profile printed something?).
    #[error("unexpected output {0:?}")]
    UnexpectedOutput(String),
    /// A line that does not have its fields.
    #[error("bad line {0:?}")]
    BadLine(String),
    /// A file's digest (hashed on the host or read from its install record) is not a digest.
    #[error("{path}: {reason}; remove ~/{record} on the host (or run `rbee sync --force`)")]
    InvalidDigest {
        /// The file.
        path: String,
        /// Its install record.
        record: String,
        /// What is wrong.
        reason: rbee_proto::DigestError,
    },
    /// The hive answered `/health` with something else than its health.
    #[error("the hive's /health answer cannot be read ({reason}): {shown}")]
    Health {
        /// Why.
        reason: String,
        /// The answer, escaped and cut.
        shown: String,
    },
    /// The output ended before its `end` line.
    #[error("observation output was cut short")]
    CutShort,
}

fn shown(text: &str) -> String {
    text.escape_debug().take(120).collect()
}

/// Observes one host. Failures to reach or read it become [`HiveState::Unreachable`] with the
/// reason; this never fails and never guesses.
pub async fn observe(transport: &dyn Transport, hive_port: u16, deadline: Duration) -> HiveState {
    observation(transport, transport.run(observe_command(hive_port, deadline)).await)
}

/// The command that observes a host (the sync lock runs its argv too, once it holds the lock).
pub(crate) fn observe_command(hive_port: u16, deadline: Duration) -> RemoteCommand {
    let args = [
        hive_port.to_string(),
        Layout::hive_binary(),
        Layout::WORKERS_DIR.to_owned(),
        WORKER_PREFIX.to_owned(),
        Layout::installed_dir(),
        Layout::hive_pid(),
        Layout::ENGINES_DIR.to_owned(),
        crate::execute::systemd::UNIT_NAME.to_owned(),
    ];
    RemoteCommand::script(OBSERVE_SCRIPT, args, deadline)
}

/// What the observation command's `result` says of the host.
pub(crate) fn observation(transport: &dyn Transport, result: Result<CommandOutput, TransportError>) -> HiveState {
    match result {
        Err(e) => HiveState::Unreachable { reason: e.to_string() },
        Ok(out) if !out.success() => HiveState::Unreachable {
            reason: format!(
                "observing {} failed with exit status {}: {}{}",
                transport.describe(),
                out.status,
                out.stdout_text().trim(),
                out.stderr_text()
            ),
        },
        Ok(out) => match parse_observation(&out.stdout_text()) {
            Ok(observed) => HiveState::Reachable(observed),
            Err(reason) => HiveState::Unreachable { reason: format!("observing {}: {reason}", transport.describe()) },
        },
    }
}

/// Parses the observation script's output.
pub(crate) fn parse_observation(text: &str) -> Result<Observed, ObserveError> {
    let mut lines = text.lines();
    if lines.next() != Some("rbee-observe 1") {
        return Err(ObserveError::UnexpectedOutput(shown(text.lines().next().unwrap_or(""))));
    }
    let mut observed = Observed::default();
    let mut files = Vec::new();
    let mut complete = false;
    for line in lines {
        let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
        match tag {
            "file" => {
                let mut parts = rest.split(' ');
                let (Some(sha), Some(path)) = (parts.next(), parts.next()) else {
                    return Err(ObserveError::BadLine(shown(line)));
                };
                let version = parts.next().filter(|v| !v.is_empty()).map(str::to_owned);
                let sha256 = rbee_proto::Sha256::parse(sha).map_err(|reason| ObserveError::InvalidDigest {
                    path: shown(path),
                    record: format!("{}/{}", Layout::installed_dir(), shown(path.rsplit('/').next().unwrap_or(path))),
                    reason,
                })?;
                files.push((Installed { sha256, version }, path.to_owned()));
            }
            "engine" => {
                let mut parts = rest.splitn(5, ' ');
                let (Some(kind), Some(id), Some(state), Some(version), Some(program)) =
                    (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(ObserveError::BadLine(shown(line)));
                };
                let problem = match state {
                    "ok" => None,
                    "missing" => Some(EngineProblem::Missing),
                    "altered" => Some(EngineProblem::Altered),
                    _ => return Err(ObserveError::BadLine(shown(line))),
                };
                let engine = InstalledEngine {
                    id: id.to_owned(),
                    program: program.to_owned(),
                    version: version.to_owned(),
                    problem,
                };
                observed.engines.insert(kind.to_owned(), engine);
            }
            "gpu" => observed.gpu = true,
            "previous" => {
                let mut parts = rest.split(' ');
                let (Some(name), Some(sha)) = (parts.next(), parts.next()) else {
                    return Err(ObserveError::BadLine(shown(line)));
                };
                let version = parts.next().filter(|v| !v.is_empty()).map(str::to_owned);
                let record = format!("{}/{}.record", Layout::previous_dir(), shown(name));
                let sha256 = rbee_proto::Sha256::parse(sha).map_err(|reason| ObserveError::InvalidDigest {
                    path: shown(name),
                    record,
                    reason,
                })?;
                observed.previous.insert(name.to_owned(), Installed { sha256, version });
            }
            "running" => {
                observed.running = true;
                observed.pid = rest.trim().parse().ok();
            }
            "health" => {
                observed.healthy = true;
                let h = serde_json::from_str::<rbee_proto::hive::HiveHealth>(rest)
                    .map_err(|e| ObserveError::Health { reason: e.to_string(), shown: shown(rest) })?;
                observed.running_version = Some(h.version);
                observed.running_sha256 = Some(h.sha256);
                observed.link = h.link.map(Box::new);
            }
            "unhealthy" => observed.healthy = false,
            "supervisor" => observed.supervisor = Supervisor::parse(rest.trim()),
            "end" => complete = true,
            _ => {}
        }
    }
    if !complete {
        return Err(ObserveError::CutShort);
    }
    let hive_path = Layout::hive_binary();
    let worker_dir = format!("{}/{WORKER_PREFIX}", Layout::WORKERS_DIR);
    for (installed, path) in files {
        if path == hive_path {
            observed.hive_binary = Some(installed);
        } else if let Some(kind) = path.strip_prefix(&worker_dir) {
            observed.workers.insert(kind.to_owned(), installed);
        }
    }
    Ok(observed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{CommandOutput, LocalTransport, MockTransport, TransportError};

    fn digest(c: char) -> rbee_proto::Sha256 {
        rbee_proto::Sha256::parse(&c.to_string().repeat(64)).unwrap()
    }

    #[test]
    fn parses_a_full_observation() {
        let (a, b) = (digest('a'), digest('b'));
        let text = format!(
            "rbee-observe 1\nfile {a} .local/bin/rbee-hive 0.1.0\nfile {b} .local/share/rbee/workers/rbee-worker-vllm\n\
             running 42\nhealth {{\"status\":\"ok\",\"version\":\"0.1.0\",\"sha256\":\"{a}\",\"pid\":42}}\nend\n"
        );
        let o = parse_observation(&text).unwrap();
        assert_eq!(o.hive_binary, Some(Installed { sha256: a.clone(), version: Some("0.1.0".into()) }));
        assert_eq!(o.workers["vllm"], Installed { sha256: b, version: None });
        assert!(o.running && o.healthy);
        assert_eq!(o.pid, Some(42));
        assert_eq!(o.running_sha256, Some(a));
    }

    #[test]
    fn engines_and_gpus_are_observed() {
        let text = "rbee-observe 1\nengine llama-cpp abc ok b11434 .local/share/rbee/engines/llama-cpp/abc/bin/llama-server\n\
                    engine vllm pip-1 missing 0.6.3 /opt/my venv/bin/vllm\nengine comfyui p altered unknown /srv/main.py\ngpu\nend\n";
        let o = parse_observation(text).unwrap();
        assert!(o.gpu);
        assert_eq!(o.engines["llama-cpp"].version, "b11434");
        assert_eq!(o.engines["llama-cpp"].problem, None);
        assert_eq!(o.engines["vllm"].program, "/opt/my venv/bin/vllm");
        assert_eq!(o.engines["vllm"].problem, Some(EngineProblem::Missing));
        assert_eq!(o.engines["comfyui"].problem, Some(EngineProblem::Altered));
        for bad in ["engine llama-cpp abc", "engine llama-cpp abc broken b1 /x"] {
            let text = format!("rbee-observe 1\n{bad}\nend\n");
            assert!(matches!(parse_observation(&text), Err(ObserveError::BadLine(_))), "{bad}");
        }
    }

    /// The script itself: a recorded engine is ok, then missing once its program is deleted,
    /// then altered when a program with another digest (but the recorded path) is there.
    #[tokio::test]
    async fn the_script_checks_the_recorded_engine() {
        let dir = tempfile::tempdir().unwrap();
        let engines = dir.path().join(".local/share/rbee/engines/llama-cpp");
        std::fs::create_dir_all(engines.join("abc/bin")).unwrap();
        let program = engines.join("abc/bin/llama-server");
        std::fs::write(&program, b"server").unwrap();
        let st = std::process::Command::new("stat").args(["-c", "%s %.9Y %.9Z %i"]).arg(&program).output().unwrap();
        let sha = crate::artifact::sha256_of(b"server");
        let rel = ".local/share/rbee/engines/llama-cpp/abc/bin/llama-server";
        let record = format!("abc\t{sha}\t{}\tb7\t{rel}\n", String::from_utf8(st.stdout).unwrap().trim());
        std::fs::write(engines.join("current"), record).unwrap();
        let t = LocalTransport::new(dir.path());
        let observe_engine = || async {
            let HiveState::Reachable(o) = observe(&t, 1, Duration::from_secs(5)).await else { panic!() };
            o.engines["llama-cpp"].clone()
        };
        let e = observe_engine().await;
        assert_eq!((e.id.as_str(), e.version.as_str(), e.program.as_str(), e.problem), ("abc", "b7", rel, None));
        std::fs::write(&program, b"server, but another one").unwrap();
        assert_eq!(observe_engine().await.problem, Some(EngineProblem::Altered));
        std::fs::remove_file(&program).unwrap();
        assert_eq!(observe_engine().await.problem, Some(EngineProblem::Missing));
    }

    #[test]
    fn truncated_output_is_an_error() {
        let text = format!("rbee-observe 1\nfile {} .local/bin/rbee-hive\n", digest('a'));
        assert_eq!(parse_observation(&text), Err(ObserveError::CutShort));
        assert!(parse_observation("Welcome to my server!\n").is_err());
    }

    /// A non-ASCII digest in an install record made `rbee status` panic while shortening it
    /// (and the queen's job hang): it is an error that names the record now.
    #[test]
    fn a_non_ascii_or_non_hex_digest_is_an_error_not_a_panic() {
        for bad in ["é".repeat(32), "ab".into(), "z".repeat(64), "../../../etc/passwd".into()] {
            let text = format!("rbee-observe 1\nfile {bad} .local/bin/rbee-hive 0.1.0\nend\n");
            let err = parse_observation(&text).unwrap_err();
            assert!(matches!(err, ObserveError::InvalidDigest { .. }), "{err:?}");
            assert!(err.to_string().contains(".local/state/rbee/installed/rbee-hive"), "{err}");
        }
        let health = format!(
            "rbee-observe 1\nrunning 4\nhealth {{\"status\":\"ok\",\"version\":\"x\",\"sha256\":\"{}\",\"pid\":4}}\nend\n",
            "ü".repeat(40)
        );
        assert!(matches!(parse_observation(&health), Err(ObserveError::Health { .. })));
    }

    /// The same through the real script: a corrupt install record whose stat matches the file
    /// (so the script trusts it) makes the host unreachable with the reason, within the call.
    #[tokio::test]
    async fn a_corrupt_install_record_on_a_host_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join(".local/bin/rbee-hive");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::write(&bin, b"hive").unwrap();
        let st = std::process::Command::new("stat").args(["-c", "%s %.9Y %.9Z %i"]).arg(&bin).output().unwrap();
        let st = String::from_utf8(st.stdout).unwrap();
        let rec = dir.path().join(".local/state/rbee/installed/rbee-hive");
        std::fs::create_dir_all(rec.parent().unwrap()).unwrap();
        std::fs::write(&rec, format!("{} {} 0.1.0\n", "é".repeat(32), st.trim())).unwrap();
        let state = observe(&LocalTransport::new(dir.path()), 1, Duration::from_secs(5)).await;
        let HiveState::Unreachable { reason } = state else { panic!("{state:?}") };
        assert!(reason.contains("not a sha256 digest"), "{reason}");
    }

    #[tokio::test]
    async fn observing_is_one_round_trip() {
        let mock =
            MockTransport::new("h1").on_run("# rbee-step: observe", Ok(CommandOutput::ok("rbee-observe 1\nend\n")));
        let state = observe(&mock, 8600, Duration::from_secs(1)).await;
        assert_eq!(state, HiveState::Reachable(Observed::default()));
        assert_eq!(mock.calls().len(), 1);
        mock.verify().unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_host_says_why() {
        let mock = MockTransport::new("h1").on_run(
            "rbee-observe",
            Err(TransportError::Connect { host: "h1".into(), reason: "connection refused".into() }),
        );
        let HiveState::Unreachable { reason } = observe(&mock, 8600, Duration::from_secs(1)).await else { panic!() };
        assert_eq!(reason, "cannot connect to h1: connection refused");
    }

    #[tokio::test]
    async fn observes_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".local/share/rbee/workers")).unwrap();
        std::fs::write(dir.path().join(".local/share/rbee/workers/rbee-worker-vllm"), b"hello").unwrap();
        let state = observe(&LocalTransport::new(dir.path()), 1, Duration::from_secs(5)).await;
        let HiveState::Reachable(o) = state else { panic!("{state:?}") };
        assert_eq!(o.workers["vllm"].sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert!(!o.running && o.hive_binary.is_none());
        // A home that is not the user's own (a test's) never gets a unit.
        assert_eq!(o.supervisor, Some(Supervisor::Detached));
    }

    #[test]
    fn the_supervisor_is_read() {
        for (line, want) in [
            ("supervisor systemd-system", Some(Supervisor::SystemdSystem)),
            ("supervisor systemd-user", Some(Supervisor::SystemdUser)),
            ("supervisor detached", Some(Supervisor::Detached)),
            ("supervisor upstart", None),
        ] {
            let o = parse_observation(&format!("rbee-observe 1\n{line}\nend\n")).unwrap();
            assert_eq!(o.supervisor, want, "{line}");
        }
    }
}
