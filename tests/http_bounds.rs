//! Everything a stranger can make the HTTP proxy and the bridge hold is
//! bounded, and slow peers time out: slowloris headers, stalled uploads,
//! connections and sessions over their caps, upstream answers (JSON bodies
//! and SSE events) over `--max-response-bytes`, and bridge stdin lines over
//! `--max-message-bytes`. Memory is measured (the proxy's peak resident
//! set, `VmHWM`), never timed.
//!
//! The upstream is a small HTTP server in a thread of the test: it answers
//! `tools/call`s by tool name (a small result, a 200 MB JSON answer, a
//! 200 MB SSE event, or a call held until the test releases it).

mod common;

use common::{Guard, dir_rows, flightrec};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const MB: usize = 1024 * 1024;
/// What the huge answers weigh, and the limit they are held to.
const HUGE: usize = 200 * MB;
const LIMIT: &str = "1048576";
/// The most a proxy may grow while a huge thing passes.
const BOUND_KB: u64 = 100 * 1024;

const POLICY: &str = "version: \"1\"\ntools: {}\n";

// ---------------------------------------------------------------- upstream

/// What the test upstream has seen, and the gate its `slow` calls wait on.
#[derive(Default)]
struct Upstream {
    /// `slow` calls waiting.
    held: AtomicUsize,
    release: AtomicBool,
}

/// Starts the test upstream; returns its URL.
fn upstream() -> (String, Arc<Upstream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let state = Arc::new(Upstream::default());
    let shared = state.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let state = shared.clone();
            std::thread::spawn(move || serve_upstream(stream, &state));
        }
    });
    (url, state)
}

/// One request per connection, answered and closed.
fn serve_upstream(stream: TcpStream, state: &Upstream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let Some((head, body)) = read_request(&mut reader) else {
        return;
    };
    let mut out = stream;
    if head.first().is_some_and(|l| l.starts_with("GET ")) {
        // The server's stream: an event, a pause longer than the proxy's
        // header timeout in the tests, another event, the end.
        let _ = out.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/one\"}\n\n",
        );
        std::thread::sleep(Duration::from_millis(2500));
        let _ = out.write_all(b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/two\"}\n\n");
        return;
    }
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return;
    };
    let id = msg["id"].clone();
    if id.is_null() {
        let _ = out
            .write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let tool = msg["params"]["name"].as_str().unwrap_or_default();
    let small = |text: &str| {
        json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": text}]}})
            .to_string()
    };
    match tool {
        "huge_json" => {
            let _ = out.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
            );
            let head = format!(
                "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\""
            );
            let _ = out.write_all(head.as_bytes());
            let _ = write_filler(&mut out, HUGE);
            let _ = out.write_all(b"\"}]}}");
        }
        "huge_sse" => {
            let _ = out.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
            );
            let note = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}});
            let _ = out.write_all(format!("event: message\ndata: {note}\n\n").as_bytes());
            let head = format!(
                "event: message\ndata: {{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\""
            );
            let _ = out.write_all(head.as_bytes());
            let _ = write_filler(&mut out, HUGE);
            let _ = out.write_all(b"\"}]}}\n\n");
        }
        "slow" => {
            state.held.fetch_add(1, Ordering::SeqCst);
            for _ in 0..6000 {
                if state.release.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            respond_json(&mut out, &small("slow done"));
        }
        _ => respond_json(&mut out, &small(&format!("ok {tool}"))),
    }
}

fn respond_json(out: &mut TcpStream, body: &str) {
    let _ = out.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

/// `n` bytes of JSON-string filler, written in 64 KiB chunks (never held).
fn write_filler(out: &mut impl Write, n: usize) -> std::io::Result<()> {
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        out.write_all(&chunk[..k])?;
        left -= k;
    }
    Ok(())
}

/// A request's head lines and its `Content-Length` body.
fn read_request(r: &mut impl BufRead) -> Option<(Vec<String>, Vec<u8>)> {
    let mut head = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().ok()?;
        }
        head.push(line);
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).ok()?;
    Some((head, body))
}

