//! The counters against a reference model: calls decided while earlier ones
//! are still in flight, answers settled out of order (some with JSON-RPC
//! errors that give counts back), several sessions and agents, windows that
//! roll over between a decision and its rollback, sequences longer than the
//! sweep threshold, `increment_from` counters that add an argument, and
//! policy reloads in between with calls in flight.
//!
//! The model is deliberately naive: a list of every counted call, summed
//! over the window on each decision. The decision core must agree with it
//! on every verdict.

use flightrec::policy::{Call, CounterStore, Outcome, Policy, PolicyState, Reservation, Verdict};
use proptest::prelude::*;
use serde_json::json;

const SEC: i64 = 1_000_000;
const T0: i64 = 1_795_564_800 * SEC;
// One session id longer than the state keeps inline in its tables.
const SESSIONS: [&str; 3] = ["s0", "s1", "session-7f3c9a2e-5b1d-4c8e-9f60-2a7d3e1b8c45"];
const AGENTS: [&str; 2] = ["a0", "a1"];
const TOOLS: [&str; 3] = ["t0", "t1", "t2"];

#[derive(Debug, Clone, PartialEq)]
struct RuleSpec {
    /// A tool name or `*`.
    key: &'static str,
    name: &'static str,
    max: i64,
    window_s: i64,
    sliding: bool,
    per: &'static str,
    /// An Intercept `state` counter that adds the call's `args.n` (calendar
    /// minutes, shared by the tool key) instead of a rate limit.
    from_args: bool,
    /// A `repeat_limit`: counted per identical call (the same `args`).
    repeat: bool,
}

impl RuleSpec {
    /// What the engine's reload compares: key, rule, window and scope.
    fn identity(&self) -> (&str, &str, i64, bool, &str) {
        (self.key, self.name, self.window_s, self.sliding, self.per)
    }
}

fn rule() -> impl Strategy<Value = RuleSpec> {
    prop_oneof![
        4 => rate_rule(),
        1 => (prop::sample::select(vec!["t0", "t1", "*"]), 1i64..8).prop_map(|(key, max)| RuleSpec {
            key,
            name: "c",
            max,
            window_s: 60,
            sliding: false,
            per: if key == "*" { "global" } else { "tool" },
            from_args: true,
            repeat: false,
        }),
        1 => (
            prop::sample::select(vec!["t0", "t1", "*"]),
            1i64..4,
            prop::sample::select(vec![1i64, 2, 5]),
            prop::sample::select(vec!["session", "agent", "tool", "global"]),
        )
            .prop_map(|(key, max, window_s, per)| RuleSpec {
                key,
                name: "r",
                max,
                window_s,
                sliding: true,
                per,
                from_args: false,
                repeat: true,
            }),
    ]
}

fn rate_rule() -> impl Strategy<Value = RuleSpec> {
    (
        prop::sample::select(vec!["t0", "t1", "*"]),
        prop::sample::select(vec!["a", "b"]),
        1i64..4,
        prop::sample::select(vec![1i64, 2, 5]),
        any::<bool>(),
        prop::sample::select(vec!["session", "agent", "tool", "global"]),
    )
        .prop_map(|(key, name, max, window_s, sliding, per)| RuleSpec {
            key,
            name,
            max,
            window_s,
            sliding,
            per,
            from_args: false,
            repeat: false,
        })
}

/// Rules with unique (key, name), as a policy file requires.
fn rules() -> impl Strategy<Value = Vec<RuleSpec>> {
    prop::collection::vec(rule(), 0..5).prop_map(|mut v| {
        let mut seen = std::collections::HashSet::new();
        v.retain(|r| seen.insert((r.key, r.name)));
        v
    })
}

