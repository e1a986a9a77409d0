//! How commands reach rbee-core: the config, the running queen, and package operations run
//! in the queen (started when needed) or, with `--in-process`, right here. Both give the
//! same events and the same [`OperationResult`](rbee_core::package::OperationResult),
//! rendered by the same code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rbee_core::config::{self, Config, ConfigFiles};
use rbee_core::execute::InstallFault;
use rbee_core::fleet::Connector;
use rbee_core::package::{self, RunContext};
use rbee_core::proto::operation::Operation;
use rbee_queen::client::QueenClient;
use rbee_ssh::SshConnector;

use crate::Cli;
use crate::exit::{CliError, Outcome};
use crate::progress::Renderer;
use crate::{queen, render};

pub(super) fn load(cli: &Cli) -> Result<Config, CliError> {
    Ok(config::load(&ConfigFiles::locate(cli.config.as_deref()))?)
}

/// The running queen of this config; never starts one.
pub(super) async fn running_queen(cli: &Cli) -> Result<QueenClient, CliError> {
    let config = load(cli)?;
    Ok(queen::connect(&config).await?)
}

/// The config location as an absolute path, so the queen (another process, another working
/// directory) reads the same files.
pub(super) fn config_path(cli: &Cli) -> Option<PathBuf> {
    let files = ConfigFiles::locate(cli.config.as_deref());
    let dir = files.hives_conf.parent().map(Path::to_path_buf).unwrap_or_default();
    let abs = std::path::absolute(&dir).unwrap_or(dir);
    if files.hives_conf.file_name().is_some_and(|n| n != config::HIVES_CONF) {
        return Some(std::path::absolute(&files.hives_conf).unwrap_or(files.hives_conf));
    }
    Some(abs)
}

/// Test hooks, honoured in-process and in debug builds only (a release `rbee` ignores them):
/// `RBEE_TEST_FAULT=alias=corrupt-upload,other=stop-before-rename`.
fn faults() -> Result<BTreeMap<String, InstallFault>, crate::exit::CliError> {
    let mut faults = BTreeMap::new();
    if !cfg!(debug_assertions) {
        return Ok(faults);
    }
    if let Ok(spec) = std::env::var("RBEE_TEST_FAULT") {
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (alias, fault) = part
                .split_once('=')
                .ok_or_else(|| crate::exit::CliError::Message(format!("RBEE_TEST_FAULT: bad entry {part:?}")))?;
            let fault = match fault {
                "corrupt-upload" => InstallFault::CorruptUpload,
                "stop-before-rename" => InstallFault::StopBeforeRename,
                other => {
                    return Err(crate::exit::CliError::Message(format!("RBEE_TEST_FAULT: unknown fault {other:?}")));
                }
            };
            faults.insert(alias.to_owned(), fault);
        }
    }
    Ok(faults)
}

/// Runs a package operation here or in the queen, rendering its events and its result.
pub(super) async fn run(cli: &Cli, op: Operation, verbose: bool) -> Outcome {
    let renderer = Renderer::new(cli.json);
    if matches!(op, Operation::PackageSync { .. } | Operation::PackageInstall { .. })
        && let Some(warning) = load(cli).ok().and_then(|c| c.package.insecure_source_warning())
    {
        eprintln!("{warning}");
    }
    let result = if cli.in_process && !op.should_forward_to_hive() {
        let mut ctx = RunContext::default();
        ctx.faults = faults()?;
        ctx.http = Some(Arc::new(rbee_queen::http::HyperGet::default()));
        let connect = |c: &Config| Arc::new(SshConnector::new(c)) as Arc<dyn Connector>;
        let on_event = |e| renderer.event(e);
        let result = package::run_operation(&op, &connect, &ctx, &on_event).await;
        // Deployments are kept by the queen's reconciler: a sync without the queen installs,
        // but cannot start or watch them.
        if matches!(op, Operation::PackageSync { .. } | Operation::PackageStatus { .. })
            && load(cli).is_ok_and(|c| !c.deployments.is_empty())
        {
            eprintln!(
                "note: the [[deployment]] tables were not applied: deployments are kept by the queen; run this \
                 command without --in-process (RBEE_IN_PROCESS) to apply them"
            );
        }
        result
    } else {
        let config = load(cli)?;
        let client = queen::ensure(cli, &config).await?;
        let submitted = client.submit(&op).await?;
        queen::follow(&client, &submitted.job_id, &renderer, true).await?
    };
    render::result(cli.json, &result, verbose)
}