// ------------------------------------------------------------------ proxies

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    common::write_file(dir, name, text)
}

/// `flightrec proxy --listen 127.0.0.1:0 --upstream URL ARGS…`: the
/// process and the address it printed.
fn http_proxy(dir: &Path, upstream: &str, args: &[&str]) -> (Guard, SocketAddr) {
    let ((guard, errs), addr) = http_proxy_with_stderr(dir, upstream, args);
    // Keep draining stderr so the proxy never blocks on it.
    std::thread::spawn(move || for _ in errs {});
    (guard, addr)
}

/// As [`http_proxy`], with the proxy's stderr lines after its address.
#[allow(clippy::type_complexity)]
fn http_proxy_with_stderr(
    dir: &Path,
    upstream: &str,
    args: &[&str],
) -> ((Guard, std::sync::mpsc::Receiver<String>), SocketAddr) {
    let policy = write(dir, "policy.yaml", POLICY);
    let audit = dir.join("audit");
    let mut all = vec![
        "--policy",
        policy.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream,
        "--audit-dir",
        audit.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let (guard, addr, rx) = common::http_proxy_with_stderr(&all);
    ((guard, rx), addr)
}

/// A `/proc/PID/status` field in kB (`VmRSS`, `VmHWM`: the peak).
fn mem_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Asserts the proxy's peak resident set stayed within [`BOUND_KB`] of
/// `base` (its VmRSS before), and says what it was.
fn assert_peak_within(pid: u32, base: u64, what: &str) -> u64 {
    let peak = mem_kb(pid, "VmHWM");
    let grew = peak.saturating_sub(base);
    eprintln!("{what}: VmRSS before {base} kB, peak VmHWM {peak} kB (+{grew} kB)");
    assert!(
        grew < BOUND_KB,
        "{what}: the proxy's peak resident set grew by {grew} kB (from {base} kB to {peak} kB), over the {BOUND_KB} kB bound"
    );
    grew
}

fn call(id: u64, tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {}}})
        .to_string()
}

/// One POST on a fresh connection: (status, head, body).
fn post(addr: SocketAddr, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("accept"))
    {
        req.push_str("Accept: application/json, text/event-stream\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    // A bounded read: an answer that would hold the test forever fails it.
    let mut buf = vec![0; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                assert!(
                    raw.len() < 16 * MB,
                    "an answer of over 16 MB reached the client"
                );
            }
            Err(e) => panic!("reading the proxy's answer: {e}"),
        }
    }
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {raw:?}"));
    (status, head.to_string(), body.to_string())
}

/// The JSON-RPC messages in a JSON or SSE body.
fn messages(body: &str) -> Vec<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        return vec![v];
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect()
}

/// A normal call through the proxy is answered.
fn assert_served(addr: SocketAddr, headers: &[(&str, &str)], what: &str) {
    let (status, _, body) = post(addr, headers, &call(99, "echo"));
    assert_eq!(status, 200, "{what}: {body}");
    let msgs = messages(&body);
    assert_eq!(
        msgs.last().unwrap()["result"]["content"][0]["text"],
        "ok echo",
        "{what}: {body}"
    );
}

/// Whether the proxy closed `s` (EOF, a reset, or an answer then EOF);
/// false while it is still open and silent.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue, // an answer (408, 401): read on to its end
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break true,
        }
    };
    let _ = s.set_nonblocking(false);
    closed
}

