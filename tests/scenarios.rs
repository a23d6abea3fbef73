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
        "failing-copy-retry",
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

/// Error outcomes and `retry_same`: every copy fails, the agent sends the
/// same copy again every 2 s. Without a guard the retries go on (up to
/// `max_retries`), all identical; a circuit breaker refuses them once three
/// failures in a row opened it, and the agent (give_up) stops.
#[test]
fn failing_calls_are_retried_the_same_and_a_breaker_stops_them() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write(
        dir.path(),
        "retry.yaml",
        "version: 1\nname: retry same\nstart: 2026-11-20T10:00:00Z\nduration: 10m\nfail_rates: {copy_image_set: 1}\nagents:\n  - name: bot\n    loops:\n      - {tool: copy_image_set, every: 1h, count: 1, args: {id: set-7}}\n      - {tool: search_image_sets, every: 1m, start: 1s, fail_rate: 0}\n    on_error: retry_same\n    retry_every: 2s\n    max_retries: 20\n",
    );
    let s = Scenario::load(Path::new(&scenario)).unwrap();
    let lenient: Policy = Policy::from_yaml("version: \"1\"\ndefault: allow\ntools: {}\n", "p")
        .unwrap()
        .0;
    let events = simulate(&s, Some(&lenient), ApprovalMode::Deny);
    let copies: Vec<_> = events
        .iter()
        .filter(|e| e.tool == "copy_image_set")
        .collect();
    assert_eq!(copies.len(), 21, "the call and its 20 retries");
    for (i, c) in copies.iter().enumerate() {
        assert_eq!(c.attempt, i as u32);
        assert_eq!(c.args, copies[0].args, "the same call each time");
        assert_eq!(c.ts_us - copies[0].ts_us, i as i64 * 2_000_000);
        assert_eq!(c.outcome, flightrec::policy::Outcome::ToolError);
    }
    // Searches succeed and are never retried.
    assert!(
        events
            .iter()
            .filter(|e| e.tool == "search_image_sets")
            .all(|e| e.outcome == flightrec::policy::Outcome::Ok && e.attempt == 0)
    );
    let breaker = Policy::from_yaml(
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: failing copies\n        circuit_breaker: {errors: 3, within: 1m, cooldown: 5m, per: agent}\n",
        "p",
    )
    .unwrap()
    .0;
    let events = simulate(&s, Some(&breaker), ApprovalMode::Deny);
    let copies: Vec<_> = events
        .iter()
        .filter(|e| e.tool == "copy_image_set")
        .collect();
    assert_eq!(
        copies.len(),
        4,
        "three failures open the circuit, the fourth is refused"
    );
    let d = copies[3].decision.as_ref().unwrap();
    assert_eq!(d.verdict, Verdict::Throttle);
    assert_eq!(d.guard, Some(flightrec::policy::Guard::CircuitBreaker));
    assert_eq!(copies[3].outcome, flightrec::policy::Outcome::NotForwarded);
    // Open loop (`generate` without a policy) records the drawn outcomes
    // too, so a replay's breaker hears them: a loop of 12 failing copies,
    // replayed with a breaker that opens after 3 for an hour.
    let looping = write(
        dir.path(),
        "loop.yaml",
        "version: 1\nname: loop\nstart: 2026-11-20T10:00:00Z\nduration: 2m\nfail_rates: {copy_image_set: 1}\nagents:\n  - name: bot\n    loops:\n      - {tool: copy_image_set, every: 10s, args: {id: set-7}}\n",
    );
    let out = dir.path().join("open.parquet");
    let o = run(&["generate", &looping, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = file_rows(&out);
    assert_eq!(rows.len(), 12);
    assert!(rows.iter().all(|r| r.outcome.as_str() == "tool_error"));
    let policy = write(
        dir.path(),
        "breaker.yaml",
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: failing copies\n        circuit_breaker: {errors: 3, within: 1m, cooldown: 1h, per: agent}\n",
    );
    let o = run(&[
        "replay",
        out.to_str().unwrap(),
        "--policy",
        &policy,
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["candidates"][0]["totals"]["throttle"], 9);
    assert_eq!(report["candidates"][0]["guard"]["circuit_breaker"], 9);
}

/// Failure rates between 0 and 1 are drawn per call from the scenario's
/// seed: the same seed gives the same outcomes, and about the given share
/// fails; validation names line, column and field.
#[test]
fn fail_rates_are_seeded_and_validated() {
    let dir = tempfile::tempdir().unwrap();
    let text = "version: 1\nseed: 3\nstart: 2026-11-20T10:00:00Z\nduration: 1h\nagents:\n  - name: a\n    mix:\n      - {tool: t, fail_rate: 0.25}\n    arrival: {kind: constant, every: 1s}\n";
    let s = Scenario::from_yaml(text, "s.yaml").unwrap();
    let a = simulate(&s, None, ApprovalMode::Deny);
    let b = simulate(&s, None, ApprovalMode::Deny);
    let fails = |v: &[flightrec::scenario::sim::SimEvent]| {
        v.iter()
            .filter(|e| e.outcome == flightrec::policy::Outcome::ToolError)
            .count()
    };
    assert_eq!(fails(&a), fails(&b));
    assert!(a.iter().zip(&b).all(|(x, y)| x.outcome == y.outcome));
    let share = fails(&a) as f64 / a.len() as f64;
    assert!((0.2..0.3).contains(&share), "{share} of {}", a.len());
    let bad = write(
        dir.path(),
        "bad.yaml",
        "version: 1\nstart: 2026-11-20T10:00:00Z\nduration: 10m\nfail_rates: {t: 2}\nagents:\n  - name: a\n    mix:\n      - {tool: t, fail_rate: lots}\n    arrival: {kind: constant, every: 1s}\n    on_error: panic\ncalls:\n  - {at: 1s, tool: t, outcome: exploded}\n",
    );
    let o = run(&[
        "generate",
        &bad,
        "-o",
        dir.path().join("x.parquet").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    for needle in [
        "bad.yaml:4:17: fail_rates.t must be a number from 0 to 1, got 2",
        "bad.yaml:8:30: agents[0].mix[0].fail_rate must be a number from 0 to 1, got lots",
        "bad.yaml:10:15: agents[0].on_error must be give_up or retry_same, got panic",
        "bad.yaml:12:32: calls[0].outcome must be ok, tool_error, rpc_error or timeout, got exploded",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in\n{err}");
    }
}

const REPEATS: &str = "invariants:\n  - name: no copy repeated\n    max_repeats: {match: {tool: copy_image_set}, max: 3, window: 10m, per: session}\n";

/// `max_repeats`: the fuzzer finds that a policy without a guard lets a
/// copy repeat, shrinks it to max + 1 identical calls, and the
/// counterexample replays; the bundled guarded policy survives.
#[test]
fn fuzz_breaks_an_unguarded_policy_on_max_repeats_and_a_guarded_one_holds() {
    let dir = tempfile::tempdir().unwrap();
    let inv = write(dir.path(), "inv.yaml", REPEATS);
    // A rate limit is not a guard: 10 a minute still lets 4 identical
    // copies through.
    let policy = write(
        dir.path(),
        "rate.yaml",
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: copy rate\n        rate_limit: {max: 10, window: 60s, per: session}\n",
    );
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
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("identical copy_image_set calls"),
        "{}",
        stderr(&o)
    );
    let s = Scenario::load(&cex).unwrap();
    assert_eq!(s.calls.len(), 4, "shrunk to max + 1 identical calls");
    assert!(s.calls.iter().all(|c| c.args == s.calls[0].args
        && c.session == s.calls[0].session
        && c.tool == "copy_image_set"));
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
        stderr(&o).contains("invariant \"no copy repeated\" broken"),
        "{}",
        stderr(&o)
    );
    let guarded = root().join("policies/guarded.yaml");
    let o = run(&[
        "fuzz",
        "--policy",
        guarded.to_str().unwrap(),
        "--invariants",
        &inv,
        "--cases",
        "512",
    ]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
}

/// Fuzz counterexamples carry failing outcomes, so a breaker's decisions
/// replay from the file: a policy whose breaker lets a fourth identical
/// call through after it half-opens breaks a stricter invariant, and the
/// written file (with `outcome: tool_error`) reproduces it.
#[test]
fn fuzz_counterexamples_keep_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let inv = write(
        dir.path(),
        "inv.yaml",
        "invariants:\n  - name: at most 2 copies\n    max_allowed: {match: {tool: copy_image_set}, max: 2, window: 1h, per: agent}\n",
    );
    let policy = write(
        dir.path(),
        "breaker.yaml",
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: failing copies\n        circuit_breaker: {errors: 2, within: 1h, cooldown: 1h, per: agent}\n",
    );
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
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s = Scenario::load(&cex).unwrap();
    // Three copies: the breaker could only refuse the third if the first
    // two failed, so at least one of them succeeded.
    assert_eq!(
        s.calls.len(),
        3,
        "{}",
        std::fs::read_to_string(&cex).unwrap()
    );
    let o = run(&[
        "replay",
        cex.to_str().unwrap(),
        "--policy",
        &policy,
        "--invariants",
        &inv,
    ]);
    assert_eq!(o.status.code(), Some(1));
    // All failing: the breaker holds the line at two.
    let all_failing = std::fs::read_to_string(&cex)
        .unwrap()
        .replace("}}\n", "}, outcome: tool_error}\n")
        .replace(
            ", outcome: tool_error, outcome: tool_error}",
            ", outcome: tool_error}",
        );
    let forced = write(dir.path(), "forced.yaml", &all_failing);
    let o = run(&["replay", &forced, "--policy", &policy, "--invariants", &inv]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
}

/// Long runs show a progress line (rate, how many of how many) on a
/// terminal only: under a pseudo-terminal (`script`) the fuzzer draws it
/// (shown from the start here: `FLIGHTREC_PROGRESS_AFTER_MS=0` instead of
/// after a second); with `--quiet`, or with stderr not a terminal, nothing.
#[test]
fn progress_shows_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(
        dir.path(),
        "safe.yaml",
        &(SAFE_POLICY.to_string()
            + "  \"delete_*\":\n    rules: [{name: no deletes, action: deny}]\n"),
    );
    let inv = write(dir.path(), "inv.yaml", INVARIANTS);
    let command = |quiet: bool| {
        format!(
            "{} fuzz --policy {policy} --invariants {inv} --cases 400{}",
            common::flightrec(),
            if quiet { " --quiet" } else { "" }
        )
    };
    let under_tty = |quiet: bool| {
        let log = dir.path().join(format!("tty-{quiet}.log"));
        let out = std::process::Command::new("script")
            .args(["-qec", &command(quiet)])
            .arg(&log)
            .env("FLIGHTREC_PROGRESS_AFTER_MS", "0")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("script(1) runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(&log).unwrap()
    };
    let shown = under_tty(false);
    assert!(
        shown.contains("fuzz: ") && shown.contains("cases of 400"),
        "{shown}"
    );
    let quiet = under_tty(true);
    assert!(!quiet.contains("cases of 400"), "{quiet}");
    let piped = common::bin()
        .args([
            "fuzz",
            "--policy",
            &policy,
            "--invariants",
            &inv,
            "--cases",
            "400",
        ])
        .env("FLIGHTREC_PROGRESS_AFTER_MS", "0")
        .output()
        .unwrap();
    assert!(piped.status.success());
    assert!(!stderr(&piped).contains("cases of"), "{}", stderr(&piped));
}
