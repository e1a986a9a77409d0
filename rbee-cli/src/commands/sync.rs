//! `rbee sync|install|uninstall|status`: package operations on the declared hives, and the
//! removed imperative install commands.

use std::collections::BTreeSet;

use rbee_core::package;
use rbee_core::proto::operation::Operation;

use super::operation::{self, config_path};
use crate::exit::{CliError, Exit, Outcome};
use crate::{Cli, SyncArgs, render};

pub(super) async fn sync(cli: &Cli, args: &SyncArgs) -> Outcome {
    let mut hives = args.hives.clone();
    if args.retry_failed {
        let failed = package::last_failed().map_err(|e| CliError::Message(e.to_string()))?;
        let failed: BTreeSet<String> =
            if hives.is_empty() { failed } else { failed.into_iter().filter(|a| hives.contains(a)).collect() };
        if failed.is_empty() {
            render::nothing_to_retry(cli.json);
            return Ok(Exit::Ok);
        }
        hives = failed.into_iter().collect();
        render::retrying(cli.json, &hives);
    }
    let op = Operation::PackageSync {
        config_path: config_path(cli),
        dry_run: args.dry_run,
        remove_extra: args.remove_extra,
        force: args.force,
        hive_aliases: hives,
        batch: args.batch,
        locked: args.locked,
    };
    operation::run(cli, op, false).await
}

pub(super) async fn install(cli: &Cli, hive_alias: Option<String>, force: bool) -> Outcome {
    let op = Operation::PackageInstall { config_path: config_path(cli), force, hive_alias };
    operation::run(cli, op, false).await
}

pub(super) async fn uninstall(cli: &Cli, hive_alias: Option<String>, purge: bool) -> Outcome {
    let op = Operation::PackageUninstall { config_path: config_path(cli), hive_alias, purge };
    operation::run(cli, op, false).await
}

pub(super) async fn status(cli: &Cli, verbose: bool, hive_aliases: Vec<String>) -> Outcome {
    let op = Operation::PackageStatus { config_path: config_path(cli), verbose, hive_aliases };
    operation::run(cli, op, verbose).await
}

/// The imperative commands rbee no longer has: say what to do instead, exit non-zero.
pub(super) fn removed(op: &Operation) -> Outcome {
    Err(CliError::Message(op.check_supported().err().map(|r| r.to_string()).unwrap_or_default()))
}

pub(super) async fn rollback(cli: &Cli, hive_aliases: Vec<String>) -> Outcome {
    let op = Operation::PackageRollback { config_path: config_path(cli), hive_aliases };
    operation::run(cli, op, false).await
}
