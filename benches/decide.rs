//! Decisions per second on one core: a 50-rule policy, 10,000 sessions,
//! per-session sliding limits, random tools (issue 2's benchmark).
//!
//! Run: `cargo bench --bench decide`. Divan reports time per iteration and
//! items/s; one iteration decides `CALLS` calls in time order.
//!
//! `*_guarded` runs the same workload with a runaway guard on every tool (a
//! `repeat_limit` and a `circuit_breaker` on `"*"`), the argument hashes
//! precomputed as the proxy and replay have them.

use divan::{Bencher, counter::ItemsCount};
use flightrec::policy::{Call, CounterStore, Outcome, Policy, PolicyState};
use serde_json::{Value, json};

const CALLS: usize = 200_000;
const SESSIONS: usize = 10_000;
const TOOLS: usize = 24;

// The same allocator as the flightrec binary, so figures match it.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

/// 24 tools × 2 rules (an argument check and a per-session sliding limit)
/// plus 2 wildcard rules = 50 rules.
fn policy_yaml(guarded: bool) -> String {
    let mut y = String::from("version: \"1\"\ndescription: bench\ntools:\n");
    for t in 0..TOOLS {
        y.push_str(&format!(
            "  tool_{t}:\n    rules:\n      - name: size check {t}\n        conditions:\n          - {{path: args.size, op: lte, value: 1000}}\n      - name: per session {t}\n        rate_limit: {{max: 5, window: 10s, per: session}}\n"
        ));
    }
    y.push_str("  \"*\":\n    rules:\n      - name: no prod deletes\n        when: [{path: args.env, op: eq, value: prod}]\n        action: deny\n      - name: global\n        rate_limit: 1000000/minute\n");
    if guarded {
        y.push_str("      - name: repeat guard\n        repeat_limit: {max: 1000000, window: 10m, per: session}\n      - name: breaker\n        circuit_breaker: {errors: 5, within: 1m, cooldown: 5m, per: session}\n");
    }
    y
}

struct Workload {
    sessions: Vec<String>,
    tools: Vec<String>,
    args: Vec<Value>,
    /// The canonical SHA-256 of each of `args` (what the audit log has).
    hashes: Vec<String>,
    /// (ts, session index, tool index, args index)
    calls: Vec<(i64, u32, u32, u32)>,
}

fn workload() -> Workload {
    // A small deterministic generator keeps the bench free of extra crates.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let sessions = (0..SESSIONS).map(|i| format!("session-{i:05}")).collect();
    let mut tools: Vec<String> = (0..TOOLS).map(|t| format!("tool_{t}")).collect();
    tools.push("unlisted_tool".into());
    let args = vec![
        json!({"size": 10, "env": "dev"}),
        json!({"size": 5000, "env": "dev"}),
        json!({"size": 1, "env": "prod"}),
        json!({"size": 100}),
    ];
    let mut ts = 1_795_564_800_000_000i64;
    let calls = (0..CALLS)
        .map(|_| {
            ts += (next() % 20) as i64; // ~100k calls/s of traffic
            let tool = (next() % tools_len()) as u32;
            let session = (next() % SESSIONS as u64) as u32;
            let a = match next() % 20 {
                0 => 1,
                1 => 2,
                2 => 3,
                _ => 0,
            };
            (ts, session, tool, a)
        })
        .collect();
    let hashes = args
        .iter()
        .map(|a| {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(canonical(a).as_bytes()))
        })
        .collect();
    Workload {
        sessions,
        tools,
        args,
        hashes,
        calls,
    }
}

fn tools_len() -> u64 {
    TOOLS as u64 + 1
}

fn decide_all(policy: &Policy, state: &mut PolicyState, w: &Workload, shift_us: i64) -> usize {
    let mut reserved = 0usize;
    for &(ts, s, t, a) in &w.calls {
        let call = Call {
            ts_us: ts + shift_us,
            session: &w.sessions[s as usize],
            agent: "agent",
            server: "srv",
            tool: &w.tools[t as usize],
            category: None,
            risk: None,
            args: &w.args[a as usize],
            args_sha256: Some(&w.hashes[a as usize]),
        };
        let d = policy.decide(state, &call);
        reserved += d.reservation.len();
        state.settle(d.reservation, Outcome::Ok);
    }
    reserved
}

