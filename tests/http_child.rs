//! `flightrec proxy --listen ADDR -- CMD`: a stdio MCP server behind a URL,
//! one server process per session, through the real binary on loopback.
//! The official Python SDK client in both protocol generations against the
//! Rust test server and the real `awslabs.healthimaging-mcp-server`;
//! processes per session and per agent; `--max-children`; a child killed
//! mid-call; the hostile upstream's differential fuzz; the audit log read
//! back and verified.
//!
//! Every server is started through `sh -c 'echo $$ >> PIDS; exec CMD'`, so
//! the file PIDS names each process the proxy started, in order.

mod common;

use common::{Guard, Rng, Timed, dir_rows, flightrec, need, root};
use flightrec::audit::schema::AuditRow;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const POLICY: &str = "version: \"1\"\nhide: [delete_image_set]\ntools:\n  copy_image_set:\n    rules:\n      - {name: one copy per session, rate_limit: {max: 1, window: 60s, per: session}}\n";

const META: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"raw","version":"1"}}"#;

/// `flightrec proxy --listen 127.0.0.1:0 ARGS…` (ARGS end with `-- CMD`):
/// the process and the address it printed.
fn proxy(args: &[&str], env: &[(&str, &Path)]) -> (Guard, SocketAddr) {
    let mut cmd = Command::new(flightrec());
    cmd.arg("proxy")
        .args(["--listen", "127.0.0.1:0", "--no-warm-start"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let rx = common::line_channel(child.stderr.take().unwrap());
    let guard = Guard(child);
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the proxy prints its address");
        if let Some(rest) = line.strip_prefix("flightrec: listening on http://") {
            // Keep draining stderr so the proxy never blocks on it.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return (guard, rest.split('/').next().unwrap().parse().unwrap());
        }
    }
}

/// SIGTERM, then waits for the proxy to flush and exit.
fn stop(mut p: Guard) -> std::process::ExitStatus {
    // SAFETY: kill(2) on a child this test started.
    unsafe {
        libc::kill(p.0.id() as i32, libc::SIGTERM);
    }
    common::wait_within(&mut p.0, Duration::from_secs(60))
}

/// `sh -c 'echo $$ >> PIDS; exec "$@"'` in front of `server`: the command
/// words after `--`.
fn logged(pids: &Path, server: &[&str]) -> Vec<String> {
    let mut words = vec![
        "sh".to_string(),
        "-c".to_string(),
        r#"echo $$ >> "$0"; exec "$@""#.to_string(),
        pids.to_str().unwrap().to_string(),
    ];
    words.extend(server.iter().map(|s| s.to_string()));
    words
}

/// The process ids in PIDS, in order.
fn pids(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

/// One HTTP/1.1 request on a fresh connection: (status, head, body).
fn http(
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!(
        "{method} /mcp HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json, text/event-stream\r\nConnection: close\r\n"
    );
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// A header's value in a response head.
fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn initialize(id: u64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw-client", "version": "1"}}})
    .to_string()
}

/// Starts a 2025-11-25 session: its `Mcp-Session-Id`.
fn start_session(addr: SocketAddr, auth: &[(&str, &str)]) -> String {
    let (status, head, body) = http(addr, "POST", auth, &initialize(0));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["result"]["serverInfo"].is_object(), "{v}");
    let id = header_value(&head, "mcp-session-id").expect("the proxy issues a session id");
    let mut with_id = auth.to_vec();
    with_id.push(("Mcp-Session-Id", &id));
    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let (status, _, _) = http(addr, "POST", &with_id, note);
    assert_eq!(status, 202);
    id
}

/// A request in a session; `id` None: stateless (2026-07-28).
fn post(
    addr: SocketAddr,
    session: Option<&str>,
    auth: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut headers = auth.to_vec();
    if let Some(s) = session {
        headers.push(("Mcp-Session-Id", s));
    }
    http(addr, "POST", &headers, body)
}

fn tool_call(id: u64, tool: &str, args: Value, modern: bool) -> String {
    let mut params = json!({"name": tool, "arguments": args});
    if modern {
        params["_meta"] =
            serde_json::from_str::<Value>(&format!("{{{META}}}")).unwrap()["_meta"].clone();
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}).to_string()
}

/// Waits (bounded) until `file` has `n` lines equal to `line`.
fn wait_for_lines(file: &Path, line: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count = std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == line)
            .count();
        if count >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never had {n} lines `{line}`",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sdk_client(mode: &str, url: &str, calls: Value) -> Value {
    let out = Command::new(need(root().join(".venv-sdk/bin/python")))
        .arg(root().join("tests/e2e/sdk_client.py"))
        .arg(mode)
        .arg(calls.to_string())
        .arg("--")
        .arg(url)
        .output_timed()
        .unwrap();
    assert!(
        out.status.success(),
        "client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

struct Setup {
    dir: tempfile::TempDir,
    audit: PathBuf,
    pids: PathBuf,
    log: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    Setup {
        audit: dir.path().join("audit"),
        pids: dir.path().join("pids"),
        log: dir.path().join("tools.log"),
        dir,
    }
}

/// The proxy in front of the Rust test server (its tools logged to
/// `s.log`), with `extra` flags.
fn test_server_proxy(s: &Setup, extra: &[&str]) -> (Guard, SocketAddr) {
    let policy = common::write_file(s.dir.path(), "policy.yaml", POLICY);
    let server = common::test_server();
    let command = logged(&s.pids, &[server.to_str().unwrap()]);
    let mut args = vec![
        "--policy",
        policy.to_str().unwrap(),
        "--audit-dir",
        s.audit.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend(command.iter().map(String::as_str));
    proxy(&args, &[("TEST_SERVER_LOG", &s.log)])
}

fn rows_where(rows: &[AuditRow], f: impl Fn(&AuditRow) -> bool) -> Vec<&AuditRow> {
    rows.iter().filter(|r| f(r)).collect()
}

#[test]
fn sdk_clients_in_both_generations_reach_a_stdio_server_behind_the_url() {
    let s = setup();
    let (p, addr) = test_server_proxy(&s, &[]);
    let url = format!("http://{addr}/mcp");
    let calls = json!([
        {"tool": "copy_image_set", "args": {"n": 1}},
        {"tool": "copy_image_set", "args": {"n": 2}},
        {"tool": "delete_image_set", "args": {}},
    ]);
    for mode in ["legacy", "auto"] {
        let out = sdk_client(mode, &url, calls.clone());
        let tools: Vec<&str> = out["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert!(tools.contains(&"copy_image_set"), "{mode}: {tools:?}");
        assert!(!tools.contains(&"delete_image_set"), "{mode}: hidden");
        assert_eq!(out["calls"][0]["isError"], false, "{mode}: {out}");
        assert!(
            out["calls"][0]["text"]
                .as_str()
                .unwrap()
                .contains("copy_image_set ok"),
            "{mode}: {out}"
        );
        assert!(
            out["calls"][1]["text"]
                .as_str()
                .unwrap()
                .contains("one copy per session"),
            "{mode}: throttled: {out}"
        );
        assert!(
            out["calls"][2]["text"]
                .as_str()
                .unwrap()
                .contains("hidden by policy"),
            "{mode}: denied: {out}"
        );
    }
    assert!(stop(p).success());
    common::assert_verified(&s.audit);
    let rows = dir_rows(&s.audit);
    assert!(rows.iter().all(|r| r.transport.to_string() == "http"));
    let copies = rows_where(&rows, |r| r.tool.as_deref() == Some("copy_image_set"));
    assert_eq!(copies.len(), 4, "two per generation");
    let verdicts: Vec<(String, String)> = copies
        .iter()
        .map(|r| (r.decision.to_string(), r.outcome.to_string()))
        .collect();
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| v.0 == "allow" && v.1 == "ok")
            .count(),
        2
    );
    assert_eq!(verdicts.iter().filter(|v| v.0 == "throttle").count(), 2);
    // The legacy session is the proxy's own (128 random bits as hex); the
    // 2026-07-28 client's is its agent's.
    let legacy = rows_where(&rows, |r| r.method == "initialize");
    assert_eq!(legacy.len(), 1);
    let id = &legacy[0].session_id;
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    // Its later rows name the server its handshake answered with.
    let in_session = rows_where(&rows, |r| r.session_id == *id && r.tool.is_some());
    assert_eq!(in_session.len(), 3);
    assert!(
        in_session
            .iter()
            .all(|r| r.server == "flightrec-test-server" && r.client_name.as_deref() == Some("mcp")),
        "{in_session:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.method == "server/discover" && r.session_id.starts_with("agent:")),
    );
    // One process for the legacy session, one for the stateless client.
    let started = pids(&s.pids);
    assert_eq!(started.len(), 2, "{started:?}");
    assert_ne!(started[0], started[1]);
    assert!(
        started.iter().all(|p| !alive(*p)),
        "the proxy's stop ends its children"
    );
}

#[test]
fn the_real_healthimaging_server_behind_a_url() {
    let s = setup();
    let server = need(root().join(".venv-hi/bin/awslabs.healthimaging-mcp-server"));
    let policy = common::write_file(
        s.dir.path(),
        "policy.yaml",
        "version: \"1\"\ntools:\n  delete_image_set:\n    rules:\n      - {name: never delete, action: deny}\n  copy_image_set:\n    rules:\n      - {name: copy budget per session, rate_limit: {max: 1, window: 60s, per: session}}\n",
    );
    let command = logged(
        &s.pids,
        &[
            "env",
            "AWS_REGION=us-east-1",
            "AWS_ACCESS_KEY_ID=AKIAFAKEFAKEFAKEFAKE",
            "AWS_SECRET_ACCESS_KEY=fake/fake/fake",
            "AWS_EC2_METADATA_DISABLED=true",
            server.to_str().unwrap(),
        ],
    );
    let mut args = vec![
        "--policy",
        policy.to_str().unwrap(),
        "--audit-dir",
        s.audit.to_str().unwrap(),
        "--",
    ];
    args.extend(command.iter().map(String::as_str));
    let (p, addr) = proxy(&args, &[]);
    let url = format!("http://{addr}/mcp");
    let copy = json!({"datastore_id": "12345678901234567890123456789012", "source_image_set_id": "abcdefabcdefabcdefabcdefabcdefab",
                      "source_datastore_id": "12345678901234567890123456789012", "copy_image_set_information": {"sourceImageSet": {"latestVersionId": "1"}}});
    let calls = json!([
        {"tool": "copy_image_set", "args": copy},
        {"tool": "copy_image_set", "args": copy},
        {"tool": "delete_image_set", "args": {"datastore_id": "12345678901234567890123456789012", "image_set_id": "abcdefabcdefabcdefabcdefabcdefab"}},
    ]);
    for mode in ["legacy", "auto"] {
        let out = sdk_client(mode, &url, calls.clone());
        let tools = out["tools"].as_array().unwrap();
        assert!(tools.len() > 30, "{mode}: the real server's tools: {out}");
        // Offline, the real copy_image_set runs and answers isError.
        assert_eq!(out["calls"][0]["isError"], true, "{mode}: {out}");
        assert!(
            out["calls"][0]["text"]
                .as_str()
                .unwrap()
                .contains("copy_image_set"),
            "{mode}: {out}"
        );
        assert!(
            out["calls"][1]["text"]
                .as_str()
                .unwrap()
                .contains("copy budget per session"),
            "{mode}: throttled: {out}"
        );
        assert!(
            out["calls"][2]["text"]
                .as_str()
                .unwrap()
                .contains("never delete"),
            "{mode}: denied: {out}"
        );
    }
    assert!(stop(p).success());
    common::assert_verified(&s.audit);
    let rows = dir_rows(&s.audit);
    let copies = rows_where(&rows, |r| r.tool.as_deref() == Some("copy_image_set"));
    let ran: Vec<&&AuditRow> = copies
        .iter()
        .filter(|r| r.decision.to_string() == "allow")
        .collect();
    assert_eq!(ran.len(), 2, "one copy per generation ran");
    assert!(
        ran.iter().all(|r| r.outcome.to_string() == "tool_error"
            && r.server == "awslabs.healthimaging-mcp-server"),
        "{ran:?}"
    );
    assert_eq!(
        copies
            .iter()
            .filter(|r| r.decision.to_string() == "throttle")
            .count(),
        2
    );
    let deletes = rows_where(&rows, |r| r.tool.as_deref() == Some("delete_image_set"));
    assert!(deletes.len() == 2 && deletes.iter().all(|r| r.decision.to_string() == "deny"));
    assert!(pids(&s.pids).len() >= 2, "a process per session");
}

#[test]
fn sessions_and_agents_never_share_a_server_process() {
    let s = setup();
    let tokens = common::write_file(s.dir.path(), "tokens", "alice tok-alice\nbob tok-bob\n");
    let (p, addr) = test_server_proxy(&s, &["--tokens", tokens.to_str().unwrap()]);
    let alice = [("Authorization", "Bearer tok-alice")];
    let bob = [("Authorization", "Bearer tok-bob")];
    let a1 = start_session(addr, &alice);
    assert_eq!(pids(&s.pids).len(), 1);
    let a2 = start_session(addr, &alice);
    assert_eq!(pids(&s.pids).len(), 2, "a second session, a second process");
    let b1 = start_session(addr, &bob);
    assert_eq!(pids(&s.pids).len(), 3);
    assert_ne!(a1, a2);
    // Bob cannot use Alice's session (nor reach her process).
    let list = r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#;
    let (status, _, _) = post(addr, Some(&a1), &bob, list);
    assert_eq!(status, 404);
    for (session, auth) in [(&a1, &alice), (&a2, &alice), (&b1, &bob)] {
        let (status, _, body) = post(addr, Some(session), auth, list);
        assert_eq!(status, 200, "{body}");
    }
    // Stateless (2026-07-28) clients: one process per agent.
    let call = |id| tool_call(id, "list_image_sets", json!({}), true);
    for (auth, id) in [(&alice, 10), (&bob, 11), (&alice, 12), (&bob, 13)] {
        let (status, _, body) = post(addr, None, auth, &call(id));
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["result"].is_object(), "{v}");
    }
    let started = pids(&s.pids);
    assert_eq!(
        started.len(),
        5,
        "three sessions and two agents: {started:?}"
    );
    let mut distinct = started.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 5);
    // DELETE ends a session and its process.
    let (status, _, _) = http(addr, "DELETE", &[alice[0], ("Mcp-Session-Id", &a1)], "");
    assert_eq!(status, 200);
    let (status, _, _) = post(addr, Some(&a1), &alice, list);
    assert_eq!(status, 404, "an ended session is unknown");
    assert!(stop(p).success());
    common::assert_verified(&s.audit);
    let rows = dir_rows(&s.audit);
    let stateless = rows_where(&rows, |r| r.tool.as_deref() == Some("list_image_sets"));
    let mut agents: Vec<(&str, &str)> = stateless
        .iter()
        .map(|r| (r.agent_id.as_str(), r.session_id.as_str()))
        .collect();
    agents.sort_unstable();
    agents.dedup();
    assert_eq!(
        agents,
        [("alice", "agent:alice"), ("bob", "agent:bob")],
        "rows name the token's agent"
    );
    assert!(
        rows.iter()
            .any(|r| r.rule.as_deref() == Some("(unknown session)") && r.agent_id == "bob")
    );
}

