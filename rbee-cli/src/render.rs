//! Everything the commands print: results, errors and queen job events, as text or, with
//! `--json`, as JSON lines. The live per-hive display of sync events is in
//! [`crate::progress`].

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::Path;

use rbee_core::config::Diagnostic;
use rbee_core::execute::{HiveOutcome, SyncReport};
use rbee_core::package::{DriftState, OperationResult, StatusReport, SyncOutcome};
use rbee_core::proto::deployment::DeploymentStatus;
use rbee_core::proto::hive::{Capabilities, HiveEvent, WorkerProcess, WorkerState};
use rbee_queen::api::{HiveEntry, JobEventBody, JobSummary};

use crate::exit::{CliError, Exit, Outcome};

/// Whether `c` is kept out of the terminal: a control character (C0, DEL, C1) other than
/// newline and tab.
fn is_unsafe(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

/// Text for a terminal: control characters other than newline and tab (C0, DEL, C1) shown
/// escaped, ESC as `\u{1b}`, so that text from a host, a worker or the queen (log tails,
/// crash reports, error output, aliases) cannot move the cursor, clear the screen, retitle
/// the window or overwrite lines with `\r`. Everything printed for humans goes through it
/// ([`say!`], [`say_err!`]); JSON output through [`json_shown`].
pub(crate) fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Serialized JSON for a terminal: serde_json escapes C0 controls in strings but not DEL and
/// C1 (which some terminals obey), so those are escaped too, as `\u007f`-style JSON escapes
/// (they can only be inside strings, where the escape means the same character).
pub(crate) fn json_shown(json: &str) -> Cow<'_, str> {
    if !json.chars().any(is_unsafe) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if is_unsafe(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `println!` for human output: the text through [`shown`].
macro_rules! say {
    () => {
        println!()
    };
    ($($arg:tt)*) => {
        println!("{}", $crate::render::shown(&format!($($arg)*)))
    };
}

/// `eprintln!` for human output: the text through [`shown`].
macro_rules! say_err {
    ($($arg:tt)*) => {
        eprintln!("{}", $crate::render::shown(&format!($($arg)*)))
    };
}

/// `println!` for JSON output: the text through [`json_shown`].
macro_rules! say_json {
    ($($arg:tt)*) => {
        println!("{}", $crate::render::json_shown(&format!($($arg)*)))
    };
}

pub(crate) use {say, say_err, say_json};

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
                say_json!("{}", serde_json::json!({ "ok": false, "error": message }));
            } else {
                say_err!("error: {message}");
            }
        }
    }
}

fn diagnostics(json: bool, diags: &[Diagnostic]) {
    if json {
        say_json!("{}", serde_json::json!({ "ok": false, "errors": diags }));
    } else {
        for d in diags {
            say_err!("{d}");
        }
        let n = diags.len();
        say_err!("error: the config has {n} problem{}", if n == 1 { "" } else { "s" });
    }
}

/// A one-sentence success, e.g. from `rbee queen ...`.
pub(crate) fn message(json: bool, message: &str) {
    if json {
        say_json!("{}", serde_json::json!({ "ok": true, "message": message }));
    } else {
        say!("{message}");
    }
}

/// `rbee validate`, checked in this process.
pub(crate) fn valid(json: bool, aliases: &[&str]) {
    if json {
        say_json!("{}", serde_json::json!({ "ok": true, "hives": aliases }));
    } else {
        let s = if aliases.len() == 1 { "" } else { "s" };
        say!("config is valid: {} hive{s} ({})", aliases.len(), aliases.join(", "));
    }
}

/// `rbee config schema`: always JSON.
pub(crate) fn schema(schema: &serde_json::Value) {
    say_json!("{}", serde_json::to_string_pretty(schema).unwrap_or_default());
}

/// `rbee man --dir DIR`: the pages written.
pub(crate) fn man_pages_written(json: bool, dir: &Path, pages: &[std::path::PathBuf]) {
    if json {
        say_json!("{}", serde_json::json!({ "ok": true, "dir": dir, "pages": pages }));
    } else {
        say!("wrote {} man pages to {} (rbee.1 and one per subcommand)", pages.len(), dir.display());
    }
}

/// `rbee sync --retry-failed` when the last sync failed nowhere.
pub(crate) fn nothing_to_retry(json: bool) {
    if json {
        say_json!("{}", serde_json::json!({ "ok": true, "retried": [] }));
    } else {
        say!("The last sync had no failed hives: nothing to retry.");
    }
}

