//! Turning a scenario into calls: the open-loop plan (deterministic for a
//! seed) and the closed-loop simulation, where each refused call triggers the
//! agent's reaction (give up, retry after `retry_after_ms`, hammer, switch
//! session) against a policy — decided by the same core as the live proxy.

use crate::audit::args::{args_sha256, canonical_json};
use crate::audit::schema::{AuditRow, RecordedDecision, Transport};
use crate::policy::{
    ApprovalMode, Call, Category, CounterStore, Decision, Outcome, Policy, PolicyState, Verdict,
};
use crate::scenario::model::{Arrival, OnError, Reaction, Scenario};
use serde_json::Value;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// SplitMix64: small, fast, and the same sequence everywhere for a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// One call an agent will make (or made).
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedCall {
    /// Offset from the scenario start.
    pub at_us: i64,
    pub agent: String,
    /// The agent's session slot (its current session id can change).
    pub slot: String,
    pub tool: String,
    pub category: Option<Category>,
    pub args: Value,
    /// Index into the scenario's agents (`None`: an explicit call).
    pub spec: Option<usize>,
    /// The share of such calls that fail when allowed.
    pub fail_rate: f64,
    /// A fixed outcome (explicit calls that give one).
    pub outcome: Option<Outcome>,
}

impl PlannedCall {
    /// The outcome of this call when it is made: the fixed one, else
    /// `tool_error` with the call's failure rate (one draw from `rng` only
    /// when the rate is between 0 and 1, so scenarios without failures draw
    /// nothing).
    fn outcome(&self, rng: &mut Rng) -> Outcome {
        if let Some(o) = self.outcome {
            return o;
        }
        let fails = if self.fail_rate >= 1.0 {
            true
        } else if self.fail_rate <= 0.0 {
            false
        } else {
            rng.unit() < self.fail_rate
        };
        if fails {
            Outcome::ToolError
        } else {
            Outcome::Ok
        }
    }
}

/// A decided call of a simulation.
#[derive(Debug, Clone)]
pub struct SimEvent {
    pub ts_us: i64,
    pub agent: String,
    pub session: String,
    pub tool: String,
    pub category: Option<Category>,
    pub args: Value,
    /// `None` when no policy decided (open loop: `unrecorded`).
    pub decision: Option<Decision>,
    /// What the call returned: `not_forwarded` when refused, else the
    /// scenario's outcome for it (`ok`, or a failure by its `fail_rate`).
    pub outcome: Outcome,
    /// 0 for a planned call, n for its n-th retry.
    pub attempt: u32,
}

