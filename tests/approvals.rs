//! Human approvals with real parts: the local queue driven by the
//! `flightrec approvals` CLI from another process, the official Python SDK
//! client answering the proxy's form in both protocol generations (stdio
//! and Streamable HTTP), forged and replayed `requestState`s, timeouts,
//! cancellations, and replay's `--approvals recorded`.

mod common;

use common::{Guard, dir_rows, flightrec, need, root, run, stderr, test_server};
use flightrec::audit::schema::{ApprovalOutcome, AuditRow, RecordedDecision};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

const POLICY: &str = "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: copies need a human\n        action: require_approval\n        reason: \"copying image sets needs a human\"\n";

/// A stdio proxy driven with raw frames.
struct Proxy {
    child: Child,
    lines: Receiver<String>,
    errs: Receiver<String>,
}

impl Proxy {
    fn start(policy: &Path, audit: &Path, extra: &[&str]) -> Proxy {
        let mut child = Command::new(flightrec())
            .args(["proxy", "--policy"])
            .arg(policy)
            .arg("--audit-dir")
            .arg(audit)
            .args(extra)
            .arg("--")
            .arg(test_server())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = common::line_channel(child.stdout.take().unwrap());
        let errs = common::line_channel(child.stderr.take().unwrap());
        Proxy { child, lines, errs }
    }

    /// Waits for a stderr line containing `text`.
    fn stderr_until(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.errs.recv_timeout(left) {
                Ok(l) if l.contains(text) => return,
                Ok(_) => {}
                Err(e) => panic!("no stderr line with {text:?}: {e:?}"),
            }
        }
    }

    fn send(&mut self, frame: &Value) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{frame}").unwrap();
        stdin.flush().unwrap();
    }

    fn call(&mut self, id: u64, tool: &str, args: Value) {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}}));
    }

    fn recv(&self) -> Value {
        let l = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .expect("an answer");
        serde_json::from_str(&l).unwrap()
    }

    fn finish(mut self) {
        drop(self.child.stdin.take());
        assert!(common::wait_within(&mut self.child, Duration::from_secs(30)).success());
    }
}

