//! The live display of executor events: one line per hive on a terminal, plain lines
//! otherwise, JSON lines with `--json`. Everything else printed is in [`crate::render`].

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rbee_core::execute::{HiveOutcome, SyncEvent, SyncEventKind};

use crate::render::{mib, say_err, say_json, shown};

/// How events are shown.
pub(crate) enum Renderer {
    Json,
    Plain {
        steps: Mutex<BTreeMap<(String, String), String>>,
    },
    Live {
        multi: MultiProgress,
        bars: Mutex<BTreeMap<String, ProgressBar>>,
        steps: Mutex<BTreeMap<(String, String), String>>,
    },
}

impl Renderer {
    pub(crate) fn new(json: bool) -> Self {
        if json {
            Renderer::Json
        } else if std::io::stderr().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            Renderer::Live { multi, bars: Mutex::new(BTreeMap::new()), steps: Mutex::new(BTreeMap::new()) }
        } else {
            Renderer::Plain { steps: Mutex::new(BTreeMap::new()) }
        }
    }

    pub(crate) fn event(&self, e: SyncEvent) {
        match self {
            Renderer::Json => say_json!("{}", serde_json::to_string(&e).unwrap_or_default()),
            Renderer::Plain { steps } => plain(steps, &e),
            Renderer::Live { multi, bars, steps } => live(multi, bars, steps, &e),
        }
    }
}

fn outcome_text(o: &HiveOutcome) -> String {
    match o {
        HiveOutcome::Ok { changed: true } => "done".into(),
        HiveOutcome::Ok { changed: false } => "in sync, nothing to do".into(),
        HiveOutcome::Failed { step, reason } => format!("FAILED at {step}: {reason}"),
        HiveOutcome::Unreachable { reason } => format!("UNREACHABLE: {reason}"),
        HiveOutcome::Skipped => "skipped".into(),
        HiveOutcome::RolledBack { step, reason, version } => {
            format!("ROLLED BACK to rbee-hive {version} after {step} failed: {reason}")
        }
        HiveOutcome::Held { reason } => format!("skipped, untouched: {reason}"),
    }
}

fn plain(steps: &Mutex<BTreeMap<(String, String), String>>, e: &SyncEvent) {
    let alias = &e.alias;
    match &e.kind {
        SyncEventKind::StepStarted { step, description } => {
            steps.lock().expect("steps").insert((alias.clone(), step.clone()), description.clone());
            say_err!("[{alias}] {description} ...");
        }
        SyncEventKind::StepFinished { step, elapsed_ms } => {
            let d = steps.lock().expect("steps").get(&(alias.clone(), step.clone())).cloned().unwrap_or_default();
            say_err!("[{alias}] {d}: ok ({elapsed_ms} ms)");
        }
        SyncEventKind::StepFailed { error, will_retry, .. } => {
            say_err!("[{alias}] {error}{}", if *will_retry { " (retrying)" } else { "" });
        }
        SyncEventKind::HiveDone { outcome } => say_err!("[{alias}] {}", outcome_text(outcome)),
        _ => {}
    }
}

/// One line of a live bar: [`shown`], and on one line.
fn bar_text(text: String) -> String {
    shown(&text).replace(['\n', '\t'], " ")
}

fn live(
    multi: &MultiProgress,
    bars: &Mutex<BTreeMap<String, ProgressBar>>,
    steps: &Mutex<BTreeMap<(String, String), String>>,
    e: &SyncEvent,
) {
    let mut bars = bars.lock().expect("bars");
    let alias = e.alias().to_owned();
    let bar = bars.entry(alias.clone()).or_insert_with(|| {
        let bar = multi.add(ProgressBar::new_spinner());
        bar.set_style(ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}").expect("template"));
        bar.set_prefix(bar_text(alias.clone()));
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    match &e.kind {
        SyncEventKind::HiveStarted => bar.set_message("starting"),
        SyncEventKind::StepStarted { step, description } => {
            steps.lock().expect("steps").insert((alias.clone(), step.clone()), description.clone());
            bar.set_message(bar_text(description.clone()));
        }
        SyncEventKind::Progress { step, bytes, total } => {
            let d = steps.lock().expect("steps").get(&(alias.clone(), step.clone())).cloned().unwrap_or_default();
            bar.set_message(bar_text(format!("{d} [{} / {}]", mib(*bytes), mib(*total))));
        }
        SyncEventKind::StepFailed { error, will_retry: true, .. } => {
            bar.set_message(bar_text(format!("retrying after: {error}")))
        }
        SyncEventKind::HiveDone { outcome } => {
            let mark = if outcome.is_failure() { "✗" } else { "✓" };
            bar.set_style(ProgressStyle::with_template("{prefix:.bold} {wide_msg}").expect("template"));
            bar.finish_with_message(bar_text(format!("{mark} {}", outcome_text(outcome))));
        }
        _ => {}
    }
}
