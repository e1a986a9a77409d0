//! drift_check: exit non-zero when any hive drifted from the config — a cron or CI job.
//!
//! Run: `cargo run -p rbee-examples --example drift_check -- ~/.config/rbee`

use rbee_core::{artifact::ArtifactSource, config, execute::ExecuteOptions, fleet::LocalConnector, package};

#[tokio::main]
async fn main() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "examples/config/local".into());
    let config = config::load(&config::ConfigFiles::locate(Some(dir.as_ref())))?;
    let source = ArtifactSource::from_config(&config)?;
    let options = ExecuteOptions::from_settings(&config.package);
    let report = package::status(&config, &source, &LocalConnector, None, &options).await?;
    for hive in &report.hives {
        println!("{}: {}", hive.alias, serde_json::to_string(&hive.state)?);
    }
    Ok(std::process::ExitCode::from(report.exit_code()))
}