#[test]
#[ignore = "flaky (about 1 run in 4): now and then one of the two slow calls never reaches its child within 60 s; to be found and fixed (issue 26) before this counts again"]
fn max_children_refuses_a_new_session_while_every_child_is_busy() {
    let s = setup();
    let (p, addr) = test_server_proxy(&s, &["--max-children", "2"]);
    let a = start_session(addr, &[]);
    let b = start_session(addr, &[]);
    // Each session keeps a call in flight.
    let slow = tool_call(7, "slow_tool", json!({"ms": 600_000}), false);
    let calls: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|id| {
            let slow = slow.clone();
            std::thread::spawn(move || post(addr, Some(&id), &[], &slow))
        })
        .collect();
    wait_for_lines(&s.log, "slow_tool", 2);
    let (status, head, body) = http(addr, "POST", &[], &initialize(0));
    assert_eq!(status, 503, "{body}");
    assert!(header_value(&head, "mcp-session-id").is_none());
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], -32000, "{v}");
    assert_eq!(pids(&s.pids).len(), 2, "no third process");
    // A stateless client needs a process too: refused the same way.
    let (status, _, _) = post(
        addr,
        None,
        &[],
        &tool_call(8, "list_image_sets", json!({}), true),
    );
    assert_eq!(status, 503);
    // Once a session ends, a new one works.
    let (status, _, _) = http(addr, "DELETE", &[("Mcp-Session-Id", &a)], "");
    assert_eq!(status, 200);
    let c = start_session(addr, &[]);
    let (status, _, body) = post(
        addr,
        Some(&c),
        &[],
        &tool_call(9, "list_image_sets", json!({}), false),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(pids(&s.pids).len(), 3);
    let (status, _, _) = http(addr, "DELETE", &[("Mcp-Session-Id", &b)], "");
    assert_eq!(status, 200);
    for call in calls {
        let (status, _, body) = call.join().unwrap();
        assert_eq!(status, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], -32603, "the ended session's call: {v}");
    }
    assert!(stop(p).success());
    common::assert_verified(&s.audit);
    let rows = dir_rows(&s.audit);
    let refused = rows_where(&rows, |r| r.rule.as_deref() == Some("(too many children)"));
    assert_eq!(refused.len(), 2, "both refusals are recorded");
    assert!(
        refused
            .iter()
            .all(|r| r.outcome.to_string() == "not_forwarded")
    );
    assert_eq!(refused[0].method, "initialize");
    let slow_rows = rows_where(&rows, |r| r.tool.as_deref() == Some("slow_tool"));
    assert_eq!(slow_rows.len(), 2);
    assert!(
        slow_rows
            .iter()
            .all(|r| r.outcome.to_string() == "interrupted"),
        "ended by their sessions' DELETE"
    );
}

