//! The `--dry-run` text of the planner for the situations users meet.

use rbee_core::plan::{PlanOptions, plan};
use rbee_core::state::{HiveState, Observed};

use crate::support::{actual, artifact, converged, desired, hive, installed};

fn reachable(o: Observed) -> HiveState {
    HiveState::Reachable(o)
}

#[test]
fn nothing_installed() {
    let d = desired(vec![hive("gpu-1", "0.1.0", &[("vllm", "0.1.0"), ("llama-cpp", "0.1.0")])]);
    let a = actual(vec![("gpu-1", reachable(Observed::default()))]);
    insta::assert_snapshot!(plan(&d, &a, &PlanOptions::default()).to_string());
}

#[test]
fn everything_in_sync() {
    let h = hive("gpu-1", "0.1.0", &[("vllm", "0.1.0")]);
    let a = actual(vec![("gpu-1", reachable(converged(&h)))]);
    let p = plan(&desired(vec![h]), &a, &PlanOptions::default());
    assert!(p.is_empty());
    insta::assert_snapshot!(p.to_string());
}

#[test]
fn worker_version_upgrade() {
    let old = hive("gpu-1", "0.1.0", &[("vllm", "0.1.0"), ("llama-cpp", "0.1.0")]);
    let new = hive("gpu-1", "0.1.0", &[("vllm", "0.2.0"), ("llama-cpp", "0.1.0")]);
    let a = actual(vec![("gpu-1", reachable(converged(&old)))]);
    insta::assert_snapshot!(plan(&desired(vec![new]), &a, &PlanOptions::default()).to_string());
}

#[test]
fn hive_binary_upgrade_restarts_the_hive() {
    let old = hive("gpu-1", "0.1.0", &[]);
    let new = hive("gpu-1", "0.2.0", &[]);
    let a = actual(vec![("gpu-1", reachable(converged(&old)))]);
    insta::assert_snapshot!(plan(&desired(vec![new]), &a, &PlanOptions::default()).to_string());
}

fn with_extra_worker() -> (rbee_core::Desired, rbee_core::Actual) {
    let h = hive("gpu-1", "0.1.0", &[("vllm", "0.1.0")]);
    let mut o = converged(&h);
    o.workers.insert("comfyui".into(), installed(&artifact("rbee-worker-comfyui", "0.1.0")));
    (desired(vec![h]), actual(vec![("gpu-1", reachable(o))]))
}

#[test]
fn extra_worker_kept() {
    let (d, a) = with_extra_worker();
    let p = plan(&d, &a, &PlanOptions::default());
    assert!(p.is_empty(), "an undeclared worker is only a note without --remove-extra");
    insta::assert_snapshot!(p.to_string());
}

#[test]
fn extra_worker_removed() {
    let (d, a) = with_extra_worker();
    let options = PlanOptions::default().with_remove_extra(true);
    insta::assert_snapshot!(plan(&d, &a, &options).to_string());
}

#[test]
fn force() {
    let h = hive("gpu-1", "0.1.0", &[("vllm", "0.1.0")]);
    let a = actual(vec![("gpu-1", reachable(converged(&h)))]);
    let options = PlanOptions::default().with_force(true);
    insta::assert_snapshot!(plan(&desired(vec![h]), &a, &options).to_string());
}

#[test]
fn unreachable_host() {
    let h1 = hive("gpu-1", "0.1.0", &[("vllm", "0.1.0")]);
    let h2 = hive("gpu-2", "0.1.0", &[("vllm", "0.1.0")]);
    let a = actual(vec![
        ("gpu-1", reachable(converged(&h1))),
        ("gpu-2", HiveState::Unreachable { reason: "cannot connect to gpu-2.lab: no route to host".into() }),
    ]);
    insta::assert_snapshot!(plan(&desired(vec![h1, h2]), &a, &PlanOptions::default()).to_string());
}

#[test]
fn hive_filter() {
    let hives: Vec<_> = ["gpu-1", "gpu-2", "gpu-3"].iter().map(|a| hive(a, "0.1.0", &[("vllm", "0.1.0")])).collect();
    let a = actual(vec![("gpu-2", reachable(Observed::default()))]);
    let options = PlanOptions::default().with_only(Some(["gpu-2".to_owned()].into()));
    insta::assert_snapshot!(plan(&desired(hives), &a, &options).to_string());
}

#[test]
fn installed_but_stopped() {
    let h = hive("gpu-1", "0.1.0", &[("vllm", "0.1.0")]);
    let mut o = converged(&h);
    o.running = false;
    o.healthy = false;
    o.pid = None;
    o.running_sha256 = None;
    o.running_version = None;
    let a = actual(vec![("gpu-1", reachable(o))]);
    insta::assert_snapshot!(plan(&desired(vec![h]), &a, &PlanOptions::default()).to_string());
}

#[test]
fn running_but_unhealthy_is_restarted() {
    let h = hive("gpu-1", "0.1.0", &[]);
    let mut o = converged(&h);
    o.healthy = false;
    let a = actual(vec![("gpu-1", reachable(o))]);
    insta::assert_snapshot!(plan(&desired(vec![h]), &a, &PlanOptions::default()).to_string());
}

#[test]
fn plan_json_shape() {
    let h = hive("gpu-1", "0.1.0", &[("vllm", "0.1.0")]);
    let a = actual(vec![("gpu-1", reachable(Observed::default()))]);
    let json = plan(&desired(vec![h]), &a, &PlanOptions::default()).to_json();
    insta::assert_json_snapshot!(json);
}

/// Plan rendering shortened digests with `&s[..12]`, which panicked on a non-ASCII digest.
/// A plan (from a job's stream, say) with such a digest is now refused when it is read, so
/// rendering only ever sees checked digests.
#[test]
fn a_plan_with_a_non_ascii_digest_is_an_error_not_a_panic() {
    let h = hive("gpu-1", "0.1.0", &[("vllm", "0.1.0")]);
    let a = actual(vec![("gpu-1", reachable(Observed::default()))]);
    let p = plan(&desired(vec![h.clone()]), &a, &PlanOptions::default());
    let text = serde_json::to_string(&p).unwrap();
    let good: rbee_core::Plan = serde_json::from_str(&text).unwrap();
    assert!(good.to_string().contains(&format!("sha256:{}", &h.hive.sha256.as_str()[..12])));
    let hostile = text.replace(h.hive.sha256.as_str(), &"é".repeat(32));
    let err = serde_json::from_str::<rbee_core::Plan>(&hostile).unwrap_err();
    assert!(err.to_string().contains("not a sha256 digest"), "{err}");
}

#[test]
fn attached_hive_gets_its_workers_only() {
    let mut h = hive("queen-host", "0.1.0", &[("llama-cpp", "0.1.0")]);
    h.attached = true;
    let d = desired(vec![h]);
    let a = actual(vec![("queen-host", reachable(Observed::default()))]);
    let p = plan(&d, &a, &PlanOptions::default());
    insta::assert_snapshot!(p.to_string());
    let after = crate::support::apply(&p, &a);
    assert!(plan(&d, &after, &PlanOptions::default()).is_empty(), "no hive binary or daemon is expected");
    let forced = plan(&d, &after, &PlanOptions::default().with_force(true));
    assert!(forced.hives[0].actions.iter().all(|a| a.id.contains("/worker/") || a.id.contains("/engine/")), "{forced}");
}
