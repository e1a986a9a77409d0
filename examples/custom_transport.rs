//! custom_transport: implement `Transport` for something new — here a transport that
//! records every command and upload, delegating to `LocalTransport` — and sync through it.
//! A real one might go through a bastion, a container runtime or a serial console.
//!
//! Run: `cargo run -p rbee-examples --example custom_transport`
//! (the workspace binaries must be built: `cargo build --workspace --bins`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rbee_core::artifact::ArtifactSource;
use rbee_core::config::{self, HiveConfig};
use rbee_core::execute::ExecuteOptions;
use rbee_core::fleet::{Connector, local_transport};
use rbee_core::package::{self, SyncRequest};
use rbee_core::transport::{
    CommandOutput, LocalTransport, Progress, RemoteCommand, Transport, TransportError, Upload, UploadData,
};

/// Records what it is asked to do, then does it locally.
struct Recording {
    inner: LocalTransport,
    log: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Transport for Recording {
    fn describe(&self) -> String {
        format!("recording {}", self.inner.describe())
    }
    async fn run(&self, command: RemoteCommand) -> Result<CommandOutput, TransportError> {
        // argv[2] of `sh -c SCRIPT` is the script; its first line says enough.
        let what = command.argv.get(2).and_then(|s| s.lines().find(|l| !l.starts_with("set "))).unwrap_or("");
        self.log.lock().unwrap().push(format!("run    {what}"));
        self.inner.run(command).await
    }
    async fn upload(&self, file: Upload<'_>) -> Result<(), TransportError> {
        self.log.lock().unwrap().push(format!("upload {} ({} bytes)", file.path, file.data.len()));
        self.inner.upload(file).await
    }
    // Optional: without it, rbee uploads the input to a temporary file and runs the command
    // on that (two round trips instead of one).
    async fn run_with_input(
        &self,
        command: RemoteCommand,
        input: UploadData<'_>,
        progress: Progress<'_>,
    ) -> Result<CommandOutput, TransportError> {
        let what = command.argv.get(2).and_then(|s| s.lines().next()).unwrap_or("");
        self.log.lock().unwrap().push(format!("stream {what} ({} bytes)", input.len()));
        self.inner.run_with_input(command, input, progress).await
    }
    async fn read_file(&self, path: &str, max: u64, deadline: Duration) -> Result<Option<Vec<u8>>, TransportError> {
        self.log.lock().unwrap().push(format!("read   {path}"));
        self.inner.read_file(path, max, deadline).await
    }
}

/// Hands every hive a recording transport.
struct RecordingConnector(Arc<Mutex<Vec<String>>>);

#[async_trait]
impl Connector for RecordingConnector {
    async fn connect(&self, hive: &HiveConfig) -> Result<Arc<dyn Transport>, TransportError> {
        Ok(Arc::new(Recording { inner: local_transport(hive), log: self.0.clone() }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let home = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let hives = format!(
        "[[hive]]\nalias = \"recorded\"\nhostname = \"localhost\"\nhive_port = {port}\nlocal_home = {:?}\n",
        home.path().display().to_string()
    );
    let config = config::parse(None, (Path::new("hives.conf"), &hives))?;
    let source = ArtifactSource::from_config(&config)?;
    let options = ExecuteOptions::from_settings(&config.package);
    let log = Arc::new(Mutex::new(Vec::new()));
    let connector = RecordingConnector(log.clone());

    let outcome = package::sync(&config, &source, &connector, &SyncRequest::default(), &options, &|_| {}).await?;
    println!("sync: {:?}", outcome.report.expect("not a dry run").overall());
    for line in log.lock().unwrap().iter() {
        println!("{line}");
    }
    package::uninstall(&config, &source, &connector, None, true, &options, &|_| {}).await?;
    Ok(())
}
