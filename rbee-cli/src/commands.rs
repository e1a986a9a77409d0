//! One function per subcommand. Package operations become an [`Operation`] that runs in the
//! queen (started when needed) or, with `--in-process`, right here; both give the same
//! events and the same [`OperationResult`], rendered by the same code.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rbee_core::config::{self, Config, ConfigError, ConfigFiles};
use rbee_core::execute::{HiveOutcome, InstallFault, SyncReport};
use rbee_core::fleet::Connector;
use rbee_core::operation::Operation;
use rbee_core::package::{self, DriftState, OperationResult, RunContext, StatusReport, SyncOutcome};
use rbee_queen::api::JobEventBody;
use rbee_ssh::SshConnector;

use crate::output::{Exit, error};
use crate::progress::{Renderer, mib};
use crate::queen;
use crate::{Cli, Command, ConfigCommand, HiveCommand, ModelCommand, QueenCommand, SyncArgs, WorkerCommand};

pub(crate) async fn run(cli: Cli) -> Exit {
    match &cli.command {
        Command::Validate => validate(&cli),
        Command::Config { what: ConfigCommand::Schema } => {
            println!("{}", serde_json::to_string_pretty(&config::json_schema()).unwrap_or_default());
            Exit::Ok
        }
        Command::Sync(args) => sync(&cli, args).await,
        Command::Install { hive, force } => {
            let op =
                Operation::PackageInstall { config_path: config_path(&cli), force: *force, hive_alias: hive.clone() };
            operation(&cli, op, false).await
        }
        Command::Status { verbose, hives } => {
            let op = Operation::PackageStatus {
                config_path: config_path(&cli),
                verbose: *verbose,
                hive_aliases: hives.clone(),
            };
            operation(&cli, op, *verbose).await
        }
        Command::Uninstall { hive, purge } => {
            let op =
                Operation::PackageUninstall { config_path: config_path(&cli), hive_alias: hive.clone(), purge: *purge };
            operation(&cli, op, false).await
        }
        Command::Queen { what } => queen_command(&cli, what).await,
        Command::Jobs { job_id } => jobs(&cli, job_id.as_deref()).await,
        Command::Hive { what: HiveCommand::List } => hive_list(&cli, None).await,
        Command::Hive { what: HiveCommand::Get { alias } } => hive_list(&cli, Some(alias)).await,
        Command::Hive { what: HiveCommand::Capabilities { alias } } => hive_capabilities(&cli, alias).await,
        Command::Hive { what: HiveCommand::Start { alias } } => {
            operation(&cli, Operation::HiveStart { alias: alias.clone(), config_path: config_path(&cli) }, false).await
        }
        Command::Hive { what: HiveCommand::Stop { alias } } => {
            operation(&cli, Operation::HiveStop { alias: alias.clone(), config_path: config_path(&cli) }, false).await
        }
        Command::Hive { what: HiveCommand::Status { alias } } => {
            let op = Operation::PackageStatus {
                config_path: config_path(&cli),
                verbose: true,
                hive_aliases: vec![alias.clone()],
            };
            operation(&cli, op, true).await
        }
        Command::Worker { what } => {
            let op = match what {
                WorkerCommand::Spawn { hive, worker_type, model, device, timeout } => Operation::WorkerSpawn {
                    hive_alias: hive.clone(),
                    worker_type: worker_type.clone(),
                    model: model.clone(),
                    device: device.clone(),
                    ready_timeout_ms: Some(timeout.saturating_mul(1000)),
                },
                WorkerCommand::List { hive } => Operation::WorkerProcessList { hive_alias: hive.clone() },
                WorkerCommand::Get { hive, id } => {
                    Operation::WorkerProcessGet { hive_alias: hive.clone(), worker_id: id.clone() }
                }
                WorkerCommand::Delete { hive, id, grace } => Operation::WorkerProcessDelete {
                    hive_alias: hive.clone(),
                    worker_id: id.clone(),
                    grace_ms: Some(grace.saturating_mul(1000)),
                },
                WorkerCommand::Refresh { hive } => Operation::WorkerCatalogRefresh { hive_alias: hive.clone() },
            };
            operation(&cli, op, false).await
        }
        Command::Model { what } => {
            let op = match what {
                ModelCommand::Download { hive, source, sha256, name } => Operation::ModelDownload {
                    hive_alias: hive.clone(),
                    source: source.clone(),
                    sha256: sha256.clone(),
                    name: name.clone(),
                },
                ModelCommand::List { hive } => Operation::ModelList { hive_alias: hive.clone() },
                ModelCommand::Get { hive, name } => {
                    Operation::ModelGet { hive_alias: hive.clone(), name: name.clone() }
                }
                ModelCommand::Delete { hive, name } => {
                    Operation::ModelDelete { hive_alias: hive.clone(), name: name.clone() }
                }
            };
            operation(&cli, op, false).await
        }
        Command::Infer { model, hive, max_tokens, prompt } => {
            let op = Operation::Infer {
                hive_alias: hive.clone(),
                model: model.clone(),
                prompt: prompt.clone(),
                max_tokens: *max_tokens,
            };
            operation(&cli, op, false).await
        }
        Command::Migrate { output, force, from_ssh_config } => migrate(&cli, output, *force, *from_ssh_config).await,
        Command::InstallHive { .. } => removed(&cli, &Operation::HiveInstall { alias: None }),
        Command::InstallWorker { .. } => removed(&cli, &Operation::WorkerDownload { worker_type: None }),
    }
}

