//! The Streamable HTTP proxy with real peers on loopback: the official MCP
//! Python SDK's streamable-HTTP server as the upstream and its client
//! through the proxy in both protocol generations; sessions, the
//! header-mismatch rejection, tokens and the loopback guard, an upstream
//! that is down, and the audit log read back and verified.

mod common;

use common::{Guard, Timed, dir_rows, flightrec, need, root};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sdk_python() -> PathBuf {
    need(root().join(".venv-sdk/bin/python"))
}

/// The SDK's streamable-HTTP server on a loopback port.
fn sdk_server(extra: &[&str]) -> (Guard, u16) {
    common::sdk_http_server(extra)
}

/// `flightrec proxy --listen 127.0.0.1:0 …`: the process, the address it
/// printed, and its stderr lines.
fn proxy(args: &[&str]) -> (Guard, SocketAddr, std::sync::mpsc::Receiver<String>) {
    common::http_proxy_with_stderr(args)
}

use common::stop;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    common::write_file(dir, name, text)
}

/// The SDK server (with `server_args`) and a proxy in front of it (with
/// `proxy_args`), recording to `dir/audit` under the test policy.
struct Setup {
    server: Guard,
    proxy: Guard,
    addr: SocketAddr,
    audit: PathBuf,
}

fn setup(dir: &Path, server_args: &[&str], proxy_args: &[&str]) -> Setup {
    let policy = write(dir, "policy.yaml", POLICY);
    let audit = dir.join("audit");
    let (server, port) = sdk_server(server_args);
    let upstream = format!("http://127.0.0.1:{port}/mcp");
    let mut args = vec![
        "--policy",
        policy.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream,
        "--audit-dir",
        audit.to_str().unwrap(),
    ];
    args.extend_from_slice(proxy_args);
    let (proxy, addr, _errs) = proxy(&args);
    Setup {
        server,
        proxy,
        addr,
        audit,
    }
}

const POLICY: &str = "version: \"1\"\nhide: [delete_image_set]\ntools:\n  copy_image_set:\n    rules:\n      - {name: one copy per session, rate_limit: {max: 1, window: 60s, per: session}}\n";

