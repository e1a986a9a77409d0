//! `rbee model ...`: models on a hive, through the queen.

use rbee_core::proto::operation::Operation;

use super::operation;
use crate::exit::Outcome;
use crate::{Cli, ModelCommand};

pub(super) async fn run(cli: &Cli, what: &ModelCommand) -> Outcome {
    let op = match what {
        ModelCommand::Download { hive, source, sha256, name } => Operation::ModelDownload {
            hive_alias: hive.clone(),
            source: source.clone(),
            sha256: sha256.clone(),
            name: name.clone(),
        },
        ModelCommand::List { hive } => Operation::ModelList { hive_alias: hive.clone() },
        ModelCommand::Get { hive, name } => Operation::ModelGet { hive_alias: hive.clone(), name: name.clone() },
        ModelCommand::Delete { hive, name } => Operation::ModelDelete { hive_alias: hive.clone(), name: name.clone() },
    };
    operation::run(cli, op, false).await
}
