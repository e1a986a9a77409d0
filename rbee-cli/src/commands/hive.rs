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

async fn list(cli: &Cli, only: Option<&str>) -> Outcome {
    let mut hives = running_queen(cli).await?.hives().await?;
    if let Some(alias) = only {
        hives.retain(|h| h.heartbeat.alias == alias);
        if hives.is_empty() {
            return Err(CliError::Message(format!("no hive {alias} in the registry: it has not sent a heartbeat")));
        }
    }
    render::hives(cli.json, &hives);
    Ok(Exit::Ok)
}
