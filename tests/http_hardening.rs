//! The HTTP proxy's admission checks (issue 25), through the real binary in
//! front of a hostile upstream (tests/e2e/hostile_upstream.py) that serves
//! every verb, decodes bodies in the charset their Content-Type names, reads
//! members as Go does, and logs every request it receives and every tool it
//! executes: verbs, tokens on every method, sessions that belong to their
//! agent, charsets and codings, origins, duplicated headers, and an SSE
//! answer whose client left.

mod common;

use common::{Guard, dir_rows, need, root};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The hostile upstream on a free loopback port, logging to `log`.
fn hostile(log: &Path) -> (Guard, u16) {
    let mut child = Command::new(need(root().join(".venv-sdk/bin/python")))
        .arg(root().join("tests/e2e/hostile_upstream.py"))
        .args(["--log", log.to_str().unwrap(), "--http", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .strip_prefix("PORT ")
        .unwrap_or_else(|| panic!("the hostile upstream printed {line:?}"))
        .trim()
        .parse()
        .unwrap();
    (Guard(child), port)
}

/// The hostile upstream's log events of one kind.
fn events(log: &Path, kind: &str) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == kind)
        .collect()
}

/// A proxy in front of a fresh hostile upstream, recording to `dir/audit`:
/// (upstream, proxy, its address, the upstream's log, the audit dir).
struct Setup {
    _upstream: Guard,
    proxy: Guard,
    addr: SocketAddr,
    log: PathBuf,
    audit: PathBuf,
}

fn setup(dir: &Path, policy: &str, extra: &[&str]) -> Setup {
    let log = dir.join("upstream.jsonl");
    let (upstream, port) = hostile(&log);
    let policy = common::write_file(dir, "policy.yaml", policy);
    let audit = dir.join("audit");
    let url = format!("http://127.0.0.1:{port}/mcp");
    let mut args = vec![
        "--policy",
        policy.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &url,
        "--audit-dir",
        audit.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (proxy, addr) = common::http_proxy(&args);
    Setup {
        _upstream: upstream,
        proxy,
        addr,
        log,
        audit,
    }
}

/// reboot_broker is hidden (every call to it refused); the rest allowed.
const DENY_REBOOT: &str = "version: \"1\"\nhide: [reboot_broker]\ntools: {}\n";

const REBOOT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"reboot_broker","arguments":{}}}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"list_brokers","arguments":{}}}"#;
const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

/// Raw headers: names and their bytes.
type Headers<'a> = Vec<(&'a str, &'a [u8])>;

/// One HTTP/1.1 request on a fresh connection, every header given by the
/// caller (raw bytes: a test may send what no client library would):
/// (status, head, body).
fn raw(
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    s.write_all(&req).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// A request as a JSON client sends it, plus `headers`.
fn json(
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut all: Vec<(&str, &[u8])> = vec![
        ("Content-Type", &b"application/json"[..]),
        ("Accept", &b"application/json, text/event-stream"[..]),
    ];
    all.extend(headers.iter().map(|(k, v)| (*k, v.as_bytes())));
    raw(addr, method, &all, body.as_bytes())
}

fn header_value<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn methods_the_transport_does_not_define_are_refused_and_never_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), DENY_REBOOT, &[]);
    for verb in ["PUT", "PATCH", "FOO", "OPTIONS"] {
        let (status, head, _) = json(s.addr, verb, &[], REBOOT);
        assert_eq!(status, 405, "{verb}: {head}");
        assert_eq!(
            header_value(&head, "allow"),
            Some("GET, POST, DELETE"),
            "{verb}"
        );
    }
    // GET and DELETE carry no message: one with a body is not forwarded.
    for verb in ["GET", "DELETE"] {
        let (status, _, answer) = json(s.addr, verb, &[], REBOOT);
        assert_eq!(status, 400, "{verb}: {answer}");
    }
    // A POST still goes through, and the policy still holds there.
    let (status, _, answer) = json(s.addr, "POST", &[], LIST);
    assert_eq!(status, 200, "{answer}");
    let (status, _, answer) = json(s.addr, "POST", &[], REBOOT);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("denied by policy"), "{answer}");
    assert!(common::stop(s.proxy).success(), "the proxy exited cleanly");
    let received: Vec<String> = events(&s.log, "received")
        .iter()
        .map(|e| e["verb"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        received,
        ["POST"],
        "only the allowed POST reached the upstream"
    );
    let executed: Vec<Value> = events(&s.log, "executed");
    assert!(
        executed.iter().all(|e| e["tool"] == "list_brokers"),
        "{executed:?}"
    );
}

