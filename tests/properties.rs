//! Properties of the decision core, checked on generated call sequences.

use flightrec::policy::{Call, CounterStore, Outcome, Policy, PolicyState, Verdict};
use proptest::prelude::*;
use serde_json::json;

const SEC: i64 = 1_000_000;
const T0: i64 = 1_795_564_800 * SEC;

fn load(yaml: &str) -> Policy {
    Policy::from_yaml(yaml, "prop.yaml")
        .expect("valid policy")
        .0
}

/// A generated call: time offset (µs), session index, tool index, and
/// whether the upstream answered with a JSON-RPC error.
#[derive(Debug, Clone)]
struct GenCall {
    dt: i64,
    session: usize,
    tool: usize,
    rpc_error: bool,
}

/// Gaps are whole half-seconds so that calls land exactly on window edges
/// (where off-by-one mistakes live) as well as inside windows.
fn calls(max_len: usize, max_gap_us: i64) -> impl Strategy<Value = Vec<GenCall>> {
    const STEP: i64 = SEC / 2;
    prop::collection::vec(
        (
            0..=max_gap_us / STEP,
            0usize..3,
            0usize..3,
            prop::bool::weighted(0.2),
        )
            .prop_map(|(steps, session, tool, rpc_error)| GenCall {
                dt: steps * STEP,
                session,
                tool,
                rpc_error,
            }),
        0..max_len,
    )
}

const SESSIONS: [&str; 3] = ["s0", "s1", "s2"];
const TOOLS: [&str; 3] = ["copy_image_set", "list_image_sets", "delete_image_set"];

/// Decides a sequence; returns (absolute time, session, tool, verdict, kept)
/// where `kept` says the call was allowed and not rolled back.
fn run(policy: &Policy, seq: &[GenCall]) -> Vec<(i64, usize, usize, Verdict, bool)> {
    let mut state = PolicyState::new(policy);
    let args = json!({});
    let mut t = T0;
    let mut out = Vec::with_capacity(seq.len());
    for c in seq {
        t += c.dt;
        let call = Call {
            ts_us: t,
            session: SESSIONS[c.session],
            agent: "agent",
            server: "srv",
            tool: TOOLS[c.tool],
            category: None,
            risk: None,
            args: &args,
            args_sha256: None,
        };
        let d = policy.decide(&mut state, &call);
        let verdict = d.verdict;
        state.settle(
            d.reservation,
            if c.rpc_error {
                Outcome::RpcError
            } else {
                Outcome::Ok
            },
        );
        out.push((
            t,
            c.session,
            c.tool,
            verdict,
            verdict == Verdict::Allow && !c.rpc_error,
        ));
    }
    out
}

const SLIDING: &str = r#"
version: "1"
tools:
  copy_image_set:
    rules:
      - name: per session
        rate_limit: {max: 3, window: 10s, per: session}
