//! Where a sync's time goes, from its events: reads the NDJSON of `rbee sync --json` (for
//! example the file `FLEET_BENCH_EVENTS` makes `fleet-bench` write) and prints, per hive, each
//! step's start and end in ms from the first event, and for uploads the time to the last byte
//! sent (the rest of the step is the check of the sha256 on the host and the rename).
//!
//! With `EVENTS.json.times` beside it (fleet-bench writes one: when `rbee` was launched and
//! when it exited, on the events' clock), it also prints the time before the first hive was
//! locked (the queen's job, connecting, observing, planning) and after the last was done. Last,
//! a summary per kind of step over all hives: mean start, end and duration, and the latest end.
//!
//! `cargo run --release -p rbee-benches --bin sync-phases -- events.json`

use std::collections::BTreeMap;

/// One hive: when its work started and ended, and its steps by id.
#[derive(Default)]
struct Hive {
    started: Option<u64>,
    done: Option<u64>,
    steps: BTreeMap<String, Step>,
}

#[derive(Default)]
struct Step {
    started: Option<u64>,
    last_byte: Option<u64>,
    bytes: u64,
    finished: Option<u64>,
}

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: sync-phases EVENTS.json");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let events: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let times = events.iter().filter_map(|e| e["at_ms"].as_u64());
    let Some(t0) = times.clone().min() else {
        eprintln!("{path}: no events");
        std::process::exit(1);
    };
    let mut hives: BTreeMap<String, Hive> = BTreeMap::new();
    for e in &events {
        let (Some(alias), Some(at)) = (e["alias"].as_str(), e["at_ms"].as_u64()) else { continue };
        let at = at - t0;
        let hive = hives.entry(alias.to_owned()).or_default();
        let step = e["step"].as_str().map(str::to_owned);
        match e["event"].as_str().unwrap_or_default() {
            "hive_started" => hive.started = Some(at),
            "hive_done" => hive.done = Some(at),
            "step_started" => hive.steps.entry(step.unwrap_or_default()).or_default().started = Some(at),
            "progress" => {
                let s = hive.steps.entry(step.unwrap_or_default()).or_default();
                s.last_byte = Some(at);
                s.bytes = e["bytes"].as_u64().unwrap_or(s.bytes);
            }
            "step_finished" => hive.steps.entry(step.unwrap_or_default()).or_default().finished = Some(at),
            _ => {}
        }
    }
    let ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    println!("| hive | step | start ms | last byte ms | end ms | took ms | MiB/s while sending |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    // Per kind of step ("lock", "worker", "hive-binary", "start", …): starts, ends.
    let mut kinds: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for (alias, hive) in &hives {
        for (name, s) in &hive.steps {
            let kind = name.strip_prefix(&format!("{alias}/")).unwrap_or(name).split('/').next().unwrap_or("");
            if let (Some(a), Some(b)) = (s.started, s.finished) {
                kinds.entry(kind.to_owned()).or_default().push((a, b));
            }
        }
    }
    for (alias, hive) in &hives {
        let took = hive.done.zip(hive.started).map(|(d, s)| d - s);
        println!("| {alias} | (hive) | {} |  | {} | {} |  |", ms(hive.started), ms(hive.done), ms(took));
        let mut ordered: Vec<_> = hive.steps.iter().collect();
        ordered.sort_by_key(|(_, s)| s.started.unwrap_or(u64::MAX));
        for (name, s) in ordered {
            let rate = match (s.started, s.last_byte) {
                (Some(a), Some(b)) if b > a && s.bytes > 0 => {
                    format!("{:.0}", s.bytes as f64 / (1 << 20) as f64 / ((b - a) as f64 / 1000.0))
                }
                _ => String::new(),
            };
            let took = s.finished.zip(s.started).map(|(f, st)| f - st);
            println!(
                "| {alias} | {name} | {} | {} | {} | {} | {rate} |",
                ms(s.started),
                ms(s.last_byte),
                ms(s.finished),
                ms(took)
            );
        }
    }
    println!();
    println!("| step | count | mean start ms | mean end ms | mean took ms | latest end ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (kind, spans) in &kinds {
        let n = spans.len() as u64;
        let mean = |f: &dyn Fn(&(u64, u64)) -> u64| spans.iter().map(f).sum::<u64>() / n;
        println!(
            "| {kind} | {n} | {} | {} | {} | {} |",
            mean(&|s| s.0),
            mean(&|s| s.1),
            mean(&|s| s.1 - s.0),
            spans.iter().map(|s| s.1).max().unwrap_or(0)
        );
    }
    if let Ok(times) = std::fs::read_to_string(format!("{path}.times")) {
        let value =
            |key: &str| times.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<u64>().ok()));
        let last = hives.values().filter_map(|h| h.done).max().unwrap_or(0) + t0;
        if let (Some(launched), Some(exited)) = (value("launched_ms"), value("exited_ms")) {
            println!();
            println!(
                "`rbee` launched → first hive locked: {} ms; first hive locked → last hive done: {} ms; last hive done → `rbee` exited: {} ms; in all {} ms",
                t0.saturating_sub(launched),
                last - t0,
                exited.saturating_sub(last),
                exited.saturating_sub(launched)
            );
        }
    }
}
