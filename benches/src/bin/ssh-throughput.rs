//! Upload throughput of one SshTransport connection to one test host (root only):
//! `cargo run --release -p rbee-benches --bin ssh-throughput -- [MiB] [parallel] [hosts]`.
//!
//! With `EXECS=K`, instead: what a command costs the host. Each host runs K commands that do
//! nothing (`true`, one after the other, on its one connection), and the machine's CPU seconds
//! are divided by the commands run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_benches::MachineCounters;
use rbee_core::config::HostKeyPolicy;
use rbee_core::transport::Transport;
use rbee_ssh::{SshTarget, SshTransport};

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let mib = args.first().copied().unwrap_or(64);
    let parallel = args.get(1).copied().unwrap_or(1);
    let nhosts = args.get(2).copied().unwrap_or(1);
    let bed = rbee_testbed::Testbed::new(nhosts).expect("test host");
    let mut transports = Vec::new();
    for h in &bed.hosts {
        let target = SshTarget {
            alias: "h1".into(),
            host: h.ip.clone(),
            port: 22,
            user: "root".into(),
            identity_files: vec![bed.user_key.clone()],
            known_hosts: bed.known_hosts.clone(),
            policy: HostKeyPolicy::Strict,
            connect_timeout: Duration::from_secs(10),
            use_agent: false,
        };
        transports.push(Arc::new(SshTransport::connect(target).await.expect("connect")));
    }
    if let Some(k) = std::env::var("EXECS").ok().and_then(|v| v.parse::<usize>().ok()) {
        let cpu0 = MachineCounters::now();
        let started = Instant::now();
        let tasks: Vec<_> = transports
            .iter()
            .map(|t| {
                let t = t.clone();
                tokio::spawn(async move {
                    for _ in 0..k {
                        let cmd = rbee_core::transport::RemoteCommand::new(["true"], Duration::from_secs(30));
                        assert!(t.run(cmd).await.expect("run").success());
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let cpu = MachineCounters::now().since(cpu0).cpu_s;
        let n = (k * nhosts) as f64;
        println!(
            "rbee-ssh: {nhosts} hosts x {k} commands in {:.2}s: machine CPU busy {cpu:.2}s, {:.2} ms a command",
            started.elapsed().as_secs_f64(),
            cpu * 1000.0 / n
        );
        return;
    }
    let data = Arc::new(vec![7u8; mib << 20]);
    // FROM_FILE=1: the bytes are streamed from a file, as a sync's artifacts are.
    let source = bed.dir.join("source");
    let from_file = std::env::var_os("FROM_FILE").is_some();
    if from_file {
        std::fs::write(&source, &*data).unwrap();
    }
    let cpu0 = MachineCounters::now();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in &transports {
        for i in 0..parallel {
            let (t, data, source) = (t.clone(), data.clone(), source.clone());
            tasks.push(tokio::spawn(async move {
                let bytes = if from_file {
                    rbee_core::transport::UploadData::File { path: &source, len: data.len() as u64 }
                } else {
                    rbee_core::transport::UploadData::Bytes(&data)
                };
                let name = format!("f{i}");
                let upload = rbee_core::transport::Upload::from_data(bytes, &name, 0o644, Duration::from_secs(120));
                t.upload(upload).await.expect("upload");
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let s = started.elapsed().as_secs_f64();
    let total = (mib * parallel * nhosts) as f64;
    println!(
        "rbee-ssh: {nhosts} hosts x {parallel} x {mib} MiB in {s:.2}s: {:.1} MiB/s, machine CPU busy {:.2}s",
        total / s,
        MachineCounters::now().since(cpu0).cpu_s
    );
    let cpu0 = MachineCounters::now();
    if std::env::var_os("ONLY_RBEE").is_some() {
        return;
    }
    let file = bed.dir.join("payload");
    std::fs::write(&file, &*data).unwrap();
    let started = Instant::now();
    let children: Vec<_> = bed
        .hosts
        .iter()
        .flat_map(|h| (0..parallel).map(move |i| (h, i)))
        .map(|(h, i)| {
            std::process::Command::new("ssh")
                .arg("-i")
                .arg(&bed.user_key)
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", bed.known_hosts.display()))
                .args(["-o", "BatchMode=yes"])
                .arg(format!("root@{}", h.ip))
                .arg(format!("cat > g{i}"))
                .stdin(std::fs::File::open(&file).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "OpenSSH:  {nhosts} hosts x {parallel} x {mib} MiB in {s:.2}s: {:.1} MiB/s, machine CPU busy {:.2}s",
        total / s,
        MachineCounters::now().since(cpu0).cpu_s
    );
}
