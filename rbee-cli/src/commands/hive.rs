//! `rbee hive ...`: the queen's registry of hives and their capabilities (asked of a running
//! queen), and one hive's daemon started, stopped or checked as package operations.

use rbee_core::proto::operation::Operation;

use super::operation::{self, config_path, running_queen};
use crate::exit::{CliError, Exit, Outcome};
use crate::{Cli, HiveCommand, render};

pub(super) async fn run(cli: &Cli, what: &HiveCommand) -> Outcome {
    match what {
        HiveCommand::List => list(cli, None).await,
        HiveCommand::Get { alias } => list(cli, Some(alias)).await,
        HiveCommand::Capabilities { alias } => {
            let caps = running_queen(cli).await?.hive_capabilities(alias).await?;
            render::capabilities(cli.json, alias, &caps);
            Ok(Exit::Ok)
        }
        HiveCommand::Start { alias } => {
            operation::run(cli, Operation::HiveStart { alias: alias.clone(), config_path: config_path(cli) }, false)
                .await
        }
        HiveCommand::Stop { alias } => {
            operation::run(cli, Operation::HiveStop { alias: alias.clone(), config_path: config_path(cli) }, false)
                .await
        }
        HiveCommand::Status { alias } => {
            let op = Operation::PackageStatus {
                config_path: config_path(cli),
                verbose: true,
                hive_aliases: vec![alias.clone()],
            };
            operation::run(cli, op, true).await
        }
    }
}

/// `rbee hive list` / `rbee hive get`. The registry of a large fleet is megabytes of JSON: the
/// whole list with `--json` is passed on as the queen wrote it, and the table reads only the
/// fields it shows.
async fn list(cli: &Cli, only: Option<&str>) -> Outcome {
    let bytes = running_queen(cli).await?.hives_json(!cli.json).await?;
    let bad = |e: &dyn std::fmt::Display| CliError::Message(format!("the queen's hive list is not valid JSON: {e}"));
    let text = std::str::from_utf8(&bytes).map_err(|e| bad(&e))?;
    match (cli.json, only) {
        (true, None) => {
            // Checked to be one JSON array before it is passed on.
            serde_json::from_str::<Vec<serde::de::IgnoredAny>>(text).map_err(|e| bad(&e))?;
            render::raw_json(text);
        }
        (true, Some(alias)) => {
            let mut hives: Vec<rbee_queen::api::HiveEntry> = serde_json::from_str(text).map_err(|e| bad(&e))?;
            hives.retain(|h| h.heartbeat.alias == alias);
            if hives.is_empty() {
                return Err(no_such_hive(alias));
            }
            render::hives_json(&hives);
        }
        (false, only) => {
            let mut rows: Vec<render::HiveRow<'_>> = serde_json::from_str(text).map_err(|e| bad(&e))?;
            if let Some(alias) = only {
                rows.retain(|h| h.alias == alias);
                if rows.is_empty() {
                    return Err(no_such_hive(alias));
                }
            }
            render::hive_rows(&rows);
        }
    }
    Ok(Exit::Ok)
}

fn no_such_hive(alias: &str) -> CliError {
    CliError::Message(format!("no hive {alias} in the registry: it has not sent a heartbeat"))
}