const TOKENS: &str = "# agent token\nalice s3cret-a\nbob s3cret-b\n";

#[test]
fn with_tokens_every_method_is_authenticated_before_anything_else() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = common::write_file(dir.path(), "tokens", TOKENS);
    let s = setup(
        dir.path(),
        DENY_REBOOT,
        &["--tokens", tokens.to_str().unwrap()],
    );
    for verb in ["GET", "DELETE", "PUT", "POST"] {
        let (status, head, _) = json(s.addr, verb, &[("Mcp-Session-Id", "abc")], LIST);
        assert_eq!(status, 401, "{verb}: {head}");
        let (status, _, _) = json(
            s.addr,
            verb,
            &[("Authorization", "Bearer wrong"), ("X-Agent-Id", "alice")],
            "",
        );
        assert_eq!(status, 401, "{verb} with a wrong token");
    }
    // The body of a request without a token is never read: the refusal
    // comes while the announced body has not been sent.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(
        b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // A valid token still passes.
    let (status, _, answer) = json(
        s.addr,
        "POST",
        &[("Authorization", "Bearer s3cret-b")],
        LIST,
    );
    assert_eq!(status, 200, "{answer}");
    assert!(common::stop(s.proxy).success(), "the proxy exited cleanly");
    let received = events(&s.log, "received");
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received[0]["authorization"], false,
        "the token is not passed on"
    );
    let rows = dir_rows(&s.audit);
    let refused: Vec<_> = rows
        .iter()
        .filter(|r| r.rule.as_deref() == Some("(unauthorized)"))
        .collect();
    assert_eq!(refused.len(), 9, "one row per refused request");
    assert!(refused.iter().all(|r| r.method == "<unread>"
        && r.session_id == "unauthenticated"
        && r.outcome.as_str() == "not_forwarded"));
    assert_eq!(
        refused
            .iter()
            .filter(|r| r.request_bytes == 100_000)
            .count(),
        1
    );
}

