//! queen_client: drive a running queen from a program: submit a `PackageStatus` job and
//! stream its typed events to the end.
//!
//! Run (with a queen running: `rbee queen start`):
//! `cargo run -p rbee-examples --example queen_client -- [CONFIG_DIR] [PORT]`

use rbee_core::proto::operation::Operation;
use rbee_queen::api::JobEventBody;
use rbee_queen::client::QueenClient;

#[tokio::main]
async fn main() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let config_dir = std::path::absolute(args.next().unwrap_or_else(|| "examples/config/local".into()))?;
    let port: u16 = args.next().map_or(Ok(8500), |p| p.parse())?;
    let token = std::fs::read_to_string(rbee_queen::token_path())?;
    let client = QueenClient::new(([127, 0, 0, 1], port).into(), token.trim());

    let op = Operation::PackageStatus { config_path: Some(config_dir), verbose: false, hive_aliases: Vec::new() };
    let job = client.submit(&op).await?;
    println!("submitted {}", job.job_id);
    let last = client
        .stream(&job.job_id, |event| {
            if let JobEventBody::Sync { event } = &event.body {
                println!("[{}] {}", event.alias(), serde_json::to_string(event).unwrap_or_default());
            }
        })
        .await?;
    let JobEventBody::Result { exit_code, result } = last.body else { unreachable!("stream ends on a result") };
    println!("result (exit {exit_code}): {}", serde_json::to_string(&result)?);
    Ok(std::process::ExitCode::from(exit_code))
}
