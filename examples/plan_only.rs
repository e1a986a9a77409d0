//! plan_only: load a config, observe its hives (one round trip each), print the plan as
//! text and as JSON. Changes nothing.
//!
//! Run: `cargo run -p rbee-examples --example plan_only -- examples/config/local`
//! (the workspace binaries must be built: `cargo build --workspace --bins`).

use std::path::PathBuf;

use rbee_core::artifact::{ArtifactSource, resolve};
use rbee_core::config::{self, ConfigFiles};
use rbee_core::fleet::{LocalConnector, connect_fleet, observe_fleet};
use rbee_core::plan::{PlanOptions, plan};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).map_or_else(|| PathBuf::from("examples/config/local"), PathBuf::from);
    let config = config::load(&ConfigFiles::locate(Some(&dir)))?;
    let desired = resolve(&config, &ArtifactSource::from_config(&config)?)?;
    let connections = connect_fleet(&config, &LocalConnector, None).await;
    let actual = observe_fleet(&config, &connections, config.package.ssh_timeout).await;
    let plan = plan(&desired, &actual, &PlanOptions::default());
    println!("{plan}");
    println!("{}", serde_json::to_string_pretty(&plan.to_json())?);
    Ok(())
}