#[test]
fn an_upstream_session_belongs_to_the_agent_it_was_issued_to() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = common::write_file(dir.path(), "tokens", TOKENS);
    let s = setup(
        dir.path(),
        DENY_REBOOT,
        &["--tokens", tokens.to_str().unwrap()],
    );
    let alice = ("Authorization", "Bearer s3cret-a");
    let bob = ("Authorization", "Bearer s3cret-b");
    let (status, head, answer) = json(s.addr, "POST", &[alice], INITIALIZE);
    assert_eq!(status, 200, "{answer}");
    let sid = header_value(&head, "mcp-session-id")
        .expect("the upstream issued a session")
        .to_string();
    // Bob cannot end, listen to or call in alice's session.
    for verb in ["DELETE", "GET"] {
        let (status, _, _) = raw(
            s.addr,
            verb,
            &[
                ("Authorization", &b"Bearer s3cret-b"[..]),
                ("Mcp-Session-Id", sid.as_bytes()),
            ],
            b"",
        );
        assert_eq!(status, 404, "bob's {verb} of alice's session");
    }
    let (status, _, _) = json(s.addr, "POST", &[bob, ("Mcp-Session-Id", &sid)], LIST);
    assert_eq!(status, 404, "bob's call in alice's session");
    // An id the proxy never saw issued is unknown, even to alice.
    let (status, _, _) = json(
        s.addr,
        "POST",
        &[alice, ("Mcp-Session-Id", "made-up")],
        LIST,
    );
    assert_eq!(status, 404);
    // Alice's session still works, and she can end it.
    let (status, _, answer) = json(s.addr, "POST", &[alice, ("Mcp-Session-Id", &sid)], LIST);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("ran list_brokers"), "{answer}");
    let (status, _, _) = raw(
        s.addr,
        "DELETE",
        &[
            ("Authorization", &b"Bearer s3cret-a"[..]),
            ("Mcp-Session-Id", sid.as_bytes()),
        ],
        b"",
    );
    assert_eq!(status, 200);
    // Ended: the id is no longer anyone's.
    let (status, _, _) = json(s.addr, "POST", &[alice, ("Mcp-Session-Id", &sid)], LIST);
    assert_eq!(status, 404);
    assert!(common::stop(s.proxy).success(), "the proxy exited cleanly");
    let ended = events(&s.log, "ended");
    assert_eq!(ended.len(), 1, "only alice's DELETE ended the session");
    let received: Vec<(String, Value)> = events(&s.log, "received")
        .iter()
        .map(|e| {
            (
                e["verb"].as_str().unwrap().to_string(),
                e["session"].clone(),
            )
        })
        .collect();
    assert_eq!(
        received,
        [
            ("POST".to_string(), Value::Null),
            ("POST".to_string(), Value::from(sid.clone())),
            ("DELETE".to_string(), Value::from(sid.clone())),
        ]
    );
    let rows = dir_rows(&s.audit);
    let unknown: Vec<_> = rows
        .iter()
        .filter(|r| r.rule.as_deref() == Some("(unknown session)"))
        .collect();
    assert_eq!(unknown.len(), 3, "the refused POSTs are recorded");
    assert!(
        unknown
            .iter()
            .all(|r| r.session_id == format!("agent:{}", r.agent_id))
    );
    assert!(
        rows.iter()
            .filter(|r| r.session_id == sid)
            .all(|r| r.agent_id == "alice"),
        "no row of bob's names alice's session"
    );
}