/// The imperative commands rbee no longer has: say what to do instead, exit non-zero.
fn removed(cli: &Cli, op: &Operation) -> Exit {
    let message = op.check_supported().err().map(|r| r.to_string()).unwrap_or_default();
    error(cli.json, &message)
}

/// The config location as an absolute path, so the queen (another process, another working
/// directory) reads the same files.
fn config_path(cli: &Cli) -> Option<PathBuf> {
    let files = ConfigFiles::locate(cli.config.as_deref());
    let dir = files.hives_conf.parent().map(Path::to_path_buf).unwrap_or_default();
    let abs = std::path::absolute(&dir).unwrap_or(dir);
    if files.hives_conf.file_name().is_some_and(|n| n != config::HIVES_CONF) {
        return Some(std::path::absolute(&files.hives_conf).unwrap_or(files.hives_conf));
    }
    Some(abs)
}

pub(crate) fn load(cli: &Cli) -> Result<Config, Exit> {
    config::load(&ConfigFiles::locate(cli.config.as_deref())).map_err(|e| report_config_error(cli.json, &e))
}

fn report_config_error(json: bool, e: &ConfigError) -> Exit {
    match e {
        ConfigError::Invalid(diags) => print_diagnostics(json, diags),
        other => error(json, &other.to_string()),
    }
}

fn print_diagnostics(json: bool, diags: &[config::Diagnostic]) -> Exit {
    if json {
        println!("{}", serde_json::json!({ "ok": false, "errors": diags }));
    } else {
        for d in diags {
            eprintln!("{d}");
        }
        let n = diags.len();
        eprintln!("error: the config has {n} problem{}", if n == 1 { "" } else { "s" });
    }
    Exit::Error
}

fn validate(cli: &Cli) -> Exit {
    let config = match load(cli) {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    let aliases: Vec<&str> = config.hives.iter().map(|h| h.alias.as_str()).collect();
    if cli.json {
        println!("{}", serde_json::json!({ "ok": true, "hives": aliases }));
    } else {
        let s = if aliases.len() == 1 { "" } else { "s" };
        println!("config is valid: {} hive{s} ({})", aliases.len(), aliases.join(", "));
    }
    Exit::Ok
}

/// Test hooks, honoured in-process only: `RBEE_TEST_FAULT=alias=corrupt-upload,other=stop-before-rename`.
fn faults() -> Result<std::collections::BTreeMap<String, InstallFault>, String> {
    let mut faults = std::collections::BTreeMap::new();
    if let Ok(spec) = std::env::var("RBEE_TEST_FAULT") {
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (alias, fault) = part.split_once('=').ok_or_else(|| format!("RBEE_TEST_FAULT: bad entry {part:?}"))?;
            let fault = match fault {
                "corrupt-upload" => InstallFault::CorruptUpload,
                "stop-before-rename" => InstallFault::StopBeforeRename,
                other => return Err(format!("RBEE_TEST_FAULT: unknown fault {other:?}")),
            };
            faults.insert(alias.to_owned(), fault);
        }
    }
    Ok(faults)
}