/// A slowloris client: sends a request head one byte at a time, forever.
/// Returns whether the proxy cut it off within `rounds` bytes (one every
/// 100 ms).
fn slowloris(addr: SocketAddr, rounds: usize) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!("POST /mcp HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ");
    let bytes = head.bytes().chain(std::iter::repeat(b'a'));
    for b in bytes.take(rounds) {
        if s.write_all(&[b]).is_err() || closed_by_peer(&mut s) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

// -------------------------------------------------------------------- tests

#[test]
fn a_slowloris_client_is_cut_off_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _up) = upstream();
    let (proxy, addr) = http_proxy(dir.path(), &url, &["--header-timeout", "1s"]);
    let slow = std::thread::spawn(move || slowloris(addr, 600));
    for _ in 0..5 {
        assert_served(addr, &[], "while a slowloris client trickles its headers");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        slow.join().unwrap(),
        "a client sending its headers a byte at a time for a minute was never cut off"
    );
    assert_served(addr, &[], "after the slowloris client");
    common::stop(proxy);
}

#[test]
fn a_trickled_body_gets_408_and_the_connection_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _up) = upstream();
    let (proxy, addr) = http_proxy(dir.path(), &url, &["--body-timeout", "1s"]);
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: 1000\r\n\r\n{{\"jsonrpc\":"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut closed = false;
    let mut buf = [0u8; 4096];
    s.set_nonblocking(true).unwrap();
    for _ in 0..600 {
        // A byte every 100 ms: the body never completes.
        let _ = s.write_all(b" ");
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = String::from_utf8_lossy(&raw);
    assert!(
        closed,
        "a body trickled for a minute was never cut off: {text:?}"
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(text.contains("--body-timeout"), "{text:?}");
    assert_served(addr, &[], "after");
    common::stop(proxy);
}

/// The header timeout bounds waiting for a request, never a response that
/// takes long: the server's stream (GET) lives past it.
#[test]
fn a_long_lived_stream_outlives_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _up) = upstream();
    let (proxy, addr) = http_proxy(dir.path(), &url, &["--header-timeout", "1s"]);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(
        format!("GET /mcp HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&raw).contains("notifications/two") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("notifications/one"), "{text:?}");
    assert!(
        text.contains("notifications/two"),
        "the stream was cut before its second event: {text:?}"
    );
    common::stop(proxy);
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _up) = upstream();
    let (proxy, addr) = http_proxy(dir.path(), &url, &["--header-timeout", "1s"]);
    let mut s = TcpStream::connect(addr).unwrap();
    keep_alive_call(&mut s, addr, 1).expect("the first request on the connection is answered");
    let mut closed = false;
    for _ in 0..600 {
        if closed_by_peer(&mut s) {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(80));
    }
    assert!(
        closed,
        "an idle keep-alive connection stayed open for a minute"
    );
    common::stop(proxy);
}

#[test]
fn memory_stays_bounded_under_stalled_uploads_and_slowloris() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(dir.path(), "tokens", "alice secret-token\n");
    let (url, _up) = upstream();
    let (proxy, addr) = http_proxy(
        dir.path(),
        &url,
        &[
            "--tokens",
            tokens.to_str().unwrap(),
            "--header-timeout",
            "2s",
            "--body-timeout",
            "2s",
        ],
    );
    let pid = proxy.0.id();
    let auth = [("Authorization", "Bearer secret-token")];
    assert_served(addr, &auth, "before");
    let base = mem_kb(pid, "VmRSS");
    // 200 unauthenticated uploads that promise 16 MB and send a few bytes.
    let mut stalled: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            let head = format!(
                "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: 16000000\r\n\r\n{{\"jsonrpc\":"
            );
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    let slow = std::thread::spawn(move || slowloris(addr, 600));
    std::thread::sleep(Duration::from_millis(300));
    assert_served(addr, &auth, "while 200 uploads stall");
    let during = mem_kb(pid, "VmRSS");
    eprintln!("stalled uploads: VmRSS before {base} kB, during {during} kB");
    assert!(
        during.saturating_sub(base) < BOUND_KB,
        "the proxy's resident set grew from {base} kB to {during} kB under 200 stalled uploads"
    );
    // Every stalled upload is cut off (a 401 or 408, then closed).
    let mut open = stalled.len();
    for _ in 0..600 {
        stalled.retain_mut(|s| !closed_by_peer(s));
        open = stalled.len();
        if open == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(80));
    }
    assert_eq!(
        open, 0,
        "{open} of 200 stalled uploads were still open after a minute"
    );
    assert!(
        slow.join().unwrap(),
        "the slowloris client was never cut off"
    );
    assert_peak_within(pid, base, "stalled uploads and slowloris");
    assert_served(addr, &auth, "after");
    common::stop(proxy);
}