fn text_of(answer: &Value) -> String {
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn approvals(args: &[&str]) -> std::process::Output {
    run(&[&["approvals"], args].concat())
}

/// Waits until the queue lists `n` held calls; returns them.
fn wait_listed(socket: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = approvals(&["list", "--json", "--socket", socket]);
        if out.status.success() {
            let held: Vec<Value> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if held.len() == n {
                return held;
            }
        }
        assert!(Instant::now() < deadline, "{} held calls never listed", n);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn copies(audit: &Path) -> Vec<AuditRow> {
    let mut rows: Vec<AuditRow> = dir_rows(audit)
        .into_iter()
        .filter(|r| r.tool.as_deref() == Some("copy_image_set"))
        .collect();
    rows.sort_by_key(|r| r.ts_us);
    rows
}

/// The local queue: two held calls answered from another process in the
/// opposite order, a third request answered meanwhile (no head-of-line
/// blocking), `list --json` with the documented fields (arguments
/// redacted), `approved_by` recorded, the socket owner-only.
#[test]
fn the_queue_answers_held_calls_from_another_process_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(dir.path(), "p.yaml", POLICY);
    let audit = dir.path().join("audit");
    let socket = dir.path().join("q/approvals.sock");
    let s = socket.to_str().unwrap();
    let mut p = Proxy::start(
        &policy,
        &audit,
        &["--approval-socket", s, "--redact", "/secret"],
    );
    p.call(
        1,
        "copy_image_set",
        json!({"set": "a", "secret": "hunter2"}),
    );
    p.call(2, "copy_image_set", json!({"set": "b"}));
    let held = wait_listed(s, 2);
    // Meanwhile another request is answered at once.
    p.call(3, "list_image_sets", json!({}));
    let other = p.recv();
    assert_eq!(other["id"], 3, "{other}");
    assert_eq!(held[0]["tool"], "copy_image_set");
    assert_eq!(held[0]["rule"], "copies need a human");
    assert_eq!(held[0]["reason"], "copying image sets needs a human");
    assert!(
        held[0]["args"]["secret"]
            .as_str()
            .unwrap()
            .starts_with("[redacted:"),
        "{}",
        held[0]
    );
    for k in ["id", "session", "agent", "waiting_ms"] {
        assert!(held[0].get(k).is_some(), "{k} in {}", held[0]);
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (first, second) = (held[0]["id"].to_string(), held[1]["id"].to_string());
    // The second is denied first, then the first approved.
    let out = approvals(&[
        "deny",
        &second,
        "--reason",
        "not today",
        "--as",
        "bob",
        "--socket",
        s,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let a = p.recv();
    assert_eq!(a["id"], 2);
    assert!(text_of(&a).contains("bob denied it: not today"), "{a}");
    let out = approvals(&["approve", &first, "--as", "alice", "--socket", s]);
    assert!(out.status.success(), "{}", stderr(&out));
    let a = p.recv();
    assert_eq!(a["id"], 1);
    assert_eq!(
        text_of(&a),
        "copy_image_set ok: {\"secret\":\"hunter2\",\"set\":\"a\"}"
    );
    // Answering again: the call no longer waits.
    let again = approvals(&["approve", &first, "--socket", s]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("no held call"),
        "{}",
        stderr(&again)
    );
    p.finish();
    let rows = copies(&audit);
    assert_eq!(rows.len(), 2);
    let by_set = |set: &str| {
        rows.iter()
            .find(|r| r.args_json.as_deref().unwrap().contains(set))
            .unwrap()
    };
    let a = by_set("\"a\"");
    assert_eq!(a.decision, RecordedDecision::Approval);
    assert_eq!(a.approval, Some(ApprovalOutcome::Granted));
    assert_eq!(a.approved_by.as_deref(), Some("queue:alice"));
    assert_eq!(a.outcome.as_str(), "ok");
    assert!(a.approval_ms.is_some());
    let b = by_set("\"b\"");
    assert_eq!(b.approval, Some(ApprovalOutcome::Denied));
    assert_eq!(b.approved_by.as_deref(), Some("queue:bob"));
    assert_eq!(b.outcome.as_str(), "not_forwarded");
    common::assert_verified(&audit);
}

/// No answer within `--approval-timeout`: refused and recorded as timeout.
/// A client that cancels the held request ends its wait: recorded as
/// cancelled, nothing reaches the server, the queue is empty. A call held
/// when the proxy stops is recorded as cancelled too.
#[test]
fn timeouts_and_cancellations_end_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(dir.path(), "p.yaml", POLICY);
    let audit = dir.path().join("audit");
    let socket = dir.path().join("approvals.sock");
    let s = socket.to_str().unwrap();
    let mut p = Proxy::start(
        &policy,
        &audit,
        &["--approval-socket", s, "--approval-timeout", "700ms"],
    );
    p.call(1, "copy_image_set", json!({"set": "late"}));
    let a = p.recv();
    assert!(text_of(&a).contains("nobody answered within"), "{a}");
    p.call(2, "copy_image_set", json!({"set": "cancelled"}));
    wait_listed(s, 1);
    p.send(
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}}),
    );
    let a = p.recv();
    assert_eq!(a["id"], 2);
    assert!(text_of(&a).contains("cancelled"), "{a}");
    assert!(wait_listed(s, 0).is_empty());
    // A call still held when the proxy stops ends as cancelled, recorded.
    p.call(3, "copy_image_set", json!({"set": "at-exit"}));
    wait_listed(s, 1);
    p.finish();
    let rows = copies(&audit);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2].approval, Some(ApprovalOutcome::Cancelled));
    assert_eq!(rows[0].approval, Some(ApprovalOutcome::Timeout));
    assert!(rows[0].approval_ms.unwrap() >= 700);
    assert_eq!(rows[1].approval, Some(ApprovalOutcome::Cancelled));
    assert!(rows.iter().all(|r| r.outcome.as_str() == "not_forwarded"));
}

