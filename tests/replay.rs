//! `flightrec replay` through the real binary: a recording replayed with the
//! policy that recorded it reproduces every decision; `--decisions-out`
//! agrees with `policy eval`; filters; merging inputs; report formats.

mod common;

use common::{bin, read_decisions, run, stderr};
use flightrec::audit::schema::AuditRow;
use flightrec::audit::{Recorder, RecorderConfig};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

const T0: i64 = 1_795_600_000_000_000;

const POLICY: &str = r#"
version: "1"
tools:
  copy_image_set:
    rules:
      - name: copy budget per session
        rate_limit: {max: 3, window: 10s, per: session}
      - name: small copies only
        conditions: [{path: args.count, op: lte, value: 100}]
  delete_image_set:
    rules:
      - name: deletes need a human
        action: require_approval
  "*":
    rules:
      - name: global
        rate_limit: 150/minute
"#;

/// Calls with tight timing, rpc errors and refusals: state matters.
fn calls() -> Vec<Value> {
    let mut x: u64 = 42;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut t = T0;
    (0..400)
        .map(|_| {
            t += next(600_000) as i64;
            let tool = [
                "copy_image_set",
                "copy_image_set",
                "list_image_sets",
                "delete_image_set",
            ][next(4) as usize];
            let outcome = ["ok", "ok", "tool_error", "rpc_error"][next(4) as usize];
            json!({
                "ts": t,
                "session": format!("s{}", next(3)),
                "agent": format!("agent-{}", next(2)),
                "server": "srv",
                "tool": tool,
                "args": {"count": next(150)},
                "outcome": outcome,
            })
        })
        .collect()
}

