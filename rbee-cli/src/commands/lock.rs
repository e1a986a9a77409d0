//! `rbee lock update`: rbee.lock resolved again from the source, in this process (it reads the
//! config and the source and writes one file beside hives.conf; no host is touched).

use std::sync::Arc;

use rbee_core::artifact::ArtifactSource;
use rbee_core::config::ConfigFiles;

use super::operation::load;
use crate::exit::{CliError, Exit, Outcome};
use crate::{Cli, LockCommand, render};

pub(super) async fn run(cli: &Cli, what: &LockCommand) -> Outcome {
    match what {
        LockCommand::Update { hive } => {
            let config = load(cli)?;
            let http = Arc::new(rbee_queen::http::HyperGet::default());
            let source =
                ArtifactSource::from_config_with(&config, Some(http)).map_err(|e| CliError::Message(e.to_string()))?;
            let files = ConfigFiles::locate(cli.config.as_deref());
            let update = rbee_core::lock::update(&files, &config, &source, hive.as_deref())
                .await
                .map_err(|e| CliError::Message(e.to_string()))?;
            render::lock_updated(cli.json, &update.path, &update.changes);
            Ok(Exit::Ok)
        }
    }
}