/// Runs the SDK client (answering forms with `answer`) through a stdio
/// proxy, or against `url`.
fn sdk(mode: &str, answer: &str, target: &[&str], calls: Value) -> Value {
    let mut cmd = Command::new(need(root().join(".venv-sdk/bin/python")));
    cmd.arg(root().join("tests/e2e/sdk_client.py"))
        .arg(mode)
        .arg(calls.to_string())
        .arg("--")
        .args(target)
        .env("FLIGHTREC_ELICIT", answer)
        .stdin(Stdio::null());
    let out = common::output_within(&mut cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stdio_target<'a>(policy: &'a str, audit: &'a str, server: &'a str) -> Vec<&'a str> {
    vec![
        flightrec(),
        "proxy",
        "--policy",
        policy,
        "--audit-dir",
        audit,
        "--",
        server,
    ]
}

/// The official SDK client with an elicitation callback, through the
/// stdio proxy, in both generations: 2025-11-25 (`legacy`: the proxy sends
/// its own `elicitation/create`) and 2026-07-28 (`auto`: an input-required
/// result, retried with the answer). Accept forwards the call; a "no",
/// a decline and a cancel refuse it, naming the rule; the rows say how.
#[test]
fn the_sdk_client_answers_the_form_in_both_generations_over_stdio() {
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(dir.path(), "p.yaml", POLICY);
    let server = test_server();
    let calls = json!([{"tool": "copy_image_set", "args": {"set": "x"}}]);
    for mode in ["legacy", "auto"] {
        for (answer, approval) in [
            ("accept", ApprovalOutcome::Granted),
            ("refuse", ApprovalOutcome::Denied),
            ("decline", ApprovalOutcome::Denied),
            ("cancel", ApprovalOutcome::Cancelled),
        ] {
            let audit = dir.path().join(format!("audit-{mode}-{answer}"));
            let seen = sdk(
                mode,
                answer,
                &stdio_target(
                    policy.to_str().unwrap(),
                    audit.to_str().unwrap(),
                    server.to_str().unwrap(),
                ),
                calls.clone(),
            );
            let asked = seen["elicited"][0].as_str().unwrap_or_default();
            assert!(
                asked.contains("copy_image_set") && asked.contains("copies need a human"),
                "{mode} {answer}: {seen}"
            );
            let text = seen["calls"][0]["text"].as_str().unwrap();
            if answer == "accept" {
                assert_eq!(text, "copy_image_set ok: {\"set\":\"x\"}", "{mode}");
            } else {
                assert!(
                    text.contains("copies need a human"),
                    "{mode} {answer}: {text}"
                );
            }
            let rows = copies(&audit);
            let last = rows.last().unwrap();
            assert_eq!(last.approval, Some(approval), "{mode} {answer}");
            if mode == "auto" {
                // The first round is recorded as pending.
                assert_eq!(rows[0].approval, Some(ApprovalOutcome::Pending));
                assert_eq!(rows.len(), 2);
            } else {
                assert_eq!(rows.len(), 1);
            }
            if answer == "accept" {
                assert_eq!(last.approved_by.as_deref(), Some("client:mcp"));
                assert_eq!(last.outcome.as_str(), "ok");
            }
        }
    }
}