fn policy_yaml(rules: &[RuleSpec]) -> String {
    let mut y = String::from("version: \"1\"\ntools:\n");
    for key in ["t0", "t1", "*"] {
        let mine: Vec<&RuleSpec> = rules.iter().filter(|r| r.key == key).collect();
        if mine.is_empty() {
            continue;
        }
        y.push_str(&format!("  \"{key}\":\n    rules:\n"));
        for r in mine {
            if r.repeat {
                y.push_str(&format!(
                    "      - {{name: r, repeat_limit: {{max: {}, window: {}s, per: {}}}}}\n",
                    r.max, r.window_s, r.per
                ));
                continue;
            }
            if r.from_args {
                let scope = if key == "*" { "_global" } else { key };
                y.push_str(&format!(
                    "      - {{name: c, state: {{counter: c, window: minute, increment_from: args.n}}, conditions: [{{path: state.{scope}.c, op: lte, value: {}}}]}}\n",
                    r.max
                ));
                continue;
            }
            y.push_str(&format!(
                "      - {{name: {}, rate_limit: {{max: {}, window: {}s, per: {}, mode: {}}}}}\n",
                r.name,
                r.max,
                r.window_s,
                r.per,
                if r.sliding { "sliding" } else { "fixed" }
            ));
        }
    }
    y
}

#[derive(Debug, Clone)]
enum Op {
    /// A call after `dt` half-seconds.
    Call {
        dt: i64,
        session: usize,
        agent: usize,
        tool: usize,
        /// `args.n`, what `increment_from` counts.
        n: i64,
    },
    /// The answer to the `k`-th call still in flight (modulo their number).
    Answer { k: usize, rpc_error: bool },
    /// Swap to the other policy.
    Reload,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0i64..4, 0usize..3, 0usize..2, 0usize..3, 0i64..4).prop_map(|(dt, session, agent, tool, n)| Op::Call {
            dt,
            session,
            agent,
            tool,
            n,
        }),
        4 => (any::<usize>(), prop::bool::weighted(0.4)).prop_map(|(k, rpc_error)| Op::Answer { k, rpc_error }),
        1 => Just(Op::Reload),
    ]
}

/// One counted call in the model.
#[derive(Debug, Clone)]
struct Entry {
    rule: RuleSpec,
    scope: String,
    ts: i64,
    amount: i64,
    alive: bool,
}

#[derive(Default)]
struct Model {
    entries: Vec<Entry>,
}

impl Model {
    fn in_window(r: &RuleSpec, entry_ts: i64, now: i64) -> bool {
        let len = r.window_s * SEC;
        if r.sliding {
            entry_ts > now - len
        } else {
            entry_ts - entry_ts.rem_euclid(len) == now - now.rem_euclid(len)
        }
    }

    fn scope(r: &RuleSpec, session: &str, agent: &str, tool: &str, n: i64) -> String {
        if r.from_args {
            return String::new(); // one counter for the whole tool key
        }
        let base = match r.per {
            "session" => session.to_string(),
            "agent" => agent.into(),
            "tool" => tool.into(),
            _ => String::new(),
        };
        if r.repeat {
            // Identical calls: the same tool (the key's rules see one tool
            // each, except "*") and the same arguments.
            format!("{base}|{tool}|{n}")
        } else {
            base
        }
    }

    /// Decides a call: the verdict and the entries it counted.
    fn decide(
        &mut self,
        rules: &[RuleSpec],
        now: i64,
        session: &str,
        agent: &str,
        tool: &str,
        n: i64,
    ) -> (Verdict, Vec<usize>) {
        let amount = |r: &RuleSpec| if r.from_args { n } else { 1 };
        let own: Vec<&RuleSpec> = rules.iter().filter(|r| r.key == tool).collect();
        let star = rules.iter().filter(|r| r.key == "*");
        let applicable: Vec<&RuleSpec> = own.into_iter().chain(star).collect();
        for r in &applicable {
            let scope = Model::scope(r, session, agent, tool, n);
            let total = self
                .entries
                .iter()
                .filter(|e| {
                    e.alive
                        && e.rule.identity() == r.identity()
                        && e.scope == scope
                        && Model::in_window(r, e.ts, now)
                })
                .map(|e| e.amount)
                .sum::<i64>();
            if total + amount(r) > r.max {
                return (Verdict::Throttle, Vec::new());
            }
        }
        let mut ids = Vec::new();
        for r in applicable {
            ids.push(self.entries.len());
            self.entries.push(Entry {
                rule: r.clone(),
                scope: Model::scope(r, session, agent, tool, n),
                ts: now,
                amount: amount(r),
                alive: true,
            });
        }
        (Verdict::Allow, ids)
    }

