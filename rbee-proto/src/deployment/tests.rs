use super::*;
use proptest::prelude::*;

const NOW: u64 = 1_000_000;

fn spec(name: &str, replicas: u32, hives: &[&str]) -> DeploymentSpec {
    DeploymentSpec {
        name: name.into(),
        model: "/models/tiny.gguf".into(),
        sha256: None,
        worker: "reference".into(),
        replicas,
        hives: hives.iter().map(|h| (*h).to_owned()).collect(),
        device: Device::Cpu,
        gpu_memory_mib: None,
        share_gpu: false,
        args: Vec::new(),
        ready_timeout_ms: DEFAULT_READY_TIMEOUT_MS,
        drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
    }
}

fn gpu(index: u32, total: u64, used: u64) -> Gpu {
    Gpu { index, name: "H100".into(), memory_total_mib: total, memory_used_mib: used, driver: "550".into() }
}

fn hive(alias: &str, processes: Vec<WorkerProcess>) -> HiveView {
    HiveView {
        alias: alias.into(),
        reach: Reach::Fresh,
        worker_types: vec!["reference".into()],
        gpus: Vec::new(),
        processes,
        models: BTreeMap::new(),
        installed: BTreeMap::new(),
    }
}

fn replica(id: &str, spec: &DeploymentSpec, state: WorkerState, device: &str) -> WorkerProcess {
    WorkerProcess {
        id: id.into(),
        worker_type: spec.worker.clone(),
        model: spec.model_arg(),
        device: device.into(),
        port: 9000,
        pid: 7,
        started_ms: NOW - 5000,
        last_heartbeat_ms: Some(NOW),
        adopted: false,
        replica: Some(ReplicaLabel {
            deployment: spec.name.clone(),
            spec_hash: spec.spec_hash(),
            worker_version: None,
        }),
        args: spec.args.clone(),
        state,
    }
}

fn decide_with(deployments: &[DeploymentMemory], hives: &[HiveView], in_flight: &InFlight) -> Decision {
    decide(Inputs { deployments, hives, in_flight, now_ms: NOW, reschedule_after_ms: DEFAULT_RESCHEDULE_AFTER_MS })
}