/// A request on a kept-alive connection; its body, or `None` when the
/// connection is closed.
fn keep_alive_call(s: &mut TcpStream, addr: SocketAddr, id: u64) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = call(id, "echo");
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut length = None;
    let mut first = true;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if first {
            assert!(line.starts_with("HTTP/1.1 200"), "{line}");
            first = false;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().ok();
        }
    }
    let mut body = vec![0; length.expect("a content-length")];
    r.read_exact(&mut body).ok()?;
    Some(String::from_utf8(body).unwrap())
}

#[test]
fn connections_over_the_cap_are_closed_while_open_ones_work() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _up) = upstream();
    let (proxy, addr) = http_proxy(
        dir.path(),
        &url,
        &["--max-connections", "3", "--header-timeout", "120s"],
    );
    let mut open: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for (i, s) in open.iter_mut().enumerate() {
        let body = keep_alive_call(s, addr, i as u64).expect("an open connection is served");
        assert!(body.contains("ok echo"), "{body}");
    }
    // A fourth is closed at once, without an answer.
    let mut extra = TcpStream::connect(addr).unwrap();
    let body = call(7, "echo");
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = extra.write_all(req.as_bytes());
    extra
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = Vec::new();
    let got = extra.read_to_end(&mut buf);
    assert!(
        got.is_err() || buf.is_empty(),
        "a connection over --max-connections was served: {:?}",
        String::from_utf8_lossy(&buf)
    );
    // The open ones still work.
    for (i, s) in open.iter_mut().enumerate() {
        assert!(
            keep_alive_call(s, addr, 10 + i as u64).is_some(),
            "an open connection still works"
        );
    }
    // When one closes, a new one gets in.
    drop(open.pop());
    let mut served = false;
    for _ in 0..300 {
        let mut s = TcpStream::connect(addr).unwrap();
        if keep_alive_call(&mut s, addr, 20).is_some() {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served, "a connection after one closed was never served");
    common::stop(proxy);
}

