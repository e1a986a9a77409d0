//! `rbee logs --hive A [--worker ID] [--tail N] [--follow]`: a hive's or a worker's log, read
//! on the host by its hive and passed on by the queen.

use std::io::Write;

use rbee_core::proto::hive::LogQuery;

use super::operation::running_queen;
use crate::Cli;
use crate::exit::{Exit, Outcome};

pub(super) async fn run(cli: &Cli, hive: &str, worker: Option<&str>, tail: Option<usize>, follow: bool) -> Outcome {
    let client = running_queen(cli).await?;
    let query = LogQuery { worker: worker.map(str::to_owned), tail, follow };
    let client = if follow { client.with_idle_timeout(std::time::Duration::from_secs(60)) } else { client };
    let stdout = std::io::stdout();
    client
        .logs(hive, &query, |line| {
            let mut out = stdout.lock();
            let written = if cli.json {
                let event = serde_json::json!({ "hive": hive, "worker": worker, "line": line });
                writeln!(out, "{event}")
            } else {
                writeln!(out, "{line}")
            };
            // A closed stdout (`rbee logs … | head`) ends the command quietly.
            written.and_then(|()| out.flush()).is_ok()
        })
        .await?;
    Ok(Exit::Ok)
}
