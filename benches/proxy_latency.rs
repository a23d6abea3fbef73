//! Added latency of the stdio proxy (issue 4): the same client calls the
//! Rust test server directly and through `flightrec proxy` (policy with
//! per-session and global limits that allow everything, audit log on),
//! N sequential `tools/call` round trips each, in one run. Calls alternate
//! between the paths, in a random order each round, so all see the same
//! machine conditions. Prints p50 and p99 both ways and the difference.
//!
//! Run: `cargo bench --bench proxy_latency` (builds the release binary and
//! the test server first).
//!
//! Before/after in one sitting: set `FLIGHTREC_BASELINE` to another build of
//! the binary (e.g. one built from the previous commit) and the bench
//! alternates three paths (direct, baseline proxy, this proxy) and prints
//! both proxies' added latency and their ratio.

mod support;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{Peer, build_release, percentile, target_dir};

const CALLS: usize = 5_000;
const WARMUP: usize = 500;
/// The six orders of direct (0), baseline (1) and this proxy (2).
const ORDERS: [[u8; 3]; 6] = [
    [0, 1, 2],
    [0, 2, 1],
    [1, 0, 2],
    [1, 2, 0],
    [2, 0, 1],
    [2, 1, 0],
];

fn main() {
    build_release("test_mcp_server");
    let server = target_dir().join("examples/test_mcp_server");
    let flightrec = target_dir().join("flightrec");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: copy budget per session\n        rate_limit: {max: 1000000, window: 60s, per: session}\n  \"*\":\n    rules:\n      - name: global\n        rate_limit: 1000000/minute\n",
    )
    .unwrap();
    let mut direct = Peer::start(&mut Command::new(&server));
    let proxy = |binary: &Path, audit: &str| {
        Peer::start(
            Command::new(binary)
                .args([
                    "proxy",
                    "--policy",
                    policy.to_str().unwrap(),
                    "--audit-dir",
                    dir.path().join(audit).to_str().unwrap(),
                    "--",
                ])
                .arg(&server),
        )
    };
    let mut proxied = proxy(&flightrec, "audit");
    let baseline_binary = std::env::var_os("FLIGHTREC_BASELINE").map(PathBuf::from);
    let mut baseline = baseline_binary
        .as_deref()
        .map(|b| proxy(b, "audit-baseline"));
    let (mut d, mut p) = (Vec::with_capacity(CALLS), Vec::with_capacity(CALLS));
    let mut b = Vec::with_capacity(CALLS);
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..(WARMUP + CALLS) {
        let req = format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"copy_image_set","arguments":{{"datastoreId":"ds-01","sourceImageSetId":"set-{i}"}}}}}}"#,
            i + 1
        );
        // The paths go in a random order each round, so that none always
        // follows another (whose threads may still be spinning).
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let (mut td, mut tb, mut tp) = (0.0, None, 0.0);
        for path in ORDERS[(rng % 6) as usize] {
            match path {
                0 => td = direct.round_trip(&req),
                1 => tb = baseline.as_mut().map(|peer| peer.round_trip(&req)),
                _ => tp = proxied.round_trip(&req),
            }
        }
        assert!(
            proxied.line.contains("copy_image_set ok"),
            "unexpected answer: {}",
            proxied.line
        );
        if i >= WARMUP {
            d.push(td);
            p.push(tp);
            b.extend(tb);
        }
    }
    for peer in [Some(direct), Some(proxied), baseline]
        .into_iter()
        .flatten()
    {
        drop(peer.stdin);
        let mut c = peer.child;
        let _ = c.wait();
    }
    d.sort_by(|a, b| a.total_cmp(b));
    p.sort_by(|a, b| a.total_cmp(b));
    b.sort_by(|a, b| a.total_cmp(b));
    let (d50, d99, p50, p99) = (
        percentile(&d, 0.5),
        percentile(&d, 0.99),
        percentile(&p, 0.5),
        percentile(&p, 0.99),
    );
    println!(
        "proxy_latency: {CALLS} sequential tools/call round trips each, alternating (after {WARMUP} warm-up calls)"
    );
    println!("  direct        p50 {d50:8.1} µs   p99 {d99:8.1} µs");
    println!(
        "  through proxy p50 {p50:8.1} µs   p99 {p99:8.1} µs   (audit log on: journal write per call)"
    );
    println!(
        "  added         p50 {:8.1} µs   p99 {:8.1} µs",
        p50 - d50,
        p99 - d99
    );
    if !b.is_empty() {
        let (b50, b99) = (percentile(&b, 0.5), percentile(&b, 0.99));
        println!(
            "  baseline      p50 {b50:8.1} µs   p99 {b99:8.1} µs   ({})",
            baseline_binary.unwrap().display()
        );
        println!(
            "  baseline added p50 {:7.1} µs   p99 {:8.1} µs",
            b50 - d50,
            b99 - d99
        );
        println!(
            "  this / baseline added latency: p50 {:.2}x   p99 {:.2}x",
            (p50 - d50) / (b50 - d50),
            (p99 - d99) / (b99 - d99)
        );
    }
}