"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn same_input_same_decisions(seq in calls(200, 3 * SEC)) {
        let p = load(SLIDING);
        prop_assert_eq!(run(&p, &seq), run(&p, &seq));
    }

    /// Brute force: for every kept call, the kept calls of its session in the
    /// window (t - W, t] number at most `max`.
    #[test]
    fn sliding_limit_never_exceeded_in_any_window(seq in calls(300, 2 * SEC)) {
        let p = load(SLIDING);
        let out = run(&p, &seq);
        let kept: Vec<_> = out.iter().filter(|c| c.4 && c.2 == 0).collect();
        for end in &kept {
            let in_window = kept
                .iter()
                .filter(|c| c.1 == end.1 && c.0 > end.0 - 10 * SEC && c.0 <= end.0)
                .count();
            prop_assert!(in_window <= 3, "{} kept calls of session {} in the window ending {}", in_window, end.1, end.0);
        }
        // And the limiter is not over-strict: a throttled call really had
        // `max` kept calls in its window.
        for c in out.iter().filter(|c| c.3 == Verdict::Throttle) {
            let in_window = kept
                .iter()
                .filter(|k| k.1 == c.1 && k.0 > c.0 - 10 * SEC && k.0 <= c.0)
                .count();
            prop_assert_eq!(in_window, 3);
        }
    }

    /// The fixed-window shorthand counts exactly like Intercept's store:
    /// calendar-aligned windows, reserve when value + 1 <= limit, roll back on
    /// a JSON-RPC error.
    #[test]
    fn fixed_windows_match_intercept_counting(seq in calls(300, 20 * SEC)) {
        let p = load(r#"
version: "1"
tools:
  copy_image_set:
    rules:
      - name: per minute
        rate_limit: 4/minute
  "*":
    rules:
      - name: global
        conditions: [{path: state._global.calls, op: lt, value: 7}]
        state: {counter: calls, window: minute}
"#);
        let out = run(&p, &seq);
        // The reference: Intercept's Reserve/Rollback over keyed counters.
        let mut counters: std::collections::HashMap<&'static str, (i64, i64)> = Default::default();
        fn reserve(counters: &mut std::collections::HashMap<&'static str, (i64, i64)>, key: &'static str, limit: i64, t: i64) -> bool {
            let ws = t - t.rem_euclid(60 * SEC);
            let entry = counters.entry(key).or_insert((ws, 0));
            if entry.0 != ws { *entry = (ws, 0); }
            if entry.1 + 1 > limit { return false; }
            entry.1 += 1;
            true
        }
        let mut expected = Vec::new();
        let mut rollbacks: Vec<(&'static str, i64)> = Vec::new();
        for (i, c) in seq.iter().enumerate() {
            let t = out[i].0;
            let mut taken: Vec<&'static str> = Vec::new();
            let mut ok = true;
            let mut rules: Vec<(&'static str, i64)> = Vec::new();
            if c.tool == 0 { rules.push(("copy_image_set._rate_minute", 4)); }
            rules.push(("_global.calls", 6));
            for (key, limit) in rules {
                if reserve(&mut counters, key, limit, t) { taken.push(key); } else { ok = false; break; }
            }
            // A throttle releases what it took; a JSON-RPC error rolls back.
            if !ok || c.rpc_error {
                for key in &taken {
                    rollbacks.push((key, t));
                }
            }
            for (key, _) in rollbacks.drain(..) {
                let e = counters.get_mut(key).unwrap();
                e.1 = (e.1 - 1).max(0);
            }
            expected.push(if ok { Verdict::Allow } else { Verdict::Throttle });
        }
        let got: Vec<Verdict> = out.iter().map(|c| c.3).collect();
        prop_assert_eq!(got, expected);
    }

    /// Throttled calls consume nothing: removing them changes no other decision.
    #[test]
    fn throttled_and_denied_calls_consume_nothing(seq in calls(200, 2 * SEC)) {
        let p = load(r#"
version: "1"
tools:
  delete_image_set:
    rules: [{name: no deletes, action: deny}]
  copy_image_set:
    rules:
      - name: per session
        rate_limit: {max: 2, window: 5s, per: session}
  "*":
    rules:
      - name: global
        rate_limit: {max: 5, window: 3s, per: global, mode: fixed}
"#);
        let out = run(&p, &seq);
        // Rebuild the sequence with absolute times, minus refused calls.
        let mut kept_seq = Vec::new();
        let mut kept_out = Vec::new();
        let mut last_t = T0;
        for (c, o) in seq.iter().zip(&out) {
            if matches!(o.3, Verdict::Throttle | Verdict::Deny) { continue; }
            kept_seq.push(GenCall { dt: o.0 - last_t, ..c.clone() });
            last_t = o.0;
            kept_out.push(*o);
        }
        prop_assert_eq!(run(&p, &kept_seq), kept_out);
    }

    /// Per-session scopes are independent: a session's decisions do not depend
    /// on other sessions' calls.
    #[test]
    fn session_scopes_are_independent(seq in calls(200, 2 * SEC)) {
        let p = load(SLIDING);
        let out = run(&p, &seq);
        let mut t = T0;
        let mut last = T0;
        let mut only_s0 = Vec::new();
        for c in &seq {
            t += c.dt;
            if c.session == 0 {
                only_s0.push(GenCall { dt: t - last, ..c.clone() });
                last = t;
            }
        }
        let alone: Vec<Verdict> = run(&p, &only_s0).iter().map(|c| c.3).collect();
        let mixed: Vec<Verdict> = out.iter().filter(|c| c.1 == 0).map(|c| c.3).collect();
        prop_assert_eq!(alone, mixed);
    }

    /// An exact key always beats a glob that matches the same name.
    #[test]
    fn exact_keys_beat_globs(name in "[a-z]{1,6}_[a-z]{1,6}", args in prop::option::of(0i64..10)) {
        let (prefix, _) = name.split_once('_').unwrap();
        let yaml = format!(r#"
version: "1"
tools:
  "{prefix}_*":
    rules: [{{name: glob deny, action: deny}}]
  "{name}":
    rules: []
"#);
        let p = load(&yaml);
        let a = json!({"n": args});
        let call = Call { ts_us: T0, session: "s", agent: "a", server: "x", tool: &name, category: None, risk: None, args: &a, args_sha256: None };
        prop_assert_eq!(p.decide(&mut PolicyState::new(&p), &call).verdict, Verdict::Allow);
        let other = format!("{prefix}_zzzzzzz");
        let call = Call { tool: &other, ..call };
        prop_assert_eq!(p.decide(&mut PolicyState::new(&p), &call).verdict, Verdict::Deny);
    }
}

/// Tokens that make near-policies: the loader must answer every combination
/// with a policy or errors, never a panic.
fn yaml_fragment() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "version",
        "tools",
        "rules",
        "name",
        "action",
        "conditions",
        "path",
        "op",
        "value",
        "state",
        "counter",
        "window",
        "increment",
        "increment_from",
        "rate_limit",
        "max",
        "per",
        "mode",
        "hide",
        "default",
        "when",
        "reason",
        "on_deny",
        "categories",
        "risk",
        "category",
        "*",
        "copy_*",
        "- name",
        "- path",
    ]);
    let values = prop::sample::select(vec![
        "\"1\"",
        "1",
        "deny",
        "evaluate",
        "require_approval",
        "eq",
        "lte",
        "regex",
        "\"(\"",
        "[1, 2]",
        "{}",
        "[]",
        "args.a",
        "state.t.c",
        "state._global.x",
        "minute",
        "-5s",
        "0",
        "5/minute",
        "0/hour",
        "x/day",
        "{max: 0}",
        "{max: 3, window: 1h}",
        "true",
        "~",
        "\"\"",
        "&a 1",
        "*a",
        "tool.category",
        "write",
        "[",
        "]",
        "'",
    ]);
    prop::collection::vec((0usize..4, keys, values), 0..30).prop_map(|parts| {
        let mut s = String::new();
        for (indent, k, v) in parts {
            s.push_str(&"  ".repeat(indent));
            s.push_str(k);
            s.push_str(": ");
            s.push_str(v);
            s.push('\n');
        }
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn loader_never_panics_on_generated_yaml(text in yaml_fragment()) {
        let _ = Policy::from_yaml(&text, "fuzz.yaml");
    }

    #[test]
    fn loader_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let _ = Policy::from_yaml(&text, "fuzz.yaml");
    }
}
