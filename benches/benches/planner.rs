//! Planning a large fleet: 10,000 hives x 4 workers, a mix of fresh, converged, drifted and
//! unreachable hosts. Run with `cargo bench -p rbee-benches --bench planner`.

use std::collections::BTreeMap;

use criterion::{Criterion, criterion_group, criterion_main};
use rbee_core::config::TransportKind;
use rbee_core::plan::{PlanOptions, plan};
use rbee_core::state::{Actual, Artifact, Desired, DesiredHive, HiveState, Installed, Observed};

fn artifact(name: &str, version: &str) -> Artifact {
    Artifact {
        name: name.into(),
        version: version.into(),
        sha256: rbee_core::Sha256::parse(&format!("{:0>64}", format!("{name}{version}").len())).unwrap(),
        size: 8 << 20,
    }
}

fn fleet(hives: usize, workers: usize) -> (Desired, Actual) {
    let mut desired = Desired::default();
    let mut actual = Actual::default();
    let hive_bin = std::sync::Arc::new(artifact("rbee-hive", "1.0.0"));
    for i in 0..hives {
        let alias = format!("gpu-{i:05}");
        let ws: BTreeMap<String, std::sync::Arc<Artifact>> = (0..workers)
            .map(|w| {
                (format!("engine-{w}"), std::sync::Arc::new(artifact(&format!("rbee-worker-engine-{w}"), "1.0.0")))
            })
            .collect();
        let observed = match i % 4 {
            0 => HiveState::Reachable(Observed::default()),
            1 => HiveState::Reachable(Observed {
                hive_binary: Some(Installed { sha256: hive_bin.sha256.clone(), version: Some("1.0.0".into()) }),
                workers: ws
                    .iter()
                    .map(|(k, a)| (k.clone(), Installed { sha256: a.sha256.clone(), version: None }))
                    .collect(),
                running: true,
                pid: Some(1),
                healthy: true,
                running_sha256: Some(hive_bin.sha256.clone()),
                running_version: None,
                ..Observed::default()
            }),
            2 => HiveState::Reachable(Observed {
                hive_binary: Some(Installed {
                    sha256: rbee_core::Sha256::parse(&"f".repeat(64)).unwrap(),
                    version: Some("0.9.0".into()),
                }),
                workers: BTreeMap::from([(
                    "engine-0".into(),
                    Installed { sha256: rbee_core::Sha256::parse(&"f".repeat(64)).unwrap(), version: None },
                )]),
                running: true,
                ..Observed::default()
            }),
            _ => HiveState::Unreachable { reason: "no route to host".into() },
        };
        actual.hives.insert(alias.clone(), observed);
        desired.hives.insert(
            alias.clone(),
            DesiredHive {
                attached: false,
                link: None,
                alias,
                hostname: format!("10.0.{}.{}", i / 250, i % 250),
                transport: TransportKind::Ssh,
                hive_port: 8600,
                auto_start: true,
                hive: hive_bin.clone(),
                workers: ws,
                engines: Default::default(),
            },
        );
    }
    (desired, actual)
}

fn bench_planner(c: &mut Criterion) {
    let (desired, actual) = fleet(10_000, 4);
    let options = PlanOptions::default();
    let mut group = c.benchmark_group("plan");
    group.sample_size(20);
    group.bench_function("10000 hives x 4 workers", |b| b.iter(|| plan(&desired, &actual, &options)));
    group.bench_function("10000 hives x 4 workers, rendered as text", |b| {
        b.iter(|| plan(&desired, &actual, &options).to_string())
    });
    group.finish();
}

criterion_group!(benches, bench_planner);
criterion_main!(benches);