#[test]
fn a_client_chosen_session_id_stays_in_its_agents_scope() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = common::write_file(dir.path(), "tokens", TOKENS);
    let policy = "version: \"1\"\ntools:\n  list_brokers:\n    rules:\n      - {name: one list per session, rate_limit: {max: 1, window: 60s, per: session}}\n";
    let s = setup(dir.path(), policy, &["--tokens", tokens.to_str().unwrap()]);
    let alice = ("Authorization", "Bearer s3cret-a");
    let bob = ("Authorization", "Bearer s3cret-b");
    // Bob names alice's default session (and a namespaced look-alike).
    for borrowed in ["agent:alice", "agent:alice/x"] {
        let (status, _, answer) = json(
            s.addr,
            "POST",
            &[bob, ("X-Session-Id", borrowed), ("X-Agent-Id", "alice")],
            LIST,
        );
        assert_eq!(status, 200, "{answer}");
        assert!(
            answer.contains("ran list_brokers"),
            "bob's own budget: {answer}"
        );
    }
    // Alice's budget is untouched, in her default session and in her own x.
    let (_, _, answer) = json(s.addr, "POST", &[alice], LIST);
    assert!(
        answer.contains("ran list_brokers"),
        "alice's budget: {answer}"
    );
    let (_, _, answer) = json(s.addr, "POST", &[alice, ("X-Session-Id", "x")], LIST);
    assert!(answer.contains("ran list_brokers"), "alice's x: {answer}");
    // And the limit holds within a session.
    let (_, _, answer) = json(s.addr, "POST", &[alice], LIST);
    assert!(answer.contains("one list per session"), "{answer}");
    // The identity headers bob chose are flightrec's to read, not claims
    // passed on for the server to trust.
    let received = events(&s.log, "received");
    assert!(!received.is_empty());
    for r in &received {
        assert!(r["x_session_id"].is_null(), "passed upstream: {r}");
        assert!(r["x_agent_id"].is_null(), "passed upstream: {r}");
    }
    assert!(common::stop(s.proxy).success(), "the proxy exited cleanly");
    let rows = dir_rows(&s.audit);
    let sessions: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.agent_id.as_str(), r.session_id.as_str()))
        .collect();
    assert_eq!(
        sessions,
        [
            ("bob", "agent:bob/agent:alice"),
            ("bob", "agent:bob/agent:alice/x"),
            ("alice", "agent:alice"),
            ("alice", "agent:alice/x"),
            ("alice", "agent:alice"),
        ]
    );

    // Agent names cannot contain the separator: refused at load, by line.
    let bad = common::write_file(
        dir.path(),
        "bad-tokens",
        "alice s3cret-a\nagent:alice/x s3cret-c\n",
    );
    let out = common::run(&[
        "proxy",
        "--policy",
        dir.path().join("policy.yaml").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9/mcp",
        "--tokens",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    let err = common::stderr(&out);
    assert!(err.contains("bad-tokens:2"), "{err}");
    assert!(err.contains("may not contain '/'"), "{err}");
}

#[test]
fn bodies_not_sent_as_utf8_json_are_refused_and_never_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), DENY_REBOOT, &[]);
    // As UTF-8 this calls list_brokers; decoded as UTF-7 (as a server that
    // honours the charset does) its params get a second `name`,
    // reboot_broker, which a Go-like reader takes.
    let utf7 = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_brokers","arguments":{"note":"+ACIAfQAsACIAbgBhAG0AZQAiADoAIgByAGUAYgBvAG8AdABfAGIAcgBvAGsAZQByACIALAAiAHgAIgA6AHsAIgB5ACIAOgAi-"}}}"#;
    let utf16: Vec<u8> = REBOOT
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let latin1: Vec<u8> = LIST
        .replace("list_brokers", "list_brokers\u{e9}")
        .chars()
        .map(|c| c as u32 as u8)
        .collect();
    let refused: Vec<(Headers, Vec<u8>)> = vec![
        (
            vec![("Content-Type", &b"application/json; charset=utf-7"[..])],
            utf7.into(),
        ),
        (
            vec![("Content-Type", &b"application/json; charset=UTF-16"[..])],
            utf16,
        ),
        (
            vec![("Content-Type", &b"application/json; charset=iso-8859-1"[..])],
            latin1,
        ),
        (
            vec![(
                "Content-Type",
                &b"application/json; charset=utf-8; charset=utf-7"[..],
            )],
            utf7.into(),
        ),
        (vec![("Content-Type", &b"text/plain"[..])], LIST.into()),
        (
            vec![("Content-Type", &b"application/json-seq"[..])],
            LIST.into(),
        ),
        (vec![], LIST.into()),
        (
            vec![
                ("Content-Type", &b"application/json"[..]),
                ("Content-Encoding", &b"gzip"[..]),
            ],
            LIST.into(),
        ),
    ];
    for (headers, body) in &refused {
        let (status, _, answer) = raw(s.addr, "POST", headers, body);
        assert_eq!(status, 415, "{headers:?}: {answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert!(v["error"]["code"].is_i64(), "{v}");
    }
    // A UTF-8 byte order mark: not JSON to the proxy, refused, not forwarded.
    let mut bom = "\u{feff}".as_bytes().to_vec();
    bom.extend_from_slice(REBOOT.as_bytes());
    let (status, _, answer) = raw(
        s.addr,
        "POST",
        &[("Content-Type", &b"application/json"[..])],
        &bom,
    );
    assert!(answer.contains("error"), "{status}: {answer}");
    // What is accepted: application/json, no charset or UTF-8's.
    for ct in [
        "application/json",
        "Application/JSON;charset=UTF-8",
        "application/json; charset=\"utf-8\"",
    ] {
        let (status, _, answer) = raw(
            s.addr,
            "POST",
            &[("Content-Type", ct.as_bytes())],
            LIST.as_bytes(),
        );
        assert_eq!(status, 200, "{ct}: {answer}");
        assert!(answer.contains("ran list_brokers"), "{ct}: {answer}");
    }
    assert!(common::stop(s.proxy).success(), "the proxy exited cleanly");
    assert_eq!(
        events(&s.log, "received").len(),
        3,
        "only the accepted ones"
    );
    let rows = dir_rows(&s.audit);
    assert_eq!(
        rows.iter()
            .filter(|r| r.rule.as_deref() == Some("(unsupported media type)")
                && r.outcome.as_str() == "not_forwarded")
            .count(),
        refused.len()
    );
    assert!(
        rows.iter()
            .any(|r| r.method == "<invalid>" && r.outcome.as_str() == "not_forwarded"),
        "the BOM-prefixed body is refused as a frame that does not parse"
    );
}

