//! One function per subcommand; each ends in rbee-core calls.

use std::collections::BTreeSet;

use rbee_core::artifact::ArtifactSource;
use rbee_core::config::{self, Config, ConfigError};
use rbee_core::execute::{ExecuteOptions, HiveOutcome, InstallFault, Overall, SyncReport};
use rbee_core::package::{self, DriftState, PackageError, StatusReport, SyncOutcome, SyncRequest};
use rbee_core::plan::PlanOptions;
use rbee_ssh::SshConnector;

use crate::output::{Exit, error};
use crate::progress::{Renderer, mib};
use crate::{Cli, Command, ConfigCommand, SyncArgs};

pub(crate) async fn run(cli: Cli) -> Exit {
    match &cli.command {
        Command::Validate => validate(&cli),
        Command::Config { what: ConfigCommand::Schema } => {
            println!("{}", serde_json::to_string_pretty(&config::json_schema()).unwrap_or_default());
            Exit::Ok
        }
        Command::Sync(args) => sync(&cli, args).await,
        Command::Install { hives, force } => {
            let args = SyncArgs { hives: hives.clone(), force: *force, ..SyncArgs::default() };
            sync(&cli, &args).await
        }
        Command::Status { verbose, hives } => status(&cli, hives, *verbose).await,
        Command::Uninstall { hives, purge } => uninstall(&cli, hives, *purge).await,
    }
}

fn load(cli: &Cli) -> Result<Config, Exit> {
    config::load(&config::ConfigFiles::locate(cli.config.as_deref())).map_err(|e| report_config_error(cli.json, &e))
}

fn report_config_error(json: bool, e: &ConfigError) -> Exit {
    match e {
        ConfigError::Invalid(diags) if json => {
            println!("{}", serde_json::json!({ "ok": false, "errors": diags }));
            Exit::Error
        }
        ConfigError::Invalid(diags) => {
            for d in diags {
                eprintln!("{d}");
            }
            let n = diags.len();
            eprintln!("error: the config has {n} problem{}", if n == 1 { "" } else { "s" });
            Exit::Error
        }
        other => error(json, &other.to_string()),
    }
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

/// Test hooks, for end-to-end tests only: `RBEE_TEST_FAULT=alias=corrupt-upload,other=stop-before-rename`.
fn execute_options(config: &Config) -> Result<ExecuteOptions, String> {
    let mut options = ExecuteOptions::from_settings(&config.package);
    if let Ok(spec) = std::env::var("RBEE_TEST_FAULT") {
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (alias, fault) = part.split_once('=').ok_or_else(|| format!("RBEE_TEST_FAULT: bad entry {part:?}"))?;
            let fault = match fault {
                "corrupt-upload" => InstallFault::CorruptUpload,
                "stop-before-rename" => InstallFault::StopBeforeRename,
                other => return Err(format!("RBEE_TEST_FAULT: unknown fault {other:?}")),
            };
            options.faults.insert(alias.to_owned(), fault);
        }
    }
    Ok(options)
}

struct Prepared {
    config: Config,
    source: ArtifactSource,
    options: ExecuteOptions,
    connector: SshConnector,
}

fn prepare(cli: &Cli) -> Result<Prepared, Exit> {
    let config = load(cli)?;
    let source = ArtifactSource::from_config(&config).map_err(|e| error(cli.json, &e.to_string()))?;
    let options = execute_options(&config).map_err(|e| error(cli.json, &e))?;
    let connector = SshConnector::new(&config);
    Ok(Prepared { config, source, options, connector })
}

fn selection(cli: &Cli, config: &Config, hives: &[String]) -> Result<Option<BTreeSet<String>>, Exit> {
    package::select(config, hives).map_err(|e| error(cli.json, &e.to_string()))
}

async fn sync(cli: &Cli, args: &SyncArgs) -> Exit {
    let p = match prepare(cli) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    let mut only = match selection(cli, &p.config, &args.hives) {
        Ok(o) => o,
        Err(exit) => return exit,
    };
    if args.retry_failed {
        let failed = match package::last_failed() {
            Ok(f) => f,
            Err(e) => return error(cli.json, &e.to_string()),
        };
        let failed: BTreeSet<String> = match &only {
            Some(o) => failed.intersection(o).cloned().collect(),
            None => failed,
        };
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
        only = Some(failed);
    }
    let request = SyncRequest {
        plan: PlanOptions { force: args.force, remove_extra: args.remove_extra, only },
        dry_run: args.dry_run,
    };
    let renderer = Renderer::new(cli.json);
    let on_event = |e| renderer.event(e);
    let result = package::sync(&p.config, &p.source, &p.connector, &request, &p.options, &on_event).await;
    finish(cli, result, args.dry_run)
}

async fn uninstall(cli: &Cli, hives: &[String], purge: bool) -> Exit {
    let p = match prepare(cli) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    let only = match selection(cli, &p.config, hives) {
        Ok(o) => o,
        Err(exit) => return exit,
    };
    let renderer = Renderer::new(cli.json);
    let on_event = |e| renderer.event(e);
    let result =
        package::uninstall(&p.config, &p.source, &p.connector, only.as_ref(), purge, &p.options, &on_event).await;
    finish(cli, result, false)
}

fn finish(cli: &Cli, result: Result<SyncOutcome, PackageError>, dry_run: bool) -> Exit {
    let outcome = match result {
        Ok(o) => o,
        Err(e) => return error(cli.json, &e.to_string()),
    };
    let Some(report) = outcome.report else {
        // Dry run: the plan is the output.
        if cli.json {
            println!("{}", serde_json::to_string_pretty(&outcome.plan.to_json()).unwrap_or_default());
        } else {
            print!("{}", outcome.plan);
        }
        let s = outcome.plan.summary();
        return if s.unreachable > 0 {
            Exit::Error
        } else if outcome.plan.is_empty() {
            Exit::Ok
        } else {
            Exit::Drift
        };
    };
    debug_assert!(!dry_run);
    if let Err(e) = package::save_last_run(&report) {
        eprintln!("warning: {e}");
    }
    let exit = match report.overall() {
        Overall::Ok => Exit::Ok,
        Overall::Partial => Exit::Partial,
        Overall::Failed => Exit::Error,
    };
    if cli.json {
        let result = serde_json::json!({
            "event": "result",
            "overall": report.overall(),
            "exit_code": exit as u8,
            "bytes_transferred": report.bytes_transferred(),
            "report": report,
        });
        println!("{result}");
    } else {
        print_report(&report);
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

async fn status(cli: &Cli, hives: &[String], verbose: bool) -> Exit {
    let p = match prepare(cli) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    let only = match selection(cli, &p.config, hives) {
        Ok(o) => o,
        Err(exit) => return exit,
    };
    let report = match package::status(&p.config, &p.source, &p.connector, only.as_ref(), &p.options).await {
        Ok(r) => r,
        Err(e) => return error(cli.json, &e.to_string()),
    };
    let code = report.exit_code();
    if cli.json {
        println!("{}", serde_json::json!({ "exit_code": code, "hives": report.hives }));
    } else {
        print_status(&report, verbose);
    }
    match code {
        0 => Exit::Ok,
        2 => Exit::Drift,
        _ => Exit::Error,
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
            DriftState::Unreachable { reason } => {
                println!("{:width$}  unreachable: {reason}", h.alias)
            }
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
    let code = report.exit_code();
    println!();
    println!(
        "{}",
        match code {
            0 => "Everything is in sync.",
            2 => "Drift found: run `rbee sync` to converge.",
            _ => "Some hives could not be checked.",
        }
    );
}
