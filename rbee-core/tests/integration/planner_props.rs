//! Invariants of the planner, over generated fleets.

use std::collections::BTreeSet;

use proptest::prelude::*;
use rbee_core::plan::{PlanOptions, plan};
use rbee_core::state::{Actual, Desired, DesiredHive, HiveState, Observed};

use crate::support::{apply, artifact, converged, hive, installed};

const KINDS: [&str; 3] = ["llama-cpp", "vllm", "comfyui"];
const VERSIONS: [&str; 3] = ["0.1.0", "0.2.0", "1.0.0"];

fn arb_hive(alias: String) -> impl Strategy<Value = DesiredHive> {
    (0..3usize, proptest::collection::btree_map(0..3usize, 0..3usize, 0..=3), any::<bool>()).prop_map(
        move |(hv, workers, auto_start)| {
            let ws: Vec<(&str, &str)> = workers.iter().map(|(k, v)| (KINDS[*k], VERSIONS[*v])).collect();
            let mut h = hive(&alias, VERSIONS[hv], &ws);
            h.auto_start = auto_start;
            h
        },
    )
}

/// Some observed state for a hive: anything from nothing to a different fleet.
fn arb_state(want: DesiredHive) -> impl Strategy<Value = (DesiredHive, HiveState)> {
    (
        0..6usize,
        any::<bool>(),
        any::<bool>(),
        proptest::collection::btree_map(0..3usize, 0..3usize, 0..=3),
        0..3usize,
        0..4usize,
    )
        .prop_map(move |(shape, running, healthy, workers, hv, engine)| {
            let state = match shape {
                0 => HiveState::Unreachable { reason: "down".into() },
                1 => HiveState::Reachable(Observed::default()),
                2 => HiveState::Reachable(converged(&want)),
                _ => {
                    let bin = artifact("rbee-hive", VERSIONS[hv]);
                    HiveState::Reachable(Observed {
                        hive_binary: Some(installed(&bin)),
                        workers: workers
                            .iter()
                            .map(|(k, v)| {
                                (
                                    KINDS[*k].to_string(),
                                    installed(&artifact(&format!("rbee-worker-{}", KINDS[*k]), VERSIONS[*v])),
                                )
                            })
                            .collect(),
                        running,
                        pid: running.then_some(7),
                        healthy: running && healthy,
                        running_sha256: running.then(|| bin.sha256.clone()),
                        running_version: None,
                        engines: arb_engines(&want, engine),
                        gpu: false,
                        previous: Default::default(),
                        supervisor: None,
                        link: None,
                    })
                }
            };
            (want.clone(), state)
        })
}

/// The engines a host has: none (0), as declared (1), altered (2), another one (3).
fn arb_engines(
    want: &DesiredHive,
    shape: usize,
) -> std::collections::BTreeMap<String, rbee_core::state::InstalledEngine> {
    let mut engines = crate::support::converged_engines(want);
    for (kind, e) in engines.iter_mut() {
        match shape {
            2 => e.problem = Some(rbee_core::proto::engine::EngineProblem::Altered),
            3 => e.id = format!("other-{kind}"),
            _ => {}
        }
    }
    if shape == 0 {
        engines.clear();
    }
    engines
}

fn arb_fleet() -> impl Strategy<Value = (Desired, Actual)> {
    proptest::collection::btree_set("[a-z]{1,6}", 1..6)
        .prop_flat_map(|aliases| aliases.into_iter().map(|a| arb_hive(a).prop_flat_map(arb_state)).collect::<Vec<_>>())
        .prop_map(|pairs| {
            let mut d = Desired::default();
            let mut a = Actual::default();
            for (h, s) in pairs {
                a.hives.insert(h.alias.clone(), s);
                d.hives.insert(h.alias.clone(), h);
            }
            (d, a)
        })
}

