//! sync_with_events: run a real sync with a custom event handler that prints one line per
//! event, then read the report. The hive lives in a temporary directory and is uninstalled
//! at the end, so this touches nothing of yours.
//!
//! Run: `cargo run -p rbee-examples --example sync_with_events`
//! (the workspace binaries must be built: `cargo build --workspace --bins`).

use std::path::Path;

use rbee_core::artifact::ArtifactSource;
use rbee_core::config;
use rbee_core::execute::{ExecuteOptions, SyncEvent, SyncEventKind};
use rbee_core::fleet::LocalConnector;
use rbee_core::package::{self, SyncRequest};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let home = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let hives = format!(
        "[[hive]]\nalias = \"demo\"\nhostname = \"localhost\"\nhive_port = {port}\nlocal_home = {:?}\nworkers = [{{ type = \"reference\" }}]\n",
        home.path().display().to_string()
    );
    let config = config::parse(None, (Path::new("hives.conf"), &hives))?;
    let source = ArtifactSource::from_config(&config)?;
    let options = ExecuteOptions::from_settings(&config.package);

    let on_event = |event: SyncEvent| match &event.kind {
        SyncEventKind::StepStarted { description, .. } => println!("[{}] start  {description}", event.alias),
        SyncEventKind::StepFinished { step, elapsed_ms } => {
            println!("[{}] done   {step} in {elapsed_ms} ms", event.alias)
        }
        SyncEventKind::StepFailed { error, .. } => println!("[{}] failed {error}", event.alias),
        SyncEventKind::HiveDone { outcome } => println!("[{}] {outcome:?}", event.alias),
        _ => {}
    };
    let outcome =
        package::sync(&config, &source, &LocalConnector, &SyncRequest::default(), &options, &on_event).await?;
    let report = outcome.report.expect("not a dry run");
    println!("overall: {:?}, {} bytes transferred", report.overall(), report.bytes_transferred());

    // Clean up: stop the hive and remove everything.
    package::uninstall(&config, &source, &LocalConnector, None, true, &options, &|_| {}).await?;
    Ok(())
}