fn starts(d: &Decision) -> Vec<(String, String)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Start { hive, device, .. } => Some((hive.clone(), device.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_fresh_deployment_spreads_its_replicas_over_its_hives() {
    let d = spec("chat", 3, &["a", "b"]);
    let decision =
        decide_with(&[DeploymentMemory::new(d)], &[hive("a", vec![]), hive("b", vec![])], &InFlight::default());
    assert_eq!(
        starts(&decision),
        vec![("a".into(), "cpu".into()), ("b".into(), "cpu".into()), ("a".into(), "cpu".into())]
    );
    assert_eq!(decision.status[0].phase, Phase::Progressing);
}

#[test]
fn a_deployment_with_every_replica_ready_needs_nothing() {
    let d = spec("chat", 2, &["a", "b"]);
    let hives = [
        hive("a", vec![replica("w1", &d, WorkerState::Ready, "cpu")]),
        hive("b", vec![replica("w2", &d, WorkerState::Ready, "cpu")]),
    ];
    let decision = decide_with(&[DeploymentMemory::new(d)], &hives, &InFlight::default());
    assert!(decision.actions.is_empty(), "{:?}", decision.actions);
    assert_eq!((decision.status[0].phase, decision.status[0].ready), (Phase::Ready, 2));
    assert_eq!(decision.status[0].message, "revision 1");
}

#[test]
fn a_crashed_replica_is_cleared_and_restarted_after_its_backoff() {
    let d = spec("chat", 1, &["a"]);
    let crashed = WorkerState::Crashed { exit_code: None, signal: Some(9), message: "was killed by signal 9".into() };
    let mut memory = DeploymentMemory::new(d.clone());
    let decision =
        decide_with(&[memory.clone()], &[hive("a", vec![replica("w1", &d, crashed, "cpu")])], &InFlight::default());
    assert!(
        matches!(&decision.actions[..], [Action::Clear { worker_id, .. }] if worker_id == "w1"),
        "{:?}",
        decision.actions
    );
    // The driver records the failure; the next round waits out the backoff, then starts one.
    memory.fail(NOW, "was killed by signal 9".into(), true);
    assert_eq!(memory.next_attempt_ms, NOW + 1000);
    let decision = decide_with(&[memory.clone()], &[hive("a", vec![])], &InFlight::default());
    assert!(starts(&decision).is_empty());
    assert!(decision.status[0].message.contains("next attempt in 1s"), "{}", decision.status[0].message);
    let later = decide(Inputs {
        deployments: &[memory],
        hives: &[hive("a", vec![])],
        in_flight: &InFlight::default(),
        now_ms: NOW + 1000,
        reschedule_after_ms: DEFAULT_RESCHEDULE_AFTER_MS,
    });
    assert_eq!(starts(&later).len(), 1);
}

#[test]
fn backoff_doubles_to_a_cap_and_three_failures_are_a_crash_loop() {
    let delays: Vec<u64> = (1..=12).map(backoff_ms).collect();
    assert_eq!(&delays[..5], &[1000, 2000, 4000, 8000, 16000]);
    assert_eq!(delays[11], BACKOFF_CAP_MS);
    assert_eq!(backoff_ms(u32::MAX), BACKOFF_CAP_MS);
    let d = spec("chat", 1, &["a"]);
    let mut memory = DeploymentMemory::new(d);
    for _ in 0..3 {
        memory.fail(NOW - 100_000, "exited with status 3".into(), true);
    }
    let decision = decide_with(&[memory], &[hive("a", vec![])], &InFlight::default());
    assert_eq!(decision.status[0].phase, Phase::CrashLoop);
    assert!(decision.status[0].message.starts_with("crash-loop: 3 failures"), "{}", decision.status[0].message);
    assert_eq!(starts(&decision).len(), 1, "after the backoff, one more try");
}

#[test]
fn a_silent_hive_keeps_its_replicas_until_reschedule_after_then_they_move() {
    let d = spec("chat", 1, &["a", "b"]);
    let mut a = hive("a", vec![replica("w1", &d, WorkerState::Ready, "cpu")]);
    a.reach = Reach::Silent { ms: 30_000, never: false };
    let memory = [DeploymentMemory::new(d.clone())];
    let decision = decide_with(&memory, &[a.clone(), hive("b", vec![])], &InFlight::default());
    assert!(starts(&decision).is_empty(), "not yet: {:?}", decision.actions);
    a.reach = Reach::Silent { ms: 60_000, never: false };
    let decision = decide_with(&memory, &[a.clone(), hive("b", vec![])], &InFlight::default());
    assert_eq!(starts(&decision), vec![("b".into(), "cpu".into())]);
    assert_eq!(decision.status[0].instances[0].state, "lost");
    let rejected = &decision.status[0].rejected;
    assert!(rejected.iter().any(|r| r.hive == "a" && r.reason.starts_with("stale")), "{rejected:?}");
    // It comes back with its old replica while the new one runs: one of them is stopped.
    let mut b = hive("b", vec![replica("w2", &d, WorkerState::Ready, "cpu")]);
    b.processes[0].started_ms = NOW - 1000;
    a.reach = Reach::Fresh;
    let decision = decide_with(&memory, &[a, b], &InFlight::default());
    let stops: Vec<&Action> = decision.actions.iter().filter(|a| matches!(a, Action::Stop { .. })).collect();
    assert!(
        matches!(stops[..], [Action::Stop { worker_id, reason: StopReason::Surplus, .. }] if worker_id == "w2"),
        "the newer replica goes: {stops:?}"
    );
    assert!(starts(&decision).is_empty());
}

#[test]
fn a_changed_spec_rolls_out_new_before_old_and_drains_the_old() {
    let old = spec("chat", 1, &["a"]);
    let mut new = old.clone();
    new.args = vec!["--ctx".into(), "4096".into()];
    let mut memory = DeploymentMemory::new(old.clone());
    assert!(memory.apply(new.clone()));
    assert_eq!((memory.current.number, memory.rollout.clone()), (2, Some(Rollout { from: 1 })));
    let deployments = [memory.clone()];
    // 1. The new replica starts beside the old one.
    let hives = [hive("a", vec![replica("old", &old, WorkerState::Ready, "cpu")])];
    let decision = decide_with(&deployments, &hives, &InFlight::default());
    assert_eq!(starts(&decision).len(), 1, "{:?}", decision.actions);
    // 2. Still starting: wait.
    let hives = [hive(
        "a",
        vec![replica("old", &old, WorkerState::Ready, "cpu"), replica("new", &new, WorkerState::Starting, "cpu")],
    )];
    assert!(decide_with(&deployments, &hives, &InFlight::default()).actions.is_empty());
    // 3. Ready: drain the old one.
    let hives = [hive(
        "a",
        vec![replica("old", &old, WorkerState::Ready, "cpu"), replica("new", &new, WorkerState::Ready, "cpu")],
    )];
    let decision = decide_with(&deployments, &hives, &InFlight::default());
    assert!(
        matches!(&decision.actions[..], [Action::Drain { worker_id, .. }] if worker_id == "old"),
        "{:?}",
        decision.actions
    );
    // 4. Draining with a request in flight: wait; once idle: stop.
    let mut flight = InFlight::default();
    flight.draining.insert(("a".into(), "old".into()), NOW - 10);
    flight.requests.insert(("a".into(), "old".into()), 1);
    assert!(decide_with(&deployments, &hives, &flight).actions.is_empty());
    flight.requests.clear();
    let decision = decide_with(&deployments, &hives, &flight);
    assert!(
        matches!(&decision.actions[..], [Action::Stop { worker_id, reason: StopReason::Replaced, .. }] if worker_id == "old"),
        "{:?}",
        decision.actions
    );
    // 5. Only the new one left: the rollout is done.
    let hives = [hive("a", vec![replica("new", &new, WorkerState::Ready, "cpu")])];
    let decision = decide_with(&deployments, &hives, &InFlight::default());
    assert_eq!(decision.actions, vec![Action::RolloutDone { deployment: "chat".into() }]);
}

#[test]
fn a_rollout_whose_replicas_keep_failing_goes_back_to_the_previous_revision() {
    let old = spec("chat", 1, &["a"]);
    let mut bad = old.clone();
    bad.args = vec!["--broken".into()];
    let mut memory = DeploymentMemory::new(old.clone());
    memory.apply(bad);
    for _ in 0..CRASH_LOOP_FAILURES {
        memory.fail(NOW - 100_000, "exited with status 3".into(), true);
    }
    let hives = [hive("a", vec![replica("old", &old, WorkerState::Ready, "cpu")])];
    let decision = decide_with(&[memory.clone()], &hives, &InFlight::default());
    let reason = decision.actions.iter().find_map(|a| match a {
        Action::RolloutFailed { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    let reason = reason.expect("the rollout fails");
    assert!(starts(&decision).is_empty());
    memory.roll_back_failed(reason);
    assert_eq!(memory.current.number, 1);
    let decision = decide_with(&[memory], &hives, &InFlight::default());
    assert!(decision.actions.is_empty(), "{:?}", decision.actions);
    assert_eq!(decision.status[0].phase, Phase::RolloutFailed);
    assert!(decision.status[0].message.ends_with("; serving revision 1"), "{}", decision.status[0].message);
}

#[test]
fn rollback_makes_the_previous_spec_a_new_revision() {
    let one = spec("chat", 1, &["a"]);
    let mut two = one.clone();
    two.args = vec!["x".into()];
    let mut memory = DeploymentMemory::new(one.clone());
    assert!(memory.rollback().is_err(), "nothing to go back to");
    memory.apply(two);
    assert_eq!(memory.rollback(), Ok(3));
    assert_eq!(memory.current.spec.spec_hash(), one.spec_hash());
    assert_eq!(memory.revision_of(&one.spec_hash()), Some(3));
}

#[test]
fn a_url_model_is_downloaded_before_a_replica_starts() {
    let mut d = spec("chat", 1, &["a"]);
    d.model = "https://models.example/tiny.gguf?download=1".into();
    d.sha256 = Some(Sha256::from_bytes([1; 32]));
    assert_eq!(d.model_file().as_deref(), Some("tiny.gguf"));
    let memory = [DeploymentMemory::new(d.clone())];
    let decision = decide_with(&memory, &[hive("a", vec![])], &InFlight::default());
    assert!(
        matches!(&decision.actions[..], [Action::Download { name, .. }] if name == "tiny.gguf"),
        "{:?}",
        decision.actions
    );
    let mut downloading = InFlight::default();
    downloading.downloading.insert(("chat".into(), "a".into()));
    assert!(decide_with(&memory, &[hive("a", vec![])], &downloading).actions.is_empty());
    let mut a = hive("a", vec![]);
    a.models.insert("tiny.gguf".into(), d.sha256.clone());
    assert_eq!(starts(&decide_with(&memory, &[a], &InFlight::default())).len(), 1);
}

#[test]
fn placement_explains_every_rejected_hive() {
    let mut d = spec("chat", 1, &["gone", "stale", "no-worker", "no-gpu", "small"]);
    d.device = Device::AnyCuda;
    d.gpu_memory_mib = Some(40_000);
    let mut stale = hive("stale", vec![]);
    stale.reach = Reach::Silent { ms: 20_000, never: false };
    let mut no_worker = hive("no-worker", vec![]);
    no_worker.worker_types.clear();
    let mut small = hive("small", vec![]);
    small.gpus = vec![gpu(0, 24_000, 1000)];
    let hives = [stale, no_worker, hive("no-gpu", vec![]), small];
    let decision = decide_with(&[DeploymentMemory::new(d)], &hives, &InFlight::default());
    let reasons: Vec<String> =
        decision.status[0].rejected.iter().map(|r| format!("{}: {}", r.hive, r.reason)).collect();
    assert_eq!(
        reasons,
        vec![
            "gone: has not reported to this queen",
            "stale: stale: last heartbeat 20s ago",
            "no-worker: worker type reference is not installed",
            "no-gpu: has no GPU",
            "small: no GPU has 40000 MiB free (cuda:0 has 23000 MiB)",
        ]
    );
    assert!(decision.status[0].eligible.is_empty());
    assert_eq!(decision.status[0].phase, Phase::Degraded);
}

#[test]
fn undeclared_replicas_are_stopped() {
    let gone = spec("gone", 1, &["a"]);
    let decision =
        decide_with(&[], &[hive("a", vec![replica("w", &gone, WorkerState::Ready, "cpu")])], &InFlight::default());
    assert!(
        matches!(&decision.actions[..], [Action::Stop { reason: StopReason::Undeclared, .. }]),
        "{:?}",
        decision.actions
    );
}

#[test]
fn a_spec_hash_ignores_count_and_hives_but_not_args() {
    let a = spec("chat", 1, &["a"]);
    let mut b = a.clone();
    b.replicas = 5;
    b.hives.push("b".into());
    assert_eq!(a.spec_hash(), b.spec_hash());
    b.args.push("--x".into());
    assert_ne!(a.spec_hash(), b.spec_hash());
    assert_eq!(a.spec_hash().len(), 16);
}

fn arb_fleet() -> impl Strategy<Value = (Vec<DeploymentSpec>, Vec<HiveView>)> {
    let one_hive = (0u32..4, any::<bool>(), any::<bool>());
    let deployment = (1u32..6, 0u8..3, any::<bool>(), prop::collection::vec(0usize..5, 0..5));
    (prop::collection::vec(one_hive, 1..5), prop::collection::vec(deployment, 1..4)).prop_map(|(hives, deployments)| {
        let hives: Vec<HiveView> = hives
            .into_iter()
            .enumerate()
            .map(|(i, (gpus, stale, has_worker))| {
                let mut h = hive(&format!("h{i}"), vec![]);
                h.gpus = (0..gpus).map(|g| gpu(g, 80_000, 0)).collect();
                if stale {
                    h.reach = Reach::Silent { ms: 10_000, never: false };
                }
                if !has_worker {
                    h.worker_types.clear();
                }
                h
            })
            .collect();
        let aliases: Vec<String> = hives.iter().map(|h| h.alias.clone()).collect();
        let specs = deployments
            .into_iter()
            .enumerate()
            .map(|(i, (replicas, device, share, picks))| {
                let mut s = spec(&format!("d{i}"), replicas, &[]);
                s.hives = if picks.is_empty() {
                    aliases.clone()
                } else {
                    let mut chosen: Vec<String> = picks.iter().map(|p| aliases[p % aliases.len()].clone()).collect();
                    chosen.dedup();
                    chosen
                };
                s.device = [Device::Cpu, Device::AnyCuda, Device::Cuda(1)][device as usize];
                s.share_gpu = share;
                s
            })
            .collect();
        (specs, hives)
    })
}

proptest! {
    /// Same inputs, same decision; never more starts than declared replicas; never two replicas
    /// of deployments without `share_gpu` on one GPU.
    #[test]
    fn placement_is_deterministic_bounded_and_never_doubles_a_gpu((specs, hives) in arb_fleet()) {
        let memory: Vec<DeploymentMemory> = specs.iter().cloned().map(DeploymentMemory::new).collect();
        let first = decide_with(&memory, &hives, &InFlight::default());
        let second = decide_with(&memory, &hives, &InFlight::default());
        prop_assert_eq!(&first, &second);
        let mut seats: BTreeMap<(String, String), Vec<bool>> = BTreeMap::new();
        for spec in &specs {
            let mine: Vec<&Action> = first.actions.iter().filter(|a| a.deployment() == spec.name).collect();
            prop_assert!(mine.len() <= spec.replicas as usize);
            for a in mine {
                let Action::Start { hive, device, .. } = a else { continue };
                prop_assert!(spec.hives.contains(hive));
                let h = hives.iter().find(|h| &h.alias == hive).unwrap();
                prop_assert_eq!(h.reach, Reach::Fresh);
                if device != "cpu" {
                    seats.entry((hive.clone(), device.clone())).or_default().push(spec.share_gpu);
                }
            }
        }
        for ((hive, device), sharers) in seats {
            prop_assert!(sharers.len() == 1 || sharers.iter().all(|s| *s), "{} {} {:?}", hive, device, sharers);
        }
    }
}

#[test]
fn a_new_replica_not_ready_in_time_fails_the_rollout_at_once() {
    let old = spec("chat", 1, &["a"]);
    let mut slow = old.clone();
    slow.args = vec!["--huge".into()];
    slow.ready_timeout_ms = 60_000;
    let mut memory = DeploymentMemory::new(old.clone());
    memory.apply(slow.clone());
    let mut late = replica("new", &slow, WorkerState::Starting, "cpu");
    late.started_ms = NOW - 60_001;
    let hives = [hive("a", vec![replica("old", &old, WorkerState::Ready, "cpu"), late])];
    let decision = decide_with(&[memory], &hives, &InFlight::default());
    assert!(
        decision
            .actions
            .iter()
            .any(|a| matches!(a, Action::Stop { worker_id, reason: StopReason::NotReady, .. } if worker_id == "new")),
        "{:?}",
        decision.actions
    );
    let reason = decision.actions.iter().find_map(|a| match a {
        Action::RolloutFailed { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(reason.as_deref(), Some("a replica of revision 2 was not ready within 60s"));
    assert!(!decision.actions.iter().any(|a| matches!(a, Action::Stop { worker_id, .. } if worker_id == "old")));
}

/// The plan a sync shows for deployments, as text: pinned, so a change to placement or wording
/// is a visible diff.
#[test]
fn snapshot_of_a_deployment_plan() {
    let chat = spec("chat", 3, &["gpu-1", "gpu-2", "cpu-1"]);
    let mut vision = spec("vision", 2, &["gpu-1", "gpu-2"]);
    vision.device = Device::AnyCuda;
    vision.model = "https://models.example/llava.gguf".into();
    vision.sha256 = Some(Sha256::from_bytes([0xab; 32]));
    let mut shrink = spec("embed", 1, &["cpu-1"]);
    shrink.worker = "reference".into();
    let mut gpu_1 = hive("gpu-1", vec![]);
    gpu_1.gpus = vec![gpu(0, 80_000, 0), gpu(1, 80_000, 0)];
    gpu_1.models.insert("llava.gguf".into(), vision.sha256.clone());
    let mut gpu_2 = hive("gpu-2", vec![]);
    gpu_2.gpus = vec![gpu(0, 24_000, 0)];
    let cpu_1 = hive(
        "cpu-1",
        vec![
            replica("e1", &shrink, WorkerState::Ready, "cpu"),
            replica("e2", &shrink, WorkerState::Starting, "cpu"),
            replica("old", &spec("retired", 1, &["cpu-1"]), WorkerState::Ready, "cpu"),
        ],
    );
    let memory: Vec<DeploymentMemory> = [chat, vision, shrink].into_iter().map(DeploymentMemory::new).collect();
    let decision = decide_with(&memory, &[gpu_1, gpu_2, cpu_1], &InFlight::default());
    let text: Vec<String> = decision.actions.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "cpu-1: stop replica old of retired (no longer declared)",
            "gpu-1: start a replica of chat (revision 1, cpu)",
            "gpu-2: start a replica of chat (revision 1, cpu)",
            "cpu-1: start a replica of chat (revision 1, cpu)",
            "gpu-1: start a replica of vision (revision 1, cuda:0)",
            "gpu-2: download model llava.gguf for vision from https://models.example/llava.gguf (sha256:abababababab)",
            "cpu-1: stop replica e2 of embed (surplus)",
        ]
    );
    let status: Vec<String> =
        decision.status.iter().map(|s| format!("{} {}/{} {:?}", s.name, s.ready, s.replicas, s.phase)).collect();
    assert_eq!(status, ["chat 0/3 Progressing", "vision 0/2 Progressing", "embed 1/1 Ready"]);
}

#[test]
fn a_replica_of_a_worker_version_no_longer_installed_is_replaced_new_before_old() {
    let d = spec("chat", 1, &["a"]);
    let mut running = replica("w1", &d, WorkerState::Ready, "cpu");
    running.replica.as_mut().unwrap().worker_version = Some("0.1.0".into());
    let mut a = hive("a", vec![running]);
    a.installed.insert("reference".into(), "0.1.0".into());
    let memory = [DeploymentMemory::new(d)];
    assert!(decide_with(&memory, &[a.clone()], &InFlight::default()).actions.is_empty());
    // A sync installed 0.2.0: a new replica starts beside the old one.
    a.installed.insert("reference".into(), "0.2.0".into());
    let decision = decide_with(&memory, &[a], &InFlight::default());
    assert_eq!(starts(&decision), vec![("a".into(), "cpu".into())]);
    assert!(!decision.actions.iter().any(|a| matches!(a, Action::Stop { .. } | Action::Drain { .. })));
}

#[test]
fn placement_spreads_many_deployments_over_the_whole_fleet() {
    let hives: Vec<HiveView> = (0..10).map(|i| hive(&format!("h{i}"), vec![])).collect();
    let aliases: Vec<String> = hives.iter().map(|h| h.alias.clone()).collect();
    let memory: Vec<DeploymentMemory> = (0..20)
        .map(|i| {
            let mut s = spec(&format!("d{i}"), 1, &[]);
            s.hives = aliases.clone();
            DeploymentMemory::new(s)
        })
        .collect();
    let decision = decide_with(&memory, &hives, &InFlight::default());
    let mut per_hive: BTreeMap<String, usize> = BTreeMap::new();
    for (hive, _) in starts(&decision) {
        *per_hive.entry(hive).or_default() += 1;
    }
    assert_eq!(per_hive.len(), 10, "{per_hive:?}");
    assert!(per_hive.values().all(|n| *n == 2), "{per_hive:?}");
}

#[test]
fn phase_names_are_their_json_names() {
    for phase in [Phase::Ready, Phase::Progressing, Phase::Degraded, Phase::CrashLoop, Phase::RolloutFailed] {
        assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
    }
}
