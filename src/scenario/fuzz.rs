//! `flightrec fuzz`: search for agent sessions that break an invariant.
//!
//! proptest draws call sequences — tools from the policy and the invariants,
//! several agents and sessions, gaps that are often zero or land on window
//! edges — decides them with the policy (fresh state per case), checks the
//! invariants, and on a violation shrinks the sequence (fewer calls, fewer
//! agents and sessions, smaller gaps) to a minimal one, which is written as a
//! scenario of explicit calls that `flightrec replay` reproduces.

use crate::policy::{ApprovalMode, Outcome, Policy};
use crate::scenario::invariants::{self, Invariant, Violation};
use crate::scenario::model::{ExplicitCall, Scenario};
use crate::scenario::sim::simulate;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct FuzzOptions {
    pub cases: u32,
    pub seed: u64,
    pub max_events: usize,
    /// A progress line on stderr (see [`crate::progress`]).
    pub progress: bool,
}

impl Default for FuzzOptions {
    fn default() -> Self {
        FuzzOptions {
            cases: 256,
            seed: 0,
            max_events: 64,
            progress: false,
        }
    }
}

/// One drawn call: gap before it (ms), agent, session, tool, argument
/// value, and whether it fails if allowed (a `tool_error`).
#[derive(Debug, Clone, PartialEq)]
struct Drawn {
    gap_ms: u64,
    agent: u8,
    session: u8,
    tool: u8,
    arg: u8,
    fails: bool,
}

pub enum FuzzResult {
    /// Nothing broke.
    Passed {
        cases: u32,
        events: u64,
        seconds: f64,
    },
    /// The smallest counterexample found.
    Failed {
        scenario: Box<Scenario>,
        violation: Violation,
        yaml: String,
        cases_run: u32,
    },
}

/// Tool names to draw: the policy's keys and the invariants' tools (globs
/// made concrete), plus one the policy does not mention.
pub fn fuzz_tools(policy: &Policy, invariants: &[Invariant]) -> Vec<String> {
    let concrete = |k: &str| k.replace(['*', '?'], "x").replace(['[', ']', '{', '}'], "");
    let mut tools: Vec<String> = Vec::new();
    for k in policy
        .tool_keys()
        .filter(|k| *k != "*")
        .map(concrete)
        .chain(
            invariants
                .iter()
                .filter_map(|i| i.tool_glob.as_deref())
                .map(concrete),
        )
    {
        if !tools.contains(&k) {
            tools.push(k);
        }
    }
    tools.push("unlisted_tool".into());
    tools
}

fn to_scenario(drawn: &[Drawn], tools: &[String]) -> Scenario {
    let mut at = 0i64;
    let calls = drawn
        .iter()
        .map(|d| {
            at += d.gap_ms as i64 * 1000;
            let agent = format!("agent-{}", d.agent);
            ExplicitCall {
                at_us: at,
                session: format!("{agent}-s{}", d.session),
                agent,
                tool: tools[d.tool as usize % tools.len()].clone(),
                category: None,
                args: serde_json::json!({"n": d.arg}),
                outcome: d.fails.then_some(Outcome::ToolError),
            }
        })
        .collect();
    Scenario {
        name: "fuzz counterexample".into(),
        seed: 0,
        start_us: 1_795_564_800_000_000,
        duration_us: at + 1_000_000,
        server: "fuzz".into(),
        agents: Vec::new(),
        calls,
        fail_rates: Vec::new(),
    }
}

