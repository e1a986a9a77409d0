//! Finding, starting and stopping the local queen (all of `rbee queen ...`), and following a
//! job's event stream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rbee_core::config::Config;
use rbee_core::package::OperationResult;
use rbee_queen::api::JobEventBody;
use rbee_queen::client::{ClientError, QueenClient};

use crate::progress::Renderer;
use crate::{Cli, QueenCommand};

/// Where this machine reaches its queen: loopback when it listens on every address.
fn addr(config: &Config) -> SocketAddr {
    let ip =
        if config.queen.bind.is_unspecified() { std::net::IpAddr::from([127, 0, 0, 1]) } else { config.queen.bind };
    SocketAddr::new(ip, config.queen.port)
}

fn pid_file(config: &Config) -> PathBuf {
    rbee_queen::state::pid_path(config.queen.port)
}

/// Whether `pid` is a `queen-rbee` process serving `port` (or started without `--port`), by
/// its executable and arguments in `/proc`: a pid file may be stale, and its pid reused.
fn is_queen_process(pid: u32, port: u16) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else { return false };
    let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name != "queen-rbee" && name != "queen-rbee (deleted)" {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    match args.iter().position(|a| *a == b"--port") {
        Some(i) => args.get(i + 1).is_some_and(|p| *p == port.to_string().as_bytes()),
        None => true,
    }
}

/// Why the local queen could not be reached, started, stopped or followed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueenError {
    /// A request to it failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// None runs, and the config says not to start one.
    #[error(
        "no queen answers at {addr} and [queen] auto_start = false: start it with `rbee queen start`, or run with --in-process"
    )]
    NotStarted {
        /// Where it was looked for.
        addr: SocketAddr,
    },
    /// A file or directory of the queen's could not be used.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// create, open, …
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Started, but it did not answer in time.
    #[error("queen-rbee did not answer at {addr} within 10s; see {}", log.display())]
    StartTimeout {
        /// Its address.
        addr: SocketAddr,
        /// Its log.
        log: PathBuf,
    },
    /// A pid no process of ours may signal (0, 1, negative).
    #[error("refusing to signal pid {0}")]
    BadPid(u32),
    /// Signalling it failed.
    #[error("cannot stop queen-rbee (pid {pid}): {source}")]
    Signal {
        /// Its pid.
        pid: u32,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// It did not exit in time.
    #[error("queen-rbee (pid {0}) did not stop within 10s")]
    StopTimeout(u32),
    /// The job's stream ended before its result.
    #[error("the job ended without a result")]
    NoResult,
}

/// A client of the running queen, or why there is none.
pub(crate) async fn connect(config: &Config) -> Result<QueenClient, QueenError> {
    // A queen started by an earlier rbee keeps its token where queens used to keep it.
    let token = std::fs::read_to_string(rbee_queen::token_path())
        .or_else(|_| std::fs::read_to_string(rbee_core::layout::legacy_queen_token()))
        .unwrap_or_default();
    let client = QueenClient::new(addr(config), token.trim());
    client.health().await?;
    Ok(client)
}

/// The running queen; started first when `[queen] auto_start` allows.
pub(crate) async fn ensure(cli: &Cli, config: &Config) -> Result<QueenClient, QueenError> {
    if let Ok(client) = connect(config).await {
        return Ok(client);
    }
    if !config.queen.auto_start {
        return Err(QueenError::NotStarted { addr: addr(config) });
    }
    start(cli, config).await?;
    connect(config).await
}

/// `rbee queen start|stop|status|ensure`: what happened, in one sentence.
pub(crate) async fn control(cli: &Cli, config: &Config, what: &QueenCommand) -> Result<String, QueenError> {
    match what {
        QueenCommand::Start | QueenCommand::Ensure => {
            let addr = start(cli, config).await?;
            Ok(format!("queen-rbee is running at http://{addr} (token: {})", rbee_queen::token_path().display()))
        }
        QueenCommand::Stop => stop(config).await,
        QueenCommand::Status => status(config).await,
        QueenCommand::RotateCredentials => {
            connect(config).await?.rotate_credentials().await?;
            Ok("hive credentials rotated: run `rbee sync` to link every hive again (their workers keep running)"
                .to_owned())
        }
    }
}

