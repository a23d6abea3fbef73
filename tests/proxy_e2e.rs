//! The stdio proxy with real parts: the official MCP Python SDK (`mcp` 2.x)
//! as the client in both lifecycles, and as servers the Rust test server,
//! `@modelcontextprotocol/server-everything` (npm) and
//! `awslabs.healthimaging-mcp-server` (PyPI). `.ci/run` installs them into
//! `.venv-sdk`, `.test-deps` and `.venv-hi`.

mod common;

use common::{Timed, dir_rows, flightrec, need, root, test_server};
use flightrec::audit::schema::AuditRow;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn sdk_python() -> PathBuf {
    need(root().join(".venv-sdk/bin/python"))
}

/// The log's rows in request order. Rows are chained in completion order,
/// and a refused call is recorded at once while the answer to the previous
/// one may still be completing, so tests compare by the request time.
fn rows(dir: &Path) -> Vec<AuditRow> {
    let mut rows = dir_rows(dir);
    rows.sort_by_key(|r| r.ts_us);
    rows
}

/// Runs the SDK client through the proxy; returns what the client saw.
fn sdk(
    mode: &str,
    policy: &Path,
    audit: &Path,
    calls: Value,
    server: &[&str],
    extra: &[&str],
) -> Value {
    let mut cmd = Command::new(sdk_python());
    cmd.arg(root().join("tests/e2e/sdk_client.py"))
        .arg(mode)
        .arg(calls.to_string())
        .arg("--")
        .arg(flightrec());
    cmd.args([
        "proxy",
        "--policy",
        policy.to_str().unwrap(),
        "--audit-dir",
        audit.to_str().unwrap(),
    ]);
    cmd.args(extra).arg("--").args(server);
    let out = common::output_within(cmd.stdin(Stdio::null()), Duration::from_secs(180));
    assert!(
        out.status.success(),
        "client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

const POLICY: &str = r#"
version: "1"
hide: [exit_now]
tools:
  copy_image_set:
    rules:
      - name: two copies per session
        rate_limit: {max: 2, window: 60s, per: session}
  delete_image_set:
    rules:
      - name: no deletes
        action: deny
        reason: "deleting image sets is not allowed for agents"
  slow_tool:
    rules:
      - name: a human decides
        action: require_approval
"#;

fn write_policy(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("policy.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Replays `audit` against `policy` and returns the report's diff for that
/// candidate (`compared`, `unchanged`, ...).
fn replay_diff(audit: &Path, policy: &Path) -> Value {
    let r = Command::new(flightrec())
        .args([
            "replay",
            audit.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--format",
            "json",
        ])
        .output_timed()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let report: Value = serde_json::from_slice(&r.stdout).unwrap();
    report["candidates"][0]["diff"].clone()
}

/// The decision the proxy stamped on an answer; an answer without the
/// `_meta` stamp is a forwarded (allowed) call.
fn decision_of(answer: &Value) -> String {
    answer["result"]["_meta"]["io.flightrec/decision"]["decision"]
        .as_str()
        .unwrap_or("allow")
        .to_string()
}

#[test]
fn sdk_through_the_proxy_in_both_lifecycles() {
    for mode in ["auto", "legacy"] {
        let dir = tempfile::tempdir().unwrap();
        let policy = write_policy(dir.path(), POLICY);
        let audit = dir.path().join("audit");
        let calls = json!([
            {"tool": "list_image_sets"},
            {"tool": "copy_image_set", "args": {"sourceImageSetId": "a", "password": "hunter2"}},
            {"tool": "copy_image_set", "args": {"sourceImageSetId": "b"}},
            {"tool": "copy_image_set", "args": {"sourceImageSetId": "c"}},
            {"tool": "delete_image_set", "args": {"imageSetId": "x"}},
            {"tool": "slow_tool", "args": {"ms": 1}},
            {"tool": "failing_tool"},
            {"tool": "erroring_tool"},
        ]);
        let server = test_server();
        let seen = sdk(
            mode,
            &policy,
            &audit,
            calls,
            &[server.to_str().unwrap()],
            &["--redact", "/password", "--agent", "imaging-assistant"],
        );
        let tools: Vec<&str> = seen["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert!(
            !tools.contains(&"exit_now"),
            "{mode}: hidden tools are removed from tools/list"
        );
        assert!(
            !tools.contains(&"delete_image_set"),
            "{mode}: always-denied tools too"
        );
        assert!(tools.contains(&"copy_image_set"));
        let c = seen["calls"].as_array().unwrap();
        assert_eq!(c[0]["isError"], false, "{mode}: {}", c[0]);
        assert_eq!(c[1]["isError"], false);
        assert_eq!(c[2]["isError"], false);
        assert_eq!(c[3]["isError"], true, "third copy throttled");
        assert!(
            c[3]["text"]
                .as_str()
                .unwrap()
                .contains("throttled by policy rule \"two copies per session\""),
            "{}",
            c[3]
        );
        assert!(c[3]["text"].as_str().unwrap().contains("Retry after"));
        assert!(
            c[4]["text"]
                .as_str()
                .unwrap()
                .contains("deleting image sets is not allowed for agents")
        );
        assert!(c[5]["text"].as_str().unwrap().contains("requires approval"));
        assert!(
            c[6].get("error").is_some(),
            "{mode}: a JSON-RPC error reaches the client: {}",
            c[6]
        );
        assert_eq!(c[7]["isError"], true);

        let rows = rows(&audit);
        let session = &rows[0].session_id;
        assert!(
            rows.iter()
                .all(|r| &r.session_id == session && r.agent_id == "imaging-assistant")
        );
        assert!(
            rows.iter().all(|r| r.client_name.as_deref() == Some("mcp")),
            "{mode}: client info from both lifecycles"
        );
        let methods: Vec<&str> = rows.iter().map(|r| r.method.as_str()).collect();
        if mode == "auto" {
            assert!(methods.contains(&"server/discover"), "{methods:?}");
        } else {
            assert!(methods.contains(&"initialize"), "{methods:?}");
        }
        let call = |tool: &str, n: usize| {
            rows.iter()
                .filter(|r| r.tool.as_deref() == Some(tool))
                .nth(n)
                .unwrap()
                .clone()
        };
        let first_copy = call("copy_image_set", 0);
        assert_eq!(
            (first_copy.decision.as_str(), first_copy.outcome.as_str()),
            ("allow", "ok")
        );
        assert!(
            first_copy
                .args_json
                .as_deref()
                .unwrap()
                .contains("[redacted:"),
            "redacted in the log"
        );
        assert!(!first_copy.args_json.as_deref().unwrap().contains("hunter2"));
        assert!(first_copy.latency_us.is_some());
        assert_eq!(first_copy.category.map(|c| c.as_str()), Some("write"));
        let third = call("copy_image_set", 2);
        assert_eq!(
            (third.decision.as_str(), third.outcome.as_str()),
            ("throttle", "not_forwarded")
        );
        assert_eq!(third.rule.as_deref(), Some("two copies per session"));
        assert_eq!(call("delete_image_set", 0).decision.as_str(), "deny");
        assert_eq!(call("slow_tool", 0).decision.as_str(), "approval");
        assert_eq!(call("failing_tool", 0).outcome.as_str(), "rpc_error");
        assert_eq!(call("failing_tool", 0).error_code, Some(-32000));
        assert_eq!(call("erroring_tool", 0).outcome.as_str(), "tool_error");
        assert_eq!(
            call("list_image_sets", 0).category.map(|c| c.as_str()),
            Some("read"),
            "from readOnlyHint"
        );
        common::assert_verified(&audit);

        // Replaying the live log with the same policy reproduces every decision.
        let d = &replay_diff(&audit, &policy);
        let calls = rows.iter().filter(|r| r.method == "tools/call").count();
        assert!(calls > 0);
        assert_eq!(d["compared"], calls, "{mode}: every recorded call compared");
        assert_eq!(d["compared"], d["unchanged"], "{mode}: {d}");
    }
}

#[test]
fn sdk_with_server_everything() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        "version: \"1\"\nhide: [trigger-long-running-operation]\ntools:\n  echo:\n    rules:\n      - name: no secrets\n        conditions: [{path: args.message, op: regex, value: \"^[^@]*$\"}]\n",
    );
    let audit = dir.path().join("audit");
    let server = need(
        root()
            .join(".test-deps/node_modules/@modelcontextprotocol/server-everything/dist/index.js"),
    );
    let calls = json!([{"tool": "echo", "args": {"message": "hi"}}, {"tool": "echo", "args": {"message": "me@example.com"}}]);
    let seen = sdk(
        "auto",
        &policy,
        &audit,
        calls,
        &["node", server.to_str().unwrap(), "stdio"],
        &[],
    );
    let tools: Vec<&str> = seen["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tools.contains(&"echo") && !tools.contains(&"trigger-long-running-operation"),
        "{tools:?}"
    );
    assert_eq!(seen["calls"][0]["text"], "Echo: hi");
    assert!(
        seen["calls"][1]["text"]
            .as_str()
            .unwrap()
            .contains("no secrets")
    );
    let rows = rows(&audit);
    // The SDK probes server/discover, server-everything refuses it (-32601),
    // the SDK falls back to initialize: both pass through and are recorded.
    let discover = rows
        .iter()
        .find(|r| r.method == "server/discover")
        .expect("server/discover row");
    assert_eq!(
        (discover.outcome.as_str(), discover.error_code),
        ("rpc_error", Some(-32601))
    );
    assert!(
        rows.iter()
            .any(|r| r.method == "initialize" && r.outcome.as_str() == "ok")
    );
    let echo: Vec<&AuditRow> = rows
        .iter()
        .filter(|r| r.tool.as_deref() == Some("echo"))
        .collect();
    assert_eq!(echo.len(), 2);
    assert_eq!(
        (echo[0].decision.as_str(), echo[0].outcome.as_str()),
        ("allow", "ok")
    );
    assert_eq!(echo[1].decision.as_str(), "deny");
    assert_eq!(
        echo[0].server, "mcp-servers/everything",
        "serverInfo.name from initialize"
    );
    assert_eq!(
        echo[0].category.map(|c| c.as_str()),
        Some("read"),
        "annotations: readOnlyHint"
    );
}

#[test]
fn sdk_with_the_healthimaging_server() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: copy budget per session\n        rate_limit: {max: 1, window: 60s, per: session}\n",
    );
    let audit = dir.path().join("audit");
    let server = need(root().join(".venv-hi/bin/awslabs.healthimaging-mcp-server"));
    let args = json!({"datastore_id": "12345678901234567890123456789012", "source_image_set_id": "abcdefabcdefabcdefabcdefabcdefab",
                      "source_datastore_id": "12345678901234567890123456789012", "copy_image_set_information": {"sourceImageSet": {"latestVersionId": "1"}}});
    let calls =
        json!([{"tool": "copy_image_set", "args": args}, {"tool": "copy_image_set", "args": args}]);
    let env_server = [
        "env",
        "AWS_REGION=us-east-1",
        "AWS_ACCESS_KEY_ID=AKIAFAKEFAKEFAKEFAKE",
        "AWS_SECRET_ACCESS_KEY=fake/fake/fake",
        "AWS_EC2_METADATA_DISABLED=true",
        server.to_str().unwrap(),
    ];
    let seen = sdk("auto", &policy, &audit, calls, &env_server, &[]);
    let tools = seen["tools"].as_array().unwrap();
    assert!(tools.len() > 30, "the real server's tools: {}", tools.len());
    // Offline, the real copy_image_set answers with an isError result.
    assert_eq!(seen["calls"][0]["isError"], true);
    assert!(
        seen["calls"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Error executing tool copy_image_set")
    );
    assert!(
        seen["calls"][1]["text"]
            .as_str()
            .unwrap()
            .contains("copy budget per session")
    );
    let rows = rows(&audit);
    let copies: Vec<&AuditRow> = rows
        .iter()
        .filter(|r| r.tool.as_deref() == Some("copy_image_set"))
        .collect();
    assert_eq!(
        (copies[0].decision.as_str(), copies[0].outcome.as_str()),
        ("allow", "tool_error"),
        "the tool ran: it counts"
    );
    assert_eq!(
        (copies[1].decision.as_str(), copies[1].outcome.as_str()),
        ("throttle", "not_forwarded")
    );
    assert_eq!(copies[0].server, "awslabs.healthimaging-mcp-server");
    assert_eq!(
        copies[0].category.map(|c| c.as_str()),
        Some("write"),
        "no annotations: the name heuristic"
    );
}

/// Drives the proxy with raw frames (no SDK) for what a well-behaved client
/// never sends.
struct Raw {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// The proxy's stderr, line by line.
    errs: std::sync::mpsc::Receiver<String>,
}

impl Raw {
    fn start(policy: &Path, audit: &Path, extra: &[&str]) -> Raw {
        Raw::start_with(policy, audit, extra, &[])
    }

    /// As [`Raw::start`], with environment variables for the proxy and so
    /// for the test server it spawns.
    fn start_with(policy: &Path, audit: &Path, extra: &[&str], env: &[(&str, &Path)]) -> Raw {
        let mut child = Command::new(flightrec())
            .args([
                "proxy",
                "--policy",
                policy.to_str().unwrap(),
                "--audit-dir",
                audit.to_str().unwrap(),
            ])
            .args(extra)
            .arg("--")
            .arg(test_server())
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rx = common::line_channel(child.stdout.take().unwrap());
        let errs = common::line_channel(child.stderr.take().unwrap());
        Raw {
            child,
            lines: rx,
            errs,
        }
    }

    /// Waits (at most 20 s) for a stderr line containing `text`; returns
    /// every line read up to and including it.
    fn stderr_until(&self, text: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut seen = String::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.errs.recv_timeout(left) {
                Ok(l) => {
                    seen.push_str(&l);
                    seen.push('\n');
                    if l.contains(text) {
                        return seen;
                    }
                }
                Err(e) => panic!("no stderr line with {text:?} ({e:?}); saw:\n{seen}"),
            }
        }
    }

    /// Every stderr line left once the proxy has exited.
    fn stderr_rest(&self) -> String {
        let mut seen = String::new();
        while let Ok(l) = self.errs.recv_timeout(Duration::from_secs(5)) {
            seen.push_str(&l);
            seen.push('\n');
        }
        seen
    }

    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    fn recv(&self) -> Value {
        let l = self
            .lines
            .recv_timeout(Duration::from_secs(10))
            .expect("an answer");
        serde_json::from_str(&l).unwrap()
    }
}

