//! Finding, starting and stopping the local queen, and following a job's event stream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rbee_core::config::Config;
use rbee_core::package::OperationResult;
use rbee_queen::api::JobEventBody;
use rbee_queen::client::QueenClient;

use crate::Cli;
use crate::progress::Renderer;

/// Where this machine reaches its queen: loopback when it listens on every address.
fn addr(config: &Config) -> SocketAddr {
    let ip =
        if config.queen.bind.is_unspecified() { std::net::IpAddr::from([127, 0, 0, 1]) } else { config.queen.bind };
    SocketAddr::new(ip, config.queen.port)
}

fn pid_file() -> PathBuf {
    rbee_queen::state_dir().join("queen.pid")
}

/// A client of the running queen, or why there is none.
pub(crate) async fn connect(config: &Config) -> Result<QueenClient, String> {
    let token = std::fs::read_to_string(rbee_queen::token_path()).unwrap_or_default();
    let client = QueenClient::new(addr(config), token.trim());
    client.health().await.map_err(|e| e.to_string())?;
    Ok(client)
}

/// The running queen; started first when `[queen] auto_start` allows.
pub(crate) async fn ensure(cli: &Cli, config: &Config) -> Result<QueenClient, String> {
    if let Ok(client) = connect(config).await {
        return Ok(client);
    }
    if !config.queen.auto_start {
        return Err(format!(
            "no queen answers at {} and [queen] auto_start = false: start it with `rbee queen start`, or run with --in-process",
            addr(config)
        ));
    }
    start(cli, config).await?;
    connect(config).await
}

/// Starts `queen-rbee` detached (own session, output to queen.log) unless it runs already.
pub(crate) async fn start(cli: &Cli, config: &Config) -> Result<SocketAddr, String> {
    let addr = addr(config);
    if connect(config).await.is_ok() {
        return Ok(addr);
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let beside = exe.parent().map(|d| d.join("queen-rbee")).filter(|p| p.exists());
    let bin = beside.unwrap_or_else(|| PathBuf::from("queen-rbee"));
    let state = rbee_queen::state_dir();
    std::fs::create_dir_all(&state).map_err(|e| format!("cannot create {}: {e}", state.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.join("queen.log"))
        .map_err(|e| format!("cannot open {}: {e}", state.join("queen.log").display()))?;
    let mut cmd = if std::path::Path::new("/usr/bin/setsid").exists() || std::path::Path::new("/bin/setsid").exists() {
        let mut c = std::process::Command::new("setsid");
        c.arg("-f").arg(&bin);
        c
    } else {
        std::process::Command::new(&bin)
    };
    cmd.arg("--port").arg(config.queen.port.to_string()).arg("--pid-file").arg(pid_file());
    if let Some(dir) = &cli.config {
        cmd.arg("--config").arg(std::path::absolute(dir).unwrap_or_else(|_| dir.clone()));
    }
    use std::os::unix::process::CommandExt;
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .process_group(0);
    cmd.spawn().map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if connect(config).await.is_ok() {
            return Ok(addr);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("queen-rbee did not answer at {addr} within 10s; see {}", state.join("queen.log").display()))
}

/// Stops the queen: SIGTERM, waiting for it to go.
pub(crate) async fn stop(config: &Config) -> Result<String, String> {
    let Ok(pid) = std::fs::read_to_string(pid_file()) else {
        return Ok("queen-rbee is not running".into());
    };
    let pid = pid.trim().to_owned();
    let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if connect(config).await.is_err() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Ok(format!("queen-rbee (pid {pid}) stopped"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("queen-rbee (pid {pid}) did not stop within 10s"))
}

/// Whether the queen runs, in words; `Err` when it does not.
pub(crate) async fn status(config: &Config) -> Result<String, String> {
    let client = connect(config).await?;
    let health = client.health().await.map_err(|e| e.to_string())?;
    let jobs = client.jobs().await.map_err(|e| e.to_string())?;
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
) -> Result<OperationResult, String> {
    let json = matches!(renderer, Renderer::Json);
    let stream = client.stream(job_id, |event| match &event.body {
        JobEventBody::Sync { event } => renderer.event(event.clone()),
        other => crate::commands::log_line(json, other),
    });
    tokio::pin!(stream);
    let mut cancelled = !cancel_on_ctrl_c;
    let last = loop {
        tokio::select! {
            result = &mut stream => break result.map_err(|e| e.to_string())?,
            _ = tokio::signal::ctrl_c(), if !cancelled => {
                cancelled = true;
                eprintln!("cancelling job {job_id}: no new step will start; waiting for running steps");
                let _ = client.cancel(job_id).await;
            }
        }
    };
    match last.body {
        JobEventBody::Result { result, .. } => Ok(result),
        _ => Err("the job ended without a result".into()),
    }
}
