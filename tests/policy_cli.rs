//! `flightrec policy check` and `flightrec policy eval`, driven through the
//! real binary.

mod common;

use common::{bin, run, stderr, write_file};
use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

/// The corpus is PolicyLayer Intercept's own policy files, kept beside the
/// repository on CI (not part of it): `.ci/run` runs this test with
/// `--ignored` when `../shared/compat/intercept-policies` exists and says
/// so when it does not.
#[test]
#[ignore = "needs ../shared/compat/intercept-policies beside the clone; .ci/run runs it when present"]
fn every_intercept_compat_policy_passes_check() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/compat/intercept-policies");
    let mut files: Vec<String> = std::fs::read_dir(&corpus)
        .unwrap_or_else(|e| {
            panic!(
                "the compatibility corpus must be beside the checkout at {}: {e}",
                corpus.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert_eq!(files.len(), 53, "the corpus holds 53 Intercept policies");
    let mut args = vec!["policy", "check"];
    args.extend(files.iter().map(String::as_str));
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let ok_lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("ok: "))
        .count();
    assert_eq!(ok_lines, 53);
}

#[test]
fn bundled_policies_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["lenient", "strict", "seed-copy-limit", "guarded"] {
        let p = root.join(format!("policies/{name}.yaml"));
        let out = run(&["policy", "check", p.to_str().unwrap()]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
}

/// Each kind of bad input named in the issue gets an error at its line and
/// column, exit 2, and no panic.
#[test]
fn bad_policies_are_reported_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "malformed.yaml",
            "version: \"1\"\ntools: [a, b\n",
            ":3:1: YAML syntax error",
        ),
        (
            "wrong-type.yaml",
            "version: \"1\"\ntools:\n  t:\n    rules: 5\n",
            ":4:12: tools.t.rules must be a list, found an integer",
        ),
        (
            "unknown-op.yaml",
            "version: \"1\"\ntools:\n  t:\n    rules:\n      - name: r\n        conditions:\n          - {path: args.a, op: bigger, value: 1}\n",
            ":7:32: tools.t.rules[0].conditions[0]: unknown operator \"bigger\"",
        ),
        (
            "bad-regex.yaml",
            "version: \"1\"\ntools:\n  t:\n    rules:\n      - name: r\n        conditions:\n          - {path: args.a, op: regex, value: \"a(\"}\n",
            ":7:46: tools.t.rules[0].conditions[0]: invalid regex \"a(\"",
        ),
        (
            "negative-window.yaml",
            "version: \"1\"\ntools:\n  t:\n    rules:\n      - name: r\n        rate_limit: {max: 3, window: -60s}\n",
            ":6:38: tools.t.rules[0]: rate_limit window must be positive",
        ),
        (
            "max-zero.yaml",
            "version: \"1\"\ntools:\n  t:\n    rules:\n      - name: r\n        rate_limit: {max: 0, window: 60s}\n",
            ":6:27: tools.t.rules[0]: rate_limit max must be a positive integer, got 0",
        ),
        (
            "unknown-key.yaml",
            "version: \"1\"\ntools:\n  t:\n    rules:\n      - name: r\n        action: deny\n        on_deney: nope\n",
            ":7:9: unknown key `on_deney` in a rule\n  hint: did you mean `on_deny`?",
        ),
        (
            "duplicate-rule.yaml",
            "version: \"1\"\ntools:\n  t:\n    rules:\n      - {name: r, action: deny}\n      - {name: r, action: deny}\n",
            ":6:9: tools.t.rules[1]: duplicate rule name \"r\"",
        ),
        ("empty.yaml", "", ":1:1: the policy file is empty"),
        (
            "bad-version.yaml",
            "version: \"2\"\ntools: {}\n",
            ":1:10: version must be \"1\", got \"2\"",
        ),
    ];
    for (name, text, expected) in cases {
        let path = write_file(dir.path(), name, text);
        let out = run(&["policy", "check", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{name} should be invalid");
        let err = stderr(&out);
        let wanted = format!("{}{expected}", path.display());
        assert!(
            err.contains(&wanted),
            "{name}: expected\n{wanted}\nin\n{err}"
        );
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
}

#[test]
fn check_reports_every_problem_and_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "many.yaml",
        "version: \"1\"\ndefault: maybe\nhide: [x, x]\ntools:\n  t:\n    rules:\n      - action: deny\n",
    );
    let out = run(&[
        "policy",
        "check",
        path.to_str().unwrap(),
        "/nonexistent/policy.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for needle in [
        ":2:10: default must be \"allow\" or \"deny\", got \"maybe\"",
        ":3:11: hide: duplicate entry \"x\"",
        ":7:9: tools.t.rules[0]: rule must have a name",
        "cannot read policy file /nonexistent/policy.yaml",
        "2 of 2 policy file(s) invalid",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in\n{err}");
    }
}

fn eval_with_stdin(policy: &Path, input: &str, extra: &[&str]) -> Output {
    let mut child = bin()
        .args(["policy", "eval", "--policy", policy.to_str().unwrap()])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn decisions(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn eval_decides_in_order_with_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_file(
        dir.path(),
        "p.yaml",
        "version: \"1\"\ntools:\n  copy:\n    rules:\n      - name: two\n        rate_limit: {max: 2, window: 60s, per: session}\n",
    );
    let input = [
        r#"{"ts":"2026-11-25T10:00:00Z","session":"a","agent":"x","server":"s","tool":"copy","args":{},"outcome":"ok"}"#,
        r#"{"ts":"2026-11-25T10:00:01Z","session":"a","agent":"x","server":"s","tool":"copy","args":{},"outcome":"rpc_error"}"#,
        "",
        r#"{"ts":1795600802000000,"session":"a","agent":"x","server":"s","tool":"copy","args":{},"outcome":"tool_error"}"#,
        r#"{"ts":"2026-11-25T10:00:03Z","session":"a","agent":"x","server":"s","tool":"copy","args":{}}"#,
        r#"{"ts":"2026-11-25T10:00:03Z","session_id":"b","agent_id":"x","tool":"copy"}"#,
    ]
    .join("\n");
    let out = eval_with_stdin(&policy, &input, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let d = decisions(&out);
    let verdicts: Vec<&str> = d.iter().map(|v| v["decision"].as_str().unwrap()).collect();
    assert_eq!(verdicts, ["allow", "allow", "allow", "throttle", "allow"]);
    assert_eq!(d[3]["rule"], "two");
    assert_eq!(d[3]["retry_after_ms"], 57000);
    assert_eq!(d[0]["rule"], serde_json::Value::Null);
}

#[test]
fn eval_stops_on_a_bad_line_naming_it_unless_keep_going() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_file(dir.path(), "p.yaml", "version: \"1\"\ntools: {}\n");
    let input = "{\"ts\":1,\"tool\":\"a\"}\nnot json\n{\"ts\":\"yesterday\",\"tool\":\"a\"}\n{\"ts\":2,\"tool\":\"b\"}\n";
    let out = eval_with_stdin(&policy, input, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("<stdin>:2:"), "{}", stderr(&out));
    assert_eq!(decisions(&out).len(), 1);

    let out = eval_with_stdin(&policy, input, &["--keep-going"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "bad lines still make the run an input error"
    );
    let d = decisions(&out);
    assert_eq!(d.len(), 4);
    assert!(d[1]["error"].as_str().unwrap().starts_with("line 2:"));
    assert!(
        d[2]["error"]
            .as_str()
            .unwrap()
            .contains("not an RFC 3339 timestamp")
    );
    assert_eq!(d[3]["decision"], "allow");
}

#[test]
fn eval_reads_a_calls_file_and_matches_the_readme_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run(&[
        "policy",
        "eval",
        "--policy",
        root.join("policies/seed-copy-limit.yaml").to_str().unwrap(),
        "--calls",
        root.join("examples/calls.jsonl").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let d = decisions(&out);
    let throttled = d.iter().filter(|v| v["decision"] == "throttle").count();
    // 14 looped copies (one rolled back by an rpc_error) plus one more at +20 s:
    // 10 fit in the per-session minute, the other 4 copies are throttled.
    assert_eq!(throttled, 4);
}

#[test]
fn proxy_usage_errors_exit_2_and_help_lists_all() {
    let help = run(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for cmd in [
        "proxy", "scan", "policy", "replay", "generate", "fuzz", "audit", "export", "import",
        "demo",
    ] {
        assert!(text.contains(cmd), "--help lists {cmd}");
    }
    // --listen needs an upstream.
    let out = run(&["proxy", "--policy", "p.yaml", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--listen needs --upstream"),
        "{}",
        stderr(&out)
    );
    // Only http:// upstreams.
    let out = run(&["proxy", "--policy", "p.yaml", "--upstream", "ftp://x/mcp"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("expected an http:// URL"),
        "{}",
        stderr(&out)
    );
    // A policy that does not load stops the HTTP proxy before it listens.
    let out = run(&[
        "proxy",
        "--policy",
        "missing.yaml",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9/mcp",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("missing.yaml"), "{}", stderr(&out));
}

/// `policy eval` (the core replay and the proxy share): a negative
/// `increment_from` amount is denied naming the argument and gives no
/// budget back, so the calls after it see the budget as it was.
#[test]
fn eval_refuses_a_negative_increment_and_keeps_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_file(
        dir.path(),
        "p.yaml",
        "version: \"1\"\ntools:\n  charge:\n    rules:\n      - name: budget\n        conditions: [{path: state.charge.spent, op: lte, value: 100}]\n        state: {counter: spent, window: day, increment_from: args.amount}\n",
    );
    let input = [-1_000_000, 100, 50]
        .iter()
        .enumerate()
        .map(|(i, amount)| {
            format!(
                r#"{{"ts":"2026-11-25T10:00:0{i}Z","session":"a","agent":"x","server":"s","tool":"charge","args":{{"amount":{amount}}},"outcome":"ok"}}"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let out = eval_with_stdin(&policy, &input, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let d = decisions(&out);
    let verdicts: Vec<&str> = d.iter().map(|v| v["decision"].as_str().unwrap()).collect();
    assert_eq!(verdicts, ["deny", "allow", "throttle"]);
    assert_eq!(
        d[0]["message"],
        "Rule \"budget\" cannot count this call: increment_from args.amount is negative (fail closed)"
    );
}