/// Starts `queen-rbee` detached (own session, output to queen.log) unless it runs already.
async fn start(cli: &Cli, config: &Config) -> Result<SocketAddr, QueenError> {
    let addr = addr(config);
    if connect(config).await.is_ok() {
        return Ok(addr);
    }
    let exe = std::env::current_exe().map_err(|source| QueenError::Io {
        what: "find",
        path: "the running rbee".into(),
        source,
    })?;
    let beside = exe.parent().map(|d| d.join("queen-rbee")).filter(|p| p.exists());
    let bin = beside.unwrap_or_else(|| PathBuf::from("queen-rbee"));
    let state = rbee_queen::state_dir();
    let log_path = rbee_queen::state::log_path();
    std::fs::create_dir_all(&state).map_err(|source| QueenError::Io { what: "create", path: state.clone(), source })?;
    let io = |source| QueenError::Io { what: "open", path: log_path.clone(), source };
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io)?;
    let log_err = log.try_clone().map_err(io)?;
    let mut cmd = if std::path::Path::new("/usr/bin/setsid").exists() || std::path::Path::new("/bin/setsid").exists() {
        let mut c = std::process::Command::new("setsid");
        c.arg("-f").arg(&bin);
        c
    } else {
        std::process::Command::new(&bin)
    };
    cmd.arg("--port").arg(config.queen.port.to_string()).arg("--pid-file").arg(pid_file(config));
    if let Some(dir) = &cli.config {
        cmd.arg("--config").arg(std::path::absolute(dir).unwrap_or_else(|_| dir.clone()));
    }
    use std::os::unix::process::CommandExt;
    cmd.stdin(std::process::Stdio::null()).stdout(log).stderr(log_err).process_group(0);
    cmd.spawn().map_err(|source| QueenError::Io { what: "start", path: bin.clone(), source })?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if connect(config).await.is_ok() {
            return Ok(addr);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(QueenError::StartTimeout { addr, log: log_path })
}

/// Stops this config's queen: the process that answers `/health` on its address (by the pid
/// it reports), or else the one its pid file names if `/proc` shows it is `queen-rbee` for that
/// port. Never a process that is not that queen: a stale pid file is removed, not obeyed.
async fn stop(config: &Config) -> Result<String, QueenError> {
    let path = pid_file(config);
    let answering = QueenClient::new(addr(config), "").health().await.ok().map(|h| h.pid);
    let recorded = rbee_core::pidfile::read(&path);
    let pid = match (answering, recorded) {
        (Some(pid), _) => pid,
        (None, Some(pid)) if is_queen_process(pid, config.queen.port) => pid,
        (None, _) => {
            if path.exists() {
                let _ = std::fs::remove_file(&path);
            }
            return Ok("queen-rbee is not running".into());
        }
    };
    let target = i32::try_from(pid).ok().filter(|p| *p > 1).ok_or(QueenError::BadPid(pid))?;
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    kill(Pid::from_raw(target), Signal::SIGTERM).map_err(|source| QueenError::Signal { pid, source })?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if connect(config).await.is_err() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            if rbee_core::pidfile::read(&path) == Some(pid) {
                let _ = std::fs::remove_file(&path);
            }
            return Ok(format!("queen-rbee (pid {pid}) stopped"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(QueenError::StopTimeout(pid))
}

/// Whether the queen runs, in words; `Err` when it does not.
async fn status(config: &Config) -> Result<String, QueenError> {
    let client = connect(config).await?;
    let health = client.health().await?;
    let jobs = client.jobs().await?;
    let running = jobs.iter().filter(|j| j.state == "running").count();
    Ok(format!(
        "queen-rbee {} is running at http://{} (pid {}); {} jobs, {running} running",
        health.version,
        addr(config),
        health.pid,
        jobs.len()
    ))
}

/// Streams a job to the renderer until its result. With `cancel_on_ctrl_c`, Ctrl-C asks the
/// queen to cancel and keeps following until the job ends cleanly.
pub(crate) async fn follow(
    client: &QueenClient,
    job_id: &str,
    renderer: &Renderer,
    cancel_on_ctrl_c: bool,
) -> Result<OperationResult, QueenError> {
    let json = matches!(renderer, Renderer::Json);
    let stream = client.stream(job_id, |event| match &event.body {
        JobEventBody::Sync { event } => renderer.event(event.clone()),
        other => crate::render::log_line(json, other),
    });
    tokio::pin!(stream);
    let mut cancelled = !cancel_on_ctrl_c;
    let last = loop {
        tokio::select! {
            result = &mut stream => break result?,
            _ = tokio::signal::ctrl_c(), if !cancelled => {
                cancelled = true;
                crate::render::say_err!("cancelling job {job_id}: no new step will start; waiting for running steps");
                let _ = client.cancel(job_id).await;
            }
        }
    };
    match last.body {
        JobEventBody::Result { result, .. } => Ok(result),
        _ => Err(QueenError::NoResult),
    }
}