/// `rbee sync --retry-failed`, before the sync; JSON output has only the sync's own lines.
pub(crate) fn retrying(json: bool, aliases: &[String]) {
    if !json {
        say!("Retrying the hives that failed last time: {}", aliases.join(", "));
    }
}

/// `rbee migrate`.
pub(crate) fn migrated(json: bool, output: &Path, hives: usize) {
    if json {
        say_json!("{}", serde_json::json!({ "ok": true, "output": output, "hives": hives }));
    } else {
        say!("wrote {} ({hives} hives from the queen)", output.display());
    }
}

/// `rbee hive capabilities`.
pub(crate) fn capabilities(json: bool, alias: &str, caps: &Capabilities) {
    if json {
        say_json!("{}", serde_json::to_string(caps).unwrap_or_default());
        return;
    }
    let gib = caps.ram_bytes as f64 / (1u64 << 30) as f64;
    say!("{alias}: {} CPU cores, {gib:.1} GiB RAM", caps.cpu_cores);
    if caps.gpus.is_empty() {
        say!("  no GPU{}", caps.gpu_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default());
    }
    for g in &caps.gpus {
        say!("  cuda:{} {} — {} MiB ({} MiB used)", g.index, g.name, g.memory_total_mib, g.memory_used_mib);
    }
    if caps.engines.is_empty() {
        say!("  no engine installed by rbee sync");
    }
    for e in &caps.engines {
        let missing = if e.present { "" } else { " — MISSING: run `rbee sync`" };
        say!("  engine {} {} ({}){missing}", e.worker_type, e.version, e.program);
    }
}

/// `rbee hive get A --json`: entries of the queen's registry (the table is [`hive_rows`]; `rbee hive
/// list --json` passes the queen's answer on as it came).
pub(crate) fn hives_json(hives: &[HiveEntry]) {
    say_json!("{}", serde_json::to_string(hives).unwrap_or_default());
}

/// JSON passed on as it came (a queen's answer), escaped for a terminal, in one write.
pub(crate) fn raw_json(json: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(json_shown(json).as_bytes());
    let _ = out.write_all(b"\n");
}

/// What `rbee hive list` shows of a [`HiveEntry`], read from the queen's JSON without the rest
/// (GPUs, models, installed versions), borrowing its strings.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct HiveRow<'a> {
    #[serde(borrow)]
    pub(crate) alias: Cow<'a, str>,
    #[serde(borrow)]
    version: Cow<'a, str>,
    pid: u32,
    port: u16,
    #[serde(borrow, default)]
    workers: Vec<Cow<'a, str>>,
    #[serde(borrow, default)]
    processes: Vec<ProcessRow<'a>>,
    age_ms: u64,
    stale: bool,
}

/// What the table shows of a [`WorkerProcess`], borrowing its strings; its state's fields are
/// read where the wire format has them (beside the others), without buffering the object.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct ProcessRow<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow)]
    device: Cow<'a, str>,
    port: u16,
    pid: u32,
    #[serde(default)]
    adopted: bool,
    #[serde(borrow)]
    state: Cow<'a, str>,
    #[serde(default)]
    exit_code: Option<i32>,
    #[serde(default)]
    signal: Option<i32>,
}