async fn sync(cli: &Cli, args: &SyncArgs) -> Exit {
    let mut hives = args.hives.clone();
    if args.retry_failed {
        let failed = match package::last_failed() {
            Ok(f) => f,
            Err(e) => return error(cli.json, &e.to_string()),
        };
        let failed: BTreeSet<String> =
            if hives.is_empty() { failed } else { failed.into_iter().filter(|a| hives.contains(a)).collect() };
        if failed.is_empty() {
            if cli.json {
                println!("{}", serde_json::json!({ "ok": true, "retried": [] }));
            } else {
                println!("The last sync had no failed hives: nothing to retry.");
            }
            return Exit::Ok;
        }
        if !cli.json {
            println!(
                "Retrying the hives that failed last time: {}",
                failed.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        hives = failed.into_iter().collect();
    }
    let op = Operation::PackageSync {
        config_path: config_path(cli),
        dry_run: args.dry_run,
        remove_extra: args.remove_extra,
        force: args.force,
        hive_aliases: hives,
    };
    operation(cli, op, false).await
}

/// Runs a package operation here or in the queen, rendering events and the result.
async fn operation(cli: &Cli, op: Operation, verbose: bool) -> Exit {
    let renderer = Renderer::new(cli.json);
    let result = if cli.in_process && !op.should_forward_to_hive() {
        let ctx = match faults() {
            Ok(faults) => RunContext {
                faults,
                http: Some(Arc::new(rbee_queen::http::HyperGet::default())),
                ..RunContext::default()
            },
            Err(e) => return error(cli.json, &e),
        };
        let connect = |c: &Config| Arc::new(SshConnector::new(c)) as Arc<dyn Connector>;
        let on_event = |e| renderer.event(e);
        package::run_operation(&op, &connect, &ctx, &on_event).await
    } else {
        let config = match load(cli) {
            Ok(c) => c,
            Err(exit) => return exit,
        };
        let client = match queen::ensure(cli, &config).await {
            Ok(c) => c,
            Err(e) => return error(cli.json, &e),
        };
        let submitted = match client.submit(&op).await {
            Ok(s) => s,
            Err(e) => return error(cli.json, &e.to_string()),
        };
        match queen::follow(&client, &submitted.job_id, &renderer, true).await {
            Ok(result) => result,
            Err(e) => return error(cli.json, &e),
        }
    };
    render(cli.json, &result, verbose)
}

/// Prints a result as the in-process run would, and gives its exit code.
pub(crate) fn render(json: bool, result: &OperationResult, verbose: bool) -> Exit {
    let exit = match result.exit_code() {
        0 => Exit::Ok,
        2 => Exit::Drift,
        3 => Exit::Partial,
        _ => Exit::Error,
    };
    match result {
        OperationResult::Error { message, diagnostics } => {
            if !diagnostics.is_empty() {
                return print_diagnostics(json, diagnostics);
            }
            return error(json, message);
        }
        OperationResult::Valid { hives } => {
            if json {
                println!("{}", serde_json::json!({ "ok": true, "hives": hives }));
            } else {
                println!("config is valid: {} hives ({})", hives.len(), hives.join(", "));
            }
        }
        OperationResult::Status(report) => {
            if json {
                println!("{}", serde_json::json!({ "exit_code": exit as u8, "hives": report.hives }));
            } else {
                print_status(report, verbose);
            }
        }
        OperationResult::Workers { hive, workers } => {
            if json {
                println!("{}", serde_json::json!({ "hive": hive, "workers": workers }));
            } else if workers.is_empty() {
                println!("{hive}: no worker processes; start one with `rbee worker spawn --hive {hive} ...`");
            } else {
                for w in workers {
                    println!("{}", worker_line(hive, w));
                }
            }
        }
        OperationResult::Worker { hive, worker } => {
            if json {
                println!("{}", serde_json::json!({ "hive": hive, "worker": worker }));
            } else {
                println!("{}", worker_line(hive, worker));
                if let rbee_core::hive_api::WorkerState::Crashed { message, .. } = &worker.state {
                    println!("  {}", message.replace('\n', "\n  "));
                }
            }
        }
        OperationResult::Catalog { hive, workers } => {
            if json {
                println!("{}", serde_json::json!({ "hive": hive, "workers": workers }));
            } else {
                println!(
                    "{hive}: worker catalog: {}",
                    if workers.is_empty() { "empty".into() } else { workers.join(", ") }
                );
            }
        }
        OperationResult::Models { hive, models } => {
            if json {
                println!("{}", serde_json::json!({ "hive": hive, "models": models }));
            } else if models.is_empty() {
                println!("{hive}: no models; download one with `rbee model download --hive {hive} URL`");
            } else {
                for m in models {
                    println!(
                        "{hive}  {:<32} {:>10}  {}",
                        m.name,
                        mib(m.size),
                        m.sha256.as_ref().map_or("-", |d| d.as_str())
                    );
                }
            }
        }
        OperationResult::Model { hive, model } => {
            if json {
                println!("{}", serde_json::json!({ "hive": hive, "model": model }));
            } else {
                println!(
                    "{hive}  {}  {}  sha256 {}",
                    model.name,
                    mib(model.size),
                    model.sha256.as_ref().map_or("-", |d| d.as_str())
                );
                println!("{hive}  {}", model.path);
            }
        }
        OperationResult::Inferred { hive, worker_id, text } => {
            if json {
                println!("{}", serde_json::json!({ "hive": hive, "worker_id": worker_id, "text": text }));
            } else {
                // The tokens were printed as they streamed.
                println!();
            }
        }
        OperationResult::Sync(SyncOutcome { plan, report: None }) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&plan.to_json()).unwrap_or_default());
            } else {
                print!("{plan}");
            }
        }
        OperationResult::Sync(SyncOutcome { report: Some(report), .. }) => {
            if json {
                let line = serde_json::json!({
                    "event": "result",
                    "overall": report.overall(),
                    "exit_code": exit as u8,
                    "bytes_transferred": report.bytes_transferred(),
                    "report": report,
                });
                println!("{line}");
            } else {
                print_report(report);
            }
        }
    }
    exit
}