#[test]
fn a_child_killed_mid_call_fails_the_call_and_ends_its_session() {
    let s = setup();
    let (p, addr) = test_server_proxy(&s, &[]);
    let session = start_session(addr, &[]);
    let pid = pids(&s.pids)[0];
    let slow = tool_call(3, "slow_tool", json!({"ms": 600_000}), false);
    let call = {
        let session = session.clone();
        std::thread::spawn(move || post(addr, Some(&session), &[], &slow))
    };
    wait_for_lines(&s.log, "slow_tool", 1);
    // SAFETY: kill(2) on the server process the proxy started for this test.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let (status, _, body) = call.join().unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["id"], 3);
    assert_eq!(v["error"]["code"], -32603, "{v}");
    // The session ended with its process: the client must start again.
    let list = r#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#;
    let (status, _, _) = post(addr, Some(&session), &[], list);
    assert_eq!(status, 404);
    let (status, _, _) = http(addr, "GET", &[("Mcp-Session-Id", &session)], "");
    assert_eq!(status, 404);
    let fresh = start_session(addr, &[]);
    assert_ne!(fresh, session);
    let (status, _, body) = post(addr, Some(&fresh), &[], list);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("slow_tool"));
    let started = pids(&s.pids);
    assert_eq!(started.len(), 2, "the new session got a fresh process");
    assert_ne!(started[1], pid);
    assert!(stop(p).success());
    common::assert_verified(&s.audit);
    let rows = dir_rows(&s.audit);
    let slow_rows = rows_where(&rows, |r| r.tool.as_deref() == Some("slow_tool"));
    assert_eq!(slow_rows.len(), 1);
    assert_eq!(slow_rows[0].outcome.to_string(), "upstream_gone");
    assert_eq!(slow_rows[0].session_id, session);
    assert!(
        rows.iter()
            .any(|r| r.rule.as_deref() == Some("(unknown session)"))
    );
}

