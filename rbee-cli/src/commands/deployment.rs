//! `rbee deployment ...`: the deployments the queen keeps served, asked of a running queen.

use super::operation::running_queen;
use crate::exit::{Exit, Outcome};
use crate::render::{say, say_json};
use crate::{Cli, DeploymentCommand, render};

pub(super) async fn run(cli: &Cli, what: &DeploymentCommand) -> Outcome {
    let queen = running_queen(cli).await?;
    match what {
        DeploymentCommand::List => {
            let all = queen.deployments().await?;
            render::deployments(cli.json, &all);
            Ok(if all.iter().all(|d| d.is_ready()) { Exit::Ok } else { Exit::Drift })
        }
        DeploymentCommand::Get { name } => {
            let one = queen.deployment(name).await?;
            render::deployment(cli.json, &one);
            Ok(if one.is_ready() { Exit::Ok } else { Exit::Drift })
        }
        DeploymentCommand::Rollback { name } => {
            let revision = queen.rollback(name).await?;
            if cli.json {
                say_json!("{}", serde_json::json!({"deployment": name, "revision": revision}));
            } else {
                say!(
                    "{name}: revision {revision} (the previous spec) is rolling out; follow it with `rbee deployment get {name}`"
                );
            }
            Ok(Exit::Ok)
        }
    }
}
