//! `rbee queen start|stop|status|ensure`; what each does is in [`crate::queen::control`].

use super::operation::load;
use crate::exit::{Exit, Outcome};
use crate::{Cli, QueenCommand, queen, render};

pub(super) async fn run(cli: &Cli, what: &QueenCommand) -> Outcome {
    let config = load(cli)?;
    let message = queen::control(cli, &config, what).await?;
    render::message(cli.json, &message);
    Ok(Exit::Ok)
}
