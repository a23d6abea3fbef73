//! Replay with scenarios: a closed-loop simulation per candidate policy,
//! because how an agent reacts depends on what the policy told it. Recorded
//! logs given in the same run are replayed on the same clock against the
//! same counters, interleaved in time order with the scenarios' agents: what
//! the candidate would do to today's traffic plus a runaway on top of it.

use crate::audit::AuditError;
use crate::policy::{ApprovalMode, Policy, PolicyState, Verdict};
use crate::replay::engine::{
    Candidate, RecordedDecider, ReplayConfig, ReplayError, recorded_stream,
};
use crate::replay::report::{Accumulator, AgentCalls, Report, Seen};
use crate::replay::source::{EventKey, EventNames, Pending, SourceStats};
use crate::scenario::Scenario;
use crate::scenario::sim::{Background, SimEvent, plan, simulate_with};
use std::collections::BTreeMap;
use std::iter::Peekable;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A scenario input: its name in the report and the loaded scenario.
pub struct ScenarioInput {
    pub name: String,
    pub scenario: Scenario,
}

/// What a mixed replay produced.
pub struct MixedReplay {
    pub report: Report,
    /// Per candidate, the scenarios' decided calls (for invariant checks).
    pub scenario_events: Vec<Vec<SimEvent>>,
}

/// The recorded calls of a mixed run, decided as the simulation's clock
/// reaches them.
struct Recorded<'a, I: Iterator<Item = Result<Pending, AuditError>>> {
    events: Peekable<I>,
    decider: RecordedDecider,
    acc: &'a mut Accumulator,
    per_agent: &'a mut BTreeMap<String, AgentCalls>,
    count: u64,
    first_ts: Option<i64>,
    last_ts: Option<i64>,
    error: Option<AuditError>,
    /// Scenario names (the event ids of their calls are `name#n`).
    names: &'a [String],
    /// Calls seen so far per scenario.
    seq: Vec<usize>,
}

impl<I: Iterator<Item = Result<Pending, AuditError>>> Recorded<'_, I> {
    fn seen(&mut self, ts: i64) {
        self.first_ts = Some(self.first_ts.map_or(ts, |f| f.min(ts)));
        self.last_ts = Some(self.last_ts.map_or(ts, |l| l.max(ts)));
    }
}

impl<I: Iterator<Item = Result<Pending, AuditError>>> Background for Recorded<'_, I> {
    fn run_until(
        &mut self,
        until: Option<i64>,
        policy: &Policy,
        state: &mut PolicyState,
        approvals: ApprovalMode,
    ) {
        loop {
            if self.error.is_some() {
                return;
            }
            let due = match self.events.peek() {
                None => break,
                Some(Err(_)) => true,
                Some(Ok((batch, row))) => until.is_none_or(|t| batch.ts(*row) <= t),
            };
            if !due {
                break;
            }
            match self.events.next() {
                Some(Ok((batch, row))) => {
                    let e = batch.event(row);
                    self.decider
                        .decide(policy, state, &e, approvals, self.acc, |_| ());
                    self.count += 1;
                    self.seen(e.ts_us());
                }
                Some(Err(err)) => self.error = Some(err),
                None => break,
            }
        }
        // Rollbacks whose answers arrived by then apply before the
        // scenario's call.
        match until {
            Some(t) => self.decider.settle_until(state, t),
            None => self.decider.finish(state),
        }
    }

    fn scenario_call(&mut self, scenario: usize, e: &SimEvent) {
        let d = e.decision.as_ref().expect("simulated with a policy");
        self.seq[scenario] += 1;
        let id = format!("{}#{}", self.names[scenario], self.seq[scenario]);
        let tool = self.acc.tool_slot(&e.tool);
        self.acc.add(Seen {
            ts_us: e.ts_us,
            event_id: &|| EventKey::Id(id.clone()),
            tool,
            agent: &e.agent,
            session: &e.session,
            recorded: None,
            never_forwarded: false,
            approval: None,
            verdict: d.verdict,
            rule: d.rule.as_deref(),
            guard: d.guard,
        });
        let a = self
            .per_agent
            .entry(e.agent.clone())
            .or_insert_with(|| AgentCalls {
                agent: e.agent.clone(),
                calls: 0,
                allowed: 0,
                retries: 0,
            });
        a.calls += 1;
        a.allowed += u64::from(d.verdict == Verdict::Allow);
        a.retries += u64::from(e.attempt > 0);
        self.seen(e.ts_us);
    }
}

/// Replays `scenarios` (closed loop) and `recorded` inputs together against
/// each candidate. With no recorded input this is a plain scenario replay.
pub fn replay_mixed(
    scenarios: &[ScenarioInput],
    recorded: &[PathBuf],
    candidates: &[Candidate],
    config: &ReplayConfig,
) -> Result<MixedReplay, ReplayError> {
    let planned: u64 = scenarios
        .iter()
        .map(|s| plan(&s.scenario).len() as u64)
        .sum();
    let fields = crate::replay::engine::reads_of(candidates);
    let refs: Vec<&Scenario> = scenarios.iter().map(|s| &s.scenario).collect();
    let names: Vec<String> = scenarios.iter().map(|s| s.scenario.name.clone()).collect();
    let mut reports = Vec::new();
    let mut all_events = Vec::new();
    let mut stats = SourceStats::default();
    let (mut recorded_count, mut first_ts, mut last_ts) = (0, None, None);
    for c in candidates {
        // Each candidate reads the logs again: the simulation decides them
        // in step with its agents, on the candidate's own counters.
        let run_stats = Arc::new(Mutex::new(SourceStats::default()));
        let events = recorded_stream(recorded, config, fields, run_stats.clone())?;
        let mut acc =
            Accumulator::new(&c.name, &c.file, &c.policy.sha256).with_guards(c.policy.has_guards());
        let mut per_agent = BTreeMap::new();
        let mut background = Recorded {
            events: crate::replay::source::events_of(events).peekable(),
            decider: RecordedDecider::default(),
            acc: &mut acc,
            per_agent: &mut per_agent,
            count: 0,
            first_ts: None,
            last_ts: None,
            error: None,
            names: &names,
            seq: vec![0; scenarios.len()],
        };
        let decided = simulate_with(&refs, &c.policy, config.approvals, &mut background);
        if let Some(e) = background.error.take() {
            return Err(e.into());
        }
        recorded_count = background.count;
        first_ts = background.first_ts;
        last_ts = background.last_ts;
        let names = EventNames::read(acc.rows_to_name())?;
        let mut report = acc.finish(&mut |key| names.name(key));
        report.agents_made = per_agent.into_values().collect();
        reports.push(report);
        all_events.push(decided.into_iter().map(|(_, e)| e).collect());
        stats = run_stats.lock().expect("stats lock").clone();
    }
    let mut inputs: Vec<String> = recorded.iter().map(|p| p.display().to_string()).collect();
    inputs.extend(scenarios.iter().map(|s| s.name.clone()));
    Ok(MixedReplay {
        report: Report {
            flightrec_replay_report: 1,
            inputs,
            events: recorded_count + planned,
            skipped_non_calls: stats.non_calls,
            filtered_out: stats.filtered,
            late_events: stats.late,
            first_ts: first_ts.map(crate::time::format_us),
            last_ts: last_ts.map(crate::time::format_us),
            approvals: config.approvals,
            candidates: reports,
        },
        scenario_events: all_events,
    })
}