#[test]
fn origins_other_than_the_listeners_own_are_refused() {
    // By default: only the listener's own loopback origins.
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), DENY_REBOOT, &[]);
    let own = format!("http://localhost:{}", s.addr.port());
    let own_ip = format!("http://127.0.0.1:{}", s.addr.port());
    let refused = [
        "http://evil.example",
        "null",
        "http://localhost",
        "http://127.0.0.1:1",
    ];
    for origin in refused {
        let (status, _, answer) = json(s.addr, "POST", &[("Origin", origin)], LIST);
        assert_eq!(status, 403, "{origin}: {answer}");
        let (status, _, _) = json(s.addr, "GET", &[("Origin", origin)], "");
        assert_eq!(status, 403, "GET from {origin}");
    }
    for origin in [own.as_str(), own_ip.as_str()] {
        let (status, _, answer) = json(s.addr, "POST", &[("Origin", origin)], LIST);
        assert_eq!(status, 200, "{origin}: {answer}");
    }
    // No Origin (a client that is not a browser) is fine.
    let (status, _, _) = json(s.addr, "POST", &[], LIST);
    assert_eq!(status, 200);
    assert!(common::stop(s.proxy).success(), "the proxy exited cleanly");
    let received = events(&s.log, "received");
    assert_eq!(received.len(), 3, "{received:?}");
    assert!(received.iter().all(|e| e["verb"] == "POST"));
    let rows = dir_rows(&s.audit);
    assert_eq!(
        rows.iter()
            .filter(|r| r.rule.as_deref() == Some("(origin not allowed)"))
            .count(),
        refused.len(),
        "each refused POST is recorded"
    );

    // --allow-origin adds exactly the origins it names (scheme and host
    // without case, the port as given or the scheme's default).
    let dir = tempfile::tempdir().unwrap();
    let s = setup(
        dir.path(),
        DENY_REBOOT,
        &["--allow-origin", "https://App.example:8443"],
    );
    let (status, _, answer) = json(
        s.addr,
        "POST",
        &[("Origin", "https://app.example:8443")],
        LIST,
    );
    assert_eq!(status, 200, "{answer}");
    for origin in [
        "https://app.example",
        "http://app.example:8443",
        "http://evil.example",
    ] {
        let (status, _, answer) = json(s.addr, "POST", &[("Origin", origin)], LIST);
        assert_eq!(status, 403, "{origin}: {answer}");
    }
    assert!(common::stop(s.proxy).success(), "the proxy exited cleanly");
    assert_eq!(events(&s.log, "received").len(), 1);
    // A malformed --allow-origin is a usage error.
    let out = common::run(&[
        "proxy",
        "--policy",
        dir.path().join("policy.yaml").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9/mcp",
        "--allow-origin",
        "http://app.example/path",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("--allow-origin"),
        "{}",
        common::stderr(&out)
    );
}