pub fn run(policy: &Policy, invariants: &[Invariant], opts: &FuzzOptions) -> FuzzResult {
    let tools = fuzz_tools(policy, invariants);
    let n_tools = tools.len() as u8;
    // Gaps: often none (bursts), often small, sometimes a whole minute or
    // exactly on common window lengths.
    let gap = prop_oneof![
        3 => Just(0u64),
        3 => 0u64..2_000,
        1 => prop::sample::select(vec![1_000u64, 10_000, 60_000, 3_600_000]),
        1 => 0u64..120_000,
    ];
    // Arguments: mostly a few values, so identical calls (what repeat
    // limits count) are common; sometimes any. Failures: often enough to
    // trip circuit breakers.
    let arg = prop_oneof![3 => 0u8..3, 1 => any::<u8>()];
    let drawn = (
        gap,
        0u8..3,
        0u8..3,
        0u8..n_tools,
        arg,
        prop::bool::weighted(0.3),
    )
        .prop_map(|(gap_ms, agent, session, tool, arg, fails)| Drawn {
            gap_ms,
            agent,
            session,
            tool,
            arg,
            fails,
        });
    let strategy = prop::collection::vec(drawn, 1..=opts.max_events.max(1));
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&opts.seed.to_le_bytes());
    let config = Config {
        cases: opts.cases,
        failure_persistence: None,
        max_shrink_iters: 20_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let started = Instant::now();
    let events = std::cell::Cell::new(0u64);
    let cases = std::cell::Cell::new(0u32);
    let progress = std::cell::RefCell::new(
        crate::progress::Progress::new("fuzz", "cases", Some(u64::from(opts.cases)), opts.progress)
            .with_stride(1),
    );
    let result = runner.run(&strategy, |drawn| {
        cases.set(cases.get() + 1);
        progress.borrow_mut().inc(1);
        let scenario = to_scenario(&drawn, &tools);
        let decided = simulate(&scenario, Some(policy), ApprovalMode::Deny);
        events.set(events.get() + decided.len() as u64);
        match invariants::check(invariants, &decided) {
            None => Ok(()),
            Some(v) => Err(TestCaseError::fail(format!(
                "{}: {}",
                v.invariant, v.message
            ))),
        }
    });
    progress.borrow_mut().finish();
    match result {
        Ok(()) => FuzzResult::Passed {
            cases: opts.cases,
            events: events.get(),
            seconds: started.elapsed().as_secs_f64(),
        },
        Err(TestError::Fail(_, minimal)) => {
            let scenario = to_scenario(&minimal, &tools);
            let decided = simulate(&scenario, Some(policy), ApprovalMode::Deny);
            let violation =
                invariants::check(invariants, &decided).expect("the minimal case fails");
            let yaml = scenario_yaml(&scenario, &violation);
            FuzzResult::Failed {
                scenario: Box::new(scenario),
                violation,
                yaml,
                cases_run: cases.get(),
            }
        }
        Err(TestError::Abort(reason)) => FuzzResult::Failed {
            scenario: Box::new(to_scenario(&[], &tools)),
            violation: Violation {
                invariant: "(fuzzer)".into(),
                event: 0,
                message: format!("aborted: {reason}"),
            },
            yaml: String::new(),
            cases_run: cases.get(),
        },
    }
}

/// A counterexample as a scenario file of explicit calls.
pub fn scenario_yaml(s: &Scenario, v: &Violation) -> String {
    let mut y = format!(
        "# flightrec fuzz counterexample: invariant \"{}\" breaks at call {} ({}).\n# Reproduce: flightrec replay THIS_FILE --policy POLICY --invariants INVARIANTS\nversion: 1\nname: {}\nseed: 0\nstart: {}\nduration: {}ms\nserver: {}\ncalls:\n",
        v.invariant,
        v.event + 1,
        v.message,
        serde_json::Value::from(s.name.as_str()),
        crate::time::format_us(s.start_us),
        s.duration_us / 1000,
        s.server
    );
    for c in &s.calls {
        let outcome = c
            .outcome
            .map(|o| format!(", outcome: {}", o.as_str()))
            .unwrap_or_default();
        y.push_str(&format!(
            "  - {{at: {}ms, agent: {}, session: {}, tool: {}, args: {}{outcome}}}\n",
            c.at_us / 1000,
            serde_json::Value::from(c.agent.as_str()),
            serde_json::Value::from(c.session.as_str()),
            serde_json::Value::from(c.tool.as_str()),
            c.args
        ));
    }
    y
}
