//! Scenarios, generation, closed-loop reactions and the invariant fuzzer,
//! through the real binary.

mod common;

use common::{file_rows, root, run, stderr};
use flightrec::policy::{ApprovalMode, Policy, Verdict};
use flightrec::scenario::Scenario;
use flightrec::scenario::sim::simulate;
use std::path::Path;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn bundled_scenarios_load_and_validation_errors_name_line_and_field() {
    for name in [
        "runaway-copy-loop",
        "retry-storm",
        "session-splitting",
        "steady-mix",
        "nightly-batch",
    ] {
        let path = root().join(format!("scenarios/{name}.yaml"));
        Scenario::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.yaml",
        "version: 1\nstart: 2026-11-20T10:00:00Z\nduration: 10m\nagents:\n  - name: a\n    mix:\n      - {tool: t, weight: 0}\n    arrival: {kind: poisson, rate: fast}\n    on_refusal: sulk\n    loops:\n      - {tool: x, every: -1s}\n",
    );
    let out = run(&[
        "generate",
        &bad,
        "-o",
        dir.path().join("x.parquet").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for needle in [
        "bad.yaml:7:27: agents[0].mix[0].weight must be an integer of at least 1, got 0",
        "bad.yaml:8:36: agents[0].arrival.rate must look like 2/min",
        "bad.yaml:9:17: agents[0].on_refusal must be give_up, retry_after, hammer or new_session, got sulk",
        "bad.yaml:11:26: agents[0].loops[0].every must be positive",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in\n{err}");
    }
    assert!(!err.contains("are required"), "no cascading errors: {err}");
}

#[test]
fn generation_is_deterministic_per_seed() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = root().join("scenarios/steady-mix.yaml");
    let a = dir.path().join("a.parquet");
    let b = dir.path().join("b.parquet");
    for out in [&a, &b] {
        let o = run(&[
            "generate",
            scenario.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let (ra, rb) = (file_rows(&a), file_rows(&b));
    assert!(ra.len() > 500);
    assert_eq!(ra, rb, "same seed, same events");
    assert!(
        ra.iter()
            .all(|r| r.decision.as_str() == "unrecorded" && r.transport.as_str() == "generated")
    );
    assert!(
        ra.windows(2).all(|w| w[0].ts_us <= w[1].ts_us),
        "time order"
    );
    // Another seed gives other events.
    let text = std::fs::read_to_string(&scenario)
        .unwrap()
        .replace("seed: 4", "seed: 5");
    let other = write(dir.path(), "other.yaml", &text);
    let c = dir.path().join("c.parquet");
    assert!(
        run(&["generate", &other, "-o", c.to_str().unwrap()])
            .status
            .success()
    );
    assert_ne!(
        file_rows(&c).iter().map(|r| r.ts_us).collect::<Vec<_>>(),
        ra.iter().map(|r| r.ts_us).collect::<Vec<_>>()
    );
    // The generated log is a valid audit file replay can read.
    let o = run(&[
        "replay",
        a.to_str().unwrap(),
        "--policy",
        root().join("policies/strict.yaml").to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["events"].as_u64().unwrap() as usize, ra.len());
    assert_eq!(
        report["candidates"][0]["diff"]["compared"], 0,
        "unrecorded rows are not compared"
    );
}

#[test]
fn closed_loop_generation_records_decisions_and_reactions() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("storm.parquet");
    let o = run(&[
        "generate",
        root().join("scenarios/retry-storm.yaml").to_str().unwrap(),
        "--policy",
        root()
            .join("policies/seed-copy-limit.yaml")
            .to_str()
            .unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rs = file_rows(&out);
    assert!(rs.iter().any(|r| r.decision.as_str() == "throttle"));
    // Each throttled call is retried exactly when it was told to.
    let policy = Policy::load(&root().join("policies/seed-copy-limit.yaml")).unwrap();
    assert_eq!(rs[0].policy_sha256, policy.sha256);
    for r in rs.iter().filter(|r| r.decision.as_str() == "throttle") {
        let retry_at = r.ts_us + r.retry_after_ms.unwrap() as i64 * 1000;
        let end = flightrec::time::parse_rfc3339_us("2026-11-20T11:15:00Z").unwrap();
        if retry_at < end {
            assert!(
                rs.iter()
                    .any(|x| x.ts_us == retry_at && x.agent_id == r.agent_id),
                "a retry of {} at {}",
                r.event_id,
                retry_at
            );
        }
    }
}

#[test]
fn new_session_reaction_switches_sessions() {
    let s = Scenario::load(&root().join("scenarios/session-splitting.yaml")).unwrap();
    let policy = Policy::load(&root().join("policies/seed-copy-limit.yaml")).unwrap();
    let events = simulate(&s, Some(&policy), ApprovalMode::Deny);
    let sessions: std::collections::BTreeSet<&str> =
        events.iter().map(|e| e.session.as_str()).collect();
    assert!(
        sessions.len() > 1,
        "the agent opened new sessions: {sessions:?}"
    );
    // After a refusal the very next attempt is in a new session and allowed.
    let first_refused = events
        .iter()
        .position(|e| e.decision.as_ref().unwrap().verdict != Verdict::Allow)
        .unwrap();
    let retry = &events[first_refused + 1];
    assert_ne!(retry.session, events[first_refused].session);
    assert_eq!(retry.decision.as_ref().unwrap().verdict, Verdict::Allow);
}

const HOLE_POLICY: &str = "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: per session\n        rate_limit: {max: 3, window: 60s, per: session}\n";
const SAFE_POLICY: &str = "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: per agent\n        rate_limit: {max: 3, window: 60s, per: agent}\n";
const INVARIANTS: &str = "invariants:\n  - name: copy budget per agent\n    max_allowed: {match: {tool: copy_image_set}, max: 3, window: 60s, per: agent}\n  - name: no deletes ever\n    never_allowed: {match: {tool: \"delete_*\"}}\n";

#[test]
fn fuzz_finds_the_planted_hole_shrinks_it_and_the_counterexample_replays() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(
        dir.path(),
        "hole.yaml",
        &(HOLE_POLICY.to_string()
            + "  \"delete_*\":\n    rules: [{name: no deletes, action: deny}]\n"),
    );
    let inv = write(dir.path(), "inv.yaml", INVARIANTS);
    let cex = dir.path().join("cex.yaml");
    let o = run(&[
        "fuzz",
        "--policy",
        &policy,
        "--invariants",
        &inv,
        "-o",
        cex.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a violation is a finding: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("VIOLATION of \"copy budget per agent\""),
        "{}",
        stderr(&o)
    );
    let s = Scenario::load(&cex).expect("the counterexample is a valid scenario");
    assert!(
        s.calls.len() <= 4,
        "shrunk to at most max+1 = 4 calls, got {}",
        s.calls.len()
    );
    let sessions: std::collections::BTreeSet<&str> =
        s.calls.iter().map(|c| c.session.as_str()).collect();
    assert!(sessions.len() <= 2, "at most 2 sessions: {sessions:?}");
    assert!(s.calls.iter().all(|c| c.tool == "copy_image_set"));
    // Replaying the counterexample reproduces the violation.
    let o = run(&[
        "replay",
        cex.to_str().unwrap(),
        "--policy",
        &policy,
        "--invariants",
        &inv,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("invariant \"copy budget per agent\" broken"),
        "{}",
        stderr(&o)
    );
    // The same seed finds the same counterexample.
    let again = run(&["fuzz", "--policy", &policy, "--invariants", &inv]);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        std::fs::read_to_string(&cex).unwrap()
    );
}

#[test]
fn a_correct_policy_survives_the_default_run() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(
        dir.path(),
        "safe.yaml",
        &(SAFE_POLICY.to_string()
            + "  \"delete_*\":\n    rules: [{name: no deletes, action: deny}]\n"),
    );
    let inv = write(dir.path(), "inv.yaml", INVARIANTS);
    let o = run(&["fuzz", "--policy", &policy, "--invariants", &inv]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("no violation: 256 cases"), "{text}");
}

#[test]
fn never_allowed_and_requires_approval_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "open.yaml", "version: \"1\"\ntools: {}\n");
    let inv = write(
        dir.path(),
        "inv.yaml",
        "invariants:\n  - name: reboots need a human\n    requires_approval: {match: {tool: reboot_broker, agent: \"agent-*\"}}\n",
    );
    let o = run(&[
        "fuzz",
        "--policy",
        &policy,
        "--invariants",
        &inv,
        "--seed",
        "7",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let s = Scenario::from_yaml(&String::from_utf8_lossy(&o.stdout), "cex").unwrap();
    assert_eq!(
        s.calls.len(),
        1,
        "one unapproved reboot is the minimal counterexample"
    );
    assert_eq!(s.calls[0].tool, "reboot_broker");
    let approved = write(
        dir.path(),
        "approved.yaml",
        "version: \"1\"\ntools:\n  reboot_broker:\n    rules: [{name: human, action: require_approval}]\n",
    );
    assert!(
        run(&[
            "fuzz",
            "--policy",
            &approved,
            "--invariants",
            &inv,
            "--seed",
            "7"
        ])
        .status
        .success()
    );
    let bad_inv = write(
        dir.path(),
        "bad.yaml",
        "invariants:\n  - name: x\n    max_allowed: {match: {tool: t}, max: 3}\n",
    );
    let o = run(&["fuzz", "--policy", &policy, "--invariants", &bad_inv]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("window is required"), "{}", stderr(&o));
}