#[test]
fn bad_frames_get_errors_and_rows_and_the_proxy_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), POLICY);
    let audit = dir.path().join("audit");
    let mut p = Raw::start(&policy, &audit, &["--max-message-bytes", "200"]);
    p.send("this is not json");
    assert_eq!(p.recv()["error"]["code"], -32700);
    p.send(&format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"copy_image_set\",\"arguments\":{{\"x\":\"{}\"}}}}}}", "y".repeat(500)));
    assert_eq!(p.recv()["error"]["code"], -32600);
    p.send(r#"{"jsonrpc":"2.0","id":2,"method":"some/future_method","params":{"x":1}}"#);
    assert_eq!(
        p.recv()["error"]["code"],
        -32601,
        "unknown methods pass through to the server"
    );
    p.send(r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"list_image_sets","arguments":{}}}"#);
    assert_eq!(p.recv()["id"], 3, "still serving");
    drop(p.child.stdin.take());
    let status = common::wait_within(&mut p.child, Duration::from_secs(120));
    assert!(status.success());
    let rows = rows(&audit);
    let methods: Vec<&str> = rows.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(
        methods.iter().filter(|m| **m == "<invalid>").count(),
        2,
        "{methods:?}"
    );
    assert!(methods.contains(&"some/future_method"));
}