fn sdk_client(mode: &str, url: &str, calls: Value) -> Value {
    let out = Command::new(sdk_python())
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

/// One HTTP/1.1 request on a fresh connection: (status, headers, body).
fn http(
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
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

#[test]
fn sdk_client_through_the_http_proxy_in_both_generations() {
    let dir = tempfile::tempdir().unwrap();
    let Setup {
        server: _server,
        proxy: p,
        addr,
        audit,
        ..
    } = setup(dir.path(), &[], &[]);
    let url = format!("http://{addr}/mcp");
    let calls = json!([
        {"tool": "list_image_sets", "args": {"datastore_id": "ds-1"}},
        {"tool": "copy_image_set", "args": {"datastore_id": "ds-1", "source_image_set_id": "a"}},
        {"tool": "copy_image_set", "args": {"datastore_id": "ds-1", "source_image_set_id": "b"}},
        {"tool": "delete_image_set", "args": {"image_set_id": "a"}}
    ]);
    for mode in ["legacy", "auto"] {
        let out = sdk_client(mode, &url, calls.clone());
        assert_eq!(
            out["tools"],
            json!(["copy_image_set", "list_image_sets", "slow_copy"]),
            "{mode}: hidden tools are removed from tools/list"
        );
        let c = &out["calls"];
        assert_eq!(c[0]["text"], "sets of ds-1: set-1, set-2", "{mode}: {out}");
        assert_eq!(c[1]["text"], "copied a in ds-1", "{mode}");
        assert_eq!(
            c[2]["isError"], true,
            "{mode}: the second copy is throttled"
        );
        assert!(
            c[2]["text"]
                .as_str()
                .unwrap()
                .contains("one copy per session"),
            "{mode}: {}",
            c[2]
        );
        assert_eq!(c[3]["isError"], true, "{mode}: hidden");
    }
    assert!(stop(p).success());
    let rows = dir_rows(&audit);
    assert!(rows.iter().all(|r| r.transport.as_str() == "http"));
    let calls: Vec<(&str, &str, &str)> = rows
        .iter()
        .filter(|r| r.method == "tools/call")
        .map(|r| {
            (
                r.tool.as_deref().unwrap(),
                r.decision.as_str(),
                r.outcome.as_str(),
            )
        })
        .collect();
    let one_run = [
        ("list_image_sets", "allow", "ok"),
        ("copy_image_set", "allow", "ok"),
        ("copy_image_set", "throttle", "not_forwarded"),
        ("delete_image_set", "deny", "not_forwarded"),
    ];
    assert_eq!(calls, [one_run, one_run].concat());
    // The legacy run's calls belong to the server's Mcp-Session-Id session,
    // which knows the client's name from the handshake.
    let legacy_copy = rows
        .iter()
        .find(|r| r.tool.as_deref() == Some("copy_image_set"))
        .unwrap();
    assert!(!legacy_copy.session_id.starts_with("agent:"));
    assert_eq!(legacy_copy.client_name.as_deref(), Some("mcp"));
    // ... and the server's name from the handshake's answer (not the
    // upstream's address the proxy guessed before it).
    assert_eq!(legacy_copy.server, "flightrec-http-test-server");
    common::assert_verified(&audit);
}

#[test]
fn json_answers_and_concurrent_sessions_have_their_own_limits() {
    let dir = tempfile::tempdir().unwrap();
    let Setup {
        server: _server,
        proxy: p,
        addr,
        audit,
        ..
    } = setup(dir.path(), &["--json"], &[]);
    let url = format!("http://{addr}/mcp");
    let calls = json!([
        {"tool": "copy_image_set", "args": {"datastore_id": "ds", "source_image_set_id": "a"}},
        {"tool": "copy_image_set", "args": {"datastore_id": "ds", "source_image_set_id": "b"}}
    ]);
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (url, calls) = (url.clone(), calls.clone());
            std::thread::spawn(move || sdk_client("legacy", &url, calls))
        })
        .collect();
    for c in clients {
        let out = c.join().unwrap();
        assert_eq!(out["calls"][0]["isError"], false, "{out}");
        assert_eq!(out["calls"][1]["isError"], true, "{out}");
    }
    assert!(stop(p).success());
    let rows = dir_rows(&audit);
    let mut sessions: Vec<&str> = rows
        .iter()
        .filter(|r| r.method == "tools/call" && r.decision.as_str() == "allow")
        .map(|r| r.session_id.as_str())
        .collect();
    sessions.sort();
    sessions.dedup();
    assert_eq!(
        sessions.len(),
        3,
        "one allowed copy in each of three sessions"
    );
}

#[test]
fn headers_that_contradict_the_body_are_refused_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let Setup {
        server: _server,
        proxy: p,
        addr,
        audit,
        ..
    } = setup(dir.path(), &[], &[]);
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_image_set","arguments":{"image_set_id":"x"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
    let (status, _, answer) = http(
        addr,
        "POST",
        &[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "list_image_sets"),
        ],
        body,
    );
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["error"]["code"], -32020, "{v}");
    let (status, _, _) = http(
        addr,
        "POST",
        &[
            ("Mcp-Method", "tools/list"),
            ("Mcp-Name", "delete_image_set"),
        ],
        body,
    );
    assert_eq!(status, 400);
    assert!(stop(p).success());
    let rows = dir_rows(&audit);
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.rule.as_deref() == Some("(header mismatch)")
                && r.outcome.as_str() == "not_forwarded")
    );
}