    /// A reload keeps the counts of rules whose identity is unchanged.
    fn reload(&mut self, new: &[RuleSpec]) {
        for e in &mut self.entries {
            if !new.iter().any(|r| r.identity() == e.rule.identity()) {
                e.alive = false;
            }
        }
    }
}

struct InFlight {
    generation: usize,
    reservation: Reservation,
    model: Vec<usize>,
}

fn check(a: &[RuleSpec], b: &[RuleSpec], ops: &[Op]) -> Result<(), TestCaseError> {
    let specs = [a, b];
    let policies = [
        Policy::from_yaml(&policy_yaml(a), "a.yaml").unwrap().0,
        Policy::from_yaml(&policy_yaml(b), "b.yaml").unwrap().0,
    ];
    // Every generation's state is kept: a call settles against the state
    // it was decided in, as the proxy's generations do.
    let mut states = vec![PolicyState::new(&policies[0])];
    let mut current = 0usize; // index into `policies`
    let mut model = Model::default();
    let mut flying: Vec<InFlight> = Vec::new();
    let mut now = T0;
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Call {
                dt,
                session,
                agent,
                tool,
                n,
            } => {
                now += dt * SEC / 2;
                let args = json!({ "n": n });
                let call = Call {
                    ts_us: now,
                    session: SESSIONS[session],
                    agent: AGENTS[agent],
                    server: "x",
                    tool: TOOLS[tool],
                    category: None,
                    risk: None,
                    args: &args,
                    args_sha256: None,
                };
                let generation = states.len() - 1;
                let d = policies[current].decide(&mut states[generation], &call);
                let (expected, ids) = model.decide(
                    specs[current],
                    now,
                    SESSIONS[session],
                    AGENTS[agent],
                    TOOLS[tool],
                    n,
                );
                prop_assert_eq!(d.verdict, expected, "op {} {:?}", i, op);
                if d.verdict == Verdict::Allow {
                    flying.push(InFlight {
                        generation,
                        reservation: d.reservation,
                        model: ids,
                    });
                }
            }
            Op::Answer { k, rpc_error } => {
                if flying.is_empty() {
                    continue;
                }
                let f = flying.remove(k % flying.len());
                let outcome = if rpc_error {
                    Outcome::RpcError
                } else {
                    Outcome::Ok
                };
                states[f.generation].settle(f.reservation, outcome);
                // A rollback of a call decided before a reload is dropped.
                if rpc_error && f.generation == states.len() - 1 {
                    for id in f.model {
                        model.entries[id].alive = false;
                    }
                }
            }
            Op::Reload => {
                let next = 1 - current;
                let last = states.len() - 1;
                let migrated = states[last].migrate(&policies[current], &policies[next]);
                states.push(migrated);
                model.reload(specs[next]);
                current = next;
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Short sequences: many shapes of policy, reloads and interleavings.
    #[test]
    fn counters_match_the_model(a in rules(), b in rules(), ops in prop::collection::vec(op(), 0..200)) {
        check(&a, &b, &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    /// Longer than the sweep threshold (1,024 decisions), so expired
    /// counter instances are swept while others are in flight.
    #[test]
    fn counters_match_the_model_past_the_sweep(a in rules(), b in rules(), ops in prop::collection::vec(op(), 2500..3000)) {
        check(&a, &b, &ops)?;
    }
}

// ---------------------------------------------------------------------------
// Circuit breakers against a reference model.
//
// The model keeps, per circuit, the log of every settled outcome (call
// time, failing / success / neutral, whether the call was the half-open
// trial) in the order the answers arrived, and recomputes the circuit from
// the whole log on every decision: a trial's failure reopens it, its success
// closes it; otherwise N failing calls since the last success (or the last
// opening) whose call times lie within W of the newest of them open it for
// C from that newest call.
// Answers arrive out of order, alongside a sliding rate limit that may
// refuse a call the breaker let through (which must free a trial).

#[derive(Debug, Clone)]
struct BreakerSpec {
    key: &'static str,
    errors: u32,
    within_s: i64,
    cooldown_s: i64,
    per: &'static str,
    /// A sliding rate limit on the same key: before or after the breaker.
    rate: Option<(i64, bool)>,
}

fn breaker_spec() -> impl Strategy<Value = BreakerSpec> {
    (
        prop::sample::select(vec!["t0", "*"]),
        1u32..4,
        prop::sample::select(vec![2i64, 5, 30]),
        prop::sample::select(vec![1i64, 3, 10]),
        prop::sample::select(vec!["session", "agent", "tool", "global"]),
        prop::option::weighted(0.4, (1i64..4, any::<bool>())),
    )
        .prop_map(
            |(key, errors, within_s, cooldown_s, per, rate)| BreakerSpec {
                key,
                errors,
                within_s,
                cooldown_s,
                per,
                rate,
            },
        )
}

impl BreakerSpec {
    fn yaml(&self) -> String {
        let breaker = format!(
            "      - {{name: cb, circuit_breaker: {{errors: {}, within: {}s, cooldown: {}s, per: {}}}}}\n",
            self.errors, self.within_s, self.cooldown_s, self.per
        );
        let rate = self.rate.map(|(max, _)| {
            format!(
                "      - {{name: rl, rate_limit: {{max: {max}, window: 5s, per: {}, mode: sliding}}}}\n",
                self.per
            )
        });
        let mut y = format!("version: \"1\"\ntools:\n  \"{}\":\n    rules:\n", self.key);
        match (rate, self.rate.is_some_and(|(_, first)| first)) {
            (Some(r), true) => y.extend([r, breaker]),
            (Some(r), false) => y.extend([breaker, r]),
            (None, _) => y.push_str(&breaker),
        }
        y
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Class {
    Fail,
    Success,
    Neutral,
}

#[derive(Debug, Clone, Copy)]
struct Settled {
    at: i64,
    class: Class,
    trial: bool,
}

#[derive(Default)]
struct BreakerModel {
    /// Per circuit (scope value): settled outcomes in arrival order.
    logs: std::collections::HashMap<String, Vec<Settled>>,
    /// Per circuit: trial calls in flight.
    trials: std::collections::HashMap<String, usize>,
    /// Rate-limit entries: (scope, call time, alive).
    rate: Vec<(String, i64, bool)>,
}

impl BreakerModel {
    /// Open until when, from the whole log.
    fn open_until(spec: &BreakerSpec, log: &[Settled]) -> Option<i64> {
        let (w, c) = (spec.within_s * SEC, spec.cooldown_s * SEC);
        let mut open_until = None;
        let mut failures: Vec<i64> = Vec::new();
        for s in log {
            match (s.trial, s.class) {
                (true, Class::Fail) => {
                    open_until = Some(s.at + c);
                    failures.clear();
                }
                (true, Class::Success) => {
                    open_until = None;
                    failures.clear();
                }
                (false, Class::Fail) => {
                    failures.push(s.at);
                    let newest = failures.iter().copied().max().unwrap_or(s.at);
                    let recent = failures.iter().filter(|t| **t > newest - w).count();
                    if recent >= spec.errors as usize && open_until.is_none() {
                        open_until = Some(newest + c);
                        failures.clear();
                    }
                }
                (false, Class::Success) => failures.clear(),
                (_, Class::Neutral) => {}
            }
        }
        open_until
    }

    /// The verdict, the retry-after the breaker gives (if it refused), and
    /// whether an allowed call is the trial.
    fn decide(
        &mut self,
        spec: &BreakerSpec,
        scope: &str,
        now: i64,
    ) -> (Verdict, Option<Option<u64>>, bool) {
        let log = self.logs.get(scope).map(Vec::as_slice).unwrap_or(&[]);
        let open = Self::open_until(spec, log);
        let trial = open.is_some();
        let breaker_refuses = match open {
            Some(until) if now < until => Some(Some(((until - now) as u64).div_ceil(1000))),
            Some(_) if self.trials.get(scope).copied().unwrap_or(0) > 0 => Some(None),
            _ => None,
        };
        let rate_refuses = spec.rate.is_some_and(|(max, _)| {
            let live = self
                .rate
                .iter()
                .filter(|(s, t, alive)| *alive && s == scope && *t > now - 5 * SEC)
                .count() as i64;
            live + 1 > max
        });
        if breaker_refuses.is_some() || rate_refuses {
            // Which rule names the refusal depends on the order; the
            // verdict does not.
            let rate_first = spec.rate.is_some_and(|(_, first)| first);
            let by_breaker = breaker_refuses.is_some() && !(rate_first && rate_refuses);
            return (
                Verdict::Throttle,
                if by_breaker { breaker_refuses } else { None },
                false,
            );
        }
        if trial {
            *self.trials.entry(scope.to_string()).or_default() += 1;
        }
        if spec.rate.is_some() {
            self.rate.push((scope.to_string(), now, true));
        }
        (Verdict::Allow, None, trial)
    }
}

#[derive(Debug, Clone)]
enum BOp {
    Call {
        dt: i64,
        session: usize,
        agent: usize,
        tool: usize,
    },
    /// The answer to the `k`-th call in flight, with an outcome.
    Answer { k: usize, outcome: Outcome },
}

fn bop() -> impl Strategy<Value = BOp> {
    prop_oneof![
        5 => (0i64..4, 0usize..3, 0usize..2, 0usize..3)
            .prop_map(|(dt, session, agent, tool)| BOp::Call { dt, session, agent, tool }),
        5 => (
            any::<usize>(),
            prop::sample::select(vec![
                Outcome::Ok,
                Outcome::ToolError,
                Outcome::ToolError,
                Outcome::RpcError,
                Outcome::Timeout,
                Outcome::Cancelled,
            ]),
        )
            .prop_map(|(k, outcome)| BOp::Answer { k, outcome }),
    ]
}

fn check_breaker(spec: &BreakerSpec, ops: &[BOp]) -> Result<(), TestCaseError> {
    let policy = Policy::from_yaml(&spec.yaml(), "cb.yaml").unwrap().0;
    let mut state = PolicyState::new(&policy);
    let mut model = BreakerModel::default();
    // (reservation, circuit scope, call time, trial, index of its rate entry)
    let mut flying: Vec<(Reservation, String, i64, bool, Option<usize>)> = Vec::new();
    let mut now = T0;
    for (i, op) in ops.iter().enumerate() {
        match *op {
            BOp::Call {
                dt,
                session,
                agent,
                tool,
            } => {
                now += dt * SEC / 2;
                let args = json!({});
                let call = Call {
                    ts_us: now,
                    session: SESSIONS[session],
                    agent: AGENTS[agent],
                    server: "x",
                    tool: TOOLS[tool],
                    category: None,
                    risk: None,
                    args: &args,
                    args_sha256: None,
                };
                let d = policy.decide(&mut state, &call);
                if spec.key != "*" && TOOLS[tool] != spec.key {
                    prop_assert_eq!(d.verdict, Verdict::Allow);
                    continue;
                }
                let scope = match spec.per {
                    "session" => SESSIONS[session],
                    "agent" => AGENTS[agent],
                    "tool" => TOOLS[tool],
                    _ => "",
                }
                .to_string();
                let (expected, retry, trial) = model.decide(spec, &scope, now);
                prop_assert_eq!(d.verdict, expected, "op {} {:?}", i, op);
                if let Some(retry) = retry {
                    prop_assert_eq!(d.retry_after_ms, retry, "op {} {:?}", i, op);
                    prop_assert_eq!(d.rule.as_deref(), Some("cb"));
                }
                if d.verdict == Verdict::Allow {
                    let rate = spec.rate.map(|_| model.rate.len() - 1);
                    flying.push((d.reservation, scope, now, trial, rate));
                }
            }
            BOp::Answer { k, outcome } => {
                if flying.is_empty() {
                    continue;
                }
                let (reservation, scope, at, trial, rate) = flying.remove(k % flying.len());
                state.settle(reservation, outcome);
                let class = if outcome.is_failure() {
                    Class::Fail
                } else if outcome == Outcome::Ok {
                    Class::Success
                } else {
                    Class::Neutral
                };
                model
                    .logs
                    .entry(scope.clone())
                    .or_default()
                    .push(Settled { at, class, trial });
                if trial {
                    *model.trials.get_mut(&scope).unwrap() -= 1;
                }
                if outcome.rolls_back()
                    && let Some(r) = rate
                {
                    model.rate[r].2 = false;
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Circuit breakers (with and without a rate limit beside them), calls
    /// in flight answered out of order, against the reference model.
    #[test]
    fn circuit_breakers_match_the_model(spec in breaker_spec(), ops in prop::collection::vec(bop(), 0..200)) {
        check_breaker(&spec, &ops)?;
    }
}
