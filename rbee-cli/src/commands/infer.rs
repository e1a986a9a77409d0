//! `rbee infer`: a prompt run on a ready worker; the answer streams to stdout.

use rbee_core::proto::operation::Operation;

use super::operation;
use crate::Cli;
use crate::exit::Outcome;

pub(super) async fn run(
    cli: &Cli,
    model: &str,
    hive_alias: Option<String>,
    max_tokens: Option<u32>,
    prompt: &str,
) -> Outcome {
    let op = Operation::Infer { hive_alias, model: model.to_owned(), prompt: prompt.to_owned(), max_tokens };
    operation::run(cli, op, false).await
}
