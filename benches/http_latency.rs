//! Added latency and throughput of the Streamable HTTP proxy, in one run:
//! the same client calls an upstream directly and through `flightrec proxy
//! --listen … --upstream …` (a policy with limits that allow everything,
//! audit log on), against
//! - the fast Rust upstream `examples/http_mcp_server.rs` (the proxy's own
//!   cost dominates), and
//! - the official Python SDK's streamable-HTTP server (what real servers
//!   cost), when `.venv-sdk` is installed (`bash .ci/run` installs it).
//!
//! For each: p50/p99 of sequential `tools/call` round trips at 1 client
//! (direct and proxied in a random order each round), then requests/s with
//! 16 concurrent clients (keep-alive connections), direct then proxied.
//!
//! Against the Rust upstream it also measures the floor: the bare hyper
//! forwarder `examples/http_forwarder.rs` (same runtime shape, bytes
//! forwarded untouched, no policy or audit log), so the figures separate
//! what any proxy costs on this machine from what flightrec adds.
//!
//! Run: `cargo bench --bench http_latency`.

mod support;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{build_release, percentile, target_dir};

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A keep-alive HTTP/1.1 connection posting MCP requests.
struct Conn {
    stream: BufReader<TcpStream>,
    addr: SocketAddr,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            stream: BufReader::new(s),
            addr,
        }
    }

    /// One `tools/call` and its answer; the round trip in µs.
    fn call(&mut self, id: u64) -> f64 {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"copy_image_set","arguments":{{"datastore_id":"ds-01","source_image_set_id":"set-{id}"}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{{}},"io.modelcontextprotocol/clientInfo":{{"name":"bench","version":"1"}}}}}}}}"#
        );
        let req = format!(
            "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: copy_image_set\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let t = Instant::now();
        self.stream.get_mut().write_all(req.as_bytes()).unwrap();
        let mut len = None;
        let mut line = String::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = Some(v.trim().parse::<usize>().unwrap());
            }
            assert!(!lower.starts_with("http/1.1 5"), "server error: {line}");
        }
        let mut body = vec![0u8; len.expect("content-length")];
        self.stream.read_exact(&mut body).unwrap();
        let elapsed = t.elapsed().as_secs_f64() * 1e6;
        assert!(
            body.windows(6).any(|w| w == b"result"),
            "unexpected answer: {}",
            String::from_utf8_lossy(&body)
        );
        elapsed
    }
}

/// Waits for a line on the child's stdout or stderr that names its address.
fn address_from(lines: impl BufRead, marker: &str) -> SocketAddr {
    for line in lines.lines() {
        let line = line.unwrap();
        if let Some(i) = line.find(marker) {
            let rest = &line[i + marker.len()..];
            let addr: String = rest
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '/')
                .collect();
            return addr.parse().unwrap();
        }
    }
    panic!("no address printed");
}

fn proxy(upstream: SocketAddr, dir: &Path) -> (Guard, SocketAddr) {
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: copy budget per session\n        rate_limit: {max: 100000000, window: 60s, per: session}\n  \"*\":\n    rules:\n      - name: global\n        rate_limit: 100000000/minute\n",
    )
    .unwrap();
    let mut child = Command::new(target_dir().join("flightrec"))
        .args([
            "proxy",
            "--policy",
            policy.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &format!("http://{upstream}/mcp"),
            "--audit-dir",
            dir.join(format!("audit-{}", upstream.port()))
                .to_str()
                .unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = BufReader::new(child.stderr.take().unwrap());
    let addr = address_from(err, "listening on http://");
    (Guard(child), addr)
}

fn latency(
    direct: SocketAddr,
    proxied: SocketAddr,
    calls: usize,
    warmup: usize,
) -> (f64, f64, f64, f64) {
    let (mut d, mut p) = (Conn::new(direct), Conn::new(proxied));
    let (mut ds, mut ps) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..(warmup + calls) as u64 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let (td, tp) = if rng.is_multiple_of(2) {
            let a = d.call(i + 1);
            (a, p.call(i + 1))
        } else {
            let b = p.call(i + 1);
            (d.call(i + 1), b)
        };
        if i as usize >= warmup {
            ds.push(td);
            ps.push(tp);
        }
    }
    ds.sort_by(|a, b| a.total_cmp(b));
    ps.sort_by(|a, b| a.total_cmp(b));
    (
        percentile(&ds, 0.5),
        percentile(&ds, 0.99),
        percentile(&ps, 0.5),
        percentile(&ps, 0.99),
    )
}

