use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

/// queen-rbee: runs rbee's package manager as jobs behind an HTTP API.
#[derive(Debug, Parser)]
#[command(name = "queen-rbee", version)]
struct Args {
    /// Port (default: `[queen] port` of rbee.conf, else 8500).
    #[arg(long)]
    port: Option<u16>,
    /// Address to bind (default: `[queen] bind` of rbee.conf, else 127.0.0.1).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Config directory, for the `[queen]` and `[ssh]` settings.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Write this pid file once listening (default: `queen-<port>.pid` in the queen's state
    /// directory).
    #[arg(long)]
    pid_file: Option<std::path::PathBuf>,
    /// How log lines are written: `text` or `json` (one object a line). `RUST_LOG` filters them
    /// (default `info`).
    #[arg(long, env = rbee_log::FORMAT_VAR, default_value_t = rbee_log::LogFormat::Text)]
    log_format: rbee_log::LogFormat,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    rbee_log::init(args.log_format);
    let config = rbee_core::config::load(&rbee_core::config::ConfigFiles::locate(args.config.as_deref())).ok();
    let port = args.port.or(config.as_ref().map(|c| c.queen.port)).unwrap_or(8500);
    let bind = args.bind.or(config.as_ref().map(|c| c.queen.bind)).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let advertise_url = config.as_ref().map(|c| c.queen.advertise_url.clone()).filter(|u| !u.is_empty());
    let token = match rbee_queen::ensure_token(&rbee_queen::token_path()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("cannot create {}: {e}", rbee_queen::token_path().display());
            return ExitCode::FAILURE;
        }
    };
    let queen = rbee_queen::QueenConfig {
        addr: SocketAddr::new(bind, port),
        token,
        connect: Arc::new(|c: &rbee_core::config::Config| {
            Arc::new(rbee_ssh::SshConnector::new(c)) as Arc<dyn rbee_core::fleet::Connector>
        }),
        keepalive: Duration::from_secs(10),
        heartbeat: Duration::from_millis(
            std::env::var("RBEE_HEARTBEAT_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000),
        ),
        max_heartbeats_per_second: config
            .as_ref()
            .map_or(rbee_core::proto::operation::DEFAULT_MAX_HEARTBEATS_PER_SECOND, |c| {
                c.queen.max_heartbeats_per_second
            }),
        advertise_url,
        reschedule_after: Duration::from_millis(
            config.as_ref().map_or(rbee_core::proto::deployment::DEFAULT_RESCHEDULE_AFTER_MS, |c| {
                u64::try_from(c.queen.reschedule_after.as_millis()).unwrap_or(u64::MAX)
            }),
        ),
        state_dir: None,
        metrics_public: config.as_ref().is_some_and(|c| c.queen.metrics_public),
    };
    let heartbeat_ms = u64::try_from(queen.heartbeat.as_millis()).unwrap_or(5000);
    let server = match rbee_queen::bind(queen).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen on {bind}:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pid_file = args.pid_file.clone().unwrap_or_else(|| rbee_queen::state::pid_path(server.addr.port()));
    if let Err(e) = rbee_core::pidfile::write(&pid_file) {
        tracing::warn!("cannot write {}: {e}", pid_file.display());
    }
    tracing::info!(addr = %server.addr, pid = std::process::id(), version = env!("CARGO_PKG_VERSION"), "queen-rbee listening");
    // attached-hive: the queen also runs the hive of its own host, in this process.
    let hive_stop = Arc::new(tokio::sync::Notify::new());
    let attached = config.as_ref().filter(|c| c.queen.mode == rbee_core::config::QueenMode::AttachedHive).map(|c| {
        let alias = c.queen.hive_alias.clone();
        let declared = c.hive(&alias);
        let port = declared.map_or(8600, |h| h.hive_port);
        let home = declared
            .and_then(|h| h.local_home.clone())
            .or_else(|| std::env::var_os("HOME").map(std::path::PathBuf::from))
            .unwrap_or_else(|| "/".into());
        let url = c.queen.advertise_url.clone();
        let url = if url.is_empty() || c.queen.bind.is_unspecified() {
            format!("http://127.0.0.1:{}", server.addr.port())
        } else {
            url
        };
        let hive = rbee_hive::HiveConfig {
            addr: SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port),
            pid_file: None,
            alias: Some(alias.clone()),
            link: Some(rbee_hive::QueenLink {
                url,
                interval_ms: heartbeat_ms,
                metrics_public: c.queen.metrics_public,
                token: server.hive_credential(&alias),
            }),
            home,
            worker_heartbeat_ms: 2000,
        };
        tracing::info!(hive = %alias, "running the attached hive on 127.0.0.1:{port}");
        let stop = hive_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = rbee_hive::serve(hive, async move { stop.notified().await }).await {
                tracing::error!("the attached hive stopped: {e}");
            }
        })
    });
    let shutdown = async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    // On a runtime worker, not on this thread (which only blocks on `main`): accepted
    // connections are then spawned onto the worker that accepted them, instead of each one
    // waking this thread and then a worker (two thread wake-ups per request, most of the
    // queen's CPU under 10,000 hives' heartbeats).
    let result = match tokio::spawn(server.run(shutdown)).await {
        Ok(result) => result,
        Err(e) => Err(std::io::Error::other(format!("the server task ended: {e}"))),
    };
    if let Some(hive) = attached {
        hive_stop.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(5), hive).await;
    }
    rbee_core::pidfile::remove_if_own(&pid_file);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
