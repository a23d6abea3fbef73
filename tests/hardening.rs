//! The session pipeline against hostile clients, through the real binary on
//! both transports, in front of `tests/e2e/hostile_upstream.py`: a server
//! that reads JSON members case-insensitively (as Go's `encoding/json`
//! does), decodes bodies in the charset their `Content-Type` names, and
//! answers multi-round calls without checking which call a state was
//! issued for. It logs every tool it executes, read two ways (a Go-like
//! reader and a strict one).
//!
//! The invariant every test here checks: whenever the upstream would
//! execute a tool, the audit log has an allow row for that exact tool and
//! those exact arguments (one per execution).

mod common;

use common::{Guard, Rng, dir_rows, flightrec, http_proxy, root, stop};
use flightrec::audit::schema::AuditRow;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn hostile() -> PathBuf {
    root().join("tests/e2e/hostile_upstream.py")
}

/// Denies `reboot_broker` and `copy_image_set` above an amount; allows the
/// rest.
const POLICY: &str = r#"
version: "1"
default: allow
tools:
  reboot_broker:
    rules:
      - name: never reboot
        action: deny
        on_deny: "rebooting is not allowed"
  copy_image_set:
    rules:
      - name: small copies only
        action: deny
        when:
          - path: args.amount
            op: gt
            value: 100
        on_deny: "copies above 100 are not allowed"
"#;

/// What the hostile upstream executed, as logged.
#[derive(Debug, Clone)]
struct Executed {
    reader: String,
    tool: String,
    args: Value,
}

fn executed(log: &Path) -> Vec<Executed> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] == "executed")
        .map(|v| Executed {
            reader: v["reader"].as_str().unwrap().to_string(),
            tool: v["tool"].as_str().unwrap().to_string(),
            args: v["args"].clone(),
        })
        .collect()
}

/// Every execution (by the Go-like reader, which is how this upstream
/// runs a frame) consumes one allow row of the same tool and arguments;
/// what the strict reader would run must have an allow row too.
fn assert_every_execution_has_its_row(exec: &[Executed], rows: &[AuditRow], context: &str) {
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
    let all = allowed.clone();
    for e in exec {
        let key = (e.tool.clone(), flightrec::audit::args::args_sha256(&e.args));
        if e.reader == "go" {
            let Some(i) = allowed.iter().position(|k| *k == key) else {
                panic!(
                    "{context}: the upstream executed {} {} with no allow row left for it (allow rows: {})",
                    e.tool,
                    e.args,
                    all.len()
                );
            };
            allowed.swap_remove(i);
        } else {
            assert!(
                all.contains(&key),
                "{context}: a strict reader would execute {} {} with no allow row for it",
                e.tool,
                e.args
            );
        }
    }
}

/// `flightrec proxy` over stdio in front of the hostile upstream.
struct StdioProxy {
    child: Guard,
    stdin: Option<std::process::ChildStdin>,
    out: std::sync::mpsc::Receiver<String>,
    audit: PathBuf,
    log: PathBuf,
}

fn stdio_proxy(dir: &Path, policy: &str, extra: &[&str]) -> StdioProxy {
    let policy = common::write_file(dir, "policy.yaml", policy);
    let audit = dir.join("audit");
    let log = dir.join("upstream.jsonl");
    let mut child = Command::new(flightrec())
        .arg("proxy")
        .arg("--policy")
        .arg(&policy)
        .arg("--audit-dir")
        .arg(&audit)
        .args(["--no-warm-start", "--approval-socket"])
        .arg(dir.join("approvals.sock"))
        .args(extra)
        .arg("--")
        .arg("python3")
        .arg(hostile())
        .arg("--log")
        .arg(&log)
        .arg("--stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    let out = common::line_channel(child.stdout.take().unwrap());
    StdioProxy {
        child: Guard(child),
        stdin,
        out,
        audit,
        log,
    }
}

impl StdioProxy {
    fn send(&mut self, frame: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(frame).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Sends a request and waits for the line answering `id`.
    fn call(&mut self, frame: &Value) -> Value {
        self.send(frame.to_string().as_bytes());
        self.answer_to(&frame["id"])
    }

    fn answer_to(&mut self, id: &Value) -> Value {
        loop {
            let line = self
                .out
                .recv_timeout(Duration::from_secs(30))
                .expect("an answer from the proxy");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == *id {
                return v;
            }
        }
    }

    /// Closes stdin, waits for the proxy to exit, returns its rows.
    fn finish(mut self) -> (Vec<AuditRow>, Vec<Executed>) {
        drop(self.stdin.take());
        common::wait_within(&mut self.child.0, Duration::from_secs(60));
        (dir_rows(&self.audit), executed(&self.log))
    }
}

fn tool_call(id: u64, tool: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": args}})
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "hostile-client", "version": "1"}}})
}