#[test]
fn child_exit_fails_in_flight_calls_and_exits_with_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "version: \"1\"\ntools: {}\n");
    let audit = dir.path().join("audit");
    let mut p = Raw::start(&policy, &audit, &[]);
    p.send(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"exit_now","arguments":{}}}"#);
    let answer = p.recv();
    assert_eq!(answer["error"]["code"], -32603, "{answer}");
    let status = common::wait_within(&mut p.child, Duration::from_secs(120));
    assert_eq!(status.code(), Some(3), "the server's exit status");
    let rows = rows(&audit);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome.as_str(), "upstream_gone");
}

#[test]
fn kill_9_of_the_proxy_mid_call_leaves_an_interrupted_row() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "version: \"1\"\ntools: {}\n");
    let audit = dir.path().join("audit");
    let ran = dir.path().join("ran.log");
    let mut p = Raw::start_with(&policy, &audit, &[], &[("TEST_SERVER_LOG", &ran)]);
    p.send(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_image_sets","arguments":{}}}"#);
    assert_eq!(p.recv()["id"], 1);
    p.send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"slow_tool","arguments":{"ms":5000}}}"#);
    // The call reached the server (so the proxy journaled and forwarded it).
    common::wait_for_line(&ran, "slow_tool");
    p.child.kill().unwrap(); // SIGKILL
    common::wait_within(&mut p.child, Duration::from_secs(120));
    // Opening the directory again recovers both calls from the journal.
    let out = Command::new(flightrec())
        .args(["audit", "append", audit.to_str().unwrap()])
        .stdin(Stdio::null())
        .output_timed()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = rows(&audit);
    let slow = rows
        .iter()
        .find(|r| r.tool.as_deref() == Some("slow_tool"))
        .expect("the forwarded call left a row");
    assert_eq!(slow.outcome.as_str(), "interrupted");
    assert!(
        rows.iter()
            .any(|r| r.tool.as_deref() == Some("list_image_sets") && r.outcome.as_str() == "ok")
    );
}

#[test]
fn scan_writes_a_starter_policy_that_checks_and_enforces() {
    let dir = tempfile::tempdir().unwrap();
    let everything = need(
        root()
            .join(".test-deps/node_modules/@modelcontextprotocol/server-everything/dist/index.js"),
    );
    let server = test_server();
    for (name, cmd) in [
        ("test", vec![server.to_str().unwrap()]),
        (
            "everything",
            vec!["node", everything.to_str().unwrap(), "stdio"],
        ),
    ] {
        let out_path = dir.path().join(format!("{name}.yaml"));
        let mut args = vec!["scan", "-o", out_path.to_str().unwrap(), "--"];
        args.extend(cmd.iter().copied());
        let o = Command::new(flightrec())
            .args(&args)
            .output_timed()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let check = Command::new(flightrec())
            .args(["policy", "check", out_path.to_str().unwrap()])
            .output_timed()
            .unwrap();
        assert!(
            check.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let text = std::fs::read_to_string(&out_path).unwrap();
        assert!(
            text.contains("# ── Read tools ──")
                && text.contains("Uncomment to apply a global rate limit")
        );
        if name == "test" {
            let policy = flightrec::policy::Policy::load(&out_path).unwrap();
            assert!(
                policy.always_refuses("delete_image_set"),
                "destructive tools denied"
            );
            assert!(!policy.always_refuses("list_image_sets"));
            assert!(text.contains("\"copy_image_set\": write  # from annotations"));
            assert!(text.contains("\"slow_tool\": write  # from name"));
        }
    }
}

#[test]
fn policy_reloads_on_change_and_keeps_the_old_one_when_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "version: \"1\"\ntools: {}\n");
    let audit = dir.path().join("audit");
    let mut p = Raw::start(&policy, &audit, &[]);
    let call = |id: u32| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"copy_image_set","arguments":{{}}}}}}"#
        )
    };
    p.send(&call(1));
    assert!(p.recv()["result"]["isError"].is_null(), "allowed at first");
    // A new file (written by rename, as editors do) takes over.
    let tmp = dir.path().join("policy.yaml.new");
    std::fs::write(
        &tmp,
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules: [{name: frozen, action: deny}]\n",
    )
    .unwrap();
    std::fs::rename(&tmp, &policy).unwrap();
    p.stderr_until("reloaded");
    p.send(&call(2));
    assert_eq!(
        p.recv()["result"]["_meta"]["io.flightrec/decision"]["rule"],
        "frozen"
    );
    // An invalid file is reported and the previous policy stays.
    std::fs::write(
        &policy,
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules: [{name: x, action: explode}]\n",
    )
    .unwrap();
    p.stderr_until("reload failed, keeping the previous policy");
    p.send(&call(3));
    assert_eq!(
        p.recv()["result"]["_meta"]["io.flightrec/decision"]["rule"],
        "frozen"
    );
    drop(p.child.stdin.take());
    assert!(common::wait_within(&mut p.child, Duration::from_secs(120)).success());
}