fn render(template: &Value, n: u64, agent: &str, session: &str, rng: &mut Rng) -> Value {
    match template {
        Value::String(s) if s.contains('{') => {
            let mut out = s
                .replace("{n}", &n.to_string())
                .replace("{agent}", agent)
                .replace("{session}", session);
            while let Some(start) = out.find("{rand:") {
                let Some(end) = out[start..].find('}') else {
                    break;
                };
                let spec = &out[start + 6..start + end];
                let (a, b) = spec.split_once('-').unwrap_or((spec, spec));
                let (a, b): (u64, u64) =
                    (a.trim().parse().unwrap_or(0), b.trim().parse().unwrap_or(0));
                let v = a + rng.below(b.saturating_sub(a) + 1);
                out.replace_range(start..start + end + 1, &v.to_string());
            }
            Value::String(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render(v, n, agent, session, rng))
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), render(v, n, agent, session, rng)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The agent instances of a spec: `name` when there is one, `name-1`… else.
fn instances(name: &str, count: u32) -> Vec<String> {
    if count == 1 {
        vec![name.to_string()]
    } else {
        (1..=count).map(|k| format!("{name}-{k}")).collect()
    }
}

/// The open-loop plan: every call the scenario's agents intend to make, in
/// time order (stable), deterministic for the seed.
pub fn plan(s: &Scenario) -> Vec<PlannedCall> {
    let mut rng = Rng::new(s.seed);
    let mut out = Vec::new();
    for (spec_index, spec) in s.agents.iter().enumerate() {
        let total_weight: u64 = spec.mix.iter().map(|m| u64::from(m.weight)).sum();
        for agent in instances(&spec.name, spec.count) {
            let mut n = 0u64;
            for j in 1..=spec.sessions {
                let slot = format!("{agent}-s{j}");
                let mut times = Vec::new();
                match spec.arrival {
                    None => {}
                    Some(Arrival::Constant { every_us }) => {
                        let mut t = rng.below(every_us as u64) as i64;
                        while t < s.duration_us {
                            times.push(t);
                            t += every_us;
                        }
                    }
                    Some(Arrival::Poisson { mean_us }) => {
                        let mut t = 0i64;
                        loop {
                            t += (-(1.0 - rng.unit()).ln() * mean_us as f64) as i64;
                            if t >= s.duration_us {
                                break;
                            }
                            times.push(t);
                        }
                    }
                    Some(Arrival::Bursts {
                        every_us,
                        size,
                        spacing_us,
                    }) => {
                        let mut t = rng.below(every_us as u64) as i64;
                        while t < s.duration_us {
                            for i in 0..i64::from(size) {
                                let at = t + i * spacing_us;
                                if at < s.duration_us {
                                    times.push(at);
                                }
                            }
                            t += every_us;
                        }
                    }
                }
                for at in times {
                    let mut pick = rng.below(total_weight.max(1));
                    let choice = spec
                        .mix
                        .iter()
                        .find(|m| {
                            if pick < u64::from(m.weight) {
                                true
                            } else {
                                pick -= u64::from(m.weight);
                                false
                            }
                        })
                        .unwrap_or(&spec.mix[0]);
                    n += 1;
                    out.push(PlannedCall {
                        at_us: at,
                        agent: agent.clone(),
                        slot: slot.clone(),
                        tool: choice.tool.clone(),
                        category: choice.category,
                        args: render(&choice.args, n, &agent, &slot, &mut rng),
                        spec: Some(spec_index),
                        fail_rate: choice
                            .fail_rate
                            .unwrap_or_else(|| s.fail_rate_of(&choice.tool)),
                        outcome: None,
                    });
                }
            }
            // Runaway loops run in the agent's first session.
            let slot = format!("{agent}-s1");
            for l in &spec.loops {
                let end = l.until_us.unwrap_or(s.duration_us).min(s.duration_us);
                let mut t = l.start_us;
                let mut made = 0u32;
                while t < end && l.count.is_none_or(|c| made < c) {
                    n += 1;
                    out.push(PlannedCall {
                        at_us: t,
                        agent: agent.clone(),
                        slot: slot.clone(),
                        tool: l.tool.clone(),
                        category: l.category,
                        args: render(&l.args, n, &agent, &slot, &mut rng),
                        spec: Some(spec_index),
                        fail_rate: l.fail_rate.unwrap_or_else(|| s.fail_rate_of(&l.tool)),
                        outcome: None,
                    });
                    made += 1;
                    t += l.every_us;
                }
            }
        }
    }
    for c in &s.calls {
        out.push(PlannedCall {
            at_us: c.at_us,
            agent: c.agent.clone(),
            slot: c.session.clone(),
            tool: c.tool.clone(),
            category: c.category,
            args: c.args.clone(),
            spec: None,
            fail_rate: s.fail_rate_of(&c.tool),
            outcome: c.outcome,
        });
    }
    out.sort_by_key(|c| c.at_us);
    out
}

/// Calls from outside the scenarios that share their clock and counters:
/// the recorded logs of a replay that mixes logs and scenarios. Before each
/// scenario call at `until`, the simulation lets them decide every call
/// earlier than that (`None`: all that are left).
pub trait Background {
    fn run_until(
        &mut self,
        until: Option<i64>,
        policy: &Policy,
        state: &mut PolicyState,
        approvals: ApprovalMode,
    );

    /// Told of each scenario call right after it was decided (in time order
    /// with the background's own calls).
    fn scenario_call(&mut self, _scenario: usize, _e: &SimEvent) {}
}

/// No calls besides the scenario's.
pub struct Alone;

impl Background for Alone {
    fn run_until(&mut self, _: Option<i64>, _: &Policy, _: &mut PolicyState, _: ApprovalMode) {}
}

/// Runs the scenario. With a policy, each call is decided when it happens
/// and refusals trigger the agent's reaction; without one, the plan is
/// returned undecided.
pub fn simulate(s: &Scenario, policy: Option<&Policy>, approvals: ApprovalMode) -> Vec<SimEvent> {
    let Some(policy) = policy else {
        let mut outcomes = outcome_rng(s);
        return plan(s)
            .into_iter()
            .map(|p| SimEvent {
                ts_us: s.start_us + p.at_us,
                outcome: p.outcome(&mut outcomes),
                session: p.slot,
                agent: p.agent,
                tool: p.tool,
                category: p.category,
                args: p.args,
                decision: None,
                attempt: 0,
            })
            .collect();
    };
    simulate_with(&[s], policy, approvals, &mut Alone)
        .into_iter()
        .map(|(_, e)| e)
        .collect()
}

/// The generator of a scenario's call outcomes: seeded from the scenario,
/// apart from the plan's, so failure rates do not change the plan.
fn outcome_rng(s: &Scenario) -> Rng {
    Rng::new(s.seed ^ 0x0C7C_0DE5_5EED_F00D)
}

/// Runs several scenarios together against one policy (one clock, one set
/// of counters), with `background` calls interleaved in time order.
/// Returns each decided call with the index of its scenario, in time order.
pub fn simulate_with(
    scenarios: &[&Scenario],
    policy: &Policy,
    approvals: ApprovalMode,
    background: &mut dyn Background,
) -> Vec<(usize, SimEvent)> {
    let mut state = PolicyState::new(policy);
    // (absolute time, order) → index into `calls`; retries are appended.
    let mut calls: Vec<(usize, PlannedCall, u32)> = Vec::new();
    for (k, s) in scenarios.iter().enumerate() {
        calls.extend(plan(s).into_iter().map(|p| (k, p, 0)));
    }
    let mut queue: BinaryHeap<Reverse<(i64, u64, usize)>> = calls
        .iter()
        .enumerate()
        .map(|(i, (k, p, _))| Reverse((scenarios[*k].start_us + p.at_us, i as u64, i)))
        .collect();
    let mut order = calls.len() as u64;
    // An agent's session slot → its current session id (new_session changes it).
    let mut sessions: HashMap<String, String> = HashMap::new();
    let mut session_counter: HashMap<String, u32> = HashMap::new();
    let mut outcomes: Vec<Rng> = scenarios.iter().map(|s| outcome_rng(s)).collect();
    let mut out = Vec::new();
    while let Some(Reverse((ts, _, i))) = queue.pop() {
        background.run_until(Some(ts), policy, &mut state, approvals);
        let (k, p, attempt) = calls[i].clone();
        let s = scenarios[k];
        let at = ts - s.start_us;
        let session = sessions
            .get(&p.slot)
            .cloned()
            .unwrap_or_else(|| p.slot.clone());
        let call = Call {
            ts_us: ts,
            session: &session,
            agent: &p.agent,
            server: &s.server,
            tool: &p.tool,
            category: p.category,
            risk: None,
            args: &p.args,
            args_sha256: None,
        };
        let d = policy.decide_with(&mut state, &call, approvals);
        let verdict = d.verdict;
        let retry_after = d.retry_after_ms;
        let reservation = d.reservation.clone();
        let outcome = if verdict == Verdict::Allow {
            p.outcome(&mut outcomes[k])
        } else {
            Outcome::NotForwarded
        };
        state.settle(reservation, outcome);
        let event = SimEvent {
            outcome,
            ts_us: ts,
            agent: p.agent.clone(),
            session: session.clone(),
            tool: p.tool.clone(),
            category: p.category,
            args: p.args.clone(),
            decision: Some(Decision {
                reservation: Default::default(),
                ..d
            }),
            attempt,
        };
        background.scenario_call(k, &event);
        out.push((k, event));
        let Some(spec) = p.spec.map(|j| &s.agents[j]) else {
            continue;
        };
        if attempt >= spec.max_retries {
            continue;
        }
        if verdict == Verdict::Allow {
            // The call ran; an agent that ignores failures sends it again.
            let retry = match spec.on_error {
                OnError::RetrySame { every_us } if outcome.is_failure() => Some(at + every_us),
                _ => None,
            };
            if let Some(t) = retry.filter(|t| *t < s.duration_us) {
                calls.push((k, p, attempt + 1));
                queue.push(Reverse((s.start_us + t, order, calls.len() - 1)));
                order += 1;
            }
            continue;
        }
        let next_at = match spec.on_refusal {
            Reaction::GiveUp => None,
            Reaction::RetryAfter => retry_after
                .filter(|_| verdict == Verdict::Throttle)
                .map(|ms| at + ms as i64 * 1000),
            Reaction::Hammer { every_us } => Some(at + every_us),
            Reaction::NewSession => {
                let n = session_counter.entry(p.slot.clone()).or_insert(1);
                *n += 1;
                sessions.insert(p.slot.clone(), format!("{}-n{}", p.slot, n));
                Some(at + 1)
            }
        };
        if let Some(t) = next_at.filter(|t| *t < s.duration_us) {
            calls.push((k, p, attempt + 1));
            queue.push(Reverse((s.start_us + t, order, calls.len() - 1)));
            order += 1;
        }
    }
    background.run_until(None, policy, &mut state, approvals);
    out
}

/// Audit rows for simulated events (decision `unrecorded` when undecided).
pub fn to_rows(s: &Scenario, events: &[SimEvent], policy: Option<&Policy>) -> Vec<AuditRow> {
    let mut rng = Rng::new(s.seed ^ 0x5EED);
    events
        .iter()
        .map(|e| {
            let mut rand = [0u8; 10];
            for b in &mut rand {
                *b = rng.next_u64() as u8;
            }
            let event_id = uuid::Builder::from_unix_timestamp_millis(
                e.ts_us.div_euclid(1000).max(0) as u64,
                &rand,
            )
            .into_uuid()
            .to_string();
            let args = canonical_json(&e.args);
            let (decision, rule, reason, retry) = match &e.decision {
                None => (RecordedDecision::Unrecorded, None, None, None),
                Some(d) => (
                    d.verdict.into(),
                    d.rule.as_deref().map(str::to_string),
                    d.message.as_deref().map(str::to_string),
                    d.retry_after_ms,
                ),
            };
            let outcome = e.outcome;
            AuditRow {
                event_id,
                ts_us: e.ts_us,
                session_id: e.session.clone(),
                agent_id: e.agent.clone(),
                server: s.server.clone(),
                transport: Transport::Generated,
                method: "tools/call".into(),
                tool: Some(e.tool.clone()),
                category: e.category,
                args_sha256: Some(args_sha256(&e.args)),
                request_bytes: args.len() as u64,
                args_json: Some(args),
                decision,
                rule,
                reason,
                retry_after_ms: retry,
                policy_sha256: policy.map(|p| p.sha256.clone()).unwrap_or_default(),
                outcome,
                ..AuditRow::default()
            }
        })
        .collect()
}