/// Item 2 of the issue, by name: members the proxy did not read but a
/// server does.
#[test]
fn members_that_differ_by_case_are_refused_on_stdio() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = stdio_proxy(dir.path(), POLICY, &[]);
    p.call(&initialize());
    let frames = [
        // No `method`: not a response, a call a Go server runs.
        r#"{"jsonrpc":"2.0","id":1,"Method":"tools/call","params":{"name":"reboot_broker"}}"#,
        // Decided as list_brokers, run as reboot_broker.
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"list_brokers","Name":"reboot_broker"}}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","Params":{"name":"reboot_broker"}}"#,
        // The policy reads args.amount; a Go struct field reads AMOUNT too.
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"copy_image_set","arguments":{"amount":1,"AMOUNT":5000}}}"#,
        r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"copy_image_set","arguments":{"Amount":5000}}}"#,
        // The Kelvin sign folds to `k`: `\u212Aey` reads as `key` in Go.
        "{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"tools/call\",\"params\":{\"name\":\"list_brokers\",\"nam\u{212A}\":1,\"n\u{0041}me\":\"reboot_broker\"}}",
        // The dotted capital I lowercases to `i` in some readers: `İd` is an
        // `id` there, and the answer would name another request.
        "{\"jsonrpc\":\"2.0\",\"id\":7,\"\u{130}d\":9,\"method\":\"tools/call\",\"params\":{\"name\":\"list_brokers\"}}",
    ];
    for (i, f) in frames.iter().enumerate() {
        p.send(f.as_bytes());
        let answer = p.answer_to(&json!(i + 1));
        assert!(
            answer["error"]["code"] == -32600,
            "frame {} should be refused: {answer}",
            i + 1
        );
    }
    // A plain call still goes through, and an allowed one runs.
    let ok = p.call(&tool_call(8, "list_brokers", json!({})));
    assert_eq!(ok["result"]["content"][0]["text"], "ran list_brokers");
    let (rows, exec) = p.finish();
    assert_every_execution_has_its_row(&exec, &rows, "stdio, named frames");
    assert!(
        exec.iter().all(|e| e.tool == "list_brokers"),
        "only list_brokers ran: {exec:?}"
    );
    let refused: Vec<&AuditRow> = rows
        .iter()
        .filter(|r| r.rule.as_deref() == Some("(ambiguous member)"))
        .collect();
    assert_eq!(refused.len(), 7, "each ambiguous frame has its row");
    assert!(
        refused
            .iter()
            .all(|r| r.outcome.to_string() == "not_forwarded"),
        "{refused:?}"
    );
}

