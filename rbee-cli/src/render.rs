//! Everything the commands print: results, errors and queen job events, as text or, with
//! `--json`, as JSON lines. The live per-hive display of sync events is in
//! [`crate::progress`].

use std::path::Path;

use rbee_core::config::Diagnostic;
use rbee_core::execute::{HiveOutcome, SyncReport};
use rbee_core::package::{DriftState, OperationResult, StatusReport, SyncOutcome};
use rbee_core::proto::deployment::DeploymentStatus;
use rbee_core::proto::hive::{Capabilities, HiveEvent, WorkerProcess, WorkerState};
use rbee_queen::api::{HiveEntry, JobEventBody, JobSummary};

use crate::exit::{CliError, Exit, Outcome};

pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Prints an error: `error: ...` on stderr, or `{"ok": false, "error": ...}` on stdout with
/// `--json`; config problems one per line, or as `{"ok": false, "errors": [...]}`.
pub(crate) fn error(json: bool, e: &CliError) {
    match e {
        CliError::Invalid(diags) => diagnostics(json, diags),
        other => {
            let message = other.to_string();
            if json {
                println!("{}", serde_json::json!({ "ok": false, "error": message }));
            } else {
                eprintln!("error: {message}");
            }
        }
    }
}

fn diagnostics(json: bool, diags: &[Diagnostic]) {
    if json {
        println!("{}", serde_json::json!({ "ok": false, "errors": diags }));
    } else {
        for d in diags {
            eprintln!("{d}");
        }
        let n = diags.len();
        eprintln!("error: the config has {n} problem{}", if n == 1 { "" } else { "s" });
    }
}

/// A one-sentence success, e.g. from `rbee queen ...`.
pub(crate) fn message(json: bool, message: &str) {
    if json {
        println!("{}", serde_json::json!({ "ok": true, "message": message }));
    } else {
        println!("{message}");
    }
}

/// `rbee validate`, checked in this process.
pub(crate) fn valid(json: bool, aliases: &[&str]) {
    if json {
        println!("{}", serde_json::json!({ "ok": true, "hives": aliases }));
    } else {
        let s = if aliases.len() == 1 { "" } else { "s" };
        println!("config is valid: {} hive{s} ({})", aliases.len(), aliases.join(", "));
    }
}

/// `rbee config schema`: always JSON.
pub(crate) fn schema(schema: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(schema).unwrap_or_default());
}

/// `rbee sync --retry-failed` when the last sync failed nowhere.
pub(crate) fn nothing_to_retry(json: bool) {
    if json {
        println!("{}", serde_json::json!({ "ok": true, "retried": [] }));
    } else {
        println!("The last sync had no failed hives: nothing to retry.");
    }
}

/// `rbee sync --retry-failed`, before the sync; JSON output has only the sync's own lines.
pub(crate) fn retrying(json: bool, aliases: &[String]) {
    if !json {
        println!("Retrying the hives that failed last time: {}", aliases.join(", "));
    }
}

/// `rbee migrate`.
pub(crate) fn migrated(json: bool, output: &Path, hives: usize) {
    if json {
        println!("{}", serde_json::json!({ "ok": true, "output": output, "hives": hives }));
    } else {
        println!("wrote {} ({hives} hives from the queen)", output.display());
    }
}

/// `rbee hive capabilities`.
pub(crate) fn capabilities(json: bool, alias: &str, caps: &Capabilities) {
    if json {
        println!("{}", serde_json::to_string(caps).unwrap_or_default());
        return;
    }
    let gib = caps.ram_bytes as f64 / (1u64 << 30) as f64;
    println!("{alias}: {} CPU cores, {gib:.1} GiB RAM", caps.cpu_cores);
    if caps.gpus.is_empty() {
        println!("  no GPU{}", caps.gpu_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default());
    }
    for g in &caps.gpus {
        println!("  cuda:{} {} — {} MiB ({} MiB used)", g.index, g.name, g.memory_total_mib, g.memory_used_mib);
    }
    if caps.engines.is_empty() {
        println!("  no engine installed by rbee sync");
    }
    for e in &caps.engines {
        let missing = if e.present { "" } else { " — MISSING: run `rbee sync`" };
        println!("  engine {} {} ({}){missing}", e.worker_type, e.version, e.program);
    }
}

