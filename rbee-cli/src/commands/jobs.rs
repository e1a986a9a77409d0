//! `rbee jobs [JOB_ID]`: the queen's recent jobs, or one followed to its end.

use super::operation::running_queen;
use crate::exit::{Exit, Outcome};
use crate::progress::Renderer;
use crate::{Cli, queen, render};

pub(super) async fn run(cli: &Cli, job_id: Option<&str>) -> Outcome {
    let client = running_queen(cli).await?;
    match job_id {
        None => {
            render::jobs(cli.json, &client.jobs().await?);
            Ok(Exit::Ok)
        }
        Some(id) => {
            let result = queen::follow(&client, id, &Renderer::new(cli.json), false).await?;
            render::result(cli.json, &result, false)
        }
    }
}
