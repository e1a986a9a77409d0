//! `rbee completions SHELL` and `rbee man [--dir DIR]`: shell completion scripts and man pages,
//! generated from the same clap definitions that parse the command line, so they always list
//! the commands and flags of this `rbee`.

use std::io::Write as _;
use std::path::Path;

use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::exit::{CliError, Exit, Outcome};
use crate::{Cli, render};

/// The program the scripts complete.
const BIN: &str = "rbee";

pub(super) fn completions(shell: Shell) -> Outcome {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN, &mut script);
    print_raw(&script)
}

pub(super) fn man(json: bool, dir: Option<&Path>) -> Outcome {
    let pages = pages().map_err(|e| CliError::Message(format!("cannot render the man pages: {e}")))?;
    let Some(dir) = dir else {
        // The first page is rbee.1.
        return print_raw(pages.first().map_or(&[][..], |(_, page)| page));
    };
    std::fs::create_dir_all(dir).map_err(|e| CliError::Message(format!("cannot create {}: {e}", dir.display())))?;
    let mut written = Vec::with_capacity(pages.len());
    for (name, page) in &pages {
        let path = dir.join(name);
        rbee_core::fsio::write_atomic(&path, page, 0o644)
            .map_err(|e| CliError::Message(format!("cannot write {}: {e}", path.display())))?;
        written.push(path);
    }
    render::man_pages_written(json, dir, &written);
    Ok(Exit::Ok)
}

/// Every page as (file name, roff): rbee.1 first, then one per visible subcommand, nested ones
/// too (rbee-queen-start.1); no `help` subcommands and none of the hidden ones.
fn pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = without_help_subcommands(Cli::command());
    // Building names each subcommand's page after its path (`rbee-queen-start`).
    cmd.build();
    let mut pages = Vec::new();
    add_pages(&cmd, &mut pages)?;
    Ok(pages)
}

fn without_help_subcommands(cmd: clap::Command) -> clap::Command {
    let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_owned()).collect();
    names.iter().fold(cmd.disable_help_subcommand(true), |cmd, name| cmd.mut_subcommand(name, without_help_subcommands))
}

fn add_pages(cmd: &clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render(&mut page)?;
    pages.push((man.get_filename(), page));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        add_pages(sub, pages)?;
    }
    Ok(())
}

/// Writes generated text to stdout as it is; a closed pipe (`rbee completions bash | head`)
/// is not an error.
fn print_raw(bytes: &[u8]) -> Outcome {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(Exit::Ok),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Exit::Ok),
        Err(e) => Err(CliError::Message(format!("cannot write to stdout: {e}"))),
    }
}