/// `rbee hive list|get`: the queen's registry.
pub(crate) fn hives(json: bool, hives: &[HiveEntry]) {
    if json {
        println!("{}", serde_json::to_string(hives).unwrap_or_default());
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
}

/// `rbee jobs`.
pub(crate) fn jobs(json: bool, jobs: &[JobSummary]) {
    if json {
        println!("{}", serde_json::to_string(jobs).unwrap_or_default());
    } else {
        for j in jobs {
            let code = j.exit_code.map_or_else(|| "-".to_owned(), |c| c.to_string());
            println!("{}  {:<16} {:<9} exit {code}", j.job_id, j.operation, j.state);
        }
    }
}

/// A queen job event other than a sync event (those go to [`crate::progress::Renderer`]).
pub(crate) fn log_line(json: bool, body: &JobEventBody) {
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
            // Tokens stream to stdout as they come, so the answer reads as it is written.
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
        _ => {}
    }
}

/// Prints an operation's result the same whether it ran here or in the queen, and gives its
/// exit code; an error result becomes the command's error.
pub(crate) fn result(json: bool, result: &OperationResult, verbose: bool) -> Outcome {
    let exit = Exit::from_code(result.exit_code());
    match result {
        OperationResult::Error { message, diagnostics } => {
            return Err(if diagnostics.is_empty() {
                CliError::Message(message.clone())
            } else {
                CliError::Invalid(diagnostics.clone())
            });
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
                println!(
                    "{}",
                    serde_json::json!({ "exit_code": exit as u8, "hives": report.hives, "deployments": report.deployments })
                );
            } else {
                status(report, verbose);
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
                if let WorkerState::Crashed { message, .. } = &worker.state {
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
        OperationResult::Sync(SyncOutcome { plan, report: None, deployment_steps, .. }) => {
            if json {
                let mut value = plan.to_json();
                value["deployment_steps"] = serde_json::to_value(deployment_steps).unwrap_or_default();
                println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
            } else {
                print!("{plan}");
                if !deployment_steps.is_empty() {
                    println!("Deployments:");
                    for step in deployment_steps {
                        println!("  {step}");
                    }
                }
            }
        }
        OperationResult::Sync(SyncOutcome { report: Some(report), deployments, .. }) => {
            if json {
                let line = serde_json::json!({
                    "event": "result",
                    "overall": report.overall(),
                    "exit_code": exit as u8,
                    "bytes_transferred": report.bytes_transferred(),
                    "report": report,
                    "deployments": deployments,
                });
                println!("{line}");
            } else {
                sync_report(report);
                deployment_rows(deployments);
            }
        }
        // A result kind from a newer queen or hive: its JSON, so nothing is lost.
        other => println!("{}", serde_json::to_string(other).unwrap_or_default()),
    }
    Ok(exit)
}

fn sync_report(report: &SyncReport) {
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

fn status(report: &StatusReport, verbose: bool) {
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
    deployment_rows(&report.deployments);
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

/// One line per deployment: name, ready of declared, revision, and what is happening.
fn deployment_rows(deployments: &[DeploymentStatus]) {
    if deployments.is_empty() {
        return;
    }
    let width = deployments.iter().map(|d| d.name.len()).max().unwrap_or(0);
    for d in deployments {
        println!("{:width$}  {}/{} ready  {}: {}", d.name, d.ready, d.replicas, d.phase.as_str(), d.message);
    }
}

/// `rbee deployment list`.
pub(crate) fn deployments(json: bool, all: &[DeploymentStatus]) {
    if json {
        println!("{}", serde_json::to_string(all).unwrap_or_default());
    } else if all.is_empty() {
        println!("No deployments: declare one with [[deployment]] in hives.conf and run `rbee sync`.");
    } else {
        deployment_rows(all);
    }
}

/// `rbee deployment get`.
pub(crate) fn deployment(json: bool, d: &DeploymentStatus) {
    if json {
        println!("{}", serde_json::to_string(d).unwrap_or_default());
        return;
    }
    println!("{}: {}/{} ready: {}", d.name, d.ready, d.replicas, d.message);
    println!("model: {} on {} (revision {})", d.model, d.worker, d.revision);
    println!("restarts: {}", d.restarts);
    if let Some(failure) = &d.last_failure {
        println!("last failure: {}", failure.replace('\n', "\n  "));
    }
    if d.instances.is_empty() {
        println!("replicas: none");
    } else {
        println!("replicas:");
        for r in &d.instances {
            println!(
                "  {}/{}  {}  {}  revision {}  {} in flight",
                r.hive, r.worker_id, r.device, r.state, r.revision, r.in_flight
            );
        }
    }
    println!("placement: eligible: {}", if d.eligible.is_empty() { "none".to_owned() } else { d.eligible.join(", ") });
    for r in &d.rejected {
        println!("  {} rejected: {}", r.hive, r.reason);
    }
}

fn worker_line(hive: &str, w: &WorkerProcess) -> String {
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