/// CPU time the process has used, in clock ticks (utime + stime).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Out of file descriptors, `accept` fails until one frees: the proxy
/// backs off (and says so once) instead of spinning, and serves again
/// once descriptors free up.
#[test]
fn accept_failures_back_off_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _up) = upstream();
    let (proxy, addr) = http_proxy_with_stderr(dir.path(), &url, &["--header-timeout", "120s"]);
    let (proxy, errs) = proxy;
    let pid = proxy.0.id();
    assert_served(addr, &[], "before");
    // Room for three more descriptors, then EMFILE.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) on a child this test started, reading its limit.
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let low = libc::rlimit {
        rlim_cur: open + 3,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above, setting a valid soft limit under the hard one.
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &low, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let clients: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Measured over a window in which accept keeps failing.
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - before;
    // SAFETY: sysconf with a valid name.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    eprintln!("out of descriptors: {used} ticks of CPU in 2 s ({per_second} a second)");
    // A spinning accept loop takes a core (on this 2-core machine under
    // load, half of one: about 95 ticks in the window); one that backs off
    // wakes about once a second.
    assert!(
        used < per_second / 5,
        "the proxy used {used} CPU ticks in 2 s ({per_second} a second) while accept failed: it spins"
    );
    let said: Vec<String> = errs
        .try_iter()
        .filter(|l| l.contains("accepting a connection"))
        .collect();
    // Said once per burst of failures, not once per failure (a descriptor
    // freed meanwhile may end a burst and start another: a few lines, never
    // one per retry).
    assert!(
        !said.is_empty() && said.len() <= 3,
        "said once per burst: {said:?}"
    );
    // Descriptors free up: the proxy serves again.
    drop(clients);
    // SAFETY: as above, restoring the limit it had.
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &old, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let mut served = false;
    for _ in 0..300 {
        let (status, _, _) = post(addr, &[], &call(1, "echo"));
        if status == 200 {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served, "the proxy never served again");
    common::stop(proxy);
}

#[test]
fn a_new_session_over_the_cap_gets_503_and_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let (url, up) = upstream();
    let (proxy, addr) = http_proxy(dir.path(), &url, &["--max-sessions", "2"]);
    // Two sessions with a call in flight each fill the cap.
    let busy: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|s| std::thread::spawn(move || post(addr, &[("X-Session-Id", s)], &call(1, "slow"))))
        .collect();
    for _ in 0..600 {
        if up.held.load(Ordering::SeqCst) == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        up.held.load(Ordering::SeqCst),
        2,
        "both slow calls reached the upstream"
    );
    // A third session is refused: 503 and a JSON-RPC error.
    let (status, head, body) = post(addr, &[("X-Session-Id", "c")], &call(5, "echo"));
    assert_eq!(status, 503, "{head}\n{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["id"], 5, "{body}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-sessions"),
        "{body}"
    );
    // A kept session still works.
    assert_served(addr, &[("X-Session-Id", "a")], "a kept session");
    up.release.store(true, Ordering::SeqCst);
    for t in busy {
        let (status, _, body) = t.join().unwrap();
        assert_eq!(status, 200, "{body}");
    }
    // Idle sessions make room: the third one is served now.
    assert_served(addr, &[("X-Session-Id", "c")], "once the others are idle");
    common::stop(proxy);
    let rows = dir_rows(&dir.path().join("audit"));
    let refused: Vec<_> = rows
        .iter()
        .filter(|r| r.rule.as_deref() == Some("(too many sessions)"))
        .collect();
    assert_eq!(refused.len(), 1, "one row for the refused request");
    assert_eq!(refused[0].outcome.as_str(), "not_forwarded");
    assert_eq!(refused[0].session_id, "c");
}

/// Rows of `tools/call` to `tool`: (outcome, error code).
fn outcomes(audit: &Path, tool: &str) -> Vec<(String, Option<i64>)> {
    dir_rows(audit)
        .iter()
        .filter(|r| r.tool.as_deref() == Some(tool))
        .map(|r| (r.outcome.as_str().to_string(), r.error_code))
        .collect()
}

#[test]
fn an_upstream_json_answer_over_the_limit_is_refused_unheld() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _up) = upstream();
    let (proxy, addr) = http_proxy(dir.path(), &url, &["--max-response-bytes", LIMIT]);
    let pid = proxy.0.id();
    assert_served(addr, &[], "before");
    let base = mem_kb(pid, "VmRSS");
    let (status, _, body) = post(addr, &[], &call(3, "huge_json"));
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["id"], 3, "{body}");
    assert_eq!(answer["error"]["code"], -32603, "{body}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds --max-response-bytes"),
        "{body}"
    );
    assert_peak_within(pid, base, "a 200 MB JSON answer");
    assert_served(addr, &[], "after");
    common::stop(proxy);
    assert_eq!(
        outcomes(&dir.path().join("audit"), "huge_json"),
        [("response_too_large".to_string(), Some(-32603))]
    );
}

#[test]
fn an_upstream_sse_event_over_the_limit_is_refused_unheld() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _up) = upstream();
    let (proxy, addr) = http_proxy(dir.path(), &url, &["--max-response-bytes", LIMIT]);
    let pid = proxy.0.id();
    assert_served(addr, &[], "before");
    let base = mem_kb(pid, "VmRSS");
    let (status, _, body) = post(
        addr,
        &[("Accept", "text/event-stream")],
        &call(4, "huge_sse"),
    );
    assert_eq!(status, 200, "{body}");
    let msgs = messages(&body);
    assert_eq!(
        msgs.len(),
        2,
        "the progress notification, then the error: {body}"
    );
    assert_eq!(msgs[0]["method"], "notifications/progress");
    assert_eq!(msgs[1]["id"], 4, "{body}");
    assert_eq!(msgs[1]["error"]["code"], -32603, "{body}");
    assert_peak_within(pid, base, "a 200 MB SSE event");
    assert_served(addr, &[], "after");
    common::stop(proxy);
    assert_eq!(
        outcomes(&dir.path().join("audit"), "huge_sse"),
        [("response_too_large".to_string(), Some(-32603))]
    );
}

