//! One function per subcommand; each ends in rbee-core calls.

use std::collections::BTreeSet;

use rbee_core::artifact::{ArtifactSource, resolve};
use rbee_core::config::{self, Config, ConfigError};
use rbee_core::fleet::{LocalConnector, observe_fleet};
use rbee_core::plan::{PlanOptions, plan};

use crate::output::{Exit, error};
use crate::{Cli, Command, ConfigCommand, SyncArgs};

pub(crate) async fn run(cli: Cli) -> Exit {
    match &cli.command {
        Command::Validate => validate(&cli),
        Command::Config {
            what: ConfigCommand::Schema,
        } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&config::json_schema()).unwrap_or_default()
            );
            Exit::Ok
        }
        Command::Sync(args) => sync(&cli, args).await,
    }
}

fn load(cli: &Cli) -> Result<Config, Exit> {
    config::load(&config::ConfigFiles::locate(cli.config.as_deref()))
        .map_err(|e| report_config_error(cli.json, &e))
}

fn report_config_error(json: bool, e: &ConfigError) -> Exit {
    match e {
        ConfigError::Invalid(diags) if json => {
            println!("{}", serde_json::json!({ "ok": false, "errors": diags }));
            Exit::Error
        }
        ConfigError::Invalid(diags) => {
            for d in diags {
                eprintln!("{d}");
            }
            let n = diags.len();
            eprintln!(
                "error: the config has {n} problem{}",
                if n == 1 { "" } else { "s" }
            );
            Exit::Error
        }
        other => error(json, &other.to_string()),
    }
}

fn validate(cli: &Cli) -> Exit {
    let config = match load(cli) {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    let aliases: Vec<&str> = config.hives.iter().map(|h| h.alias.as_str()).collect();
    if cli.json {
        println!("{}", serde_json::json!({ "ok": true, "hives": aliases }));
    } else {
        println!(
            "config is valid: {} hive{} ({})",
            aliases.len(),
            if aliases.len() == 1 { "" } else { "s" },
            aliases.join(", ")
        );
    }
    Exit::Ok
}

/// The hives named by `--hive`, checked against the config.
fn selection(config: &Config, hives: &[String]) -> Result<Option<BTreeSet<String>>, String> {
    if hives.is_empty() {
        return Ok(None);
    }
    for alias in hives {
        if config.hive(alias).is_none() {
            let known: Vec<&str> = config.hives.iter().map(|h| h.alias.as_str()).collect();
            return Err(format!(
                "no hive {alias:?} in hives.conf (declared: {})",
                known.join(", ")
            ));
        }
    }
    Ok(Some(hives.iter().cloned().collect()))
}

async fn sync(cli: &Cli, args: &SyncArgs) -> Exit {
    let config = match load(cli) {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    let only = match selection(&config, &args.hives) {
        Ok(only) => only,
        Err(msg) => return error(cli.json, &msg),
    };
    let desired = match ArtifactSource::from_config(&config).and_then(|src| resolve(&config, &src))
    {
        Ok(d) => d,
        Err(e) => return error(cli.json, &e.to_string()),
    };
    let actual = observe_fleet(
        &config,
        &LocalConnector,
        only.as_ref(),
        config.package.ssh_timeout,
    )
    .await;
    let options = PlanOptions {
        force: args.force,
        remove_extra: args.remove_extra,
        only,
    };
    let plan = plan(&desired, &actual, &options);
    if !args.dry_run {
        return error(
            cli.json,
            "applying a plan is not built yet; run `rbee sync --dry-run` to see the plan",
        );
    }
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan.to_json()).unwrap_or_default()
        );
    } else {
        print!("{plan}");
    }
    let summary = plan.summary();
    if summary.unreachable > 0 {
        Exit::Error
    } else if plan.is_empty() {
        Exit::Ok
    } else {
        Exit::Drift
    }
}