fn print_report(report: &SyncReport) {
    println!();
    for h in &report.hives {
        let line = match &h.outcome {
            HiveOutcome::Ok { changed: true } => {
                format!("ok ({} steps, {})", h.steps_done.len(), mib(h.bytes_transferred))
            }
            HiveOutcome::Ok { changed: false } => "in sync".to_owned(),
            HiveOutcome::Failed { step, reason } => format!("FAILED at {step}: {reason}"),
            HiveOutcome::Unreachable { reason } => format!("UNREACHABLE: {reason}"),
            HiveOutcome::Skipped => "skipped".to_owned(),
        };
        println!("{}: {line}", h.alias);
    }
    let count = |f: fn(&HiveOutcome) -> bool| report.hives.iter().filter(|h| f(&h.outcome)).count();
    let ok = count(|o| matches!(o, HiveOutcome::Ok { .. }));
    let failed = count(|o| matches!(o, HiveOutcome::Failed { .. }));
    let unreachable = count(|o| matches!(o, HiveOutcome::Unreachable { .. }));
    if report.changed_nothing() && failed == 0 && unreachable == 0 {
        println!("Nothing to do: every hive is in sync ({} transferred).", mib(report.bytes_transferred()));
    } else {
        println!(
            "Sync: {ok} ok, {failed} failed, {unreachable} unreachable; {} transferred.",
            mib(report.bytes_transferred())
        );
    }
    if failed + unreachable > 0 {
        println!("Run `rbee sync --retry-failed` to retry only the hives that failed.");
    }
}

