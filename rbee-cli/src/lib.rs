//! The `rbee` command line: parses arguments, calls rbee-core, renders results.
//!
//! Exit codes (all commands): 0 success / in sync; 1 error (nothing or not everything could
//! be checked or done); 2 drift or changes pending; 3 partial failure.
#![warn(missing_docs)]

mod commands;
mod exit;
mod migrate;
mod progress;
mod queen;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use exit::Exit;

/// rbee: make a fleet of GPU hosts match hives.conf.
#[derive(Debug, Parser)]
#[command(name = "rbee", version, about, propagate_version = true)]
pub struct Cli {
    /// Config directory (holding rbee.conf and hives.conf) or a hives.conf file.
    /// Default: $RBEE_CONFIG_DIR, else ~/.config/rbee.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Run the package manager in this process instead of in the queen.
    #[arg(long, global = true, env = "RBEE_IN_PROCESS", value_parser = clap::builder::FalseyValueParser::new())]
    pub in_process: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make every declared host match the config.
    Sync(SyncArgs),
    /// Show drift between the config and the hosts (exit 0 in sync, 2 drift, 1 error).
    Status {
        /// Also list every installed file with its digest.
        #[arg(long)]
        verbose: bool,
        /// Only this hive (repeatable).
        #[arg(long = "hive", value_name = "ALIAS")]
        hives: Vec<String>,
    },
    /// Install what the config declares (never removes anything).
    Install {
        /// Only this hive.
        #[arg(long, value_name = "ALIAS")]
        hive: Option<String>,
        /// Reinstall even what is in sync.
        #[arg(long)]
        force: bool,
    },
    /// Stop hives and remove what rbee installed.
    Uninstall {
        /// Only this hive.
        #[arg(long, value_name = "ALIAS")]
        hive: Option<String>,
        /// Also remove rbee's state and data on the host (logs, manifest, models).
        #[arg(long)]
        purge: bool,
    },
    /// Return hives to the binaries their last upgrade replaced (kept on each host), restart
    /// them and wait for /health. Pin the version in hives.conf, or the next sync upgrades again.
    Rollback {
        /// Only this hive (repeatable).
        #[arg(long = "hive", value_name = "ALIAS")]
        hives: Vec<String>,
    },
    /// Check the config files; lists every problem with file:line:column.
    Validate,
    /// The local queen daemon (runs the package manager; started automatically when needed).
    Queen {
        /// What to do.
        #[command(subcommand)]
        what: QueenCommand,
    },
    /// Write a hives.conf for the fleet as it runs now (hives the queen knows, with what
    /// each has installed).
    Migrate {
        /// Where to write it.
        #[arg(long)]
        output: PathBuf,
        /// Overwrite it if it exists.
        #[arg(long)]
        force: bool,
        /// Also add an entry per `Host` of ~/.ssh/config.
        #[arg(long)]
        from_ssh_config: bool,
    },
    /// Hives known to the queen from their heartbeats.
    Hive {
        /// What to show.
        #[command(subcommand)]
        what: HiveCommand,
    },
    /// Declared models the queen keeps served (`[[deployment]]` in hives.conf).
    Deployment {
        /// What to show or do.
        #[command(subcommand)]
        what: DeploymentCommand,
    },
    /// Worker processes on a hive (through the queen).
    Worker {
        /// What to do.
        #[command(subcommand)]
        what: WorkerCommand,
    },
    /// Models on a hive (through the queen).
    Model {
        /// What to do.
        #[command(subcommand)]
        what: ModelCommand,
    },
    /// Run a prompt on a ready worker serving the model; the answer streams to stdout.
    Infer {
        /// The model (a worker's model path, or its file name).
        #[arg(long)]
        model: String,
        /// Only this hive.
        #[arg(long, value_name = "ALIAS")]
        hive: Option<String>,
        /// Token limit.
        #[arg(long)]
        max_tokens: Option<u32>,
        /// The prompt.
        prompt: String,
    },
    /// The queen's recent jobs; with a job id, follow that job to its end and show its result.
    Jobs {
        /// A job id from `rbee jobs`.
        job_id: Option<String>,
    },
    /// A hive's log, or one of its workers' logs, read through the queen (no SSH needed).
    Logs {
        /// The hive.
        #[arg(long, value_name = "ALIAS")]
        hive: String,
        /// A worker's log (its id, from `rbee worker list`) instead of the hive's own.
        #[arg(long, value_name = "ID")]
        worker: Option<String>,
        /// How many of the last lines to show first (default 100).
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Keep showing new lines as they are written, until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Removed: declare the hive in hives.conf, then run `rbee sync`.
    #[command(hide = true)]
    InstallHive {
        /// Ignored.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// Removed: declare the worker in hives.conf, then run `rbee sync`.
    #[command(hide = true)]
    InstallWorker {
        /// Ignored.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// Config helpers.
    Config {
        /// What to show.
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// rbee.lock (beside hives.conf): the version and sha256 each artifact's `latest`
    /// resolved to; `rbee sync` keeps to it. Commit it next to hives.conf.
    Lock {
        /// What to do.
        #[command(subcommand)]
        what: LockCommand,
    },
    /// Print a shell completion script for rbee to stdout.
    ///
    /// bash: `rbee completions bash > ~/.local/share/bash-completion/completions/rbee`
    ///
    /// zsh: `rbee completions zsh > ~/.local/share/zsh/site-functions/_rbee` (a directory on
    /// $fpath, before compinit runs)
    ///
    /// fish: `rbee completions fish > ~/.config/fish/completions/rbee.fish`
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages: rbee.1 and one per subcommand (rbee-sync.1, ...).
    ///
    /// With --dir, every page is written there (`rbee man --dir ~/.local/share/man/man1`, then
    /// `man rbee-sync`); without it, rbee.1 is printed to stdout.
    Man {
        /// The directory to write the pages into (created if missing), e.g.
        /// ~/.local/share/man/man1.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `rbee lock ...`.
#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Resolve every artifact from the source again (a new `latest` is taken) and write
    /// rbee.lock; the next `rbee sync` installs what it pins.
    Update {
        /// Only the artifacts this hive uses. Pins are shared: the hive binary (rbee-hive), and
        /// a worker type at the same requested version, change for every hive that uses them.
        #[arg(long, value_name = "ALIAS")]
        hive: Option<String>,
    },
}

/// `rbee config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the JSON Schema of rbee.conf and hives.conf.
    Schema,
}

/// `rbee deployment ...`.
#[derive(Debug, Subcommand)]
pub enum DeploymentCommand {
    /// Every deployment: ready replicas of declared, phase (exit 2 when one is not ready).
    List,
    /// One deployment: its replicas, why hives were chosen or rejected, its last failure.
    Get {
        /// The deployment.
        name: String,
    },
    /// Go back to the previous revision (rolled out one replica at a time).
    Rollback {
        /// The deployment.
        name: String,
    },
}

/// `rbee hive ...`.
#[derive(Debug, Subcommand)]
pub enum HiveCommand {
    /// Every hive that sent a heartbeat: fresh, or stale after three missed beats.
    List,
    /// One hive's registry entry.
    Get {
        /// The hive.
        alias: String,
    },
    /// Start one hive's daemon (it must be installed: `rbee sync`).
    Start {
        /// The hive.
        alias: String,
    },
    /// Stop one hive's daemon (SIGTERM, then SIGKILL after a grace period).
    Stop {
        /// The hive.
        alias: String,
    },
    /// One hive's drift and health, observed on the host.
    Status {
        /// The hive.
        alias: String,
    },
    /// One hive's CPU cores, RAM and GPUs, asked of the hive through the queen.
    Capabilities {
        /// The hive.
        alias: String,
    },
}

/// `rbee worker ...`.
#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// Start a worker process and wait until it is ready.
    Spawn {
        /// The hive.
        #[arg(long, value_name = "ALIAS")]
        hive: String,
        /// Worker type (installed on the hive by `rbee sync`).
        #[arg(long = "type", value_name = "TYPE")]
        worker_type: String,
        /// Model: a name from `rbee model list`, or a path on the host.
        #[arg(long)]
        model: String,
        /// `cpu` or `cuda:N`.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Seconds to wait for its first heartbeat.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// A hive's worker processes.
    List {
        /// The hive.
        #[arg(long, value_name = "ALIAS")]
        hive: String,
    },
    /// One worker process.
    Get {
        /// The hive.
        #[arg(long, value_name = "ALIAS")]
        hive: String,
        /// The worker id.
        id: String,
    },
    /// Stop a worker (SIGTERM, then SIGKILL after the grace period); clears an exited one.
    Delete {
        /// The hive.
        #[arg(long, value_name = "ALIAS")]
        hive: String,
        /// The worker id.
        id: String,
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(long, default_value_t = 10)]
        grace: u64,
    },
    /// Make the hive re-read its worker catalog (a sync through the queen does this itself).
    Refresh {
        /// The hive.
        #[arg(long, value_name = "ALIAS")]
        hive: String,
    },
}

/// `rbee model ...`.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download a model onto a hive (resumes an interrupted download; atomic).
    Download {
        /// The hive.
        #[arg(long, value_name = "ALIAS")]
        hive: String,
        /// http(s) URL, or an absolute path on the hive's host.
        source: String,
        /// Expected sha256 (64 hex characters): a mismatch deletes the download.
        #[arg(long)]
        sha256: Option<rbee_core::Sha256>,
        /// File name (default: the source's last path segment).
        #[arg(long)]
        name: Option<String>,
    },
    /// Models on a hive.
    List {
        /// The hive.
        #[arg(long, value_name = "ALIAS")]
        hive: String,
    },
    /// One model.
    Get {
        /// The hive.
        #[arg(long, value_name = "ALIAS")]
        hive: String,
        /// Its name.
        name: String,
    },
    /// Delete a model.
    Delete {
        /// The hive.
        #[arg(long, value_name = "ALIAS")]
        hive: String,
        /// Its name.
        name: String,
    },
}

/// `rbee queen ...`.
#[derive(Debug, Subcommand)]
pub enum QueenCommand {
    /// Start the queen (detached) if it is not running.
    Start,
    /// Stop the queen.
    Stop,
    /// Is the queen running, and with how many jobs.
    Status,
    /// Same as start: make sure the queen runs.
    Ensure,
    /// Replace every hive's credential (a new key): hives are refused until `rbee sync`
    /// links them again, which keeps their workers running.
    RotateCredentials,
}

/// `rbee sync` flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SyncArgs {
    /// Show the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only this hive (repeatable).
    #[arg(long = "hive", value_name = "ALIAS")]
    pub hives: Vec<String>,
    /// Reinstall every binary and restart every hive.
    #[arg(long)]
    pub force: bool,
    /// Remove workers that are installed but not declared.
    #[arg(long)]
    pub remove_extra: bool,
    /// Only the hives that failed or were unreachable in the last sync.
    #[arg(long)]
    pub retry_failed: bool,
    /// At most N running hives restarting at once during an upgrade (overrides
    /// `[package] max_unavailable`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: Option<u32>,
    /// Install only what rbee.lock pins: an artifact it does not pin (a new worker type, a
    /// new source) is an error, and the lock is left as it is (like `cargo --locked`).
    #[arg(long)]
    pub locked: bool,
}

/// Runs the CLI with these arguments and returns the process exit code.
pub fn main_impl(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Error.into();
        }
    };
    runtime.block_on(commands::run(cli)).into()
}
