//! `rbee validate` and `rbee config schema`: the config files, checked in this process.

use rbee_core::config;

use super::operation::load;
use crate::exit::{Exit, Outcome};
use crate::{Cli, ConfigCommand, render};

pub(super) fn validate(cli: &Cli) -> Outcome {
    let config = load(cli)?;
    let aliases: Vec<&str> = config.hives.iter().map(|h| h.alias.as_str()).collect();
    render::valid(cli.json, &aliases);
    Ok(Exit::Ok)
}

pub(super) fn run(what: &ConfigCommand) -> Outcome {
    match what {
        ConfigCommand::Schema => render::schema(&config::json_schema()),
    }
    Ok(Exit::Ok)
}