/// Item 4: a `requestState` the server issued for one call continues only
/// that call (same tool, same arguments), once.
#[test]
fn a_server_state_continues_only_the_call_it_was_issued_for() {
    let dir = tempfile::tempdir().unwrap();
    let policy = r#"
version: "1"
default: allow
tools:
  reboot_broker:
    rules:
      - name: one reboot per session
        rate_limit: {max: 1, window: 1h, per: session}
  list_brokers:
    rules:
      - name: a human says yes
        action: require_approval
"#;
    // Approvals only through the client, which cannot show a form here:
    // a call that needs one is refused at once.
    let mut p = stdio_proxy(dir.path(), policy, &["--approve-via", "client"]);
    p.call(&initialize());
    let first = p.call(&tool_call(1, "ask_reboot", json!({"broker": "b-1"})));
    assert_eq!(first["result"]["resultType"], "input_required", "{first}");
    let state = first["result"]["requestState"]
        .as_str()
        .unwrap()
        .to_string();
    let with_state = |id: u64, tool: &str, args: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": tool, "arguments": args, "requestState": state,
            "inputResponses": {"confirm": {"action": "accept"}}}})
    };
    let one = p.call(&tool_call(2, "reboot_broker", json!({"broker": "b-1"})));
    assert_eq!(one["result"]["content"][0]["text"], "ran reboot_broker");
    // Over the limit: a borrowed state does not make it a free retry.
    let two = p.call(&with_state(3, "reboot_broker", json!({"broker": "b-1"})));
    assert_eq!(two["result"]["isError"], true, "throttled: {two}");
    // An approval rule is not passed by a borrowed state either.
    let three = p.call(&with_state(4, "list_brokers", json!({})));
    assert_eq!(three["result"]["isError"], true, "needs approval: {three}");
    // Same tool, other arguments: a new call (it runs as one: ask_ tools
    // are not limited), and the state is still good for its own call.
    let other = p.call(&with_state(5, "ask_reboot", json!({"broker": "b-2"})));
    assert!(other["result"].is_object(), "{other}");
    let rows_before_retry = {
        let own = p.call(&with_state(6, "ask_reboot", json!({"broker": "b-1"})));
        assert_eq!(
            own["result"]["content"][0]["text"], "ran ask_reboot",
            "{own}"
        );
        // Used once: a second retry with it is a new call again.
        let again = p.call(&with_state(7, "ask_reboot", json!({"broker": "b-1"})));
        assert!(again["result"].is_object());
        7
    };
    let (rows, exec) = p.finish();
    assert_every_execution_has_its_row(&exec, &rows, "stdio, continuations");
    let reboots = exec
        .iter()
        .filter(|e| e.tool == "reboot_broker" && e.reader == "go")
        .count();
    assert_eq!(reboots, 1, "the rate limit held: {exec:?}");
    assert!(!exec.iter().any(|e| e.tool == "list_brokers"));
    let call = |id: u64| {
        rows.iter()
            .find(|r| r.jsonrpc_id.as_deref() == Some(id.to_string().as_str()))
            .unwrap_or_else(|| panic!("a row for request {id}"))
    };
    assert_eq!(call(3).decision.to_string(), "throttle");
    assert_eq!(call(3).continues, None, "not a continuation");
    assert_eq!(call(4).decision.to_string(), "approval");
    assert_eq!(call(5).continues, None, "other arguments: a new call");
    assert_eq!(
        call(6).continues.as_deref(),
        Some(call(1).event_id.as_str())
    );
    assert_eq!(call(6).round, Some(2));
    assert_eq!(
        call(rows_before_retry).continues,
        None,
        "a state is used once"
    );
}

/// Item 10: with `--tokens`, approvals come from the local queue by
/// default: a client that says it can show a form does not answer its own
/// approval (here nobody answers, so the call times out, refused).
#[test]
fn with_tokens_an_agent_cannot_approve_its_own_call() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, upstream) = hostile_http(dir.path());
    let policy = common::write_file(
        dir.path(),
        "policy.yaml",
        r#"
version: "1"
default: allow
tools:
  reboot_broker:
    rules:
      - name: a human says yes
        action: require_approval
"#,
    );
    let tokens = common::write_file(dir.path(), "tokens", "bob bob-secret\n");
    let audit = dir.path().join("audit");
    let (proxy, addr) = http_proxy(&[
        "--listen",
        "127.0.0.1:0",
        "--no-warm-start",
        "--policy",
        policy.to_str().unwrap(),
        "--audit-dir",
        audit.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
        "--approval-timeout",
        "1s",
        "--approval-socket",
        dir.path().join("a.sock").to_str().unwrap(),
        "--upstream",
        &upstream,
    ]);
    // A 2026-07-28 request that declares it can show an approval form.
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "reboot_broker", "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientInfo": {"name": "bob-agent", "version": "1"},
                  "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}}});
    let (status, answer) = post(
        addr,
        &[("Authorization", "Bearer bob-secret")],
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_ne!(
        answer["result"]["resultType"], "input_required",
        "the agent was asked to approve its own call: {answer}"
    );
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    stop(proxy);
    let rows = dir_rows(&audit);
    let row = rows
        .iter()
        .find(|r| r.tool.as_deref() == Some("reboot_broker"))
        .unwrap();
    assert_eq!(
        row.approval.map(|a| a.to_string()).as_deref(),
        Some("timeout")
    );
    assert_eq!(row.approved_by, None);
}