/// Parses a hives.conf declaring `hives` in this order and resolves it against one release.
fn desired_from_config(hives: &[(String, Vec<&str>)]) -> Desired {
    let mut text = String::new();
    for (alias, kinds) in hives {
        let workers: Vec<String> = kinds.iter().map(|k| format!("{{ type = \"{k}\" }}")).collect();
        text.push_str(&format!(
            "[[hive]]\nalias = \"{alias}\"\nhostname = \"{alias}.lab\"\nworkers = [{}]\n\n",
            workers.join(", ")
        ));
    }
    let config = rbee_core::config::parse(None, (std::path::Path::new("hives.conf"), &text)).unwrap();
    let mut files = vec![("rbee-hive".to_owned(), b"hive".to_vec())];
    files.extend(KINDS.iter().map(|k| (format!("rbee-worker-{k}"), k.as_bytes().to_vec())));
    let source = rbee_core::artifact::ArtifactSource::memory("1.0.0", files);
    rbee_core::artifact::resolve(&config, &source).unwrap()
}

fn arb_options(aliases: Vec<String>) -> impl Strategy<Value = PlanOptions> {
    (
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(proptest::sample::subsequence(aliases.clone(), 0..=aliases.len())),
    )
        .prop_map(|(force, remove_extra, only)| {
            PlanOptions::default()
                .with_force(force)
                .with_remove_extra(remove_extra)
                .with_only(only.map(|o| o.into_iter().collect::<BTreeSet<_>>()))
        })
}

proptest! {
    #[test]
    fn plan_graph_is_acyclic_and_ordered((d, a) in arb_fleet(), force in any::<bool>(), remove_extra in any::<bool>()) {
        let p = plan(&d, &a, &PlanOptions::default().with_force(force).with_remove_extra(remove_extra));
        for hp in &p.hives {
            // Listed in a topological order: every dependency appears earlier.
            let mut seen = BTreeSet::new();
            for action in &hp.actions {
                for dep in &action.depends_on {
                    prop_assert!(seen.contains(dep), "{} depends on {} which is not before it", action.id, dep);
                }
                prop_assert!(seen.insert(action.id.clone()), "duplicate id {}", action.id);
            }
        }
    }

    /// The config is a list: the order in which hives (and each hive's workers) are declared
    /// must not change the plan. Two configs with the same content in different orders are
    /// parsed, resolved and planned against the same hosts.
    #[test]
    fn reordered_input_gives_the_identical_plan(
        fleet in proptest::collection::btree_map("[a-z]{1,6}", proptest::sample::subsequence(KINDS.to_vec(), 0..=3), 1..6),
        shapes in proptest::collection::vec(0..3usize, 6),
        seed in any::<u64>(),
    ) {
        let declared: Vec<(String, Vec<&str>)> = fleet.into_iter().collect();
        let mut shuffled = declared.clone();
        let n = shuffled.len();
        for i in 0..n { shuffled.swap(i, (seed as usize).wrapping_add(i * 7) % n); }
        for (_, kinds) in &mut shuffled { kinds.reverse(); }
        let (d1, d2) = (desired_from_config(&declared), desired_from_config(&shuffled));
        let mut a = Actual::default();
        for (i, (alias, h)) in d1.hives.iter().enumerate() {
            let state = match shapes[i] {
                0 => HiveState::Unreachable { reason: "down".into() },
                1 => HiveState::Reachable(Observed::default()),
                _ => HiveState::Reachable(converged(h)),
            };
            a.hives.insert(alias.clone(), state);
        }
        let options = PlanOptions::default();
        let (p1, p2) = (plan(&d1, &a, &options), plan(&d2, &a, &options));
        prop_assert_eq!(p1.to_string(), p2.to_string());
        prop_assert_eq!(serde_json::to_string(&p1).unwrap(), serde_json::to_string(&p2).unwrap());
    }

    #[test]
    fn applying_a_plan_converges(((d, a), options) in arb_fleet().prop_flat_map(|(d, a)| { let o = arb_options(d.hives.keys().cloned().collect()); (Just((d, a)), o) })) {
        let first = plan(&d, &a, &options);
        let after = apply(&first, &a);
        let again = plan(&d, &after, &options.clone().with_force(false));
        prop_assert!(again.is_empty(), "after applying\n{first}\nthe plan is still\n{again}");
    }
}