/// The SDK's streamable-HTTP server behind the HTTP proxy: clients of both
/// generations answer the form themselves (2026-07-28 in an input-required
/// result, 2025-11-25 on the POST's SSE stream); a client that cannot show
/// a form waits while an operator approves the call in the local queue.
#[test]
fn approvals_over_the_http_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(
        dir.path(),
        "p.yaml",
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: copies need a human\n        action: require_approval\n",
    );
    let audit = dir.path().join("audit");
    let socket = dir.path().join("approvals.sock");
    let s = socket.to_str().unwrap().to_string();
    let (_server, port) = common::sdk_http_server(&[]);
    let mut proxy = Guard(
        Command::new(flightrec())
            .args(["proxy", "--policy"])
            .arg(&policy)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                &format!("http://127.0.0.1:{port}/mcp"),
            ])
            .arg("--audit-dir")
            .arg(&audit)
            .args(["--approval-socket", &s])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let errs = common::line_channel(proxy.0.stderr.take().unwrap());
    let addr = loop {
        let l = errs
            .recv_timeout(Duration::from_secs(20))
            .expect("the address");
        if let Some(rest) = l.strip_prefix("flightrec: listening on ") {
            break rest.trim().to_string();
        }
    };
    let calls = json!([{"tool": "copy_image_set", "args": {"datastore_id": "ds", "source_image_set_id": "s1"}}]);
    let seen = sdk("auto", "accept", &[&addr], calls.clone());
    assert!(
        seen["calls"][0]["text"]
            .as_str()
            .unwrap()
            .contains("copied"),
        "{seen}"
    );
    let seen = sdk("auto", "decline", &[&addr], calls.clone());
    assert!(
        seen["calls"][0]["text"]
            .as_str()
            .unwrap()
            .contains("copies need a human"),
        "{seen}"
    );
    // 2025-11-25 over HTTP: the proxy's own request on the POST's SSE
    // stream, answered by the client on another POST.
    let seen = sdk("legacy", "accept", &[&addr], calls.clone());
    assert!(
        seen["calls"][0]["text"]
            .as_str()
            .unwrap()
            .contains("copied"),
        "{seen}"
    );
    assert_eq!(seen["elicited"].as_array().unwrap().len(), 1, "{seen}");
    // A client that cannot show a form: the local queue.
    let approver = {
        let s = s.clone();
        std::thread::spawn(move || {
            let held = wait_listed(&s, 1);
            let out = approvals(&[
                "approve",
                &held[0]["id"].to_string(),
                "--as",
                "ops",
                "--socket",
                &s,
            ]);
            assert!(out.status.success(), "{}", stderr(&out));
        })
    };
    let seen = sdk("legacy", "", &[&addr], calls);
    approver.join().unwrap();
    assert!(
        seen["calls"][0]["text"]
            .as_str()
            .unwrap()
            .contains("copied"),
        "{seen}"
    );
    // SAFETY: kill(2) on a child this test started.
    unsafe {
        libc::kill(proxy.0.id() as i32, libc::SIGTERM);
    }
    common::wait_within(&mut proxy.0, Duration::from_secs(30));
    let rows = copies(&audit);
    let outcomes: Vec<_> = rows.iter().map(|r| r.approval).collect();
    assert_eq!(
        outcomes,
        [
            Some(ApprovalOutcome::Pending),
            Some(ApprovalOutcome::Granted),
            Some(ApprovalOutcome::Pending),
            Some(ApprovalOutcome::Denied),
            Some(ApprovalOutcome::Granted),
            Some(ApprovalOutcome::Granted),
        ]
    );
    assert_eq!(rows[4].approved_by.as_deref(), Some("client:mcp"));
    assert_eq!(rows[5].approved_by.as_deref(), Some("queue:ops"));
}