// ---- HTTP plumbing (a raw client: the tests choose every byte) ----

fn hostile_http(dir: &Path) -> (Guard, String) {
    let log = dir.join("upstream.jsonl");
    let mut child = Command::new("python3")
        .arg(hostile())
        .arg("--log")
        .arg(&log)
        .args(["--http", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("PORT ")
        .expect("the upstream prints its port")
        .parse()
        .unwrap();
    (Guard(child), format!("http://127.0.0.1:{port}/mcp"))
}

/// One POST on its own connection: (status, body). `headers` may set
/// `Content-Type` (default `application/json`).
fn post(addr: SocketAddr, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = all[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

// ---- the differential fuzz ----

/// One generated `tools/call`, mutated: the frame's bytes and (for HTTP)
/// the charset its Content-Type names.
struct Mutant {
    bytes: Vec<u8>,
    charset: Option<&'static str>,
}

const TOOLS: [&str; 4] = [
    "list_brokers",
    "reboot_broker",
    "copy_image_set",
    "ask_reboot",
];
const KEY_VARIANTS: [&str; 6] = [
    "Name",
    "NAME",
    "nAme",
    "n\\u0061me",
    "na\\u006De",
    "Arguments",
];

/// A `tools/call` frame built as text so that member order, case,
/// escapes, duplicates and whitespace are the generator's choice.
fn mutant(rng: &mut Rng, id: u64, http: bool) -> Mutant {
    let tool = TOOLS[rng.below(TOOLS.len() as u64) as usize];
    let other = TOOLS[rng.below(TOOLS.len() as u64) as usize];
    let amount = [1i64, 50, 100, 101, 5000][rng.below(5) as usize];
    let ws = |rng: &mut Rng| -> &'static str {
        // No newline on stdio: it frames messages there.
        let choices: &[&'static str] = if http {
            &["", " ", "\t", "\n", "\r\n "]
        } else {
            &["", " ", "\t", "  "]
        };
        choices[rng.below(choices.len() as u64) as usize]
    };
    let mut args = format!(r#"{{"amount":{amount}}}"#);
    let mut params = Vec::new();
    let mut top_method = r#""method""#.to_string();
    let mut top_params = r#""params""#.to_string();
    let mut charset = None;
    let mut bom = false;
    let mut batch = false;
    let mutations = 1 + rng.below(3);
    let mut name_key = r#""name""#.to_string();
    let mut extra_params: Vec<String> = Vec::new();
    for _ in 0..mutations {
        match rng.below(14) {
            0 => name_key = format!("\"{}\"", KEY_VARIANTS[rng.below(5) as usize]),
            1 => extra_params.push(format!(
                "\"{}\":\"{other}\"",
                KEY_VARIANTS[rng.below(5) as usize]
            )),
            2 => extra_params.push(format!(r#""name":"{other}""#)),
            3 => args = format!(r#"{{"amount":{amount},"AMOUNT":5000}}"#),
            4 => args = format!(r#"{{"Amount":{amount}}}"#),
            5 => args = format!(r#"{{"amount":{amount},"amount":5000}}"#),
            6 => top_method = r#""Method""#.into(),
            7 => top_params = r#""PARAMS""#.into(),
            8 => extra_params.push(r#""requestState":"rs-forged""#.into()),
            9 => batch = true,
            10 => bom = true,
            11 if http => {
                charset = Some(
                    ["utf-7", "utf-16", "latin-1", "UTF-8", "\"utf-8\""][rng.below(5) as usize],
                )
            }
            12 => extra_params.push(r#""_meta":{"tools/call":{"name":"reboot_broker"}}"#.into()),
            _ => extra_params.push(r#""Arguments":{"amount":5000}"#.into()),
        }
    }
    params.push(format!("{name_key}:{}\"{tool}\"", ws(rng)));
    params.push(format!(r#""arguments":{}{args}"#, ws(rng)));
    params.extend(extra_params);
    // Shuffle the params' members.
    for i in (1..params.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        params.swap(i, j);
    }
    let sep = format!(",{}", ws(rng));
    let mut text = format!(
        r#"{{{w}"jsonrpc":"2.0",{w}"id":{id},{top_method}:"tools/call",{top_params}:{{{}}}{w}}}"#,
        params.join(&sep),
        w = ws(rng)
    );
    if charset == Some("utf-7") {
        // Text a UTF-7 reader turns into `","name":"reboot_broker","y":"`.
        text = text.replacen(
            r#""arguments""#,
            r#""x":"+ACI-,+ACI-name+ACI-:+ACI-reboot_broker+ACI-,+ACI-y+ACI-:+ACI-","arguments""#,
            1,
        );
    }
    if batch {
        text = format!("[{text}]");
    }
    let mut bytes = Vec::new();
    if bom {
        bytes.extend_from_slice("\u{feff}".as_bytes());
    }
    match charset {
        Some("utf-16") => {
            bytes.extend(text.encode_utf16().flat_map(|u| u.to_le_bytes()));
        }
        Some("latin-1") => {
            bytes.extend(
                text.chars()
                    .map(|c| if (c as u32) < 256 { c as u8 } else { b'?' }),
            );
        }
        _ => bytes.extend_from_slice(text.as_bytes()),
    }
    Mutant { bytes, charset }
}

/// Generated, mutated `tools/call` frames through the stdio proxy: every
/// execution has its allow row.
#[test]
fn differential_fuzz_stdio() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = stdio_proxy(dir.path(), POLICY, &[]);
    p.call(&initialize());
    let mut rng = Rng(0x5eed_0001);
    for id in 1..=300u64 {
        let m = mutant(&mut rng, id, false);
        p.send(&m.bytes);
    }
    // The upstream answers in order: once this is answered, every frame
    // before it that reached the upstream has been run.
    p.call(&json!({"jsonrpc": "2.0", "id": "end", "method": "tools/list"}));
    let (rows, exec) = p.finish();
    assert!(
        rows.iter()
            .any(|r| r.tool.as_deref() == Some("list_brokers") && r.decision.to_string() == "allow"),
        "the fuzz let plain calls through too"
    );
    assert_every_execution_has_its_row(&exec, &rows, "stdio fuzz");
}

/// The same over Streamable HTTP, with charsets in the Content-Type.
#[test]
fn differential_fuzz_http() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, upstream) = hostile_http(dir.path());
    let policy = common::write_file(dir.path(), "policy.yaml", POLICY);
    let audit = dir.path().join("audit");
    let (proxy, addr) = http_proxy(&[
        "--listen",
        "127.0.0.1:0",
        "--no-warm-start",
        "--policy",
        policy.to_str().unwrap(),
        "--audit-dir",
        audit.to_str().unwrap(),
        "--approval-socket",
        dir.path().join("a.sock").to_str().unwrap(),
        "--upstream",
        &upstream,
    ]);
    let mut rng = Rng(0x5eed_0002);
    for id in 1..=200u64 {
        let m = mutant(&mut rng, id, true);
        let ctype = m.charset.map(|c| format!("application/json; charset={c}"));
        let headers: Vec<(&str, &str)> = ctype
            .as_deref()
            .map(|c| vec![("Content-Type", c)])
            .unwrap_or_default();
        let (status, _) = post(addr, &headers, &m.bytes);
        assert!(status < 500, "request {id}: HTTP {status}");
    }
    stop(proxy);
    let rows = dir_rows(&audit);
    let exec = executed(&dir.path().join("upstream.jsonl"));
    assert!(
        rows.iter()
            .any(|r| r.tool.as_deref() == Some("list_brokers") && r.decision.to_string() == "allow"),
        "the fuzz let plain calls through too"
    );
    assert_every_execution_has_its_row(&exec, &rows, "http fuzz");
}

/// What the policy reads and what a lax server runs: the official Python
/// SDK reads `"5000"` as the int 5000 for an `int` parameter and parses a
/// JSON object sent inside a string. A deny rule gated on `args.count > 10`
/// or `args.target.environment == prod` must not be walked around that way.
#[test]
fn a_lax_server_runs_nothing_the_policy_read_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(
        dir.path(),
        "policy.yaml",
        r#"
version: "1"
default: allow
tools:
  reboot_broker:
    rules:
      - name: no big reboots
        action: deny
        when:
          - {path: args.count, op: gt, value: 10}
        on_deny: "at most 10 at once"
  deploy:
    rules:
      - name: no prod deploys
        action: deny
        when:
          - {path: args.target.environment, op: eq, value: prod}
        on_deny: "not to prod"
"#,
    );
    let audit = dir.path().join("audit");
    let log = dir.path().join("server.jsonl");
    let python = common::need(root().join(".venv-sdk/bin/python"));
    let mut child = Command::new(flightrec())
        .arg("proxy")
        .arg("--policy")
        .arg(&policy)
        .arg("--audit-dir")
        .arg(&audit)
        .arg("--no-warm-start")
        .arg("--")
        .arg(python)
        .arg(root().join("tests/e2e/lax_sdk_server.py"))
        .arg(&log)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut p = StdioProxy {
        stdin: child.stdin.take(),
        out: common::line_channel(child.stdout.take().unwrap()),
        child: Guard(child),
        audit: audit.clone(),
        log: log.clone(),
    };
    p.call(&initialize());
    p.send(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    let calls = [
        (1, "reboot_broker", json!({"count": 5000}), false),
        (2, "reboot_broker", json!({"count": "5000"}), false),
        (3, "reboot_broker", json!({"count": " 5e3 "}), false),
        (4, "reboot_broker", json!({"count": true}), false),
        (
            5,
            "deploy",
            json!({"target": {"environment": "prod"}}),
            false,
        ),
        (
            6,
            "deploy",
            json!({"target": "{\"environment\":\"prod\"}"}),
            false,
        ),
        (7, "reboot_broker", json!({"count": 3}), true),
        (8, "deploy", json!({"target": {"environment": "dev"}}), true),
    ];
    for (id, tool, args, runs) in &calls {
        let answer = p.call(&tool_call(*id, tool, args.clone()));
        let refused = answer["error"]["code"] == -32600 || answer["result"]["isError"] == true;
        assert_eq!(!refused, *runs, "call {id} {tool} {args}: {answer}");
    }
    drop(p.stdin.take());
    common::wait_within(&mut p.child.0, Duration::from_secs(60));
    let ran: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        ran,
        [
            json!({"tool": "reboot_broker", "count": 3}),
            json!({"tool": "deploy", "environment": "dev"})
        ],
        "only what the policy allowed ran"
    );
    let rows = dir_rows(&audit);
    let rule = |id: u64| {
        rows.iter()
            .find(|r| r.jsonrpc_id.as_deref() == Some(id.to_string().as_str()))
            .and_then(|r| r.rule.clone())
            .unwrap_or_default()
    };
    assert_eq!(rule(1), "no big reboots");
    assert_eq!(rule(5), "no prod deploys");
    for id in [2, 3, 4, 6] {
        assert_eq!(rule(id), "(ambiguous member)", "call {id}");
    }
}

/// A call the upstream ran but never answered on its exchange (its SSE
/// stream ended first, or its JSON answer named another id) ends at once,
/// with an error for the client and a row `upstream_gone`: never left
/// pending (holding its session) until the proxy stops.
#[test]
fn a_call_whose_answer_never_comes_on_its_exchange_ends_with_its_row() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, upstream) = hostile_http(dir.path());
    let policy = common::write_file(dir.path(), "policy.yaml", POLICY);
    let audit = dir.path().join("audit");
    let (proxy, addr) = http_proxy(&[
        "--listen",
        "127.0.0.1:0",
        "--no-warm-start",
        "--policy",
        policy.to_str().unwrap(),
        "--audit-dir",
        audit.to_str().unwrap(),
        "--upstream",
        &upstream,
    ]);
    for (id, tool) in [(1, "sse_vanish"), (2, "wrong_id"), (3, "cr_smuggle")] {
        let (status, body) = post(
            addr,
            &[],
            tool_call(id, tool, json!({})).to_string().as_bytes(),
        );
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("-32603") && text.contains(&format!("\"id\":{id}")),
            "{tool}: the client hears the call ended: {text}"
        );
        assert!(
            !text.contains("smuggled"),
            "an answer the proxy did not read reached the client: {text:?}"
        );
    }
    // Left pending, the rows would end `interrupted` when the proxy stops.
    stop(proxy);
    let rows = dir_rows(&audit);
    for tool in ["sse_vanish", "wrong_id", "cr_smuggle"] {
        let row = rows
            .iter()
            .find(|r| r.tool.as_deref() == Some(tool))
            .unwrap_or_else(|| panic!("a row for {tool}"));
        assert_eq!(row.decision.to_string(), "allow");
        assert_eq!(row.outcome.to_string(), "upstream_gone", "{tool}");
    }
    let ran = executed(&dir.path().join("upstream.jsonl"));
    assert_every_execution_has_its_row(&ran, &rows, "calls without an answer");
}

/// Over HTTP a cancellation comes on another POST than its request: it
/// still ends that request (here a call held for approval, which then
/// frees its slot at once and is recorded `cancelled`).
#[test]
fn a_cancellation_on_another_post_ends_its_request() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, upstream) = hostile_http(dir.path());
    let policy = common::write_file(
        dir.path(),
        "policy.yaml",
        "version: \"1\"\ntools:\n  reboot_broker:\n    rules:\n      - {name: a human says yes, action: require_approval}\n",
    );
    let audit = dir.path().join("audit");
    let socket = dir.path().join("a.sock");
    let (proxy, addr) = http_proxy(&[
        "--listen",
        "127.0.0.1:0",
        "--no-warm-start",
        "--policy",
        policy.to_str().unwrap(),
        "--audit-dir",
        audit.to_str().unwrap(),
        "--approval-timeout",
        "10m",
        "--approval-socket",
        socket.to_str().unwrap(),
        "--upstream",
        &upstream,
    ]);
    let held = std::thread::spawn(move || {
        post(
            addr,
            &[("X-Session-Id", "s")],
            tool_call(7, "reboot_broker", json!({}))
                .to_string()
                .as_bytes(),
        )
    });
    // Wait until the call is in the queue.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = common::run(&[
            "approvals",
            "list",
            "--json",
            "--socket",
            socket.to_str().unwrap(),
        ]);
        if String::from_utf8_lossy(&out.stdout).contains("reboot_broker") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the call was never held"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                        "params": {"requestId": 7, "reason": "changed my mind"}});
    let (status, _) = post(
        addr,
        &[("X-Session-Id", "s")],
        cancel.to_string().as_bytes(),
    );
    assert!(status < 300, "HTTP {status}");
    // The held POST ends (not after ten minutes): the test's own limit.
    let (status, answer) = held.join().unwrap();
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&answer).contains("cancelled"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    stop(proxy);
    let rows = dir_rows(&audit);
    let row = rows
        .iter()
        .find(|r| r.tool.as_deref() == Some("reboot_broker"))
        .unwrap();
    assert_eq!(
        row.approval.map(|a| a.to_string()).as_deref(),
        Some("cancelled")
    );
    assert!(executed(&dir.path().join("upstream.jsonl")).is_empty());
}

/// A client that leaves while its call is on the server does not cancel
/// it: the answer (plain JSON here) is still read, and the row records
/// what the server did, not `interrupted`.
#[test]
fn a_client_that_leaves_a_json_answer_still_gets_the_real_outcome_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, upstream) = hostile_http(dir.path());
    let policy = common::write_file(dir.path(), "policy.yaml", POLICY);
    let audit = dir.path().join("audit");
    let (proxy, addr) = http_proxy(&[
        "--listen",
        "127.0.0.1:0",
        "--no-warm-start",
        "--policy",
        policy.to_str().unwrap(),
        "--audit-dir",
        audit.to_str().unwrap(),
        "--upstream",
        &upstream,
    ]);
    let body = tool_call(1, "slow_json", json!({})).to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Wait until the server has the call, then leave.
    let log = dir.path().join("upstream.jsonl");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !executed(&log).iter().any(|e| e.tool == "slow_json") {
        assert!(std::time::Instant::now() < deadline, "the call never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    s.shutdown(std::net::Shutdown::Both).unwrap();
    drop(s);
    // A stop waits for calls in flight (the server answers a second after
    // it started); a cancelled exchange would be recorded `interrupted`.
    stop(proxy);
    let rows = dir_rows(&audit);
    let row = rows
        .iter()
        .find(|r| r.tool.as_deref() == Some("slow_json"))
        .expect("its row");
    assert_eq!(row.outcome.to_string(), "ok", "{row:?}");
}