#[test]
fn the_usage_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(dir.path(), "policy.yaml", POLICY);
    let policy = policy.to_str().unwrap();
    let both = common::run(&[
        "proxy",
        "--policy",
        policy,
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9/mcp",
        "--",
        "true",
    ]);
    assert_eq!(both.status.code(), Some(2));
    assert!(
        common::stderr(&both).contains("not both"),
        "{}",
        common::stderr(&both)
    );
    let neither = common::run(&["proxy", "--policy", policy, "--listen", "127.0.0.1:0"]);
    assert_eq!(neither.status.code(), Some(2));
    assert!(
        common::stderr(&neither).contains("server command after `--`"),
        "{}",
        common::stderr(&neither)
    );
    let zero = common::run(&[
        "proxy",
        "--policy",
        policy,
        "--listen",
        "127.0.0.1:0",
        "--max-children",
        "0",
        "--",
        "true",
    ]);
    assert_eq!(zero.status.code(), Some(2));
}

// ---- the hostile upstream's differential fuzz, through a child ----

/// Denies `reboot_broker` and large copies; allows the rest.
const FUZZ_POLICY: &str = r#"
version: "1"
default: allow
tools:
  reboot_broker:
    rules:
      - name: never reboot
        action: deny
  copy_image_set:
    rules:
      - name: small copies only
        action: deny
        when:
          - path: args.amount
            op: gt
            value: 100