/// 2026-07-28 retries with a `requestState` the proxy did not issue for
/// this call are refused: altered, for other arguments, from another
/// proxy process (another key), or used twice. The genuine one goes
/// through once.
#[test]
fn forged_replayed_and_swapped_request_states_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(dir.path(), "p.yaml", POLICY);
    let audit = dir.path().join("audit");
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}
    });
    let call = |id: u64, args: Value, state: Option<&str>| {
        let mut params = json!({"name": "copy_image_set", "arguments": args, "_meta": meta});
        if let Some(state) = state {
            params["requestState"] = json!(state);
            params["inputResponses"] =
                json!({"flightrec_approval": {"action": "accept", "content": {"approve": true}}});
        }
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
    };
    let first_state = |p: &mut Proxy, id: u64, args: Value| -> String {
        p.send(&call(id, args, None));
        let a = p.recv();
        assert_eq!(a["result"]["resultType"], "input_required", "{a}");
        a["result"]["requestState"].as_str().unwrap().to_string()
    };
    let mut p = Proxy::start(&policy, &audit, &[]);
    let state = first_state(&mut p, 1, json!({"set": "a"}));
    // Argument swap: the state was issued for set a.
    p.send(&call(2, json!({"set": "b"}), Some(&state)));
    assert!(text_of(&p.recv()).contains("issued for other arguments"));
    // Altered: one character of the body changed.
    let mut forged = state.clone().into_bytes();
    let i = "flightrec1.".len() + 4;
    forged[i] = if forged[i] == b'0' { b'1' } else { b'0' };
    p.send(&call(
        3,
        json!({"set": "a"}),
        Some(std::str::from_utf8(&forged).unwrap()),
    ));
    assert!(text_of(&p.recv()).contains("forged or altered"));
    // Genuine: forwarded, without the proxy's own fields.
    p.send(&call(4, json!({"set": "a"}), Some(&state)));
    assert_eq!(text_of(&p.recv()), "copy_image_set ok: {\"set\":\"a\"}");
    // Replayed.
    p.send(&call(5, json!({"set": "a"}), Some(&state)));
    assert!(text_of(&p.recv()).contains("already used"));
    let other_state = first_state(&mut p, 6, json!({"set": "c"}));
    // A changed policy asks again: the state names the policy that asked.
    let changed_state = first_state(&mut p, 7, json!({"set": "d"}));
    std::fs::write(&policy, format!("{POLICY}# edited\n")).unwrap();
    p.stderr_until("reloaded");
    p.send(&call(8, json!({"set": "d"}), Some(&changed_state)));
    assert!(text_of(&p.recv()).contains("the policy changed"));
    p.finish();
    // Another proxy process (a restart) does not accept it.
    let mut q = Proxy::start(&policy, &audit, &[]);
    q.send(&call(1, json!({"set": "c"}), Some(&other_state)));
    assert!(text_of(&q.recv()).contains("forged or altered"));
    q.finish();
    let rows = copies(&audit);
    let forwarded: Vec<_> = rows.iter().filter(|r| r.outcome.as_str() == "ok").collect();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].approval, Some(ApprovalOutcome::Granted));
}

/// `replay --approvals recorded`: a call whose approval was granted counts
/// like an allowed one, a denied one does not, as the recording says;
/// `grant` and `deny` count all or none. The report counts approvals by
/// outcome.
#[test]
fn replay_uses_recorded_approvals() {
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(
        dir.path(),
        "p.yaml",
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: copies need a human\n        action: require_approval\n  \"*\":\n    rules:\n      - name: one call per session\n        rate_limit: {max: 1, window: 1h, per: session}\n",
    );
    let t0 = 1_795_600_000_000_000i64;
    let row = |i: i64, session: &str, tool: &str, approval: Option<ApprovalOutcome>| AuditRow {
        event_id: format!("e{i}"),
        ts_us: t0 + i * 1_000_000,
        session_id: session.into(),
        agent_id: "a".into(),
        tool: Some(tool.into()),
        decision: if approval.is_some() {
            RecordedDecision::Approval
        } else {
            RecordedDecision::Allow
        },
        approval,
        ..AuditRow::default()
    };
    let rows = vec![
        row(
            0,
            "denied-session",
            "copy_image_set",
            Some(ApprovalOutcome::Denied),
        ),
        row(1, "denied-session", "list_image_sets", None),
        row(
            2,
            "granted-session",
            "copy_image_set",
            Some(ApprovalOutcome::Granted),
        ),
        row(3, "granted-session", "list_image_sets", None),
    ];
    let path: PathBuf = dir.path().join("log.parquet");
    common::write_plain_parquet(&path, &rows);
    let throttled = |mode: &str| {
        let out = run(&[
            "replay",
            path.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--approvals",
            mode,
            "--format",
            "json",
        ]);
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            r["candidates"][0]["totals"]["throttle"].as_u64().unwrap(),
            r,
        )
    };
    assert_eq!(throttled("deny").0, 0);
    assert_eq!(throttled("grant").0, 2);
    let (n, report) = throttled("recorded");
    assert_eq!(n, 1, "only the granted copy used its session's budget");
    let counts = &report["candidates"][0]["recorded_approvals"];
    assert_eq!(counts["granted"], 1);
    assert_eq!(counts["denied"], 1);
}