#[test]
fn duplicated_or_unreadable_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), DENY_REBOOT, &[]);
    let ct: (&str, &[u8]) = ("Content-Type", &b"application/json"[..]);
    let too_long = "s".repeat(257);
    let cases: Vec<(Headers, &str)> = vec![
        (
            vec![
                ct,
                ("Mcp-Method", &b"tools/call"[..]),
                ("Mcp-Name", &b"list_brokers"[..]),
                ("Mcp-Name", &b"reboot_broker"[..]),
            ],
            LIST,
        ),
        (
            vec![
                ct,
                ("Mcp-Method", &b"tools/call"[..]),
                ("Mcp-Method", &b"tools/list"[..]),
                ("Mcp-Name", &b"list_brokers"[..]),
            ],
            LIST,
        ),
        (
            vec![ct, ("X-Session-Id", &b"a"[..]), ("X-Session-Id", &b"b"[..])],
            LIST,
        ),
        (
            vec![
                ct,
                ("Mcp-Session-Id", &b"a"[..]),
                ("Mcp-Session-Id", &b"b"[..]),
            ],
            LIST,
        ),
        (
            vec![ct, ("X-Agent-Id", &b"a"[..]), ("X-Agent-Id", &b"b"[..])],
            LIST,
        ),
        (
            vec![
                ct,
                ("MCP-Protocol-Version", &b"2025-11-25"[..]),
                ("MCP-Protocol-Version", &b"2026-07-28"[..]),
            ],
            LIST,
        ),
        (vec![ct, ct], LIST),
        // Not text: must not count as absent.
        (vec![ct, ("Mcp-Name", &b"list_brokers\xff"[..])], LIST),
        (vec![ct, ("Mcp-Method", &b"tools/call\xc3"[..])], LIST),
        // Session ids: bounded, visible ASCII only.
        (vec![ct, ("X-Session-Id", too_long.as_bytes())], LIST),
        (vec![ct, ("X-Session-Id", &b"a\tb"[..])], LIST),
        (
            vec![ct, ("Mcp-Session-Id", "\u{e9}t\u{e9}".as_bytes())],
            LIST,
        ),
    ];
    for (headers, body) in &cases {
        let (status, _, answer) = raw(s.addr, "POST", headers, body.as_bytes());
        assert_eq!(status, 400, "{headers:?}: {answer}");
    }
    // A 256-byte session id is fine.
    let long = "s".repeat(256);
    let (status, _, answer) = raw(
        s.addr,
        "POST",
        &[ct, ("X-Session-Id", long.as_bytes())],
        LIST.as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(common::stop(s.proxy).success(), "the proxy exited cleanly");
    assert_eq!(events(&s.log, "received").len(), 1);
    let rows = dir_rows(&s.audit);
    let refused = rows
        .iter()
        .filter(|r| {
            matches!(
                r.rule.as_deref(),
                Some("(duplicate header)" | "(invalid header)" | "(invalid session id)")
            )
        })
        .count();
    assert_eq!(refused, cases.len(), "each refused POST is recorded");
}

/// Whether an audit journal under `audit` holds a frame of one of `kinds`
/// whose encoded row contains `needle` (frames: length u32, CRC u32, then
/// the kind byte: `B`/`b` a call on its way, `C`/`c` a completed row).
fn journal_has(audit: &Path, kinds: &[u8], needle: &[u8]) -> bool {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut files = Vec::new();
    walk(&audit.join("_flightrec"), &mut files);
    files
        .iter()
        .filter(|f| f.extension().is_some_and(|x| x == "wal"))
        .any(|f| {
            let data = std::fs::read(f).unwrap_or_default();
            let mut at = 8; // the segment's magic
            while at + 9 <= data.len() {
                let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
                let payload = &data[at + 8..(at + 8 + len).min(data.len())];
                if kinds.contains(&payload[0]) && payload.windows(needle.len()).any(|w| w == needle)
                {
                    return true;
                }
                at += 8 + len;
            }
            false
        })
}