#[test]
fn sigterm_is_forwarded_and_in_flight_calls_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "version: \"1\"\ntools: {}\n");
    let audit = dir.path().join("audit");
    let ran = dir.path().join("ran.log");
    let mut p = Raw::start_with(
        &policy,
        &audit,
        &["--grace", "2s"],
        &[("TEST_SERVER_LOG", &ran)],
    );
    p.send(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow_tool","arguments":{"ms":10000}}}"#);
    // Keep the proxy's stdin open through `wait` (which would close it): a
    // client that is still there, so the stop is the signal's alone.
    let _stdin = p.child.stdin.take();
    common::wait_for_line(&ran, "slow_tool");
    // SAFETY: kill(2) on the proxy child this test started.
    unsafe {
        libc::kill(p.child.id() as i32, libc::SIGTERM);
    }
    let started = std::time::Instant::now();
    let status = common::wait_within(&mut p.child, Duration::from_secs(120));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the server stopped within the grace period"
    );
    let err = p.stderr_rest();
    // The test server dies of the forwarded SIGTERM: 128 + 15.
    assert_eq!(status.code(), Some(143), "proxy stderr:\n{err}");
    let rows = rows(&audit);
    let slow = rows
        .iter()
        .find(|r| r.tool.as_deref() == Some("slow_tool"))
        .expect("a row for the call in flight");
    assert_eq!(slow.outcome.as_str(), "upstream_gone");
    common::assert_verified(&audit);
}

/// The client closes its end and the operator sends SIGTERM at about the
/// same moment: whichever the proxy notices first, the server gets the
/// signal and the proxy does not wait out the grace period.
#[test]
fn sigterm_after_the_client_left_still_reaches_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "version: \"1\"\ntools: {}\n");
    let audit = dir.path().join("audit");
    let mut p = Raw::start(&policy, &audit, &["--grace", "60s"]);
    // The proxy is up (its signal handling in place) once it answers.
    p.send(r#"{"jsonrpc":"2.0","id":0,"method":"tools/list"}"#);
    assert!(p.recv()["result"]["tools"].is_array());
    p.send(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow_tool","arguments":{"ms":60000}}}"#);
    drop(p.child.stdin.take());
    // The hard order: the proxy has seen the client leave (it says so)
    // before the signal arrives.
    p.stderr_until("the client closed its input");
    // SAFETY: kill(2) on the proxy child this test started.
    unsafe {
        libc::kill(p.child.id() as i32, libc::SIGTERM);
    }
    let started = std::time::Instant::now();
    let status = common::wait_within(&mut p.child, Duration::from_secs(120));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the proxy waited out its 60 s grace period instead of forwarding SIGTERM"
    );
    assert_eq!(status.code(), Some(143));
    let rows = rows(&audit);
    let slow = rows
        .iter()
        .find(|r| r.tool.as_deref() == Some("slow_tool"))
        .expect("a row for the call in flight");
    assert!(
        matches!(slow.outcome.as_str(), "interrupted" | "upstream_gone"),
        "{}",
        slow.outcome
    );
}