/// The stdio-to-HTTP bridge: a 2026-07-28 client answers the form itself;
/// a 2025-11-25 client (the bridge does not ask in band) waits while an
/// operator approves in the local queue.
#[test]
fn approvals_through_the_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(
        dir.path(),
        "p.yaml",
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: copies need a human\n        action: require_approval\n",
    );
    let audit = dir.path().join("audit");
    let socket = dir.path().join("approvals.sock");
    let s = socket.to_str().unwrap().to_string();
    let (_server, port) = common::sdk_http_server(&[]);
    let upstream = format!("http://127.0.0.1:{port}/mcp");
    let target = [
        flightrec(),
        "proxy",
        "--policy",
        policy.to_str().unwrap(),
        "--upstream",
        &upstream,
        "--audit-dir",
        audit.to_str().unwrap(),
        "--approval-socket",
        &s,
    ];
    let calls = json!([{"tool": "copy_image_set", "args": {"datastore_id": "ds", "source_image_set_id": "s1"}}]);
    let seen = sdk("auto", "accept", &target, calls.clone());
    assert!(
        seen["calls"][0]["text"]
            .as_str()
            .unwrap()
            .contains("copied"),
        "{seen}"
    );
    let approver = {
        let s = s.clone();
        std::thread::spawn(move || {
            let held = wait_listed(&s, 1);
            let out = approvals(&[
                "approve",
                &held[0]["id"].to_string(),
                "--as",
                "ops",
                "--socket",
                &s,
            ]);
            assert!(out.status.success(), "{}", stderr(&out));
        })
    };
    let seen = sdk("legacy", "accept", &target, calls);
    approver.join().unwrap();
    assert!(
        seen["calls"][0]["text"]
            .as_str()
            .unwrap()
            .contains("copied"),
        "{seen}"
    );
    let rows = copies(&audit);
    let last = rows.last().unwrap();
    assert_eq!(last.approval, Some(ApprovalOutcome::Granted));
    assert_eq!(last.approved_by.as_deref(), Some("queue:ops"));
    assert_eq!(last.transport.as_str(), "bridge");
}

/// `flightrec proxy` with `extra` flags and environment; its output once
/// it exits.
fn proxy_output(dir: &Path, extra: &[&str], env: &[(&str, &Path)]) -> std::process::Output {
    let policy = common::write_file(dir, "p.yaml", POLICY);
    let mut cmd = Command::new(flightrec());
    cmd.args(["proxy", "--policy"])
        .arg(&policy)
        .arg("--audit-dir")
        .arg(dir.join("audit"))
        .args(extra)
        .arg("--")
        .arg(test_server())
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    common::output_within(&mut cmd, Duration::from_secs(60))
}

#[test]
fn a_socket_directory_others_could_write_stops_the_proxy() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    // Given with --approval-socket: world-writable, then another user's.
    let queue = tmp.path().join("queue");
    std::fs::create_dir(&queue).unwrap();
    std::fs::set_permissions(&queue, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = queue.join("approvals.sock");
    let out = proxy_output(
        tmp.path(),
        &["--approval-socket", socket.to_str().unwrap()],
        &[],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&queue.display().to_string()) && err.contains("0777"),
        "{err}"
    );
    assert!(!socket.exists());
    std::fs::set_permissions(&queue, std::fs::Permissions::from_mode(0o700)).unwrap();
    if std::os::unix::fs::chown(&queue, Some(65534), Some(65534)).is_ok() {
        let out = proxy_output(
            tmp.path(),
            &["--approval-socket", socket.to_str().unwrap()],
            &[],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&queue.display().to_string()) && err.contains("65534"),
            "{err}"
        );
    }
    // The default place ($XDG_RUNTIME_DIR/flightrec), pre-made group-writable.
    let run = tmp.path().join("run");
    std::fs::create_dir_all(run.join("flightrec")).unwrap();
    std::fs::set_permissions(
        run.join("flightrec"),
        std::fs::Permissions::from_mode(0o770),
    )
    .unwrap();
    let out = proxy_output(tmp.path(), &[], &[("XDG_RUNTIME_DIR", &run)]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&run.join("flightrec").display().to_string()) && err.contains("0770"),
        "{err}"
    );
}
