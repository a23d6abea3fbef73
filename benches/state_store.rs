//! The shared counter store against memory, in one run: decisions per
//! second through the decision core with `PolicyState` and with
//! `RedisStore` (a real redis-server on loopback: one script round trip per
//! decision), and the stdio proxy's added latency with `--state redis://…`
//! versus in-memory counters (the three paths, direct and both proxies,
//! alternate in a random order each round).
//!
//! Run: `cargo bench --bench state_store` (needs `.venv-redis/bin/redis-server`,
//! which `bash .ci/run` installs; or set `REDIS_SERVER` to a redis-server or
//! valkey-server binary).

mod support;
use flightrec::policy::{Call, CounterStore, Outcome, Policy, PolicyState};
use flightrec::store::redis::{RedisConfig, RedisStore, RedisTarget};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{Peer, build_release, percentile, target_dir};

const DECISIONS: usize = 50_000;
const CALLS: usize = 3_000;
const WARMUP: usize = 300;

const POLICY: &str = "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: copy budget per session\n        rate_limit: {max: 1000000, window: 60s, per: session, mode: sliding}\n  \"*\":\n    rules:\n      - name: global\n        rate_limit: 100000000/minute\n";

fn main() {
    build_release("test_mcp_server");
    let redis_bin = std::env::var_os("REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-redis/bin/redis-server")
        });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Command::new(&redis_bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", redis_bin.display()));
    let url = format!("redis://127.0.0.1:{port}/0");
    let policy = Policy::from_yaml(POLICY, "bench.yaml").unwrap().0;
    let mut shared = RedisStore::new(
        RedisConfig {
            target: RedisTarget::parse(&url).unwrap(),
            prefix: "bench:".into(),
            fail_open: false,
            timeout: Duration::from_secs(1),
        },
        &policy,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while shared.ping().is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Decisions per second: the same calls, memory and Redis in turns of
    // 1,000 so both see the same machine.
    let mut memory = PolicyState::new(&policy);
    let args: Vec<serde_json::Value> = (0..64)
        .map(
            |i| serde_json::json!({"datastoreId": "ds-01", "sourceImageSetId": format!("set-{i}")}),
        )
        .collect();
    let sessions: Vec<String> = (0..256).map(|i| format!("session-{i}")).collect();
    let mut t_memory = Duration::ZERO;
    let mut t_redis = Duration::ZERO;
    let t0 = flightrec::time::now_us();
    for chunk in 0..DECISIONS / 1000 {
        for store in 0..2 {
            let started = Instant::now();
            for i in chunk * 1000..(chunk + 1) * 1000 {
                let call = Call {
                    ts_us: t0 + i as i64 * 1000,
                    session: &sessions[i % sessions.len()],
                    agent: "agent",
                    server: "bench",
                    tool: "copy_image_set",
                    category: None,
                    risk: None,
                    args: &args[i % args.len()],
                    args_sha256: None,
                };
                let d = if store == 0 {
                    policy.decide(&mut memory, &call)
                } else {
                    policy.decide(&mut shared, &call)
                };
                assert_eq!(
                    d.verdict,
                    flightrec::policy::Verdict::Allow,
                    "{:?}",
                    d.message
                );
                if store == 0 {
                    memory.settle(d.reservation, Outcome::Ok);
                } else {
                    shared.settle(d.reservation, Outcome::Ok);
                }
            }
            if store == 0 {
                t_memory += started.elapsed();
            } else {
                t_redis += started.elapsed();
            }
        }
    }
    let rate = |t: Duration| DECISIONS as f64 / t.as_secs_f64();
    println!(
        "state_store: {DECISIONS} decisions each (2 rate limits per call), alternating in chunks of 1,000"
    );
    println!("  memory  {:>10.0} decisions/s", rate(t_memory));
    println!(
        "  redis   {:>10.0} decisions/s   ({:.1} µs per decision: one script round trip)",
        rate(t_redis),
        t_redis.as_secs_f64() * 1e6 / DECISIONS as f64
    );
    println!("  memory / redis: {:.1}x", rate(t_memory) / rate(t_redis));
    let started = Instant::now();
    for _ in 0..10_000 {
        shared.ping().unwrap();
    }
    println!(
        "  for scale: a PING round trip to the same server takes {:.1} µs",
        started.elapsed().as_secs_f64() * 1e6 / 10_000.0
    );

    // Added proxy latency: direct, proxy with memory counters, proxy with
    // Redis counters.
    let server = target_dir().join("examples/test_mcp_server");
    let flightrec = target_dir().join("flightrec");
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(&policy_file, POLICY).unwrap();
    let proxy = |audit: &str, state: Option<&str>| {
        let mut cmd = Command::new(&flightrec);
        cmd.args(["proxy", "--policy"])
            .arg(&policy_file)
            .arg("--audit-dir")
            .arg(dir.path().join(audit));
        if let Some(url) = state {
            cmd.args(["--state", url]);
        }
        cmd.arg("--").arg(&server);
        Peer::start(&mut cmd)
    };
    let mut paths = [
        Peer::start(&mut Command::new(&server)),
        proxy("audit-memory", None),
        proxy("audit-redis", Some(&url)),
    ];
    let mut samples: [Vec<f64>; 3] = Default::default();
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    const ORDERS: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for i in 0..(WARMUP + CALLS) {
        let req = format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"copy_image_set","arguments":{{"datastoreId":"ds-01","sourceImageSetId":"set-{i}"}}}}}}"#,
            i + 1
        );
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        for path in ORDERS[(rng % 6) as usize] {
            let t = paths[path].round_trip(&req);
            assert!(
                paths[path].line.contains("copy_image_set ok"),
                "unexpected answer: {}",
                paths[path].line
            );
            if i >= WARMUP {
                samples[path].push(t);
            }
        }
    }
    for p in paths {
        drop(p.stdin);
        let mut c = p.child;
        let _ = c.wait();
    }
    for s in &mut samples {
        s.sort_by(|a, b| a.total_cmp(b));
    }
    let q = |k: usize, p: f64| percentile(&samples[k], p);
    println!(
        "  proxy latency: {CALLS} sequential tools/call round trips per path (after {WARMUP} warm-up)"
    );
    println!(
        "    direct               p50 {:8.1} µs   p99 {:8.1} µs",
        q(0, 0.5),
        q(0, 0.99)
    );
    for (k, name) in [(1, "memory counters"), (2, "redis counters ")] {
        println!(
            "    proxy, {name} p50 {:8.1} µs   p99 {:8.1} µs   added p50 {:7.1} µs   p99 {:7.1} µs",
            q(k, 0.5),
            q(k, 0.99),
            q(k, 0.5) - q(0, 0.5),
            q(k, 0.99) - q(0, 0.99)
        );
    }
    println!(
        "    redis adds over memory: p50 {:.1} µs   p99 {:.1} µs",
        q(2, 0.5) - q(1, 0.5),
        q(2, 0.99) - q(1, 0.99)
    );
    let _ = redis.kill();
    let _ = redis.wait();
}