/// Requests/s with `clients` keep-alive connections for `secs`.
fn throughput(addr: SocketAddr, clients: usize, secs: f64) -> f64 {
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || {
                let mut conn = Conn::new(addr);
                let mut n = 0u64;
                while Instant::now() < stop {
                    conn.call(c as u64 * 1_000_000 + n);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    total as f64 / secs
}

fn report(name: &str, direct: SocketAddr, proxied: SocketAddr, calls: usize, secs: f64) {
    let (d50, d99, p50, p99) = latency(direct, proxied, calls, calls / 10);
    println!("{name}: {calls} sequential tools/call round trips each, random order per round");
    println!("  direct        p50 {d50:9.1} µs   p99 {d99:9.1} µs");
    println!("  through proxy p50 {p50:9.1} µs   p99 {p99:9.1} µs   (audit log on)");
    print_added(d50, d99, p50, p99);
    let direct_rps = throughput(direct, 16, secs);
    let proxied_rps = throughput(proxied, 16, secs);
    println!(
        "  16 clients: direct {direct_rps:9.0} req/s   through proxy {proxied_rps:9.0} req/s   = {:.0}% of direct",
        100.0 * proxied_rps / direct_rps
    );
}

/// Starts one of the bench's example servers and reads the address it
/// prints (`listening on ADDR`).
fn example(name: &str, args: &[String]) -> (Guard, SocketAddr) {
    let mut child = Command::new(target_dir().join("examples").join(name))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let addr = address_from(out, "listening on ");
    (Guard(child), addr)
}

/// The bare forwarder in front of `upstream`.
fn forwarder(upstream: SocketAddr) -> (Guard, SocketAddr) {
    let workers = std::env::var("FORWARDER_WORKERS").unwrap_or_else(|_| "2".into());
    example(
        "http_forwarder",
        &[format!("http://{upstream}/mcp"), workers],
    )
}

fn print_added(d50: f64, d99: f64, p50: f64, p99: f64) {
    println!(
        "  added         p50 {:9.1} µs   p99 {:9.1} µs",
        p50 - d50,
        p99 - d99
    );
}

/// What a proxy costs at all: the bare forwarder against the same
/// upstream, then 16-client throughput of direct, bare and flightrec in
/// one sitting.
fn floor(direct: SocketAddr, proxied: SocketAddr, calls: usize, secs: f64) {
    let (g, bare) = forwarder(direct);
    let (d50, d99, b50, b99) = latency(direct, bare, calls, calls / 10);
    println!("Bare hyper forwarder (no parsing, no policy, no audit log), same upstream:");
    print_added(d50, d99, b50, b99);
    let direct_rps = throughput(direct, 16, secs);
    let bare_rps = throughput(bare, 16, secs);
    let ours_rps = throughput(proxied, 16, secs);
    println!(
        "  16 clients: direct {direct_rps:9.0}   bare forwarder {bare_rps:9.0} ({:.0}% of direct)   flightrec {ours_rps:9.0} ({:.0}% of direct, {:.0}% of the bare forwarder) req/s",
        100.0 * bare_rps / direct_rps,
        100.0 * ours_rps / direct_rps,
        100.0 * ours_rps / bare_rps
    );
    drop(g);
}

fn main() {
    build_release("http_mcp_server");
    build_release("http_forwarder");
    let dir = tempfile::tempdir().unwrap();

    let (rust, rust_addr) = example("http_mcp_server", &["0".to_string()]);
    let (p1, proxied) = proxy(rust_addr, dir.path());
    report("Rust upstream", rust_addr, proxied, 5_000, 3.0);
    floor(rust_addr, proxied, 5_000, 3.0);
    drop(p1);
    drop(rust);

    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-sdk/bin/python");
    if !python.exists() {
        println!("SDK upstream: skipped (.venv-sdk is not installed; `bash .ci/run` installs it)");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sdk = Guard(
        Command::new(python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/sdk_http_server.py"))
            .arg(port.to_string())
            .arg("--json")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let sdk_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(sdk_addr).is_err() {
        assert!(Instant::now() < deadline, "the SDK server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (p2, proxied) = proxy(sdk_addr, dir.path());
    report("SDK upstream", sdk_addr, proxied, 500, 3.0);
    drop(p2);
    drop(sdk);
}