fn eval(policy: &Path, calls: &[Value]) -> Vec<Value> {
    let mut child = bin()
        .args(["policy", "eval", "--policy", policy.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = calls.iter().map(|c| c.to_string() + "\n").collect();
    // Written from another thread: the decisions come back while the calls
    // go in, and neither pipe may fill up.
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Records calls as the live proxy would: decided by `policy`, refused calls
/// not forwarded.
fn record(dir: &Path, policy: &Path, calls: &[Value], first_id: usize) {
    let decisions = eval(policy, calls);
    record_decided(dir, calls, &decisions, first_id);
}

fn record_decided(dir: &Path, calls: &[Value], decisions: &[Value], first_id: usize) {
    record_with(
        dir,
        calls,
        decisions,
        first_id,
        RecorderConfig::default(),
        1,
    );
}

fn record_with(
    dir: &Path,
    calls: &[Value],
    decisions: &[Value],
    first_id: usize,
    config: RecorderConfig,
    files: usize,
) {
    let mut rec = Recorder::open(dir, config).unwrap();
    // Completion order differs a little from ts order, as live.
    let mut rows: Vec<(i64, AuditRow)> = Vec::new();
    for (i, (c, d)) in calls.iter().zip(decisions).enumerate() {
        let allowed = d["decision"] == "allow";
        let ts = c["ts"].as_i64().unwrap();
        rows.push((
            ts + if i % 5 == 0 { 1_500_000 } else { 0 },
            AuditRow {
                event_id: format!("ev-{:05}", first_id + i),
                ts_us: ts,
                session_id: c["session"].as_str().unwrap().into(),
                agent_id: c["agent"].as_str().unwrap().into(),
                server: "srv".into(),
                tool: Some(c["tool"].as_str().unwrap().into()),
                args_json: Some(c["args"].to_string()),
                decision: d["decision"].as_str().unwrap().parse().unwrap(),
                rule: d["rule"].as_str().map(str::to_string),
                reason: d["message"].as_str().map(str::to_string),
                retry_after_ms: d["retry_after_ms"].as_u64(),
                outcome: if allowed {
                    c["outcome"].as_str().unwrap().parse().unwrap()
                } else {
                    "not_forwarded".parse().unwrap()
                },
                ..AuditRow::default()
            },
        ));
    }
    rows.sort_by_key(|(done, _)| *done);
    rec.record(AuditRow {
        event_id: format!("init-{first_id}"),
        ts_us: T0,
        method: "initialize".into(),
        decision: "allow".parse().unwrap(),
        ..AuditRow::default()
    })
    .unwrap();
    // One writer's chain of `files` files.
    let per_file = rows.len().div_ceil(files);
    for chunk in rows.chunks(per_file) {
        rec.record_all(chunk.iter().map(|(_, r)| r.clone()))
            .unwrap();
        rec.rotate().unwrap();
    }
    rec.close().unwrap();
}

fn replay_json(args: &[&str]) -> Value {
    let mut full = vec!["replay"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--format", "json"]);
    let out = run(&full);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("the JSON report parses")
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    policy: PathBuf,
    calls: Vec<Value>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let policy = root.join("candidate.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let calls = calls();
    record(&root.join("log"), &policy, &calls, 0);
    Fixture {
        _dir: dir,
        root,
        policy,
        calls,
    }
}

#[test]
fn replay_with_the_recording_policy_reproduces_every_decision() {
    let f = fixture();
    let report = replay_json(&[
        f.root.join("log").to_str().unwrap(),
        "--policy",
        f.policy.to_str().unwrap(),
    ]);
    let c = &report["candidates"][0];
    assert_eq!(report["events"], 400);
    assert_eq!(report["skipped_non_calls"], 1, "the initialize row");
    assert_eq!(report["late_events"], 0);
    assert_eq!(c["diff"]["compared"], 400);
    assert_eq!(c["diff"]["unchanged"], 400, "{}", c["diff"]);
    let totals = &c["totals"];
    assert!(
        totals["throttle"].as_u64().unwrap() > 10,
        "state mattered: {totals}"
    );
    assert!(totals["deny"].as_u64().unwrap() > 10);
    assert!(totals["approval"].as_u64().unwrap() > 10);
    assert_eq!(c["assumed_successful"], 0);
}

#[test]
fn decisions_out_agrees_with_policy_eval_row_by_row() {
    let f = fixture();
    let out_file = f.root.join("decisions.parquet");
    let lenient = f.root.join("lenient.yaml");
    std::fs::write(&lenient, "version: \"1\"\ntools: {}\n").unwrap();
    let out = run(&[
        "replay",
        f.root.join("log").to_str().unwrap(),
        "--policy",
        f.policy.to_str().unwrap(),
        "--policy",
        lenient.to_str().unwrap(),
        "--decisions-out",
        out_file.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_decisions(&out_file);
    assert_eq!(rows.len(), 800, "one row per event per policy");
    // The recorded outcomes drive rollback in both; policy eval sees them too.
    let expected = eval(&f.policy, &f.calls);
    let candidate: Vec<_> = rows.iter().filter(|r| r.1 == "candidate").collect();
    assert_eq!(candidate.len(), 400);
    for (i, (row, want)) in candidate.iter().zip(&expected).enumerate() {
        assert_eq!(row.0, format!("ev-{i:05}"), "ts order");
        assert_eq!(row.2, want["decision"].as_str().unwrap(), "event {i}");
        assert_eq!(row.3.as_deref(), want["rule"].as_str(), "event {i}");
        assert_eq!(row.4, want["retry_after_ms"].as_u64(), "event {i}");
        assert_eq!(row.5, row.2, "recorded with this policy");
    }
    assert!(
        rows.iter()
            .filter(|r| r.1 == "lenient")
            .all(|r| r.2 == "allow")
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let lenient_report = &report["candidates"][1];
    assert!(
        lenient_report["diff"]["newly_allowed"]["count"]
            .as_u64()
            .unwrap()
            > 0
    );
    // Calls refused when recorded but allowed now are assumed to succeed.
    assert_eq!(
        lenient_report["assumed_successful"],
        lenient_report["diff"]["newly_allowed"]["count"]
    );
}

#[test]
fn filters_select_calls() {
    let f = fixture();
    let log = f.root.join("log");
    let all = replay_json(&[
        log.to_str().unwrap(),
        "--policy",
        f.policy.to_str().unwrap(),
    ]);
    let by_tool = replay_json(&[
        log.to_str().unwrap(),
        "--policy",
        f.policy.to_str().unwrap(),
        "--tool",
        "copy_*",
    ]);
    let copies = f
        .calls
        .iter()
        .filter(|c| c["tool"] == "copy_image_set")
        .count() as u64;
    assert_eq!(by_tool["events"], copies);
    assert_eq!(by_tool["filtered_out"].as_u64().unwrap() + copies, 400);
    let from = f.calls[100]["ts"].as_i64().unwrap().to_string();
    let to = f.calls[200]["ts"].as_i64().unwrap().to_string();
    let range = replay_json(&[
        log.to_str().unwrap(),
        "--policy",
        f.policy.to_str().unwrap(),
        "--from",
        &from,
        "--to",
        &to,
    ]);
    assert_eq!(range["events"], 100);
    let session = replay_json(&[
        log.to_str().unwrap(),
        "--policy",
        f.policy.to_str().unwrap(),
        "--session",
        "s1",
        "--agent",
        "agent-*",
    ]);
    let s1 = f.calls.iter().filter(|c| c["session"] == "s1").count() as u64;
    assert_eq!(session["events"], s1);
    assert!(all["candidates"][0]["totals"]["allow"].as_u64().unwrap() > 0);
}

#[test]
fn multiple_inputs_merge_in_time_order() {
    let f = fixture();
    // Split one recording into two, alternating calls (as two proxies in
    // front of the same server would): the merged replay must equal the
    // single recording's decisions.
    let decided = eval(&f.policy, &f.calls);
    let pick = |parity: usize| -> (Vec<Value>, Vec<Value>) {
        f.calls
            .iter()
            .zip(&decided)
            .enumerate()
            .filter(|(i, _)| i % 2 == parity)
            .map(|(_, (c, d))| (c.clone(), d.clone()))
            .unzip()
    };
    let (even, even_d) = pick(0);
    let (odd, odd_d) = pick(1);
    record_decided(&f.root.join("a"), &even, &even_d, 0);
    record_decided(&f.root.join("b"), &odd, &odd_d, 10_000);
    let out_file = f.root.join("merged.parquet");
    let out = run(&[
        "replay",
        f.root.join("a").to_str().unwrap(),
        f.root.join("b").to_str().unwrap(),
        "--policy",
        f.policy.to_str().unwrap(),
        "--decisions-out",
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let merged: Vec<String> = read_decisions(&out_file).into_iter().map(|r| r.2).collect();
    let expected: Vec<String> = eval(&f.policy, &f.calls)
        .into_iter()
        .map(|d| d["decision"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(merged, expected);
}

#[test]
fn report_formats_and_fail_on_change() {
    let f = fixture();
    let log = f.root.join("log");
    let strict = f.root.join("strict.yaml");
    std::fs::write(
        &strict,
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules: [{name: no copies, action: deny}]\n",
    )
    .unwrap();
    let html_path = f.root.join("report.html");
    let out = run(&[
        "replay",
        log.to_str().unwrap(),
        "--policy",
        strict.to_str().unwrap(),
        "--format",
        "html",
        "-o",
        html_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(
        html.contains("<svg") && html.contains("class=\"deny\""),
        "a timeline chart"
    );
    assert!(
        !html.contains("<script") && !html.contains("src=") && !html.contains("href="),
        "self-contained, no fetches"
    );
    assert_eq!(
        html.matches("<table").count(),
        html.matches("</table>").count()
    );

    let md = run(&[
        "replay",
        log.to_str().unwrap(),
        "--policy",
        strict.to_str().unwrap(),
        "--format",
        "markdown",
    ]);
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(md.starts_with("# flightrec replay report"));
    assert!(md.contains("| no copies | deny |"));

    let table = run(&[
        "replay",
        log.to_str().unwrap(),
        "--policy",
        strict.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("newly blocked"));

    let same = run(&[
        "replay",
        log.to_str().unwrap(),
        "--policy",
        f.policy.to_str().unwrap(),
        "--fail-on-change",
    ]);
    assert_eq!(same.status.code(), Some(0), "{}", stderr(&same));
    let changed = run(&[
        "replay",
        log.to_str().unwrap(),
        "--policy",
        strict.to_str().unwrap(),
        "--fail-on-change",
    ]);
    assert_eq!(changed.status.code(), Some(1));

    let bad = run(&[
        "replay",
        log.to_str().unwrap(),
        "--policy",
        strict.to_str().unwrap(),
        "--format",
        "pdf",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let missing = run(&[
        "replay",
        "/no/such/log",
        "--policy",
        strict.to_str().unwrap(),
    ]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("/no/such/log"));
}

#[test]
fn files_written_by_other_tools_replay_without_flightrec_metadata() {
    // A file with the §3 columns written by plain Arrow (no footer metadata,
    // no chain): replay must accept it.
    let f = fixture();
    let rows: Vec<AuditRow> = (0..20)
        .map(|i| AuditRow {
            event_id: format!("x{i}"),
            ts_us: T0 + i * 1_000_000,
            session_id: "s".into(),
            agent_id: "a".into(),
            tool: Some("copy_image_set".into()),
            args_json: Some("{\"count\": 1}".into()),
            ..AuditRow::default()
        })
        .collect();
    let path = f.root.join("foreign.parquet");
    common::write_plain_parquet(&path, &rows);
    let report = replay_json(&[
        path.to_str().unwrap(),
        "--policy",
        f.policy.to_str().unwrap(),
    ]);
    assert_eq!(report["events"], 20);
    // 3 per 10 s per session, one call a second: 0-2 and 10-12 fit.
    assert_eq!(report["candidates"][0]["totals"]["allow"], 6);
    assert_eq!(report["candidates"][0]["totals"]["throttle"], 14);
}

#[test]
fn demo_runs_on_the_bundled_data() {
    let out = run(&["demo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("seed-copy-limit"), "{text}");
    // The lenient policy recorded the sample: it must reproduce it exactly.
    let lenient = text
        .lines()
        .find(|l| l.starts_with("lenient "))
        .expect("a lenient row");
    let cols: Vec<&str> = lenient.split_whitespace().collect();
    assert_eq!(&cols[5..], ["0", "0", "0"], "{lenient}");
    // The runaway guard stops the sample day's failing copy loop (10:15)
    // with its circuit breaker, and nothing but copies.
    let guarded = text
        .lines()
        .find(|l| l.starts_with("guarded "))
        .expect("a guarded row");
    let cols: Vec<&str> = guarded.split_whitespace().collect();
    let throttled: u64 = cols[3].parse().unwrap();
    assert!(throttled > 200, "{guarded}");
    assert!(
        text.contains("session imaging-assistant-2 (imaging-assistant): copy_image_set circuit_breaker first at 2026-11-20T10:15"),
        "{text}"
    );
    let guard = text
        .lines()
        .find(|l| l.trim_start().starts_with("runaway guard:"))
        .expect("a guard line");
    assert!(
        guard.contains(&format!("{throttled} call(s) kept from the server")),
        "{guard}"
    );
}

/// Recorded logs and a scenario in one run share one clock and one set of
/// counters per candidate: a fleet-wide budget the recorded traffic uses is
/// not there for the scenario's runaway agent, so the run refuses more than
/// the two inputs replayed apart.
#[test]
fn logs_and_scenarios_replay_together_on_shared_counters() {
    let f = fixture();
    let policy = common::write_file(
        &f.root,
        "fleet.yaml",
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: fleet copy budget\n        rate_limit: {max: 20, window: 60s, per: tool}\n",
    );
    let scenario = common::write_file(
        &f.root,
        "runaway.yaml",
        &format!(
            "version: 1\nname: runaway\nseed: 1\nstart: {}\nduration: 2m\nserver: awslabs.healthimaging-mcp-server\nagents:\n  - name: loop-bot\n    sessions: 1\n    mix:\n      - {{tool: copy_image_set, weight: 1, args: {{datastoreId: ds-01}}}}\n    arrival: {{kind: constant, every: 1s}}\n    on_refusal: give_up\n",
            flightrec::time::format_us(T0)
        ),
    );
    let (log, policy, scenario) = (
        f.root.join("log"),
        policy.to_str().unwrap().to_string(),
        scenario.to_str().unwrap().to_string(),
    );
    let log = log.to_str().unwrap();
    let alone_log = replay_json(&[log, "--policy", &policy]);
    let alone_scenario = replay_json(&[&scenario, "--policy", &policy]);
    let together = replay_json(&[log, &scenario, "--policy", &policy]);
    let totals = |r: &Value, k: &str| r["candidates"][0]["totals"][k].as_u64().unwrap();
    let all = |r: &Value| {
        ["allow", "deny", "throttle", "approval"]
            .iter()
            .map(|k| totals(r, k))
            .sum::<u64>()
    };
    assert!(all(&alone_log) > 0 && all(&alone_scenario) > 0);
    // Every call of both inputs is decided once (the scenario agent gives
    // up on a refusal, so its calls do not depend on the decisions).
    assert_eq!(all(&together), all(&alone_log) + all(&alone_scenario));
    assert_eq!(
        together["events"].as_u64().unwrap(),
        alone_log["events"].as_u64().unwrap() + alone_scenario["events"].as_u64().unwrap()
    );
    assert!(
        totals(&together, "throttle")
            > totals(&alone_log, "throttle") + totals(&alone_scenario, "throttle"),
        "shared budget: together {} vs apart {} + {}",
        totals(&together, "throttle"),
        totals(&alone_log, "throttle"),
        totals(&alone_scenario, "throttle")
    );
    // The recorded calls are still compared with the recording.
    assert_eq!(
        together["candidates"][0]["diff"]["compared"],
        alone_log["candidates"][0]["diff"]["compared"]
    );
    let inputs = together["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 2);
    assert!(inputs[1].as_str().unwrap().ends_with("runaway.yaml"));
}

/// `--approvals grant` counts approval calls against the limits they share
/// with other tools; `deny` does not. Exact totals both ways.
#[test]
fn approvals_grant_and_deny_give_different_exact_totals() {
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(
        dir.path(),
        "p.yaml",
        "version: \"1\"\ntools:\n  delete_image_set:\n    rules: [{name: human, action: require_approval}]\n  \"*\":\n    rules:\n      - {name: fleet, rate_limit: {max: 3, window: 60s, per: global}}\n",
    );
    let calls: Vec<Value> = ["delete_image_set", "delete_image_set", "delete_image_set", "copy_image_set", "copy_image_set"]
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            json!({"ts": T0 + i as i64 * 1000, "session": "s", "agent": "a", "server": "srv", "tool": tool, "args": {}, "outcome": "ok"})
        })
        .collect();
    let log = dir.path().join("log");
    record(&log, &policy, &calls, 0);
    let totals = |mode: &str| {
        let r = replay_json(&[
            log.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--approvals",
            mode,
        ]);
        let t = &r["candidates"][0]["totals"];
        (
            t["allow"].as_u64().unwrap(),
            t["throttle"].as_u64().unwrap(),
            t["approval"].as_u64().unwrap(),
        )
    };
    assert_eq!(totals("deny"), (2, 0, 3));
    assert_eq!(totals("grant"), (0, 2, 3));
}

/// Filters over more than one Arrow batch (8,192 rows): replay and export
/// select exactly the rows they should.
#[test]
fn filters_hold_across_many_batches() {
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(dir.path(), "p.yaml", "version: \"1\"\ntools: {}\n");
    let n = 20_000usize;
    let calls: Vec<Value> = (0..n)
        .map(|i| {
            json!({"ts": T0 + i as i64 * 10_000, "session": format!("s{}", i % 7), "agent": format!("agent-{}", i % 3), "server": "srv", "tool": if i % 4 == 0 { "delete_image_set" } else { "copy_image_set" }, "args": {}, "outcome": "ok"})
        })
        .collect();
    let log = dir.path().join("log");
    record(&log, &policy, &calls, 0);
    let expect = calls
        .iter()
        .filter(|c| c["agent"] == "agent-1" && c["tool"] == "delete_image_set")
        .count() as u64;
    assert!(expect > 1000);
    let r = replay_json(&[
        log.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--agent",
        "agent-1",
        "--tool",
        "delete_*",
    ]);
    assert_eq!(r["events"], expect);
    assert_eq!(r["filtered_out"], n as u64 - expect);
    let out_file = dir.path().join("x.jsonl");
    let out = run(&[
        "export",
        log.to_str().unwrap(),
        "--format",
        "jsonl",
        "--agent",
        "agent-1",
        "--tool",
        "delete_*",
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(lines.lines().count() as u64, expect);
    assert!(
        lines.lines().all(|l| l.contains("\"agent_id\":\"agent-1\"")
            && l.contains("\"tool\":\"delete_image_set\""))
    );
}

/// The guard section: which guard refused what, the first trip per session
/// and the calls kept from the server. Two sessions loop on one copy that
/// keeps failing; a third copies different images. Recorded: everything
/// allowed (and every loop call a tool error).
#[test]
fn replay_reports_what_the_runaway_guard_would_have_stopped() {
    use flightrec::audit::schema::RecordedDecision;
    use flightrec::policy::Outcome;
    let f = fixture();
    let mut rows = Vec::new();
    for i in 0..10i64 {
        for (session, args, outcome) in [
            (
                "loop-1",
                "{\"id\": \"set-7\"}".to_string(),
                Outcome::ToolError,
            ),
            (
                "loop-2",
                "{\"id\": \"set-9\"}".to_string(),
                Outcome::ToolError,
            ),
            ("fine", format!("{{\"id\": \"set-{i}\"}}"), Outcome::Ok),
        ] {
            rows.push(AuditRow {
                event_id: format!("{session}-{i}"),
                ts_us: T0 + i * 1_000_000,
                session_id: session.into(),
                agent_id: "imaging-assistant".into(),
                tool: Some("copy_image_set".into()),
                args_json: Some(args),
                decision: RecordedDecision::Allow,
                outcome,
                latency_us: Some(1_000),
                ..AuditRow::default()
            });
        }
    }
    let path = f.root.join("loops.parquet");
    common::write_plain_parquet(&path, &rows);
    let repeat = common::write_file(
        &f.root,
        "repeat.yaml",
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: same copy again\n        repeat_limit: {max: 3, window: 10m, per: session}\n",
    );
    let breaker = common::write_file(
        &f.root,
        "breaker.yaml",
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: failing copies\n        circuit_breaker: {errors: 2, within: 1m, cooldown: 1h, per: session}\n",
    );
    let report = replay_json(&[
        path.to_str().unwrap(),
        "--policy",
        repeat.to_str().unwrap(),
        "--policy",
        breaker.to_str().unwrap(),
        "--policy",
        f.policy.to_str().unwrap(),
    ]);
    // Repeat limit: each loop session gets 3 of its 10 identical copies.
    let g = &report["candidates"][0]["guard"];
    assert_eq!(g["repeat_limit"], 14, "{g}");
    assert_eq!(g["circuit_breaker"], 0, "{g}");
    assert_eq!(g["calls_saved"], 14, "{g}");
    assert_eq!(g["sessions_tripped"], 2, "{g}");
    let trips = g["first_trips"].as_array().unwrap();
    assert_eq!(trips.len(), 2);
    assert_eq!(trips[0]["session"], "loop-1");
    assert_eq!(trips[0]["event_id"], "loop-1-3");
    assert_eq!(trips[0]["guard"], "repeat_limit");
    assert_eq!(trips[0]["rule"], "same copy again");
    assert_eq!(trips[0]["refused"], 7);
    // Breaker: two failures open each loop's circuit for an hour; the
    // session of good copies never trips.
    let g = &report["candidates"][1]["guard"];
    assert_eq!(g["circuit_breaker"], 16, "{g}");
    assert_eq!(g["repeat_limit"], 0, "{g}");
    assert_eq!(g["sessions_tripped"], 2, "{g}");
    assert_eq!(g["first_trips"][1]["event_id"], "loop-2-2");
    // A candidate without guards has no guard section.
    assert!(report["candidates"][2].get("guard").is_none());
    // The table says it in one line.
    let out = run(&[
        "replay",
        path.to_str().unwrap(),
        "--policy",
        breaker.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("runaway guard: 0 repeat(s) and 16 call(s) to an open circuit refused in 2 session(s); 16 call(s) kept from the server"),
        "{text}"
    );
}

/// Candidates share the decoded input but not their state: each
/// candidate's report is the same whether it is replayed alone or with
/// others (here the bundled policies, over the bundled recordings, which
/// include repeat limits, breakers, approvals and rate limits).
#[test]
fn a_candidate_replays_the_same_alone_and_among_others() {
    let recordings = common::root().join("recordings");
    let policies = ["strict", "guarded", "seed-copy-limit"]
        .map(|p| common::root().join(format!("policies/{p}.yaml")));
    let together = replay_json(&[
        recordings.to_str().unwrap(),
        "--policy",
        policies[0].to_str().unwrap(),
        "--policy",
        policies[1].to_str().unwrap(),
        "--policy",
        policies[2].to_str().unwrap(),
    ]);
    for (i, p) in policies.iter().enumerate() {
        let alone = replay_json(&[
            recordings.to_str().unwrap(),
            "--policy",
            p.to_str().unwrap(),
        ]);
        assert_eq!(
            alone["candidates"][0],
            together["candidates"][i],
            "{} alone and among three",
            p.display()
        );
        assert!(alone["candidates"][0]["totals"]["allow"].as_u64().unwrap() > 0);
    }
}

/// Replay reads the `event_id` column only to write every decision; a
/// report's few ids (diff examples, each rule's first firing) are read
/// back afterwards from their rows. Across files, row groups and a time
/// range that cuts rows out of batches, the report must name the same
/// events as when the ids are read with every event.
#[test]
fn report_ids_read_back_are_the_ids_read_with_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let recording = common::write_file(dir.path(), "recording.yaml", POLICY);
    let lenient = common::write_file(dir.path(), "lenient.yaml", "version: \"1\"\ntools: {}\n");
    let strict = common::write_file(
        dir.path(),
        "strict.yaml",
        "version: \"1\"\ntools:\n  \"*\":\n    rules:\n      - name: per agent\n        rate_limit: {max: 5, window: 20s, per: agent}\n  list_image_sets:\n    rules:\n      - name: no listing\n        action: deny\n",
    );
    let calls = calls();
    let log = dir.path().join("log");
    // Small row groups, one writer's chain of three files, and a second
    // writer: ids are looked up by file and row number.
    let decisions = eval(&recording, &calls);
    let config = RecorderConfig {
        row_group_rows: 16,
        ..RecorderConfig::default()
    };
    record_with(&log, &calls[..300], &decisions[..300], 0, config.clone(), 3);
    record_with(&log, &calls[300..], &decisions[300..], 300, config, 1);
    let files = std::fs::read_dir(&log)
        .unwrap()
        .flatten()
        .flat_map(|d| {
            if d.path().is_dir() {
                std::fs::read_dir(d.path()).unwrap().flatten().collect()
            } else {
                vec![d]
            }
        })
        .filter(|d| d.path().extension().is_some_and(|e| e == "parquet"))
        .count();
    assert!(files >= 3, "the log spans files ({files})");
    let from = flightrec::time::format_us(T0 + 30_000_000);
    let to = flightrec::time::format_us(T0 + 90_000_000);
    for range in [vec![], vec!["--from", from.as_str(), "--to", to.as_str()]] {
        let mut args = vec![
            "replay",
            log.to_str().unwrap(),
            "--policy",
            lenient.to_str().unwrap(),
            "--policy",
            strict.to_str().unwrap(),
            "--format",
            "json",
        ];
        args.extend(&range);
        let late = run(&args);
        assert!(late.status.success(), "{}", stderr(&late));
        let out_file = dir.path().join("decisions.parquet");
        args.extend(["--decisions-out", out_file.to_str().unwrap()]);
        let eager = run(&args);
        assert!(eager.status.success(), "{}", stderr(&eager));
        let late: Value = serde_json::from_slice(&late.stdout).unwrap();
        let eager: Value = serde_json::from_slice(&eager.stdout).unwrap();
        assert_eq!(late, eager, "range {range:?}");
        // And the ids are the right events: each names a decided row with
        // the verdict the report says.
        let rows = read_decisions(&out_file);
        let by_id = |policy: &str, id: &str| {
            rows.iter()
                .find(|r| r.1 == policy && r.0 == id)
                .unwrap_or_else(|| panic!("{id} is a decided event of {policy}"))
                .clone()
        };
        let mut named = 0;
        for (c, policy) in late["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .zip(["lenient", "strict"])
        {
            for e in c["diff"]["newly_allowed"]["examples"].as_array().unwrap() {
                let r = by_id(policy, e.as_str().unwrap());
                assert_eq!(r.2, "allow");
                assert_ne!(r.5, "allow", "recorded refused");
                named += 1;
            }
            for e in c["diff"]["newly_blocked"]["examples"].as_array().unwrap() {
                let r = by_id(policy, e.as_str().unwrap());
                assert_ne!(r.2, "allow");
                assert_eq!(r.5, "allow", "recorded allowed");
                named += 1;
            }
            for f in c["rules"].as_array().unwrap() {
                let r = by_id(policy, f["event_id"].as_str().unwrap());
                assert_eq!(r.3.as_deref(), f["rule"].as_str());
                assert_eq!(r.2, f["verdict"].as_str().unwrap());
                named += 1;
            }
        }
        assert!(named >= 10, "the report names events ({named})");
    }
}

/// Replay reads `server`, `category` and `risk` only for a candidate whose
/// rules look at them: with such a candidate (alone or among others that
/// do not), the recorded values decide as they did live.
#[test]
fn the_call_fields_a_condition_reads_are_read() {
    use flightrec::policy::{Category, Risk};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut rec = Recorder::open(&log, RecorderConfig::default()).unwrap();
    let n = 60;
    for i in 0..n {
        rec.record(AuditRow {
            event_id: format!("e{i}"),
            ts_us: T0 + i as i64 * 1_000,
            session_id: "s".into(),
            agent_id: "a".into(),
            server: if i % 3 == 0 { "billing" } else { "imaging" }.into(),
            method: "tools/call".into(),
            tool: Some("update".into()),
            category: Some(if i % 4 == 0 {
                Category::Destructive
            } else {
                Category::Write
            }),
            risk: Some(if i % 5 == 0 { Risk::High } else { Risk::Medium }),
            decision: "allow".parse().unwrap(),
            ..AuditRow::default()
        })
        .unwrap();
    }
    rec.close().unwrap();
    let policy = |name: &str, path: &str, value: &str| {
        common::write_file(
            dir.path(),
            name,
            &format!(
                "version: \"1\"\ntools:\n  \"*\":\n    rules:\n      - name: no {value}\n        action: deny\n        when: [{{path: {path}, op: eq, value: {value}}}]\n"
            ),
        )
    };
    let by_server = policy("server.yaml", "call.server", "billing");
    let by_category = policy("category.yaml", "tool.category", "destructive");
    let by_risk = policy("risk.yaml", "tool.risk", "high");
    let plain = common::write_file(dir.path(), "plain.yaml", "version: \"1\"\ntools: {}\n");
    let expect = [
        (&by_server, (0..n).filter(|i| i % 3 == 0).count()),
        (&by_category, (0..n).filter(|i| i % 4 == 0).count()),
        (&by_risk, (0..n).filter(|i| i % 5 == 0).count()),
    ];
    for (candidate, denied) in expect {
        for others in [vec![], vec![plain.to_str().unwrap()]] {
            let mut args = vec![
                log.to_str().unwrap(),
                "--policy",
                candidate.to_str().unwrap(),
            ];
            for o in &others {
                args.extend(["--policy", o]);
            }
            let r = replay_json(&args);
            assert_eq!(
                r["candidates"][0]["totals"]["deny"],
                denied as u64,
                "{} with {others:?}",
                candidate.display()
            );
        }
    }
}