/// Every frame shape a server might execute is decided and recorded, or
/// refused and recorded: nothing reaches the server unexamined. The test
/// server executes tools/call in batches, with a null id and as a
/// notification, and logs every tool it runs.
#[test]
fn no_frame_shape_bypasses_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        "version: \"1\"\ntools:\n  delete_image_set:\n    rules: [{name: no deletes, action: deny}]\n  copy_image_set:\n    rules:\n      - name: small copies\n        conditions: [{path: args.count, op: lte, value: 100}]\n",
    );
    let audit = dir.path().join("audit");
    let ran = dir.path().join("ran.log");
    let mut p = Raw::start_with(&policy, &audit, &[], &[("TEST_SERVER_LOG", &ran)]);
    let del = r#""method":"tools/call","params":{"name":"delete_image_set","arguments":{}}"#;
    // (frame, the error code or refusal the client gets; None: no answer)
    let frames: Vec<(String, Option<&str>)> = vec![
        (format!(r#"[{{"jsonrpc":"2.0","id":1,{del}}}]"#), Some("error")),
        (
            format!(r#"[{{"jsonrpc":"2.0","id":2,{del}}},{{"jsonrpc":"2.0","id":3,"method":"ping"}}]"#),
            Some("error"),
        ),
        (format!(r#"{{"jsonrpc":"2.0","id":null,{del}}}"#), Some("error")),
        (format!(r#"{{"jsonrpc":"2.0",{del}}}"#), None),
        (
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/list","method":"tools/call","params":{"name":"delete_image_set"}}"#.into(),
            Some("error"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":6,"method":"tools\/call","params":{"name":"delete_image_set"}}"#.into(),
            Some("refused"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete\u005fimage_set"}}"#.into(),
            Some("refused"),
        ),
        (format!(r#"{{"jsonrpc":"2.0","id":{{"a":1}},{del}}}"#), Some("error")),
        (format!(r#"{{"jsonrpc":"2.0","id":[8],{del}}}"#), Some("error")),
        (format!(r#"{{"jsonrpc":"2.0","id":true,{del}}}"#), Some("error")),
        (format!(r#"{{"jsonrpc":"2.0","id":9.5,{del}}}"#), Some("error")),
        (
            r#"{"jsonrpc":"2.0","id":10,"method":"tools/call","params":["delete_image_set"]}"#.into(),
            Some("error"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"copy_image_set","name":"delete_image_set"}}"#.into(),
            Some("error"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"copy_image_set","arguments":{"count":1,"count":1000}}}"#.into(),
            Some("error"),
        ),
    ];
    for (frame, answer) in &frames {
        p.send(frame);
        if let Some(kind) = answer {
            let v = p.recv();
            match *kind {
                "error" => assert!(v["error"]["code"].is_i64(), "{frame} → {v}"),
                _ => assert_eq!(v["result"]["isError"], true, "{frame} → {v}"),
            }
        }
    }
    // Still serving, and what is allowed runs.
    p.send(r#"{"jsonrpc":"2.0","id":13,"method":"tools/call","params":{"name":"copy_image_set","arguments":{"count":1}}}"#);
    assert_eq!(p.recv()["id"], 13);
    drop(p.child.stdin.take());
    assert!(common::wait_within(&mut p.child, Duration::from_secs(120)).success());
    let ran = std::fs::read_to_string(&ran).unwrap_or_default();
    assert_eq!(ran, "copy_image_set\n", "what the server ran");
    // One row per frame, every refused one a deny that was not forwarded.
    let rows = rows(&audit);
    assert_eq!(rows.len(), frames.len() + 1, "{rows:#?}");
    let refused = rows
        .iter()
        .filter(|r| r.decision.as_str() == "deny" && r.outcome.as_str() == "not_forwarded")
        .count();
    assert_eq!(refused, frames.len());
}

/// A second request reusing the id of one still in flight is refused (its
/// answer could not be told apart); both get a row, the first its answer.
#[test]
fn a_reused_id_in_flight_is_refused_and_both_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "version: \"1\"\ntools: {}\n");
    let audit = dir.path().join("audit");
    let ran = dir.path().join("ran.log");
    let mut p = Raw::start_with(&policy, &audit, &[], &[("TEST_SERVER_LOG", &ran)]);
    p.send(r#"{"jsonrpc":"2.0","id":20,"method":"tools/call","params":{"name":"slow_tool","arguments":{"ms":1000}}}"#);
    p.send(r#"{"jsonrpc":"2.0","id":20,"method":"tools/call","params":{"name":"copy_image_set","arguments":{}}}"#);
    let first = p.recv();
    assert_eq!(first["id"], 20);
    assert_eq!(first["error"]["code"], -32600, "{first}");
    let second = p.recv();
    assert_eq!(second["result"]["content"][0]["text"], "slept 1000 ms");
    drop(p.child.stdin.take());
    assert!(common::wait_within(&mut p.child, Duration::from_secs(120)).success());
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "slow_tool\n");
    let rows = rows(&audit);
    let tools: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r.tool.as_deref().unwrap_or(""),
                r.decision.as_str(),
                r.outcome.as_str(),
            )
        })
        .collect();
    assert_eq!(
        tools,
        vec![("slow_tool", "allow", "ok"), ("", "deny", "not_forwarded")]
    );
}

/// A server that does not answer in time: the client gets an error, the row
/// says `timeout`, and the server's late answer is not delivered as a
/// second one.
#[test]
fn upstream_timeout_answers_records_and_drops_the_late_answer() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "version: \"1\"\ntools: {}\n");
    let audit = dir.path().join("audit");
    let mut p = Raw::start(&policy, &audit, &["--upstream-timeout", "300ms"]);
    let started = std::time::Instant::now();
    p.send(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow_tool","arguments":{"ms":1500}}}"#);
    let v = p.recv();
    assert_eq!(v["id"], 1);
    assert_eq!(v["error"]["code"], -32001, "{v}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    // The next answer the client sees is its next call's, which comes after
    // the first call's late answer would have.
    p.send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"slow_tool","arguments":{"ms":250}}}"#);
    let v = p.recv();
    assert_eq!(v["id"], 2, "{v}");
    assert_eq!(v["result"]["content"][0]["text"], "slept 250 ms");
    drop(p.child.stdin.take());
    assert!(common::wait_within(&mut p.child, Duration::from_secs(120)).success());
    let rows = rows(&audit);
    let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, ["timeout", "ok"]);
    assert_eq!(rows[0].error_code, Some(-32001));
}

/// `notifications/cancelled` from the client is forwarded and completes the
/// request's row as `cancelled`; the server's answer to it is not delivered.
#[test]
fn a_cancelled_request_is_recorded_as_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "version: \"1\"\ntools: {}\n");
    let audit = dir.path().join("audit");
    let mut p = Raw::start(&policy, &audit, &[]);
    p.send(r#"{"jsonrpc":"2.0","id":31,"method":"tools/call","params":{"name":"slow_tool","arguments":{"ms":500}}}"#);
    p.send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":31,"reason":"user pressed stop"}}"#);
    p.send(r#"{"jsonrpc":"2.0","id":32,"method":"tools/call","params":{"name":"slow_tool","arguments":{"ms":900}}}"#);
    let v = p.recv();
    assert_eq!(
        v["id"], 32,
        "the cancelled request's answer was delivered: {v}"
    );
    drop(p.child.stdin.take());
    assert!(common::wait_within(&mut p.child, Duration::from_secs(120)).success());
    let rows = rows(&audit);
    let outcomes: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.jsonrpc_id.as_deref().unwrap_or(""), r.outcome.as_str()))
        .collect();
    assert_eq!(outcomes, [("31", "cancelled"), ("32", "ok")]);
}

/// A server answer over `--max-response-bytes` is not delivered: the request
/// gets an error and its row, and the proxy keeps serving.
#[test]
fn an_oversized_answer_fails_its_request_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "version: \"1\"\ntools: {}\n");
    let audit = dir.path().join("audit");
    let mut p = Raw::start(&policy, &audit, &["--max-response-bytes", "2000"]);
    // The test server echoes the arguments: a 5,000-byte answer.
    p.send(&format!(
        r#"{{"jsonrpc":"2.0","id":"big","method":"tools/call","params":{{"name":"copy_image_set","arguments":{{"x":"{}"}}}}}}"#,
        "y".repeat(5000)
    ));
    let v = p.recv();
    assert_eq!(v["id"], "big");
    assert_eq!(v["error"]["code"], -32603, "{v}");
    p.send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"copy_image_set","arguments":{}}}"#);
    assert_eq!(p.recv()["id"], 2);
    drop(p.child.stdin.take());
    assert!(common::wait_within(&mut p.child, Duration::from_secs(120)).success());
    let rows = rows(&audit);
    assert_eq!(rows[0].outcome.as_str(), "response_too_large");
    assert!(rows[0].response_bytes > 5000);
    assert_eq!(rows[1].outcome.as_str(), "ok");
}

/// A reload to a policy with fewer counters while a call is in flight, which
/// then fails with a JSON-RPC error (its reservation rolls back): the
/// rollback goes to the counters it was taken from, the proxy does not
/// crash, and the new policy's counters are untouched.
#[test]
fn reload_with_a_call_in_flight_never_crashes_or_corrupts_counters() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        "version: \"1\"\ntools:\n  slow_tool:\n    rules:\n      - {name: per session, rate_limit: {max: 100, window: 60s, per: session}}\n      - {name: fleet, rate_limit: 100/minute}\n",
    );
    let audit = dir.path().join("audit");
    let mut p = Raw::start(&policy, &audit, &[]);
    // The proxy has loaded the first policy once it answers.
    p.send(r#"{"jsonrpc":"2.0","id":0,"method":"tools/list"}"#);
    assert!(p.recv()["result"]["tools"].is_array());
    p.send(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow_tool","arguments":{"ms":3000,"fail":true}}}"#);
    // The new policy has one counter, with a budget of one call.
    let tmp = dir.path().join("next.yaml");
    std::fs::write(
        &tmp,
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - {name: one copy, rate_limit: {max: 1, window: 60s, per: session}}\n",
    )
    .unwrap();
    std::fs::rename(&tmp, &policy).unwrap();
    p.stderr_until("reloaded");
    let v = p.recv();
    assert_eq!(v["id"], 1);
    assert_eq!(
        v["error"]["code"], -32000,
        "the server's error arrives: {v}"
    );
    // The rollback did not give the new counter a negative count: one copy
    // is allowed, the second is throttled.
    let copy = |id: u32| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"copy_image_set","arguments":{{}}}}}}"#
        )
    };
    p.send(&copy(2));
    assert!(p.recv()["result"]["isError"].is_null());
    p.send(&copy(3));
    assert_eq!(
        p.recv()["result"]["_meta"]["io.flightrec/decision"]["decision"],
        "throttle"
    );
    drop(p.child.stdin.take());
    assert!(common::wait_within(&mut p.child, Duration::from_secs(120)).success());
    let outcomes: Vec<String> = rows(&audit)
        .iter()
        .map(|r| r.outcome.as_str().to_string())
        .collect();
    assert_eq!(outcomes, ["ok", "rpc_error", "ok", "not_forwarded"]);
}