fn print_status(report: &StatusReport, verbose: bool) {
    let width = report.hives.iter().map(|h| h.alias.len()).max().unwrap_or(0);
    for h in &report.hives {
        let health = match (h.healthy, h.pid) {
            (true, Some(pid)) => format!(", healthy (pid {pid})"),
            (false, Some(pid)) => format!(", NOT answering /health (pid {pid})"),
            _ => String::new(),
        };
        match &h.state {
            DriftState::InSync => println!("{:width$}  in sync{health}", h.alias),
            DriftState::NotInstalled => println!("{:width$}  not installed", h.alias),
            DriftState::Skipped => println!("{:width$}  skipped", h.alias),
            DriftState::Unreachable { reason } => println!("{:width$}  unreachable: {reason}", h.alias),
            DriftState::Drift { differences } => {
                println!("{:width$}  drift{health}", h.alias);
                for d in differences {
                    println!("{:width$}    - {d}", "");
                }
            }
        }
        if verbose {
            for (path, what) in &h.files {
                println!("{:width$}    {path}: {what}", "");
            }
        }
    }
    println!();
    println!(
        "{}",
        match report.exit_code() {
            0 => "Everything is in sync.",
            2 => "Drift found: run `rbee sync` to converge.",
            _ => "Some hives could not be checked.",
        }
    );
}