/// `rbee hive list` as a table: a line per hive and one per worker process, written at once.
/// Each line is written in place and escaped only where it holds a control character.
pub(crate) fn hive_rows(hives: &[HiveRow<'_>]) {
    use std::io::Write;
    if hives.is_empty() {
        say!("No hive has sent a heartbeat yet: hives started by a sync through the queen report to it.");
        return;
    }
    let _ = std::io::stdout().lock().write_all(hive_table(hives).as_bytes());
}

/// The text of [`hive_rows`].
fn hive_table(hives: &[HiveRow<'_>]) -> String {
    let mut text = String::with_capacity(hives.len() * 256);
    for h in hives {
        let start = text.len();
        let state = if h.stale { "STALE" } else { "fresh" };
        let _ = write!(
            text,
            "{:<16} {state:<6} last beat {:>6} ms ago  rbee-hive {} (pid {}, port {})  workers: ",
            h.alias, h.age_ms, h.version, h.pid, h.port,
        );
        if h.workers.is_empty() {
            text.push('-');
        }
        for (i, w) in h.workers.iter().enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            text.push_str(w);
        }
        escape_from(&mut text, start);
        text.push('\n');
        for p in &h.processes {
            let start = text.len();
            let _ = write!(text, "{:<16}   ", "");
            p.write_line(&mut text, &h.alias);
            escape_from(&mut text, start);
            text.push('\n');
        }
    }
    text
}

/// What [`shown`] makes of `text[start..]`, in place.
fn escape_from(text: &mut String, start: usize) {
    if let Cow::Owned(escaped) = shown(&text[start..]) {
        text.truncate(start);
        text.push_str(&escaped);
    }
}

/// `rbee jobs`.
pub(crate) fn jobs(json: bool, jobs: &[JobSummary]) {
    if json {
        say_json!("{}", serde_json::to_string(jobs).unwrap_or_default());
    } else {
        for j in jobs {
            let code = j.exit_code.map_or_else(|| "-".to_owned(), |c| c.to_string());
            say!("{}  {:<16} {:<9} exit {code}", j.job_id, j.operation, j.state);
        }
    }
}

/// A queen job event other than a sync event (those go to [`crate::progress::Renderer`]).
pub(crate) fn log_line(json: bool, body: &JobEventBody) {
    use std::io::Write;
    match body {
        JobEventBody::Log { message } => {
            if json {
                say_json!("{}", serde_json::json!({ "event": "log", "message": message }));
            } else {
                say_err!("queen: {message}");
            }
        }
        JobEventBody::Hive { hive, event } if json => {
            say_json!("{}", serde_json::json!({ "event": "hive", "hive": hive, "data": event }));
        }
        JobEventBody::Hive { hive, event: HiveEvent::Log { message } } => say_err!("{hive}: {message}"),
        JobEventBody::Hive { hive, event: HiveEvent::Progress { done, total } } => match total {
            Some(t) if *t > 0 => say_err!("{hive}: {} of {} ({}%)", mib(*done), mib(*t), done * 100 / t),
            _ => say_err!("{hive}: {}", mib(*done)),
        },
        JobEventBody::Hive { event: HiveEvent::Token { text }, .. } => {
            // Tokens stream to stdout as they come, so the answer reads as it is written.
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(shown(text).as_bytes());
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
                say_json!("{}", serde_json::json!({ "ok": true, "hives": hives }));
            } else {
                say!("config is valid: {} hives ({})", hives.len(), hives.join(", "));
            }
        }
        OperationResult::Status(report) => {
            if json {
                say_json!(
                    "{}",
                    serde_json::json!({ "exit_code": exit as u8, "hives": report.hives, "deployments": report.deployments })
                );
            } else {
                status(report, verbose);
            }
        }
        OperationResult::Workers { hive, workers } => {
            if json {
                say_json!("{}", serde_json::json!({ "hive": hive, "workers": workers }));
            } else if workers.is_empty() {
                say!("{hive}: no worker processes; start one with `rbee worker spawn --hive {hive} ...`");
            } else {
                for w in workers {
                    say!("{}", worker_line(hive, w));
                }
            }
        }
        OperationResult::Worker { hive, worker } => {
            if json {
                say_json!("{}", serde_json::json!({ "hive": hive, "worker": worker }));
            } else {
                say!("{}", worker_line(hive, worker));
                if let WorkerState::Crashed { message, .. } = &worker.state {
                    say!("  {}", message.replace('\n', "\n  "));
                }
            }
        }
        OperationResult::Catalog { hive, workers } => {
            if json {
                say_json!("{}", serde_json::json!({ "hive": hive, "workers": workers }));
            } else {
                say!(
                    "{hive}: worker catalog: {}",
                    if workers.is_empty() { "empty".into() } else { workers.join(", ") }
                );
            }
        }
        OperationResult::Models { hive, models } => {
            if json {
                say_json!("{}", serde_json::json!({ "hive": hive, "models": models }));
            } else if models.is_empty() {
                say!("{hive}: no models; download one with `rbee model download --hive {hive} URL`");
            } else {
                for m in models {
                    say!(
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
                say_json!("{}", serde_json::json!({ "hive": hive, "model": model }));
            } else {
                say!(
                    "{hive}  {}  {}  sha256 {}",
                    model.name,
                    mib(model.size),
                    model.sha256.as_ref().map_or("-", |d| d.as_str())
                );
                say!("{hive}  {}", model.path);
            }
        }
        OperationResult::Inferred { hive, worker_id, text } => {
            if json {
                say_json!("{}", serde_json::json!({ "hive": hive, "worker_id": worker_id, "text": text }));
            } else {
                // The tokens were printed as they streamed.
                say!();
            }
        }
        OperationResult::Sync(SyncOutcome { plan, report: None, deployment_steps, lock_changes, .. }) => {
            if json {
                let mut value = plan.to_json();
                value["deployment_steps"] = serde_json::to_value(deployment_steps).unwrap_or_default();
                value["lock_changes"] = serde_json::to_value(lock_changes).unwrap_or_default();
                say_json!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
            } else {
                print!("{}", shown(&plan.to_string()));
                if !deployment_steps.is_empty() {
                    say!("Deployments:");
                    for step in deployment_steps {
                        say!("  {step}");
                    }
                }
                lock_lines(lock_changes);
            }
        }
        OperationResult::Sync(SyncOutcome { report: Some(report), deployments, lock_changes, .. }) => {
            if json {
                let line = serde_json::json!({
                    "event": "result",
                    "overall": report.overall(),
                    "exit_code": exit as u8,
                    "bytes_transferred": report.bytes_transferred(),
                    "report": report,
                    "deployments": deployments,
                    "lock_changes": lock_changes,
                });
                say_json!("{line}");
            } else {
                sync_report(report);
                deployment_rows(deployments);
                lock_lines(lock_changes);
            }
        }
        // A result kind from a newer queen or hive: its JSON, so nothing is lost.
        other => say_json!("{}", serde_json::to_string(other).unwrap_or_default()),
    }
    Ok(exit)
}

/// How rbee.lock changes, a `lock: ` line each.
fn lock_lines(changes: &[String]) {
    for change in changes {
        say!("lock: {change}");
    }
}

/// `rbee lock update`.
pub(crate) fn lock_updated(json: bool, path: &Path, changes: &[String]) {
    if json {
        say_json!("{}", serde_json::json!({ "ok": true, "lock": path, "changes": changes }));
    } else if changes.is_empty() {
        say!("{} is up to date", path.display());
    } else {
        lock_lines(changes);
        say!("wrote {}; `rbee sync` installs what it pins", path.display());
    }
}

fn sync_report(report: &SyncReport) {
    say!();
    for h in &report.hives {
        let line = match &h.outcome {
            HiveOutcome::Ok { changed: true } => {
                format!("ok ({} steps, {})", h.steps_done.len(), mib(h.bytes_transferred))
            }
            HiveOutcome::Ok { changed: false } => "in sync".to_owned(),
            HiveOutcome::Failed { step, reason } => format!("FAILED at {step}: {reason}"),
            HiveOutcome::Unreachable { reason } => format!("UNREACHABLE: {reason}"),
            HiveOutcome::Skipped => "skipped".to_owned(),
            HiveOutcome::RolledBack { step, reason, version } => {
                format!("ROLLED BACK to rbee-hive {version} after {step} failed: {reason}")
            }
            HiveOutcome::Held { reason } => format!("skipped, untouched: {reason}"),
        };
        say!("{}: {line}", h.alias);
    }
    let count = |f: fn(&HiveOutcome) -> bool| report.hives.iter().filter(|h| f(&h.outcome)).count();
    let ok = count(|o| matches!(o, HiveOutcome::Ok { .. }));
    let failed = count(|o| matches!(o, HiveOutcome::Failed { .. } | HiveOutcome::RolledBack { .. }));
    let unreachable = count(|o| matches!(o, HiveOutcome::Unreachable { .. }));
    if report.changed_nothing() && failed == 0 && unreachable == 0 {
        say!("Nothing to do: every hive is in sync ({} transferred).", mib(report.bytes_transferred()));
    } else {
        say!(
            "Sync: {ok} ok, {failed} failed, {unreachable} unreachable; {} transferred.",
            mib(report.bytes_transferred())
        );
    }
    if failed + unreachable > 0 {
        say!("Run `rbee sync --retry-failed` to retry only the hives that failed.");
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
            DriftState::InSync => say!("{:width$}  in sync{health}", h.alias),
            DriftState::NotInstalled => say!("{:width$}  not installed", h.alias),
            DriftState::Skipped => say!("{:width$}  skipped", h.alias),
            DriftState::Unreachable { reason } => say!("{:width$}  unreachable: {reason}", h.alias),
            DriftState::Drift { differences } => {
                say!("{:width$}  drift{health}", h.alias);
                for d in differences {
                    say!("{:width$}    - {d}", "");
                }
            }
        }
        if verbose {
            if let Some(s) = h.supervisor {
                say!("{:width$}    supervisor: {}", "", supervisor(s));
            }
            for (path, what) in &h.files {
                say!("{:width$}    {path}: {what}", "");
            }
        }
    }
    deployment_rows(&report.deployments);
    say!();
    say!(
        "{}",
        match report.exit_code() {
            0 => "Everything is in sync.",
            2 => "Drift found: run `rbee sync` to converge.",
            _ => "Some hives could not be checked.",
        }
    );
}

/// What `rbee status --verbose` says keeps a hive running.
fn supervisor(s: rbee_core::state::Supervisor) -> &'static str {
    use rbee_core::state::Supervisor;
    match s {
        Supervisor::SystemdSystem => "systemd (system unit rbee-hive.service)",
        Supervisor::SystemdUser => "systemd (user unit rbee-hive.service)",
        Supervisor::Detached => "detached process (not restarted, does not survive a reboot)",
    }
}

