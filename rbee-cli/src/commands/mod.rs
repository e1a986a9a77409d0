//! One module per subcommand or group. Each parses its arguments, calls rbee-core or the
//! queen, and hands what it got to [`crate::render`]; errors come back here as a
//! [`CliError`] and are printed once.

mod config;
mod deployment;
mod generate;
mod hive;
mod infer;
mod jobs;
mod lock;
mod logs;
mod migrate;
mod model;
mod operation;
mod queen;
mod sync;
mod worker;

use crate::exit::{CliError, Exit, Outcome};
use crate::{Cli, Command};

pub(crate) async fn run(cli: Cli) -> Exit {
    dispatch(&cli).await.unwrap_or_else(|e: CliError| {
        crate::render::error(cli.json, &e);
        e.exit()
    })
}

async fn dispatch(cli: &Cli) -> Outcome {
    match &cli.command {
        Command::Validate => config::validate(cli),
        Command::Config { what } => config::run(what),
        Command::Lock { what } => lock::run(cli, what).await,
        Command::Completions { shell } => generate::completions(*shell),
        Command::Man { dir } => generate::man(cli.json, dir.as_deref()),
        Command::Sync(args) => sync::sync(cli, args).await,
        Command::Install { hive, force } => sync::install(cli, hive.clone(), *force).await,
        Command::Status { verbose, hives } => sync::status(cli, *verbose, hives.clone()).await,
        Command::Uninstall { hive, purge } => sync::uninstall(cli, hive.clone(), *purge).await,
        Command::Rollback { hives } => sync::rollback(cli, hives.clone()).await,
        Command::Queen { what } => queen::run(cli, what).await,
        Command::Jobs { job_id } => jobs::run(cli, job_id.as_deref()).await,
        Command::Logs { hive, worker, tail, follow } => logs::run(cli, hive, worker.as_deref(), *tail, *follow).await,
        Command::Hive { what } => hive::run(cli, what).await,
        Command::Deployment { what } => deployment::run(cli, what).await,
        Command::Worker { what } => worker::run(cli, what).await,
        Command::Model { what } => model::run(cli, what).await,
        Command::Infer { model, hive, max_tokens, prompt } => {
            infer::run(cli, model, hive.clone(), *max_tokens, prompt).await
        }
        Command::Migrate { output, force, from_ssh_config } => {
            migrate::run(cli, output, *force, *from_ssh_config).await
        }
        Command::InstallHive { .. } => sync::removed(&rbee_core::Operation::HiveInstall { alias: None }),
        Command::InstallWorker { .. } => sync::removed(&rbee_core::Operation::WorkerDownload { worker_type: None }),
    }
}