/// Shadow rows agree with replay: the `shadow` verdicts the proxy recorded
/// for a candidate are exactly what replaying the log against that
/// candidate decides, JSON-RPC errors (which give counts back) included.
#[test]
fn shadow_rows_agree_with_replay_of_the_same_log() {
    let dir = tempfile::tempdir().unwrap();
    let enforced = write_policy(dir.path(), "version: \"1\"\ntools: {}\n");
    let shadow = common::write_file(
        dir.path(),
        "shadow.yaml",
        "version: \"1\"\ntools:\n  failing_tool:\n    rules:\n      - {name: two failures, rate_limit: {max: 2, window: 60s, per: session}}\n  copy_image_set:\n    rules:\n      - {name: three copies, rate_limit: {max: 3, window: 60s, per: session}}\n",
    );
    let audit = dir.path().join("audit");
    let mut p = Raw::start(
        &enforced,
        &audit,
        &["--shadow-policy", shadow.to_str().unwrap()],
    );
    let tools = [
        "failing_tool",
        "copy_image_set",
        "failing_tool",
        "failing_tool",
        "copy_image_set",
        "failing_tool",
        "copy_image_set",
        "copy_image_set",
        "copy_image_set",
    ];
    for (i, tool) in tools.iter().enumerate() {
        p.send(&format!(
            r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#
        ));
        assert_eq!(p.recv()["id"], i);
    }
    drop(p.child.stdin.take());
    assert!(common::wait_within(&mut p.child, Duration::from_secs(120)).success());
    let rows = rows(&audit);
    assert_eq!(rows.len(), tools.len());
    let decisions = dir.path().join("decisions.parquet");
    let out = Command::new(flightrec())
        .args([
            "replay",
            audit.to_str().unwrap(),
            "--policy",
            shadow.to_str().unwrap(),
            "--decisions-out",
            decisions.to_str().unwrap(),
        ])
        .output_timed()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed: std::collections::HashMap<String, String> = common::read_decisions(&decisions)
        .into_iter()
        .map(|d| (d.0, d.2))
        .collect();
    assert_eq!(replayed.len(), tools.len());
    let mut shadow_allowed = 0;
    for r in &rows {
        let live = r.shadow[0].decision.as_str();
        assert_eq!(
            Some(&live.to_string()),
            replayed.get(&r.event_id),
            "{:?} {:?}",
            r.tool,
            r.outcome
        );
        shadow_allowed += usize::from(live == "allow");
    }
    // Every failing call ran into a JSON-RPC error, so the shadow's budget of
    // two never filled; the fourth and fifth copies are over its budget.
    assert_eq!(shadow_allowed, 4 + 3);
}

/// Two proxies started with the same `--audit-dir` (a client opening two
/// windows): both serve, both record, and the directory verifies.
#[test]
fn two_proxies_share_one_audit_directory() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "version: \"1\"\ntools: {}\n");
    let audit = dir.path().join("audit");
    let mut a = Raw::start(&policy, &audit, &[]);
    let mut b = Raw::start(&policy, &audit, &[]);
    for i in 0..4 {
        let p = if i % 2 == 0 { &mut a } else { &mut b };
        p.send(&format!(
            r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"copy_image_set","arguments":{{"n":{i}}}}}}}"#
        ));
        assert_eq!(p.recv()["id"], i);
    }
    for mut p in [a, b] {
        drop(p.child.stdin.take());
        assert!(common::wait_within(&mut p.child, Duration::from_secs(120)).success());
    }
    assert_eq!(rows(&audit).len(), 4);
    let out = common::assert_verified(&audit);
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 chains intact"));
}

/// Pipelined calls answered out of order, one failing with a JSON-RPC error
/// whose rollback comes after later calls were decided: replaying the live
/// log with the same policy reproduces every decision (replay gives the
/// counts back when the answer arrived, not at once).
#[test]
fn pipelined_calls_replay_to_the_same_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        "version: \"1\"\ntools:\n  slow_tool:\n    rules:\n      - {name: three at a time, rate_limit: {max: 3, window: 60s, per: session}}\n",
    );
    let audit = dir.path().join("audit");
    let mut p = Raw::start(&policy, &audit, &[]);
    let slow = |id: u32, ms: u32, fail: bool| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"slow_tool","arguments":{{"ms":{ms},"fail":{fail}}}}}}}"#
        )
    };
    p.send(&slow(1, 800, true));
    p.send(&slow(2, 100, false));
    p.send(&slow(3, 300, false));
    p.send(&slow(4, 10, false)); // a fourth while three are in flight
    let order: Vec<i64> = (0..4).map(|_| p.recv()["id"].as_i64().unwrap()).collect();
    assert_eq!(order, [4, 2, 3, 1], "answers out of order");
    // Call 1 failed: its count came back, so one more fits, then no more.
    p.send(&slow(5, 10, false));
    assert!(p.recv()["result"]["isError"].is_null());
    p.send(&slow(6, 10, false));
    assert_eq!(
        p.recv()["result"]["_meta"]["io.flightrec/decision"]["decision"],
        "throttle"
    );
    drop(p.child.stdin.take());
    assert!(common::wait_within(&mut p.child, Duration::from_secs(60)).success());
    let decisions: Vec<String> = rows(&audit)
        .iter()
        .map(|r| r.decision.as_str().to_string())
        .collect();
    assert_eq!(
        decisions,
        ["allow", "allow", "allow", "throttle", "allow", "throttle"]
    );
    let d = &replay_diff(&audit, &policy);
    assert_eq!(d["compared"], 6);
    assert_eq!(d["unchanged"], 6, "{d}");
}

