//! Builders for desired and actual states, and a simulator that applies a plan.

use std::collections::BTreeMap;

use rbee_core::config::TransportKind;
use rbee_core::plan::{ActionKind, Binary, Plan};
use rbee_core::state::{Actual, Artifact, Desired, DesiredHive, HiveState, Installed, Observed};

pub fn artifact(name: &str, version: &str) -> Artifact {
    Artifact {
        name: name.to_owned(),
        version: version.to_owned(),
        sha256: rbee_core::artifact::sha256_of(format!("{name}@{version}").as_bytes()),
        size: 1000,
    }
}

pub fn installed(a: &Artifact) -> Installed {
    Installed { sha256: a.sha256.clone(), version: Some(a.version.clone()) }
}

/// A hive wanting the hive binary at `version` and these workers.
pub fn hive(alias: &str, version: &str, workers: &[(&str, &str)]) -> DesiredHive {
    DesiredHive {
        attached: false,
        link: None,
        alias: alias.to_owned(),
        hostname: format!("{alias}.lab"),
        transport: TransportKind::Ssh,
        hive_port: 8600,
        auto_start: true,
        hive: std::sync::Arc::new(artifact("rbee-hive", version)),
        workers: workers
            .iter()
            .map(|(kind, v)| (kind.to_string(), std::sync::Arc::new(artifact(&format!("rbee-worker-{kind}"), v))))
            .collect(),
        engines: workers
            .iter()
            .filter(|(kind, _)| *kind == "llama-cpp")
            .map(|(kind, v)| (kind.to_string(), llama_engine(v)))
            .collect(),
    }
}

/// The default llama-cpp engine of a release `version`: a cpu tarball.
pub fn llama_engine(version: &str) -> rbee_core::state::DesiredEngine {
    rbee_core::state::DesiredEngine {
        source: rbee_core::state::EngineSource::Artifact { variant: None },
        variants: [("cpu".to_owned(), artifact("engine-llama-cpp-cpu.tar.gz", version))].into(),
        wheels: Vec::new(),
        source_name: "test source".into(),
    }
}

/// The engines of `want`, as installed by a successful sync.
pub fn converged_engines(want: &DesiredHive) -> BTreeMap<String, rbee_core::state::InstalledEngine> {
    want.engines
        .iter()
        .map(|(kind, e)| {
            let install = e.pick(kind, false);
            let installed = rbee_core::state::InstalledEngine {
                id: install.id(),
                program: install.program(kind),
                version: "b1".into(),
                problem: None,
            };
            (kind.clone(), installed)
        })
        .collect()
}

pub fn desired(hives: Vec<DesiredHive>) -> Desired {
    Desired { hives: hives.into_iter().map(|h| (h.alias.clone(), h)).collect() }
}

/// What a host looks like right after a successful sync of `want`.
pub fn converged(want: &DesiredHive) -> Observed {
    Observed {
        hive_binary: Some(installed(&want.hive)),
        workers: want.workers.iter().map(|(k, a)| (k.clone(), installed(a))).collect(),
        running: want.auto_start,
        pid: want.auto_start.then_some(100),
        healthy: want.auto_start,
        running_sha256: want.auto_start.then(|| want.hive.sha256.clone()),
        running_version: want.auto_start.then(|| want.hive.version.clone()),
        engines: converged_engines(want),
        gpu: false,
        previous: Default::default(),
        supervisor: None,
        link: None,
    }
}

pub fn actual(hives: Vec<(&str, HiveState)>) -> Actual {
    Actual { hives: hives.into_iter().map(|(a, s)| (a.to_owned(), s)).collect::<BTreeMap<_, _>>() }
}

/// Applies every action of `plan` to `actual`, as a perfect executor would.
pub fn apply(plan: &Plan, actual: &Actual) -> Actual {
    let mut next = actual.clone();
    for hp in &plan.hives {
        let Some(HiveState::Reachable(o)) = next.hives.get_mut(&hp.alias) else {
            continue;
        };
        for action in &hp.actions {
            match &action.kind {
                ActionKind::InstallBinary { binary: Binary::Hive, artifact, .. } => {
                    o.hive_binary = Some(installed(artifact))
                }
                ActionKind::InstallBinary { binary: Binary::Worker(kind), artifact, .. } => {
                    o.workers.insert(kind.clone(), installed(artifact));
                }
                ActionKind::RemoveWorker { worker, .. } => {
                    o.workers.remove(worker);
                }
                ActionKind::StartHive { .. } | ActionKind::RestartHive { .. } => {
                    let bin = o.hive_binary.clone().expect("a hive is started only once installed");
                    o.running = true;
                    o.pid = Some(o.pid.map_or(100, |p| p + 1));
                    o.healthy = true;
                    o.running_sha256 = Some(bin.sha256);
                    o.running_version = bin.version;
                }
                ActionKind::StopHive => {
                    o.running = false;
                    o.healthy = false;
                    o.pid = None;
                    o.running_sha256 = None;
                }
                ActionKind::InstallEngine { worker, engine, .. } => {
                    let e = rbee_core::state::InstalledEngine {
                        id: engine.id(),
                        program: engine.program(worker),
                        version: "b1".into(),
                        problem: None,
                    };
                    o.engines.insert(worker.clone(), e);
                }
                ActionKind::WaitHealthy { .. } | ActionKind::Rollback { .. } => {}
                ActionKind::Uninstall { .. } => {
                    o.hive_binary = None;
                    o.workers.clear();
                    o.engines.clear();
                }
            }
        }
    }
    next
}
