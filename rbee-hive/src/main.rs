use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// rbee-hive: the daemon rbee runs on every host.
#[derive(Debug, Parser)]
#[command(name = "rbee-hive", version, args_conflicts_with_subcommands = true)]
struct Args {
    /// Port to listen on.
    #[arg(long, default_value_t = 8600)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Pid file to write once listening.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// This hive's alias, for heartbeats.
    #[arg(long)]
    alias: Option<String>,
    /// How log lines are written: `text` or `json` (one object a line). `RUST_LOG` filters them
    /// (default `info`); the hive passes its format on to its workers.
    #[arg(long, env = rbee_log::FORMAT_VAR, default_value_t = rbee_log::LogFormat::Text)]
    log_format: rbee_log::LogFormat,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Ask the hive on this host for /health; prints its JSON, exit 1 if it does not answer.
    Probe {
        /// Its port.
        #[arg(long, default_value_t = 8600)]
        port: u16,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    // `probe` is one request, run by scripts on every host of a sync: a runtime on this thread
    // alone (no worker threads to start and park) costs the host about half the CPU.
    let runtime = match args.command {
        Some(Cmd::Probe { .. }) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(e) => {
            eprintln!("rbee-hive: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> ExitCode {
    match args.command {
        Some(Cmd::Probe { port, timeout_ms }) => {
            match rbee_hive::probe(port, Duration::from_millis(timeout_ms)).await {
                Ok(body) => {
                    println!("{body}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => {
            rbee_log::init(args.log_format);
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
            let config = rbee_hive::HiveConfig {
                addr: SocketAddr::new(args.bind, args.port),
                pid_file: args.pid_file,
                alias: args.alias,
                link: rbee_hive::load_link(&home.join(rbee_core::layout::Layout::STATE_DIR)),
                home: home.clone(),
                worker_heartbeat_ms: std::env::var("RBEE_WORKER_HEARTBEAT_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(2000),
            };
            // On a runtime worker rather than the thread blocking on `main`, so that each
            // accepted connection does not wake a second thread.
            let served = tokio::spawn(rbee_hive::serve(config, shutdown_signal())).await.unwrap_or_else(|e| {
                Err(rbee_hive::HiveError::Serve(std::io::Error::other(format!("the server task ended: {e}"))))
            });
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let mut msg = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        msg.push_str(&format!(": {s}"));
                        src = s.source();
                    }
                    tracing::error!("{msg}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
