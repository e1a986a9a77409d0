//! `rbee worker ...`: worker processes and the worker catalog on a hive, through the queen.

use rbee_core::proto::operation::Operation;

use super::operation;
use crate::exit::Outcome;
use crate::{Cli, WorkerCommand};

pub(super) async fn run(cli: &Cli, what: &WorkerCommand) -> Outcome {
    let op = match what {
        WorkerCommand::Spawn { hive, worker_type, model, device, timeout } => Operation::WorkerSpawn {
            hive_alias: hive.clone(),
            worker_type: worker_type.clone(),
            model: model.clone(),
            device: device.clone(),
            ready_timeout_ms: Some(timeout.saturating_mul(1000)),
            args: Vec::new(),
            replica: None,
            no_wait: false,
        },
        WorkerCommand::List { hive } => Operation::WorkerProcessList { hive_alias: hive.clone() },
        WorkerCommand::Get { hive, id } => {
            Operation::WorkerProcessGet { hive_alias: hive.clone(), worker_id: id.clone() }
        }
        WorkerCommand::Delete { hive, id, grace } => Operation::WorkerProcessDelete {
            hive_alias: hive.clone(),
            worker_id: id.clone(),
            grace_ms: Some(grace.saturating_mul(1000)),
        },
        WorkerCommand::Refresh { hive } => Operation::WorkerCatalogRefresh { hive_alias: hive.clone() },
    };
    operation::run(cli, op, false).await
}