#[test]
fn tokens_decide_the_agent_and_the_loopback_guard_holds() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "policy.yaml", POLICY);
    // Without --tokens, a non-loopback address is refused.
    let out = Command::new(flightrec())
        .args([
            "proxy",
            "--policy",
            policy.to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
            "--upstream",
            "http://127.0.0.1:9/mcp",
        ])
        .output_timed()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without --tokens"));

    let audit = dir.path().join("audit");
    let tokens = write(dir.path(), "tokens", "# agent token\nalice s3cret-a\n");
    let (_server, port) = sdk_server(&["--json"]);
    let upstream = format!("http://127.0.0.1:{port}/mcp");
    let (p, addr, _errs) = proxy(&[
        "--policy",
        policy.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream,
        "--tokens",
        tokens.to_str().unwrap(),
        "--audit-dir",
        audit.to_str().unwrap(),
    ]);
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_image_sets","arguments":{"datastore_id":"ds"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"mallory-client","version":"1"}}}}"#;
    let (status, _, _) = http(addr, "POST", &[("X-Agent-Id", "alice")], list);
    assert_eq!(status, 401, "no token");
    let (status, _, _) = http(addr, "POST", &[("Authorization", "Bearer wrong")], list);
    assert_eq!(status, 401, "a wrong token");
    let (status, _, answer) = http(
        addr,
        "POST",
        &[
            ("Authorization", "Bearer s3cret-a"),
            ("X-Agent-Id", "bob"),
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "list_image_sets"),
        ],
        list,
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("sets of ds"), "{answer}");
    assert!(stop(p).success());
    let rows = dir_rows(&audit);
    let seen: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.agent_id.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen.iter().filter(|(_, o)| *o == "not_forwarded").count(),
        2
    );
    // The token's agent, whatever the headers and the client claim.
    assert!(seen.contains(&("alice", "ok")), "{seen:?}");
}

#[test]
fn an_upstream_that_is_down_gets_an_error_and_a_row_and_the_proxy_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let Setup {
        server,
        proxy: p,
        addr,
        audit,
        ..
    } = setup(dir.path(), &["--json"], &[]);
    let call = |id: u32| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"list_image_sets","arguments":{{"datastore_id":"ds"}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{{}},"io.modelcontextprotocol/clientInfo":{{"name":"raw","version":"1"}}}}}}}}"#
        )
    };
    let modern = [
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "list_image_sets"),
    ];
    let (status, _, answer) = http(addr, "POST", &modern, &call(1));
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("sets of ds"), "{answer}");
    drop(server); // the upstream is killed
    let (status, _, answer) = http(addr, "POST", &modern, &call(2));
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["error"]["code"], -32603, "{v}");
    let (_, _, answer) = http(addr, "POST", &modern, &call(3));
    assert!(answer.contains("unreachable"), "still serving: {answer}");
    assert!(stop(p).success());
    let rows = dir_rows(&audit);
    let outcomes: Vec<String> = rows
        .iter()
        .map(|r| r.outcome.as_str().to_string())
        .collect();
    assert_eq!(
        outcomes,
        ["ok", "upstream_gone", "upstream_gone"],
        "{rows:#?}"
    );
}

/// The stdio-to-HTTP bridge: the SDK's stdio client launches `flightrec
/// proxy --upstream URL`, which enforces the policy and talks Streamable
/// HTTP to the SDK's server, in both generations.
#[test]
fn the_bridge_takes_a_stdio_client_to_an_http_server() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "policy.yaml", POLICY);
    let audit = dir.path().join("audit");
    let (_server, port) = sdk_server(&[]);
    let upstream = format!("http://127.0.0.1:{port}/mcp");
    let calls = json!([
        {"tool": "copy_image_set", "args": {"datastore_id": "ds", "source_image_set_id": "a"}},
        {"tool": "copy_image_set", "args": {"datastore_id": "ds", "source_image_set_id": "b"}},
        {"tool": "delete_image_set", "args": {"image_set_id": "a"}}
    ]);
    for mode in ["legacy", "auto"] {
        let out = Command::new(sdk_python())
            .arg(root().join("tests/e2e/sdk_client.py"))
            .arg(mode)
            .arg(calls.to_string())
            .arg("--")
            .arg(flightrec())
            .args([
                "proxy",
                "--policy",
                policy.to_str().unwrap(),
                "--upstream",
                &upstream,
                "--audit-dir",
                audit.to_str().unwrap(),
            ])
            .output_timed()
            .unwrap();
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["tools"],
            json!(["copy_image_set", "list_image_sets", "slow_copy"]),
            "{mode}"
        );
        assert_eq!(v["calls"][0]["text"], "copied a in ds", "{mode}: {v}");
        assert_eq!(v["calls"][1]["isError"], true, "{mode}: throttled");
        assert_eq!(v["calls"][2]["isError"], true, "{mode}: hidden");
    }
    let rows = dir_rows(&audit);
    assert!(rows.iter().all(|r| r.transport.as_str() == "bridge"));
    let decided: Vec<&str> = rows
        .iter()
        .filter(|r| r.method == "tools/call")
        .map(|r| r.decision.as_str())
        .collect();
    assert_eq!(
        decided,
        ["allow", "throttle", "deny", "allow", "throttle", "deny"]
    );
    common::assert_verified(&audit);
}