/// One line per deployment: name, ready of declared, revision, and what is happening.
fn deployment_rows(deployments: &[DeploymentStatus]) {
    if deployments.is_empty() {
        return;
    }
    let width = deployments.iter().map(|d| d.name.len()).max().unwrap_or(0);
    for d in deployments {
        say!("{:width$}  {}/{} ready  {}: {}", d.name, d.ready, d.replicas, d.phase.as_str(), d.message);
    }
}

/// `rbee deployment list`.
pub(crate) fn deployments(json: bool, all: &[DeploymentStatus]) {
    if json {
        say_json!("{}", serde_json::to_string(all).unwrap_or_default());
    } else if all.is_empty() {
        say!("No deployments: declare one with [[deployment]] in hives.conf and run `rbee sync`.");
    } else {
        deployment_rows(all);
    }
}

/// `rbee deployment get`.
pub(crate) fn deployment(json: bool, d: &DeploymentStatus) {
    if json {
        say_json!("{}", serde_json::to_string(d).unwrap_or_default());
        return;
    }
    say!("{}: {}/{} ready: {}", d.name, d.ready, d.replicas, d.message);
    say!("model: {} on {} (revision {})", d.model, d.worker, d.revision);
    say!("restarts: {}", d.restarts);
    if let Some(failure) = &d.last_failure {
        say!("last failure: {}", failure.replace('\n', "\n  "));
    }
    if d.instances.is_empty() {
        say!("replicas: none");
    } else {
        say!("replicas:");
        for r in &d.instances {
            say!(
                "  {}/{}  {}  {}  revision {}  {} in flight",
                r.hive,
                r.worker_id,
                r.device,
                r.state,
                r.revision,
                r.in_flight
            );
        }
    }
    say!("placement: eligible: {}", if d.eligible.is_empty() { "none".to_owned() } else { d.eligible.join(", ") });
    for r in &d.rejected {
        say!("  {} rejected: {}", r.hive, r.reason);
    }
}