async fn queen_command(cli: &Cli, what: &QueenCommand) -> Exit {
    let config = match load(cli) {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    let result = match what {
        QueenCommand::Start | QueenCommand::Ensure => queen::start(cli, &config).await.map(|addr| {
            format!("queen-rbee is running at http://{addr} (token: {})", rbee_queen::token_path().display())
        }),
        QueenCommand::Stop => queen::stop(&config).await,
        QueenCommand::Status => queen::status(&config).await,
    };
    match result {
        Ok(message) => {
            if cli.json {
                println!("{}", serde_json::json!({ "ok": true, "message": message }));
            } else {
                println!("{message}");
            }
            Exit::Ok
        }
        Err(e) => error(cli.json, &e),
    }
}

async fn migrate(cli: &Cli, output: &Path, force: bool, from_ssh_config: bool) -> Exit {
    // The queen's registry, when there is a config and a queen; ~/.ssh/config alone otherwise.
    let hives = match load(cli) {
        Ok(config) => match queen::connect(&config).await {
            Ok(client) => match client.hives().await {
                Ok(h) => h,
                Err(e) => return error(cli.json, &e.to_string()),
            },
            Err(_) if from_ssh_config => Vec::new(),
            Err(e) => return error(cli.json, &format!("{e}; start it (`rbee queen start`) or use --from-ssh-config")),
        },
        Err(_) if from_ssh_config => Vec::new(),
        Err(exit) => return exit,
    };
    let ssh = from_ssh_config
        .then(|| rbee_ssh::ssh_config::SshConfig::load(&config::home_dir().join(".ssh/config")).unwrap_or_default());
    let text = crate::migrate::render(&hives, ssh.as_ref());
    if let Err(e) = config::parse(None, (output, &text)) {
        return error(cli.json, &format!("the migrated config does not validate (please report this): {e}"));
    }
    if let Err(e) = crate::migrate::write(output, &text, force) {
        return error(cli.json, &e);
    }
    if cli.json {
        println!("{}", serde_json::json!({ "ok": true, "output": output, "hives": hives.len() }));
    } else {
        println!("wrote {} ({} hives from the queen)", output.display(), hives.len());
    }
    Exit::Ok
}

/// The running queen of this config, or the error printed.
async fn running_queen(cli: &Cli) -> Result<rbee_queen::client::QueenClient, Exit> {
    let config = load(cli)?;
    queen::connect(&config).await.map_err(|e| error(cli.json, &e))
}

async fn hive_capabilities(cli: &Cli, alias: &str) -> Exit {
    let client = match running_queen(cli).await {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    match client.hive_capabilities(alias).await {
        Ok(caps) => {
            if cli.json {
                println!("{}", serde_json::to_string(&caps).unwrap_or_default());
            } else {
                let gib = caps.ram_bytes as f64 / (1u64 << 30) as f64;
                println!("{alias}: {} CPU cores, {gib:.1} GiB RAM", caps.cpu_cores);
                if caps.gpus.is_empty() {
                    println!("  no GPU{}", caps.gpu_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default());
                }
                for g in &caps.gpus {
                    println!(
                        "  cuda:{} {} — {} MiB ({} MiB used)",
                        g.index, g.name, g.memory_total_mib, g.memory_used_mib
                    );
                }
            }
            Exit::Ok
        }
        Err(e) => error(cli.json, &e.to_string()),
    }
}

async fn hive_list(cli: &Cli, only: Option<&str>) -> Exit {
    let client = match running_queen(cli).await {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    match client.hives().await {
        Ok(mut hives) => {
            if let Some(alias) = only {
                hives.retain(|h| h.heartbeat.alias == alias);
                if hives.is_empty() {
                    return error(cli.json, &format!("no hive {alias} in the registry: it has not sent a heartbeat"));
                }
            }
            if cli.json {
                println!("{}", serde_json::to_string(&hives).unwrap_or_default());
            } else if hives.is_empty() {
                println!("No hive has sent a heartbeat yet: hives started by a sync through the queen report to it.");
            } else {
                for h in hives {
                    let state = if h.stale { "STALE" } else { "fresh" };
                    let b = &h.heartbeat;
                    println!(
                        "{:<16} {state:<6} last beat {:>6} ms ago  rbee-hive {} (pid {}, port {})  workers: {}",
                        b.alias,
                        h.age_ms,
                        b.version,
                        b.pid,
                        b.port,
                        if b.workers.is_empty() { "-".to_owned() } else { b.workers.join(", ") }
                    );
                    for p in &b.processes {
                        println!("{:<16}   {}", "", worker_line(&b.alias, p));
                    }
                }
            }
            Exit::Ok
        }
        Err(e) => error(cli.json, &e.to_string()),
    }
}

async fn jobs(cli: &Cli, job_id: Option<&str>) -> Exit {
    let client = match running_queen(cli).await {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    match job_id {
        None => match client.jobs().await {
            Ok(jobs) => {
                if cli.json {
                    println!("{}", serde_json::to_string(&jobs).unwrap_or_default());
                } else {
                    for j in jobs {
                        let code = j.exit_code.map_or_else(|| "-".to_owned(), |c| c.to_string());
                        println!("{}  {:<16} {:<9} exit {code}", j.job_id, j.operation, j.state);
                    }
                }
                Exit::Ok
            }
            Err(e) => error(cli.json, &e.to_string()),
        },
        Some(id) => {
            let renderer = Renderer::new(cli.json);
            match queen::follow(&client, id, &renderer, false).await {
                Ok(result) => render(cli.json, &result, false),
                Err(e) => error(cli.json, &e),
            }
        }
    }
}

/// Used by the progress renderer for queen log lines.
pub(crate) fn log_line(json: bool, body: &JobEventBody) {
    use rbee_core::hive_api::HiveEvent;
    use std::io::Write;
    match body {
        JobEventBody::Log { message } => {
            if json {
                println!("{}", serde_json::json!({ "event": "log", "message": message }));
            } else {
                eprintln!("queen: {message}");
            }
        }
        JobEventBody::Hive { hive, event } if json => {
            println!("{}", serde_json::json!({ "event": "hive", "hive": hive, "data": event }));
        }
        JobEventBody::Hive { hive, event: HiveEvent::Log { message } } => eprintln!("{hive}: {message}"),
        JobEventBody::Hive { hive, event: HiveEvent::Progress { done, total } } => match total {
            Some(t) if *t > 0 => eprintln!("{hive}: {} of {} ({}%)", mib(*done), mib(*t), done * 100 / t),
            _ => eprintln!("{hive}: {}", mib(*done)),
        },
        JobEventBody::Hive { event: HiveEvent::Token { text }, .. } => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
        _ => {}
    }
}

fn worker_line(hive: &str, w: &rbee_core::hive_api::WorkerProcess) -> String {
    use rbee_core::hive_api::WorkerState;
    let state = match &w.state {
        WorkerState::Starting => "starting".to_owned(),
        WorkerState::Ready => "ready".to_owned(),
        WorkerState::Unresponsive => "UNRESPONSIVE".to_owned(),
        WorkerState::Stopped => "stopped".to_owned(),
        WorkerState::Crashed { exit_code: Some(c), .. } => format!("CRASHED (exit {c})"),
        WorkerState::Crashed { signal: Some(s), .. } => format!("CRASHED (signal {s})"),
        WorkerState::Crashed { .. } => "CRASHED".to_owned(),
    };
    let adopted = if w.adopted { ", re-adopted" } else { "" };
    format!("{hive}  {:<24} {:<14} {} on {} (pid {}, port {}{adopted})", w.id, state, w.model, w.device, w.pid, w.port)
}
