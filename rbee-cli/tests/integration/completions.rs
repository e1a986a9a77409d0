//! `rbee completions` and `rbee man`: generated from the clap definitions, no config, queen or
//! host needed.

use std::path::Path;
use std::process::{Command, Output};

fn rbee(args: &[&str]) -> Output {
    let config = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_rbee"))
        .args(args)
        .env("RBEE_CONFIG_DIR", config.path())
        .env_remove("RBEE_IN_PROCESS")
        .output()
        .unwrap()
}

fn ok_stdout(args: &[&str]) -> String {
    let out = rbee(args);
    assert_eq!(out.status.code(), Some(0), "rbee {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `SHELL -n` (parse only) on the script; `None` when that shell is not installed.
fn syntax_check(shell: &str, script: &str) -> Option<Output> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rbee-completion");
    std::fs::write(&file, script).unwrap();
    Command::new(shell).arg("-n").arg(&file).output().ok()
}

fn assert_parses(shell: &str, script: &str) {
    if let Some(out) = syntax_check(shell, script) {
        assert!(out.status.success(), "{shell} -n: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn completion_scripts_are_valid_and_name_the_commands() {
    let bash = ok_stdout(&["completions", "bash"]);
    let checked = syntax_check("bash", &bash).expect("bash runs");
    assert!(checked.status.success(), "bash -n: {}", String::from_utf8_lossy(&checked.stderr));
    for word in ["rbee", "sync", "status", "deployment", "--dry-run", "--config"] {
        assert!(bash.contains(word), "the bash script lacks {word}");
    }

    // zsh and fish are checked with `-n` where they are installed.
    let zsh = ok_stdout(&["completions", "zsh"]);
    assert!(zsh.contains("#compdef rbee") && zsh.contains("sync"), "{zsh}");
    assert_parses("zsh", &zsh);
    let fish = ok_stdout(&["completions", "fish"]);
    assert!(fish.contains("complete -c rbee") && fish.contains("sync"), "{fish}");
    assert_parses("fish", &fish);

    for shell in ["elvish", "powershell"] {
        assert!(ok_stdout(&["completions", shell]).contains("rbee"), "{shell}");
    }
}

#[test]
fn an_unknown_shell_is_a_usage_error_naming_the_valid_ones() {
    let out = rbee(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        assert!(err.contains(shell), "{err}");
    }
    assert!(out.stdout.is_empty());
}

/// A page's text, checked to be roff with its title header (`.TH rbee-sync 1 ...`, after the
/// two lines that define the apostrophe string).
fn page(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(is_page(&text, name.trim_end_matches(".1")), "{name} has no .TH header:\n{text}");
    text
}

fn is_page(text: &str, title: &str) -> bool {
    let th = text.lines().find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "));
    th.is_some_and(|l| l.starts_with(&format!(".TH {title} 1 ")))
}

#[test]
fn man_writes_a_page_per_subcommand_or_prints_rbee_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man/man1");
    let said = ok_stdout(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(said.contains("man pages"), "{said}");

    let main = page(&dir, "rbee.1");
    assert!(main.contains("completions") && main.contains("sync"), "{main}");
    let sync = page(&dir, "rbee-sync.1");
    assert!(sync.contains("dry\\-run"), "{sync}");
    page(&dir, "rbee-queen-start.1");
    page(&dir, "rbee-man.1");
    // Neither hidden commands nor clap's `help` subcommands get a page.
    for absent in ["rbee-help.1", "rbee-install-hive.1", "rbee-queen-help.1"] {
        assert!(!dir.join(absent).exists(), "{absent}");
    }

    let json = ok_stdout(&["man", "--json", "--dir", dir.to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["ok"], true);
    assert!(json["pages"].as_array().unwrap().len() > 10, "{json}");

    let stdout = ok_stdout(&["man"]);
    assert!(is_page(&stdout, "rbee"), "{stdout}");
    assert_eq!(stdout, main);
}

#[test]
fn help_lists_completions_and_man() {
    let help = ok_stdout(&["--help"]);
    for command in ["completions", "man"] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{command} ")))
            .unwrap_or_else(|| panic!("{help}"));
        assert!(line.split_whitespace().count() > 2, "no description: {line}");
    }
}