// ------------------------------------------------------------------- bridge

/// `flightrec proxy --upstream URL` (the bridge) with piped stdin/stdout.
struct BridgeProc {
    guard: Guard,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

fn bridge(dir: &Path, url: &str, args: &[&str]) -> BridgeProc {
    let policy = write(dir, "policy.yaml", POLICY);
    let audit = dir.join("audit");
    let mut child = Command::new(flightrec())
        .args(["proxy", "--policy", policy.to_str().unwrap()])
        .args(["--upstream", url, "--audit-dir", audit.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = common::line_channel(child.stdout.take().unwrap());
    let stdin = child.stdin.take();
    BridgeProc {
        guard: Guard(child),
        stdin,
        lines,
    }
}

impl BridgeProc {
    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    fn answer(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(120))
            .expect("the bridge answers");
        assert!(line.len() < 16 * MB, "an answer of {} bytes", line.len());
        serde_json::from_str(&line).unwrap()
    }

    fn assert_served(&mut self, what: &str) {
        self.send(&call(99, "echo"));
        let a = self.answer();
        assert_eq!(a["result"]["content"][0]["text"], "ok echo", "{what}: {a}");
    }

    /// Closes stdin and waits for the bridge to end.
    fn finish(mut self) {
        drop(self.stdin.take());
        common::wait_within(&mut self.guard.0, Duration::from_secs(60));
    }
}

#[test]
fn the_bridge_refuses_upstream_answers_over_the_limit_unheld() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _up) = upstream();
    let mut b = bridge(dir.path(), &url, &["--max-response-bytes", LIMIT]);
    let pid = b.guard.0.id();
    b.assert_served("before");
    let base = mem_kb(pid, "VmRSS");
    for (id, tool) in [(5, "huge_json"), (6, "huge_sse")] {
        b.send(&call(id, tool));
        let mut a = b.answer();
        if a["method"] == "notifications/progress" {
            a = b.answer();
        }
        assert_eq!(a["id"], id, "{tool}: {a}");
        assert_eq!(a["error"]["code"], -32603, "{tool}: {a}");
        assert!(
            a["error"]["message"]
                .as_str()
                .unwrap()
                .contains("exceeds --max-response-bytes"),
            "{tool}: {a}"
        );
    }
    assert_peak_within(pid, base, "200 MB answers through the bridge");
    b.assert_served("after");
    b.finish();
    let audit = dir.path().join("audit");
    for tool in ["huge_json", "huge_sse"] {
        assert_eq!(
            outcomes(&audit, tool),
            [("response_too_large".to_string(), Some(-32603))],
            "{tool}"
        );
    }
}

#[test]
fn the_bridge_does_not_hold_a_stdin_line_over_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _up) = upstream();
    let mut b = bridge(dir.path(), &url, &["--max-message-bytes", LIMIT]);
    let pid = b.guard.0.id();
    b.assert_served("before");
    let base = mem_kb(pid, "VmRSS");
    {
        let stdin = b.stdin.as_mut().unwrap();
        stdin
            .write_all(br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{"x":""#)
            .unwrap();
        write_filler(stdin, HUGE).unwrap();
        stdin.write_all(b"\"}}}\n").unwrap();
    }
    let a = b.answer();
    assert_eq!(a["error"]["code"], -32600, "{a}");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-message-bytes"),
        "{a}"
    );
    assert_peak_within(pid, base, "a 200 MB stdin line");
    b.assert_served("after");
    b.finish();
}