/// Non-ASCII tool names: matched by glob and exact keys, removed from
/// `tools/list`, and carried unchanged into CSV and OCSF exports.
#[test]
fn unicode_tool_names_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        "version: \"1\"\nhide: [\"löschen_*\"]\ntools:\n  \"画像を*\":\n    rules: [{name: keine Kopien, action: deny}]\n",
    );
    let audit = dir.path().join("audit");
    let mut p = Raw::start(&policy, &audit, &[]);
    p.send(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
    let listed: Vec<String> = p.recv()["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    // Hidden by a glob, and always denied by a glob key: both removed.
    assert!(!listed.iter().any(|n| n == "löschen_bild"), "{listed:?}");
    assert!(!listed.iter().any(|n| n == "画像をコピー"), "{listed:?}");
    assert!(listed.iter().any(|n| n == "copy_image_set"), "{listed:?}");
    p.send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"画像をコピー","arguments":{"ziel":"zürich"}}}"#);
    let v = p.recv();
    assert_eq!(
        v["result"]["_meta"]["io.flightrec/decision"]["rule"],
        "keine Kopien"
    );
    p.send(r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"löschen_bild","arguments":{}}}"#);
    assert_eq!(
        p.recv()["result"]["_meta"]["io.flightrec/decision"]["rule"],
        "(hidden)"
    );
    drop(p.child.stdin.take());
    assert!(common::wait_within(&mut p.child, Duration::from_secs(60)).success());
    for format in ["csv", "ocsf"] {
        let out_file = dir.path().join(format!("x.{format}"));
        let out = Command::new(flightrec())
            .args([
                "export",
                audit.to_str().unwrap(),
                "--format",
                format,
                "--tool",
                "画像を*",
                "-o",
                out_file.to_str().unwrap(),
            ])
            .output_timed()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&out_file).unwrap();
        assert!(text.contains("画像をコピー"), "{format}: {text}");
        assert!(text.contains("zürich"), "{format}: {text}");
        assert!(!text.contains("löschen_bild"), "{format}: the tool filter");
    }
}

/// A restart mid-burst keeps the limit: the counters are rebuilt from the
/// audit log's last window (warm start), so the second run does not get a
/// fresh budget; with `--no-warm-start` it does.
#[test]
fn a_restart_keeps_the_limit_through_warm_start() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - {name: three copies per agent, rate_limit: {max: 3, window: 10m, per: agent}}\n",
    );
    let copy = |id: u32| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"copy_image_set","arguments":{{"n":{id}}}}}}}"#
        )
    };
    // Runs the proxy once, makes `n` calls; returns how many were allowed.
    let burst = |audit: &Path, n: u32, extra: &[&str]| -> (usize, String) {
        let mut args = vec!["--agent", "batch-bot"];
        args.extend_from_slice(extra);
        let mut p = Raw::start(&policy, audit, &args);
        let mut allowed = 0;
        for i in 0..n {
            p.send(&copy(i + 1));
            allowed += usize::from(p.recv()["result"]["isError"].is_null());
        }
        drop(p.child.stdin.take());
        assert!(common::wait_within(&mut p.child, Duration::from_secs(60)).success());
        (allowed, p.stderr_rest())
    };
    let audit = dir.path().join("audit");
    assert_eq!(burst(&audit, 2, &[]).0, 2);
    let (allowed, err) = burst(&audit, 2, &[]);
    assert_eq!(allowed, 1, "one copy left of three after the restart");
    assert!(err.contains("warm start: 2 call(s)"), "{err}");
    // Without warm start the restart forgets (the behaviour warm start fixes).
    let cold = dir.path().join("cold");
    assert_eq!(burst(&cold, 2, &[]).0, 2);
    assert_eq!(burst(&cold, 2, &["--no-warm-start"]).0, 2);
}

/// `repeat_limit` live, through a restart: identical calls are counted by
/// the SHA-256 of their original arguments, which the audit log keeps even
/// when `--redact` hides the values, so warm start rebuilds the same
/// counters and the restarted proxy still refuses the repeat.
#[test]
fn repeat_limit_holds_live_and_across_a_restart_with_redaction() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: same copy again\n        repeat_limit: {max: 2, window: 10m, per: agent}\n",
    );
    let audit = dir.path().join("audit");
    let call = |id: u32, set: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"copy_image_set","arguments":{{"datastoreId":"ds-1","sourceImageSetId":"{set}"}}}}}}"#
        )
    };
    let run = |calls: &[(u32, &str)]| -> Vec<String> {
        let mut p = Raw::start(
            &policy,
            &audit,
            &["--agent", "loop-bot", "--redact", "/sourceImageSetId"],
        );
        let mut verdicts = Vec::new();
        for (id, set) in calls {
            p.send(&call(*id, set));
            let v = p.recv();
            verdicts.push(decision_of(&v));
        }
        drop(p.child.stdin.take());
        assert!(common::wait_within(&mut p.child, Duration::from_secs(60)).success());
        verdicts
    };
    assert_eq!(
        run(&[(1, "set-1"), (2, "set-1"), (3, "set-2")]),
        ["allow", "allow", "allow"]
    );
    // After a restart: set-1 has been copied twice already; set-2 once.
    assert_eq!(run(&[(4, "set-1"), (5, "set-2")]), ["throttle", "allow"]);
    // The values were redacted in the log; the hash of the originals is there.
    let rows = rows(&audit);
    assert!(
        rows.iter()
            .all(|r| !r.args_json.as_deref().unwrap_or("").contains("set-1"))
    );
    assert_eq!(rows[0].args_sha256, rows[1].args_sha256);
}