/// Waits (at most 30 s) until `journal_has(…)`.
fn wait_journal(audit: &Path, kinds: &[u8], needle: &[u8], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !journal_has(audit, kinds, needle) {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_that_leaves_its_sse_answer_still_gets_the_real_outcome_recorded() {
    let dir = tempfile::tempdir().unwrap();
    // The SDK server answers a 2025-11-25 session's requests with SSE.
    let (_server, port) = common::sdk_http_server(&[]);
    let policy = common::write_file(dir.path(), "policy.yaml", "version: \"1\"\ntools: {}\n");
    let audit = dir.path().join("audit");
    let url = format!("http://127.0.0.1:{port}/mcp");
    let (p, addr) = common::http_proxy(&[
        "--policy",
        policy.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &url,
        "--audit-dir",
        audit.to_str().unwrap(),
    ]);
    let (status, head, answer) = json(addr, "POST", &[], INITIALIZE);
    assert_eq!(status, 200, "{answer}");
    let sid = header_value(&head, "mcp-session-id")
        .expect("a session")
        .to_string();
    let in_session = [
        ("Mcp-Session-Id", sid.as_str()),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    let (status, _, _) = json(
        addr,
        "POST",
        &in_session,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(status, 202);
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow_copy","arguments":{"ms":1500}}}"#;
    let mut c = TcpStream::connect(addr).unwrap();
    write!(
        c,
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: {sid}\r\nMCP-Protocol-Version: 2025-11-25\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // The call is on its way once it is journaled (before it is forwarded);
    // then the client leaves, long before the tool is done.
    wait_journal(&audit, b"Bb", b"slow_copy", "the call was never journaled");
    drop(c);
    // The call is not gone with it: its row is completed when the server's
    // answer arrives.
    wait_journal(
        &audit,
        b"Cc",
        b"slow_copy",
        "the call's row was never completed after its client left",
    );
    assert!(common::stop(p).success(), "the proxy exited cleanly");
    let rows = dir_rows(&audit);
    let call: Vec<_> = rows
        .iter()
        .filter(|r| r.tool.as_deref() == Some("slow_copy"))
        .collect();
    assert_eq!(call.len(), 1);
    assert_eq!(call[0].outcome.as_str(), "ok");
}

/// Anyone who can reach the port can send refusals as fast as the network
/// goes; each would be a journaled row. Past a burst they are counted, not
/// recorded one by one, and the count is said in a later row: the log does
/// not drown, and no refusal goes unaccounted.
#[test]
fn a_flood_of_unauthenticated_requests_cannot_drown_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = common::write_file(dir.path(), "tokens", TOKENS);
    let s = setup(
        dir.path(),
        DENY_REBOOT,
        &["--tokens", tokens.to_str().unwrap()],
    );
    let sent = 1000;
    for _ in 0..sent {
        let (status, _, _) = json(s.addr, "POST", &[], LIST);
        assert_eq!(status, 401);
    }
    assert!(common::stop(s.proxy).success(), "the proxy exited cleanly");
    let rows = dir_rows(&s.audit);
    let refusals: Vec<_> = rows
        .iter()
        .filter(|r| {
            matches!(
                r.rule.as_deref(),
                Some("(unauthorized)") | Some("(unrecorded refusals)")
            )
        })
        .collect();
    assert!(
        refusals.len() < sent / 2,
        "{} rows for {sent} refusals",
        refusals.len()
    );
    // Every refusal is accounted for: a row of its own, or counted in one.
    let counted: u64 = refusals
        .iter()
        .map(|r| {
            let reason = r.reason.as_deref().unwrap_or_default();
            let n = |marker: &str| {
                reason
                    .split(marker)
                    .next()
                    .and_then(|head| head.rsplit(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|d| d.parse::<u64>().ok())
            };
            if r.rule.as_deref() == Some("(unrecorded refusals)") {
                n(" more request(s)").expect("a count")
            } else {
                1 + n(" earlier request(s)").unwrap_or(0)
            }
        })
        .sum();
    assert_eq!(counted, sent as u64, "every refusal accounted for");
}