fn bench_policy() -> Policy {
    let (policy, _) = Policy::from_yaml(&policy_yaml(false), "bench.yaml").unwrap();
    assert_eq!(policy.rule_count(), 50);
    policy
}

fn guarded_policy() -> Policy {
    let (policy, _) = Policy::from_yaml(&policy_yaml(true), "bench.yaml").unwrap();
    assert_eq!(policy.rule_count(), 52);
    policy
}

/// Canonical JSON (sorted keys, compact), as the audit log hashes it.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::from(k.as_str()), canonical(&m[k.as_str()])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        other => other.to_string(),
    }
}

/// Every (session, tool) counter is new: the first minutes of traffic.
#[divan::bench(sample_count = 20)]
fn cold_state(bencher: Bencher) {
    let policy = bench_policy();
    let w = workload();
    bencher
        .counter(ItemsCount::new(CALLS))
        .with_inputs(|| PolicyState::new(&policy))
        .bench_local_refs(|state| decide_all(&policy, state, &w, 0));
}

/// Steady state: the same 10,000 sessions already hold counters from the
/// traffic just before (the measured pass continues the same timeline).
#[divan::bench(sample_count = 20)]
fn warm_state(bencher: Bencher) {
    bench_warm(bencher, bench_policy());
}

/// The warm steady state with a runaway guard on every tool.
#[divan::bench(sample_count = 20)]
fn warm_state_guarded(bencher: Bencher) {
    bench_warm(bencher, guarded_policy());
}

/// Measures one pass over the workload with counters already warmed by
/// the same traffic one timeline-span earlier.
fn bench_warm(bencher: Bencher, policy: Policy) {
    let w = workload();
    let span = w.calls.last().unwrap().0 - w.calls[0].0 + 1;
    bencher
        .counter(ItemsCount::new(CALLS))
        .with_inputs(|| {
            let mut state = PolicyState::new(&policy);
            decide_all(&policy, &mut state, &w, -span);
            state
        })
        .bench_local_refs(|state| decide_all(&policy, state, &w, 0));
}

/// The floor under `warm_state`: the least any exact per-session sliding
/// limit can cost on this workload. The same calls and warm-up, but no
/// policy, no strings, no rule evaluation and no reservations: one hash
/// table keyed by (tool, session) as one integer, each value a fixed ring
/// of the last five call times kept inline (the bench policy's `max: 5` in
/// 10 s), plus the global counter. What is left is the memory traffic of
/// 240,000 counter instances touched at random.
#[divan::bench(sample_count = 20)]
fn floor_bare_sliding_logs(bencher: Bencher) {
    const WINDOW_US: i64 = 10_000_000;
    const MAX: usize = 5;
    #[derive(Clone, Copy, Default)]
    struct Ring {
        len: u8,
        head: u8,
        ts: [i64; MAX],
    }
    fn run(map: &mut hashbrown::HashMap<u64, Ring>, w: &Workload, shift_us: i64) -> usize {
        let mut allowed = 0;
        let mut global = 0i64;
        for &(ts, s, t, _) in &w.calls {
            let now = ts + shift_us;
            global += 1;
            if t as usize >= TOOLS {
                allowed += 1;
                continue;
            }
            let ring = map.entry(((t as u64) << 32) | s as u64).or_default();
            while ring.len > 0 && ring.ts[ring.head as usize] <= now - WINDOW_US {
                ring.head = ((ring.head as usize + 1) % MAX) as u8;
                ring.len -= 1;
            }
            if (ring.len as usize) < MAX {
                ring.ts[(ring.head as usize + ring.len as usize) % MAX] = now;
                ring.len += 1;
                allowed += 1;
            }
        }
        allowed + (global as usize & 1)
    }
    let w = workload();
    let span = w.calls.last().unwrap().0 - w.calls[0].0 + 1;
    bencher
        .counter(ItemsCount::new(CALLS))
        .with_inputs(|| {
            let mut map = hashbrown::HashMap::new();
            run(&mut map, &w, -span);
            map
        })
        .bench_local_refs(|map| run(map, &w, 0));
}
