//! Config validation of a large fleet: 10,000 hives are read and checked in one pass, and
//! the locations of their problems are still exact.
//!
//! Locations come from a line index built once per file (a binary search per lookup), not
//! from scanning the file from its start for every hive, worker and diagnostic, which made
//! validation quadratic (10,000 hives took about 10 s). Nothing here measures time: the
//! `#[ignore]`d test prints it, for `cargo test --release -p rbee-core --test integration
//! -- --ignored ten_thousand`.

use std::fmt::Write as _;
use std::path::Path;

use rbee_core::config::{self, ConfigError};

const HIVES: usize = 10_000;

/// Lines of one generated hive.
const HIVE_LINES: usize = 7;

/// `hives.conf` with `n` hives of two workers each (the second worker type twice when
/// `duplicate_workers`), then three deployments: on every hive with its worker, on every hive
/// listed by name, and on the first and last hive.
fn fleet(n: usize, duplicate_workers: bool) -> String {
    let mut text = String::with_capacity(n * 200);
    for i in 0..n {
        let second = if duplicate_workers { "llama-cpp" } else { "vllm" };
        write!(
            text,
            "[[hive]]\nalias = \"gpu-{i}\"\nhostname = \"gpu-{i}.lab.example\"\nssh_user = \"rbee\"\n\
             ssh_key = \"~/.ssh/id_ed25519\"\nhive_port = {}\n\
             workers = [{{ type = \"llama-cpp\" }}, {{ type = \"{second}\", version = \"0.6.3\" }}]\n",
            8600 + i % 100
        )
        .unwrap();
    }
    let all: Vec<String> = (0..n).map(|i| format!("\"gpu-{i}\"")).collect();
    write!(
        text,
        "[[deployment]]\nname = \"everywhere\"\nmodel = \"/models/m.gguf\"\nworker = \"llama-cpp\"\n\
         [[deployment]]\nname = \"listed\"\nmodel = \"/models/m.gguf\"\nworker = \"llama-cpp\"\nhives = [{}]\n\
         [[deployment]]\nname = \"ends\"\nmodel = \"/models/m.gguf\"\nworker = \"llama-cpp\"\nhives = [\"gpu-0\", \"gpu-{}\"]\n",
        all.join(", "),
        n - 1
    )
    .unwrap();
    text
}

#[test]
fn ten_thousand_hives_validate() {
    let text = fleet(HIVES, false);
    let c = config::parse(None, (Path::new("hives.conf"), &text)).unwrap();
    assert_eq!(c.hives.len(), HIVES);
    assert_eq!(c.hives[HIVES - 1].alias, format!("gpu-{}", HIVES - 1));
    assert!(c.hives.iter().all(|h| h.workers.len() == 2));
    let sizes: Vec<(&str, usize)> = c.deployments.iter().map(|d| (d.name.as_str(), d.hives.len())).collect();
    assert_eq!(sizes, [("everywhere", HIVES), ("listed", HIVES), ("ends", 2)]);
}

/// Every hive repeats a worker type and the last alias is declared twice: one diagnostic per
/// hive, each at its own line, and the duplicate points back to the first declaration.
#[test]
fn ten_thousand_hives_with_problems_each_get_their_location() {
    let mut text = fleet(HIVES, true);
    let first_alias_line = 2;
    text.push_str("[[hive]]\nalias = \"gpu-0\"\nhostname = \"again.lab\"\n");
    let again_line = text.lines().count() - 1;
    let Err(ConfigError::Invalid(diags)) = config::parse(None, (Path::new("hives.conf"), &text)) else {
        panic!("duplicates must be reported")
    };
    assert_eq!(diags.len(), HIVES + 1);
    for (i, d) in diags.iter().take(HIVES).enumerate() {
        let workers_line = i * HIVE_LINES + HIVE_LINES;
        assert_eq!((d.line, d.column), (workers_line, 45), "{d}");
        assert_eq!(
            d.message,
            format!(
                "worker type \"llama-cpp\" appears twice in hive \"gpu-{i}\" (first at line {workers_line}): keep one"
            )
        );
    }
    let last = diags.last().unwrap().to_string();
    assert_eq!(
        last,
        format!(
            "hives.conf:{again_line}:9: duplicate alias \"gpu-0\" (first declared at line {first_alias_line}): aliases must be unique"
        )
    );
}

/// Prints how long validating 10,000 hives takes (run in release mode; the goal is under a
/// second).
#[test]
#[ignore = "prints a time: run with --release -- --ignored"]
fn ten_thousand_hives_validation_time() {
    let text = fleet(HIVES, false);
    let started = std::time::Instant::now();
    let c = config::parse(None, (Path::new("hives.conf"), &text)).unwrap();
    let valid = started.elapsed();
    let mut bad = fleet(HIVES, true);
    bad.push_str("[[hive]]\nalias = \"gpu-0\"\nhostname = \"again.lab\"\n");
    let started = std::time::Instant::now();
    let diags = config::parse(None, (Path::new("hives.conf"), &bad)).unwrap_err().diagnostics().len();
    let invalid = started.elapsed();
    eprintln!(
        "{} hives ({} bytes): valid file {valid:?}; with {diags} diagnostics {invalid:?}",
        c.hives.len(),
        text.len()
    );
}
