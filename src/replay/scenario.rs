//! Replay of a scenario: closed-loop simulation per candidate policy,
//! because how an agent reacts depends on what the policy told it.

use crate::policy::ApprovalMode;
use crate::replay::engine::Candidate;
use crate::replay::report::{Accumulator, AgentCalls, Report};
use crate::scenario::Scenario;
use crate::scenario::sim::{SimEvent, plan, simulate};
use std::collections::BTreeMap;

/// Simulates the scenario against each candidate; returns the report and
/// each candidate's decided events (for invariant checks).
pub fn replay_scenario(
    s: &Scenario,
    input: &str,
    candidates: &[Candidate],
    approvals: ApprovalMode,
) -> (Report, Vec<Vec<SimEvent>>) {
    let planned = plan(s);
    let mut reports = Vec::new();
    let mut all_events = Vec::new();
    for c in candidates {
        let events = simulate(s, Some(&c.policy), approvals);
        let mut acc = Accumulator::new(&c.name, &c.file, &c.policy.sha256);
        let mut per_agent: BTreeMap<&str, AgentCalls> = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            let d = e.decision.as_ref().expect("simulated with a policy");
            let id = format!("{}#{}", s.name, i + 1);
            acc.add(
                e.ts_us,
                &id,
                &e.tool,
                &e.agent,
                &e.session,
                d.verdict,
                d.rule.as_deref(),
                None,
                false,
            );
            let a = per_agent.entry(&e.agent).or_insert_with(|| AgentCalls {
                agent: e.agent.clone(),
                calls: 0,
                allowed: 0,
                retries: 0,
            });
            a.calls += 1;
            a.allowed += u64::from(d.verdict == crate::policy::Verdict::Allow);
            a.retries += u64::from(e.attempt > 0);
        }
        let mut report = acc.finish();
        report.agents_made = per_agent.into_values().collect();
        reports.push(report);
        all_events.push(events);
    }
    let report = Report {
        flightrec_replay_report: 1,
        inputs: vec![input.to_string()],
        events: planned.len() as u64,
        skipped_non_calls: 0,
        filtered_out: 0,
        late_events: 0,
        first_ts: planned
            .first()
            .map(|p| crate::time::format_us(s.start_us + p.at_us)),
        last_ts: planned
            .last()
            .map(|p| crate::time::format_us(s.start_us + p.at_us)),
        approvals: match approvals {
            ApprovalMode::Deny => "deny".into(),
            ApprovalMode::Grant => "grant".into(),
        },
        candidates: reports,
    };
    (report, all_events)
}