/// `circuit_breaker` live: a tool that keeps failing (isError results) trips
/// the circuit in the proxy, and replaying the log with the same policy
/// reproduces every decision.
#[test]
fn a_failing_tool_trips_the_circuit_live_and_in_replay() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        "version: \"1\"\ntools:\n  erroring_tool:\n    rules:\n      - name: stop hammering\n        circuit_breaker: {errors: 2, within: 1m, cooldown: 10m, per: session}\n",
    );
    let audit = dir.path().join("audit");
    let mut p = Raw::start(&policy, &audit, &[]);
    let mut decisions = Vec::new();
    for id in 1..=4 {
        p.send(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"erroring_tool","arguments":{{}}}}}}"#
        ));
        let v = p.recv();
        decisions.push(decision_of(&v));
    }
    assert_eq!(decisions, ["allow", "allow", "throttle", "throttle"]);
    drop(p.child.stdin.take());
    assert!(common::wait_within(&mut p.child, Duration::from_secs(60)).success());
    let d = &replay_diff(&audit, &policy);
    assert_eq!(d["compared"], 4);
    assert_eq!(d["unchanged"], 4, "{d}");
}

/// The runaway guard live against the real HealthImaging server, with the
/// official SDK client: offline, every `copy_image_set` answers with an
/// error result; the bundled guarded policy's circuit breaker opens after
/// three failures in a row and refuses further copies (each of other
/// images, so the repeat limit is not what stops them) with "Circuit open";
/// reads still pass. Replaying the log with the same policy reproduces
/// every decision.
#[test]
fn the_real_healthimaging_server_trips_the_guarded_policys_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let policy = root().join("policies/guarded.yaml");
    let audit = dir.path().join("audit");
    let server = need(root().join(".venv-hi/bin/awslabs.healthimaging-mcp-server"));
    let copy = |n: usize| {
        json!({"tool": "copy_image_set", "args": {
            "datastore_id": "12345678901234567890123456789012",
            "source_image_set_id": format!("{n:032x}"),
            "source_datastore_id": "12345678901234567890123456789012",
            "copy_image_set_information": {"sourceImageSet": {"latestVersionId": "1"}}}})
    };
    let calls = json!([copy(1), copy(2), copy(3), copy(4), copy(5),
        {"tool": "list_datastores", "args": {}}]);
    let env_server = [
        "env",
        "AWS_REGION=us-east-1",
        "AWS_ACCESS_KEY_ID=AKIAFAKEFAKEFAKEFAKE",
        "AWS_SECRET_ACCESS_KEY=fake/fake/fake",
        "AWS_EC2_METADATA_DISABLED=true",
        server.to_str().unwrap(),
    ];
    let seen = sdk("auto", &policy, &audit, calls, &env_server, &[]);
    for i in 0..3 {
        assert_eq!(seen["calls"][i]["isError"], true);
        assert!(
            seen["calls"][i]["text"]
                .as_str()
                .unwrap()
                .contains("Error executing tool copy_image_set"),
            "{}",
            seen["calls"][i]
        );
    }
    for i in 3..5 {
        let text = seen["calls"][i]["text"].as_str().unwrap();
        assert!(
            text.contains("stop hammering a failing copy") && text.contains("Circuit open"),
            "{text}"
        );
    }
    let rows = rows(&audit);
    let copies: Vec<(&str, &str, Option<&str>)> = rows
        .iter()
        .filter(|r| r.tool.as_deref() == Some("copy_image_set"))
        .map(|r| (r.decision.as_str(), r.outcome.as_str(), r.rule.as_deref()))
        .collect();
    assert_eq!(
        copies,
        [
            ("allow", "tool_error", None),
            ("allow", "tool_error", None),
            ("allow", "tool_error", None),
            (
                "throttle",
                "not_forwarded",
                Some("stop hammering a failing copy")
            ),
            (
                "throttle",
                "not_forwarded",
                Some("stop hammering a failing copy")
            ),
        ]
    );
    let read = rows
        .iter()
        .find(|r| r.tool.as_deref() == Some("list_datastores"))
        .unwrap();
    assert_eq!(read.decision.as_str(), "allow");
    let d = &replay_diff(&audit, &policy);
    assert_eq!(d["unchanged"], d["compared"], "{d}");
    assert_eq!(d["compared"], 6, "{d}");
}

/// A multi-round call (2026-07-28): the server answers with an
/// input-required result, the client retries with its `requestState`. The
/// retry is the same call: decided again but counted once, and recorded as
/// its second round (`continues` = the first round's event id). A retry
/// with a state the server never sent in this session is a new call.
/// Replaying the log reproduces every decision.
#[test]
fn a_multi_round_call_counts_once_and_records_its_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        "version: \"1\"\ntools:\n  confirm_copy:\n    rules:\n      - name: one copy a minute\n        rate_limit: {max: 1, window: 60s, per: session}\n",
    );
    let audit = dir.path().join("audit");
    let mut p = Raw::start(&policy, &audit, &[]);
    let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"raw","version":"1"}}"#;
    p.send(&format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"confirm_copy","arguments":{{"n":7}},{meta}}}}}"#
    ));
    let first = p.recv();
    assert_eq!(first["result"]["resultType"], "input_required", "{first}");
    assert_eq!(first["result"]["requestState"], "server-state-7");
    // The retry passes although the limit (1 a minute) is used: it is the
    // same call.
    p.send(&format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"confirm_copy","arguments":{{"n":7}},"requestState":"server-state-7","inputResponses":{{"confirm":{{"action":"accept","content":{{"ok":true}}}}}},{meta}}}}}"#
    ));
    let second = p.recv();
    assert_eq!(
        second["result"]["content"][0]["text"], "confirmed with \"server-state-7\"",
        "{second}"
    );
    // The same state again: the server's round was used up: a new call,
    // over the limit.
    p.send(&format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"confirm_copy","arguments":{{"n":7}},"requestState":"server-state-7","inputResponses":{{"confirm":{{"action":"accept"}}}},{meta}}}}}"#
    ));
    assert_eq!(decision_of(&p.recv()), "throttle");
    drop(p.child.stdin.take());
    assert!(common::wait_within(&mut p.child, Duration::from_secs(60)).success());
    let rows: Vec<AuditRow> = rows(&audit)
        .into_iter()
        .filter(|r| r.tool.as_deref() == Some("confirm_copy"))
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].round, Some(1));
    assert_eq!(rows[0].continues, None);
    assert_eq!(rows[1].round, Some(2));
    assert_eq!(
        rows[1].continues.as_deref(),
        Some(rows[0].event_id.as_str())
    );
    assert_eq!(rows[1].decision.as_str(), "allow");
    assert_eq!(rows[2].continues, None);
    assert_eq!(rows[2].decision.as_str(), "throttle");
    let d = &replay_diff(&audit, &policy);
    assert_eq!(d["compared"], 3);
    assert_eq!(d["unchanged"], 3, "{d}");
}