fn worker_line(hive: &str, w: &WorkerProcess) -> String {
    let mut line = String::with_capacity(128);
    ProcessRow::from(w).write_line(&mut line, hive);
    line
}

impl<'a> From<&'a WorkerProcess> for ProcessRow<'a> {
    fn from(w: &'a WorkerProcess) -> Self {
        let (exit_code, signal) = match &w.state {
            WorkerState::Crashed { exit_code, signal, .. } => (*exit_code, *signal),
            _ => (None, None),
        };
        Self {
            id: Cow::Borrowed(&w.id),
            model: Cow::Borrowed(&w.model),
            device: Cow::Borrowed(&w.device),
            port: w.port,
            pid: w.pid,
            adopted: w.adopted,
            state: Cow::Borrowed(w.state.name()),
            exit_code,
            signal,
        }
    }
}

impl ProcessRow<'_> {
    /// Its state as the tables show it: a crash with its exit code or signal, when it has one.
    fn state_shown(&self) -> Cow<'_, str> {
        match (&*self.state, self.exit_code, self.signal) {
            ("crashed", Some(c), _) => Cow::Owned(format!("CRASHED (exit {c})")),
            ("crashed", None, Some(s)) => Cow::Owned(format!("CRASHED (signal {s})")),
            ("crashed", None, None) => Cow::Borrowed("CRASHED"),
            ("unresponsive", ..) => Cow::Borrowed("UNRESPONSIVE"),
            (other, ..) => Cow::Borrowed(other),
        }
    }

    /// Its line in the worker tables (`hive` its hive's alias), appended to `out`.
    fn write_line(&self, out: &mut String, hive: &str) {
        let adopted = if self.adopted { ", re-adopted" } else { "" };
        let (id, state) = (&self.id, self.state_shown());
        let _ = write!(
            out,
            "{hive}  {id:<24} {state:<14} {} on {} (pid {}, port {}{adopted})",
            self.model, self.device, self.pid, self.port
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table reads a worker's fields from the queen's JSON as they are (its state beside
    /// the others) and shows each state as the worker lists do, escaped where needed.
    #[test]
    fn the_hive_table_shows_workers_as_the_worker_lists_do() {
        let crashed = |exit_code, signal| WorkerState::Crashed { exit_code, signal, message: "gone".into() };
        let states = [
            WorkerState::Starting,
            WorkerState::Ready,
            WorkerState::Unresponsive,
            WorkerState::Stopped,
            crashed(Some(3), None),
            crashed(None, Some(9)),
            crashed(None, None),
        ];
        let processes: Vec<WorkerProcess> = states
            .into_iter()
            .enumerate()
            .map(|(i, state)| WorkerProcess {
                id: format!("w{i}"),
                worker_type: "llama-cpp".into(),
                model: if i == 1 { "evil\u{1b}[2J.gguf".into() } else { "m.gguf".into() },
                device: "cpu".into(),
                port: 9000 + i as u16,
                pid: 100 + i as u32,
                started_ms: 1,
                last_heartbeat_ms: None,
                adopted: i == 2,
                replica: None,
                args: Vec::new(),
                state,
            })
            .collect();
        let json = serde_json::json!([{
            "alias": "gpu-1", "version": "1.0.0", "pid": 7, "port": 8600, "workers": ["llama-cpp", "vllm"],
            "processes": processes, "age_ms": 12, "stale": false,
        }])
        .to_string();
        let rows: Vec<HiveRow<'_>> = serde_json::from_str(&json).unwrap();
        let text = hive_table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "gpu-1            fresh  last beat     12 ms ago  rbee-hive 1.0.0 (pid 7, port 8600)  workers: llama-cpp, vllm"
        );
        assert_eq!(lines.len(), 1 + processes.len());
        for (line, p) in lines[1..].iter().zip(&processes) {
            assert_eq!(*line, shown(&format!("{:<16}   {}", "", worker_line("gpu-1", p))), "{p:?}");
        }
        assert!(
            lines[2].contains("evil\\u{1b}[2J.gguf")
                && lines[3].contains("UNRESPONSIVE")
                && lines[3].contains("re-adopted")
        );
        assert!(lines[5].contains("CRASHED (exit 3)") && lines[6].contains("CRASHED (signal 9)"));
        let indent = " ".repeat(19);
        assert_eq!(
            lines[5],
            format!("{indent}gpu-1  w4{} CRASHED (exit 3) m.gguf on cpu (pid 104, port 9004)", " ".repeat(22))
        );
        assert_eq!(
            lines[7],
            format!("{indent}gpu-1  w6{} CRASHED        m.gguf on cpu (pid 106, port 9006)", " ".repeat(22))
        );
    }

    /// A worker log, a host's error output or an alias printed as is could retitle the
    /// terminal, clear it or overwrite a line: every control character but newline and tab is
    /// shown escaped.
    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(shown("\u{1b}]0;pwned\u{7}"), "\\u{1b}]0;pwned\\u{7}");
        assert_eq!(shown("\u{1b}[2Jcleared"), "\\u{1b}[2Jcleared");
        assert_eq!(shown("ok\rFAILED"), "ok\\u{d}FAILED");
        assert_eq!(shown("del\u{7f} csi\u{9b}31m nul\0"), "del\\u{7f} csi\\u{9b}31m nul\\u{0}");
        // Newline and tab stay; other text, non-ASCII included, is untouched and not copied.
        let plain = "line 1\n\tline 2 — é ✓ 模型";
        assert!(matches!(shown(plain), Cow::Borrowed(s) if s == plain));
    }

    /// serde_json escapes C0 controls but not DEL and C1: those are escaped as JSON escapes,
    /// so the line is still valid JSON and means the same text.
    #[test]
    fn json_output_escapes_what_serde_json_leaves() {
        let text = "a\u{1b}[2J\u{7f}\u{9b}b\r\n";
        let line = serde_json::json!({ "message": text }).to_string();
        assert!(line.contains('\u{9b}'), "serde_json leaves C1 as is: {line:?}");
        let safe = json_shown(&line);
        assert!(!safe.chars().any(char::is_control), "{safe:?}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["message"], text);
        // Pretty JSON keeps its newlines.
        let pretty = serde_json::to_string_pretty(&serde_json::json!({ "a": 1 })).unwrap();
        assert_eq!(json_shown(&pretty), pretty);
    }
}
