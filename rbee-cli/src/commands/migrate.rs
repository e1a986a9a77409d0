//! `rbee migrate`: the running fleet written as a hives.conf (the text is made by
//! [`crate::migrate`]).

use std::path::Path;

use rbee_core::config;

use super::operation::load;
use crate::exit::{CliError, Exit, Outcome};
use crate::{Cli, queen, render};

pub(super) async fn run(cli: &Cli, output: &Path, force: bool, from_ssh_config: bool) -> Outcome {
    // The queen's registry, when there is a config and a queen; ~/.ssh/config alone otherwise.
    let hives = match load(cli) {
        Ok(config) => match queen::connect(&config).await {
            Ok(client) => client.hives().await?,
            Err(_) if from_ssh_config => Vec::new(),
            Err(e) => return Err(format!("{e}; start it (`rbee queen start`) or use --from-ssh-config").into()),
        },
        Err(e) if from_ssh_config => {
            // Still said, as before, though the hives then come from ~/.ssh/config alone.
            render::error(cli.json, &e);
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let ssh = from_ssh_config
        .then(|| rbee_ssh::ssh_config::SshConfig::load(&config::home_dir().join(".ssh/config")).unwrap_or_default());
    let text = crate::migrate::render(&hives, ssh.as_ref());
    if let Err(e) = config::parse(None, (output, &text)) {
        return Err(CliError::Message(format!("the migrated config does not validate (please report this): {e}")));
    }
    crate::migrate::write(output, &text, force)?;
    render::migrated(cli.json, output, hives.len());
    Ok(Exit::Ok)
}