/// A body over `--max-message-bytes` gets 413 and a row; the proxy keeps
/// serving.
#[test]
fn an_oversized_body_gets_413_and_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let Setup {
        server: _server,
        proxy: p,
        addr,
        audit,
        ..
    } = setup(dir.path(), &["--json"], &["--max-message-bytes", "1000"]);
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"copy_image_set","arguments":{{"x":"{}"}}}}}}"#,
        "y".repeat(5000)
    );
    let (status, _, _) = http(addr, "POST", &[], &big);
    assert_eq!(status, 413);
    let (status, _, _) = http(
        addr,
        "POST",
        &[],
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert!(status < 500, "still serving: {status}");
    assert!(stop(p).success());
    let rows = dir_rows(&audit);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].rule.as_deref(), Some("(message too large)"));
}

/// The upstream dies while a call is in flight: the client gets a JSON-RPC
/// error, the row says `upstream_gone`, and the proxy keeps serving.
#[test]
fn an_upstream_killed_mid_call_fails_that_call_only() {
    let dir = tempfile::tempdir().unwrap();
    let Setup {
        server,
        proxy: p,
        addr,
        audit,
        ..
    } = setup(dir.path(), &["--json"], &[]);
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow_copy","arguments":{"ms":30000},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"raw","version":"1"}}}}"#;
    let call = std::thread::spawn(move || {
        http(
            addr,
            "POST",
            &[
                ("MCP-Protocol-Version", "2026-07-28"),
                ("Mcp-Method", "tools/call"),
                ("Mcp-Name", "slow_copy"),
            ],
            body,
        )
    });
    // The call is in flight once its row is journaled (the proxy begins the
    // row before forwarding): wait for a journal segment with data.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let journaled = walk_files(&audit.join("_flightrec")).iter().any(|f| {
            f.extension().is_some_and(|x| x == "wal") && f.metadata().is_ok_and(|m| m.len() > 0)
        });
        if journaled {
            break;
        }
        assert!(Instant::now() < deadline, "the call was never journaled");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Whether the POST reached the server or not yet, it never gets an answer.
    drop(server);
    let (status, _, answer) = call.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["id"], 7);
    assert_eq!(v["error"]["code"], -32603, "{v}");
    assert!(stop(p).success());
    let rows = dir_rows(&audit);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome.as_str(), "upstream_gone");
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// SIGTERM to the bridge with a call in flight: the call's row says
/// `interrupted`, the log is flushed and verifies.
#[test]
fn the_bridge_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "policy.yaml", POLICY);
    let audit = dir.path().join("audit");
    let (_server, port) = sdk_server(&["--json"]);
    let mut child = Command::new(flightrec())
        .args([
            "proxy",
            "--policy",
            policy.to_str().unwrap(),
            "--upstream",
            &format!("http://127.0.0.1:{port}/mcp"),
            "--audit-dir",
            audit.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"raw","version":"1"}}"#;
    // A quick call first: its answer shows the bridge is up.
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"list_image_sets","arguments":{{"datastore_id":"ds"}},{meta}}}}}"#).unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("sets of ds"), "{line}");
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"slow_copy","arguments":{{"ms":30000}},{meta}}}}}"#).unwrap();
    // The slow call is in flight once it is journaled.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !walk_files(&audit.join("_flightrec")).iter().any(|f| {
        f.extension().is_some_and(|x| x == "wal")
            && std::fs::read(f).is_ok_and(|b| b.windows(9).any(|w| w == b"slow_copy"))
    }) {
        assert!(
            Instant::now() < deadline,
            "the slow call was never journaled"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on a child this test started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = common::wait_within(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let rows = dir_rows(&audit);
    let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, ["ok", "interrupted"]);
    common::assert_verified(&audit);
}

/// Two HTTP proxy replicas in front of one upstream share their limit
/// through Redis (`--state`): three SDK clients on each at once, and the
/// two together grant exactly `max`.
#[test]
fn two_http_replicas_sharing_redis_grant_max_together() {
    let redis = common::redis::Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = write(
        dir.path(),
        "fleet.yaml",
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - {name: fleet copy budget, rate_limit: {max: 10, window: 10m, per: tool, mode: sliding}}\n",
    );
    let (_server, port) = sdk_server(&[]);
    let upstream = format!("http://127.0.0.1:{port}/mcp");
    let url = redis.url();
    let replicas: Vec<_> = (0..2)
        .map(|k| {
            let audit = dir.path().join(format!("audit-{k}"));
            let (guard, addr, _errs) = proxy(&[
                "--policy",
                policy.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                &upstream,
                "--audit-dir",
                audit.to_str().unwrap(),
                "--state",
                &url,
            ]);
            (guard, addr, audit)
        })
        .collect();
    let calls: Vec<Value> = (0..6)
        .map(|i| {
            json!({"tool": "copy_image_set", "args": {"datastore_id": "ds", "source_image_set_id": format!("set-{i}")}})
        })
        .collect();
    let calls = Value::from(calls);
    let seen: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|c| {
                let addr = replicas[c % 2].1;
                let calls = calls.clone();
                s.spawn(move || sdk_client("auto", &format!("http://{addr}/mcp"), calls))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused: usize = seen
        .iter()
        .flat_map(|v| v["calls"].as_array().unwrap())
        .filter(|c| {
            c["text"]
                .as_str()
                .unwrap_or("")
                .contains("fleet copy budget")
        })
        .count();
    assert_eq!(refused, 36 - 10);
    let mut allowed = 0;
    for (guard, _, audit) in replicas {
        assert!(stop(guard).success());
        allowed += dir_rows(&audit)
            .iter()
            .filter(|r| {
                r.tool.as_deref() == Some("copy_image_set") && r.decision.as_str() == "allow"
            })
            .count();
    }
    assert_eq!(allowed, 10, "exactly max across both replicas");
}

/// `--ship` on the HTTP proxy: SIGTERM seals the open audit file and the
/// exit ships it, so every sealed file is in the store byte for byte and
/// the store verifies as an audit log (a `file://` store here; S3 is
/// covered in tests/object_store.rs).
#[test]
fn the_http_proxy_ships_its_sealed_files_as_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let url = format!("file://{}", store.display());
    let Setup {
        server: _server,
        proxy: p,
        addr,
        audit,
    } = setup(
        dir.path(),
        &["--json"],
        &["--ship", &url, "--ship-timeout", "20s"],
    );
    let list = r#"{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"shipper-test","version":"1"}}}}"#;
    let headers = [
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/list"),
    ];
    for _ in 0..3 {
        let (status, _, answer) = http(addr, "POST", &headers, list);
        assert_eq!(status, 200, "{answer}");
    }
    assert!(stop(p).success());
    let sealed: Vec<PathBuf> = walk_files(&audit)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|x| x == "parquet"))
        .filter(|f| !f.starts_with(audit.join("_flightrec")))
        .collect();
    assert!(!sealed.is_empty(), "the stop sealed a file");
    for f in &sealed {
        let shipped = store.join(f.strip_prefix(&audit).unwrap());
        assert_eq!(
            std::fs::read(&shipped).unwrap_or_default(),
            std::fs::read(f).unwrap(),
            "{} shipped as is",
            f.display()
        );
    }
    let out = common::run(&["audit", "verify", &url]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(dir_rows(&audit).len(), 3);
}