"#;

/// A `tools/call` built as text, mutated the ways servers read JSON
/// differently from flightrec (case variants, duplicates, escapes, line
/// breaks between tokens, batches, a byte order mark, other charsets).
fn mutant(rng: &mut Rng, id: u64) -> (Vec<u8>, Option<&'static str>) {
    const TOOLS: [&str; 3] = ["list_brokers", "reboot_broker", "copy_image_set"];
    const NAMES: [&str; 5] = ["Name", "NAME", "nAme", "n\\u0061me", "na\\u006De"];
    let pick = |rng: &mut Rng, n: usize| rng.below(n as u64) as usize;
    let tool = TOOLS[pick(rng, 3)];
    let other = TOOLS[pick(rng, 3)];
    let amount = [1, 100, 101, 5000][pick(rng, 4)];
    let ws = |rng: &mut Rng| ["", " ", "\n", "\r\n ", "\t"][pick(rng, 5)];
    let mut name_key = "\"name\"".to_string();
    let mut args = format!(r#"{{"amount":{amount}}}"#);
    let mut extra = Vec::new();
    let (mut method, mut params) = ("\"method\"", "\"params\"");
    let (mut batch, mut bom, mut charset) = (false, false, None);
    for _ in 0..1 + rng.below(3) {
        match rng.below(11) {
            0 => name_key = format!("\"{}\"", NAMES[pick(rng, 5)]),
            1 => extra.push(format!("\"{}\":\"{other}\"", NAMES[pick(rng, 5)])),
            2 => extra.push(format!(r#""name":"{other}""#)),
            3 => args = format!(r#"{{"amount":{amount},"AMOUNT":5000}}"#),
            4 => args = format!(r#"{{"amount":{amount},"amount":5000}}"#),
            5 => method = "\"Method\"",
            6 => params = "\"PARAMS\"",
            7 => batch = true,
            8 => bom = true,
            9 => charset = Some(["utf-16", "latin-1", "UTF-8"][pick(rng, 3)]),
            _ => extra.push(r#""Arguments":{"amount":5000}"#.into()),
        }
    }
    let mut members = vec![
        format!("{name_key}:{}\"{tool}\"", ws(rng)),
        format!("\"arguments\":{}{args}", ws(rng)),
    ];
    members.extend(extra);
    for i in (1..members.len()).rev() {
        let j = pick(rng, i + 1);
        members.swap(i, j);
    }
    let sep = format!(",{}", ws(rng));
    let mut text = format!(
        r#"{{{w}"jsonrpc":"2.0",{w}"id":{id},{method}:"tools/call",{params}:{{{}}}{w}}}"#,
        members.join(&sep),
        w = ws(rng)
    );
    if batch {
        text = format!("[{text}]");
    }
    let mut bytes = Vec::new();
    if bom {
        bytes.extend_from_slice("\u{feff}".as_bytes());
    }
    match charset {
        Some("utf-16") => bytes.extend(text.encode_utf16().flat_map(|u| u.to_le_bytes())),
        Some("latin-1") => bytes.extend(text.chars().map(|c| c as u32 as u8)),
        _ => bytes.extend_from_slice(text.as_bytes()),
    }
    (bytes, charset)
}

/// One raw POST: its status.
fn post_bytes(addr: SocketAddr, content_type: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json, text/event-stream\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    String::from_utf8_lossy(&all)
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// Whenever the hostile upstream (as a child) executes a tool, the audit
/// log has an allow row for that exact tool and those exact arguments.
#[test]
fn differential_fuzz_through_a_child() {
    let s = setup();
    let policy = common::write_file(s.dir.path(), "policy.yaml", FUZZ_POLICY);
    let log = s.dir.path().join("upstream.jsonl");
    let hostile = root().join("tests/e2e/hostile_upstream.py");
    let (p, addr) = proxy(
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--audit-dir",
            s.audit.to_str().unwrap(),
            "--upstream-timeout",
            "20s",
            "--approval-socket",
            s.dir.path().join("a.sock").to_str().unwrap(),
            "--",
            "python3",
            hostile.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
            "--stdio",
        ],
        &[],
    );
    let mut rng = Rng(0x5eed_c41d);
    for id in 1..=200u64 {
        let (bytes, charset) = mutant(&mut rng, id);
        let ctype = match charset {
            Some(c) => format!("application/json; charset={c}"),
            None => "application/json".to_string(),
        };
        let status = post_bytes(addr, &ctype, &bytes);
        assert!(status < 500, "request {id}: HTTP {status}");
    }
    assert!(stop(p).success());
    common::assert_verified(&s.audit);
    let rows = dir_rows(&s.audit);
    let executed: Vec<(String, String, Value)> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] == "executed")
        .map(|v| {
            (
                v["reader"].as_str().unwrap().to_string(),
                v["tool"].as_str().unwrap().to_string(),
                v["args"].clone(),
            )
        })
        .collect();
    let mut allowed: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r.method == "tools/call" && r.decision.to_string() == "allow")
        .map(|r| {
            (
                r.tool.clone().unwrap_or_default(),
                r.args_sha256.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        allowed.iter().any(|(t, _)| t == "list_brokers"),
        "plain calls went through too"
    );
    assert!(
        executed.iter().any(|(reader, _, _)| reader == "go"),
        "the child executed something"
    );
    // Line breaks between a body's tokens never split it into fragments
    // the child cannot read: every forwarded request was answered.
    assert!(
        rows.iter().all(|r| r.outcome.to_string() != "timeout"),
        "a forwarded request got no answer"
    );
    let all = allowed.clone();
    for (reader, tool, args) in &executed {
        let key = (tool.clone(), flightrec::audit::args::args_sha256(args));
        if reader == "go" {
            let i = allowed.iter().position(|k| *k == key).unwrap_or_else(|| {
                panic!("the child executed {tool} {args} with no allow row left")
            });
            allowed.swap_remove(i);
        } else {
            assert!(
                all.contains(&key),
                "a strict reader would execute {tool} {args} with no allow row"
            );
        }
    }
}

#[test]
fn a_request_the_child_does_not_answer_in_time_gets_a_timeout() {
    let s = setup();
    let (p, addr) = test_server_proxy(&s, &["--upstream-timeout", "1s"]);
    let session = start_session(addr, &[]);
    let slow = tool_call(21, "slow_tool", json!({"ms": 600_000}), false);
    let (status, _, body) = post(addr, Some(&session), &[], &slow);
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["id"].clone(), v["error"]["code"].clone()),
        (json!(21), json!(-32001)),
        "{v}"
    );
    // The session goes on with the same process.
    let list = r#"{"jsonrpc":"2.0","id":22,"method":"tools/list"}"#;
    let (status, _, body) = post(addr, Some(&session), &[], list);
    assert_eq!(status, 200, "{body}");
    assert_eq!(pids(&s.pids).len(), 1);
    assert!(stop(p).success());
    let rows = dir_rows(&s.audit);
    let slow_rows = rows_where(&rows, |r| r.tool.as_deref() == Some("slow_tool"));
    assert_eq!(slow_rows.len(), 1);
    assert_eq!(slow_rows[0].outcome.to_string(), "timeout");
}

#[test]
fn an_idle_child_is_stopped_and_its_session_ends() {
    let s = setup();
    let (p, addr) = test_server_proxy(&s, &["--child-idle-timeout", "1s"]);
    let session = start_session(addr, &[]);
    let pid = pids(&s.pids)[0];
    let deadline = Instant::now() + Duration::from_secs(60);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the idle process was never stopped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let (status, _, _) = post(addr, Some(&session), &[], list);
    assert_eq!(status, 404);
    let fresh = start_session(addr, &[]);
    let (status, _, _) = post(addr, Some(&fresh), &[], list);
    assert_eq!(status, 200);
    assert!(stop(p).success());
}

/// A stdio server that, on a tool call, sends a notification and a request
/// of its own before its answer, and logs the client's answer to it.
const CHATTY: &str = r#"
import json, sys
log = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if "method" not in m:
        with open(log, "a") as f:
            f.write(json.dumps(m) + "\n")
        continue
    if "id" not in m:
        continue
    method = m["method"]
    if method == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "chatty", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": "shout", "inputSchema": {"type": "object"}}]}
    elif method == "tools/call":
        print(json.dumps({"jsonrpc": "2.0", "method": "notifications/message",
                          "params": {"level": "info", "data": "hello from the server"}}), flush=True)
        print(json.dumps({"jsonrpc": "2.0", "id": "srv-1", "method": "roots/list"}), flush=True)
        result = {"content": [{"type": "text", "text": "shouted"}]}
    else:
        result = {}
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": result}), flush=True)
"#;

#[test]
fn the_servers_own_messages_reach_the_sessions_stream_and_answers_go_back() {
    let s = setup();
    let script = common::write_file(s.dir.path(), "chatty.py", CHATTY);
    let answers = s.dir.path().join("answers.jsonl");
    let policy = common::write_file(s.dir.path(), "policy.yaml", "version: \"1\"\n");
    let (p, addr) = proxy(
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--audit-dir",
            s.audit.to_str().unwrap(),
            "--",
            "python3",
            script.to_str().unwrap(),
            answers.to_str().unwrap(),
        ],
        &[],
    );
    let session = start_session(addr, &[]);
    // The session's stream (GET), read line by line.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET /mcp HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nMcp-Session-Id: {session}\r\n\r\n"
    )
    .unwrap();
    let call = tool_call(1, "shout", json!({}), false);
    let (status, _, body) = post(addr, Some(&session), &[], &call);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("shouted"));
    let mut reader = std::io::BufReader::new(stream);
    let (mut note, mut request) = (false, false);
    for _ in 0..100 {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut reader, &mut line).unwrap() == 0 {
            break;
        }
        note |= line.starts_with("data: ") && line.contains("hello from the server");
        request |= line.starts_with("data: ") && line.contains("roots/list");
        if note && request {
            break;
        }
    }
    assert!(
        note && request,
        "the server's notification and request came on the stream"
    );
    // The client's answer to the server's request goes to the server: 202.
    let answer = r#"{"jsonrpc":"2.0","id":"srv-1","result":{"roots":[]}}"#;
    let (status, _, _) = post(addr, Some(&session), &[], answer);
    assert_eq!(status, 202);
    wait_for_lines(
        &answers,
        r#"{"jsonrpc": "2.0", "id": "srv-1", "result": {"roots": []}}"#,
        1,
    );
    assert!(stop(p).success());
    common::assert_verified(&s.audit);
}

#[test]
fn a_stop_records_calls_left_in_flight_and_ends_every_child() {
    let s = setup();
    let (p, addr) = test_server_proxy(&s, &[]);
    let session = start_session(addr, &[]);
    let slow = tool_call(31, "slow_tool", json!({"ms": 600_000}), false);
    let call = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let _ = write!(
            c,
            "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nContent-Type: application/json\r\nMcp-Session-Id: {session}\r\nContent-Length: {}\r\n\r\n{slow}",
            slow.len()
        );
        let mut all = String::new();
        let _ = c.read_to_string(&mut all);
        all
    });
    wait_for_lines(&s.log, "slow_tool", 1);
    let pid = pids(&s.pids)[0];
    assert!(stop(p).success());
    assert!(!alive(pid), "the stop ended the server process");
    let _ = call.join();
    common::assert_verified(&s.audit);
    let rows = dir_rows(&s.audit);
    let slow_rows = rows_where(&rows, |r| r.tool.as_deref() == Some("slow_tool"));
    assert_eq!(slow_rows.len(), 1);
    assert_eq!(slow_rows[0].outcome.to_string(), "interrupted");
}
