//! What replay reports, per candidate policy: totals, tool × verdict, top
//! agents and sessions by refusals, when each rule first fired, the diff
//! against the recorded decisions, and a timeline. Rendered as a terminal
//! table, JSON (the stable structure documented in docs/replay.md), Markdown
//! or one self-contained HTML page.

use crate::audit::schema::{ApprovalOutcome, ColumnValue};
use crate::policy::instances::Instances;
use crate::policy::{Guard, Verdict};
use crate::replay::source::{EventKey, RowAt};
use crate::time::format_us;
use serde::Serialize;
use std::collections::BTreeMap;

/// hashbrown for `entry_ref`: one lookup by `&str`, allocating only new keys.
type HashMap<K, V> = hashbrown::HashMap<K, V>;
use std::fmt::Write as _;

const EXAMPLES: usize = 5;
const TOP: usize = 10;
const MAX_BUCKETS: usize = 240;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub allow: u64,
    pub deny: u64,
    pub throttle: u64,
    pub approval: u64,
}

impl Counts {
    pub fn add(&mut self, v: Verdict) {
        match v {
            Verdict::Allow => self.allow += 1,
            Verdict::Deny => self.deny += 1,
            Verdict::Throttle => self.throttle += 1,
            Verdict::Approval => self.approval += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.allow + self.deny + self.throttle + self.approval
    }

    pub fn refused(&self) -> u64 {
        self.deny + self.throttle + self.approval
    }

    fn merge(&mut self, o: &Counts) {
        self.allow += o.allow;
        self.deny += o.deny;
        self.throttle += o.throttle;
        self.approval += o.approval;
    }
}

/// Events that changed verdict, with a few examples' ids (`Id` is an
/// [`EventKey`] while the report is being made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change<Id = String> {
    pub count: u64,
    pub examples: Vec<Id>,
}

impl<Id> Default for Change<Id> {
    fn default() -> Self {
        Change {
            count: 0,
            examples: Vec::new(),
        }
    }
}

impl Change<EventKey> {
    fn add(&mut self, event_id: &dyn Fn() -> EventKey) {
        self.count += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(event_id());
        }
    }
}

impl<Id> Change<Id> {
    fn named<N>(self, name: &mut dyn FnMut(Id) -> N) -> Change<N> {
        Change {
            count: self.count,
            examples: self.examples.into_iter().map(name).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diff<Id = String> {
    /// Events with a recorded decision to compare against.
    pub compared: u64,
    pub unchanged: u64,
    /// Recorded allow, now refused (deny, throttle or approval).
    pub newly_blocked: Change<Id>,
    /// Recorded refused, now allowed.
    pub newly_allowed: Change<Id>,
    /// Refused both times, but with another verdict (e.g. deny → throttle).
    pub changed: Change<Id>,
}

impl<Id> Default for Diff<Id> {
    fn default() -> Self {
        Diff {
            compared: 0,
            unchanged: 0,
            newly_blocked: Change::default(),
            newly_allowed: Change::default(),
            changed: Change::default(),
        }
    }
}

impl<Id> Diff<Id> {
    fn named<N>(self, name: &mut dyn FnMut(Id) -> N) -> Diff<N> {
        Diff {
            compared: self.compared,
            unchanged: self.unchanged,
            newly_blocked: self.newly_blocked.named(name),
            newly_allowed: self.newly_allowed.named(name),
            changed: self.changed.named(name),
        }
    }

    fn ids(&self) -> impl Iterator<Item = &Id> {
        [&self.newly_blocked, &self.newly_allowed, &self.changed]
            .into_iter()
            .flat_map(|c| &c.examples)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirstFired<Id = String> {
    pub rule: String,
    pub ts: String,
    pub event_id: Id,
    pub verdict: Verdict,
    pub count: u64,
}

impl<Id> FirstFired<Id> {
    fn named<N>(self, name: &mut dyn FnMut(Id) -> N) -> FirstFired<N> {
        FirstFired {
            rule: self.rule,
            ts: self.ts,
            event_id: name(self.event_id),
            verdict: self.verdict,
            count: self.count,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Named {
    pub name: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bucket {
    pub start: String,
    #[serde(flatten)]
    pub counts: Counts,
}

/// The finished report for one candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CandidateReport {
    pub policy: String,
    pub file: String,
    pub sha256: String,
    pub totals: Counts,
    pub by_tool: Vec<Named>,
    pub top_agents: Vec<Named>,
    pub top_sessions: Vec<Named>,
    pub rules: Vec<FirstFired>,
    pub diff: Diff,
    /// Calls the recording shows were never forwarded but this policy allows:
    /// replay assumes they would have succeeded.
    pub assumed_successful: u64,
    pub timeline_bucket_seconds: u64,
    pub timeline: Vec<Bucket>,
    /// For scenario inputs: per agent, calls made (retries included) and
    /// how many got through.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub agents_made: Vec<AgentCalls>,
    /// What the candidate's runaway guards (`repeat_limit`,
    /// `circuit_breaker`) stopped; absent when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardReport>,
    /// The input's calls that needed a human, by how their approval ended
    /// (schema 1.1's `approval`): `granted`, `denied`, `timeout`, …
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub recorded_approvals: BTreeMap<String, u64>,
}

/// What a candidate's runaway guards stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GuardReport {
    /// Calls refused by a `repeat_limit` rule.
    pub repeat_limit: u64,
    /// Calls refused by an open (or busy half-open) circuit breaker.
    pub circuit_breaker: u64,
    /// Refused calls that reached the server when recorded (recorded
    /// `allow`, or generated calls, which have no recorded decision): the
    /// calls the guard would have kept from the server.
    pub calls_saved: u64,
    /// Sessions in which a guard refused at least one call.
    pub sessions_tripped: u64,
    /// The first trip of each session (earliest first, at most 20).
    pub first_trips: Vec<Trip>,
}

/// The first call a guard refused in one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trip<Id = String> {
    pub session: String,
    pub agent: String,
    pub tool: String,
    pub guard: Guard,
    pub rule: String,
    pub ts: String,
    pub event_id: Id,
    /// Calls the guards refused in this session in all.
    pub refused: u64,
}

impl<Id> Trip<Id> {
    fn named<N>(self, name: &mut dyn FnMut(Id) -> N) -> Trip<N> {
        Trip {
            session: self.session,
            agent: self.agent,
            tool: self.tool,
            guard: self.guard,
            rule: self.rule,
            ts: self.ts,
            event_id: name(self.event_id),
            refused: self.refused,
        }
    }
}

/// The trips a report shows: the earliest [`TRIPS`] (RFC 3339 text in
/// UTC sorts by time; ties by session).
fn first_trips<'t, Id>(trips: impl Iterator<Item = &'t Trip<Id>>) -> Vec<&'t Trip<Id>>
where
    Id: 't,
{
    let mut first: Vec<&Trip<Id>> = trips.collect();
    first.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.session.cmp(&b.session)));
    first.truncate(TRIPS);
    first
}

const TRIPS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentCalls {
    pub agent: String,
    pub calls: u64,
    pub allowed: u64,
    pub retries: u64,
}

/// Accumulates one candidate's report while events stream past. Memory grows
/// with distinct tools, rules, and agents/sessions that had refusals — not
/// with events.
pub struct Accumulator {
    policy: String,
    file: String,
    sha256: String,
    totals: Counts,
    /// Each tool seen, in the order first seen ([`ToolSlot`] indexes it).
    tools: Vec<Named>,
    tool_slots: HashMap<String, ToolSlot>,
    /// Refusals by agent and by session, in the counters' table (a short
    /// id is found by two word compares: no string hash or `memcmp` per
    /// refused call).
    by_agent: Instances<Counts>,
    by_session: Instances<Counts>,
    /// Each rule's first firing, in the order they first fired; the first
    /// few are found by a scan (a policy's refusals come from a handful of
    /// rules), the rest through `rule_index`.
    rules: Vec<FirstFired<EventKey>>,
    rule_index: HashMap<String, usize>,
    diff: Diff<EventKey>,
    assumed_successful: u64,
    bucket_us: i64,
    buckets: BTreeMap<i64, Counts>,
    /// The bucket being filled (events arrive in time order).
    current: Option<(i64, Counts)>,
    /// `Some` when the candidate has runaway guards; trips per session.
    guard: Option<(GuardReport, HashMap<String, Trip<EventKey>>)>,
    /// Calls by recorded approval outcome (indexed by the outcome).
    recorded_approvals: [u64; ApprovalOutcome::VALUES.len()],
}

/// Where one tool's counts sit in an [`Accumulator`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ToolSlot(u32);

/// One decided call, as the report sees it.
pub struct Seen<'a> {
    pub ts_us: i64,
    /// The event's id, read only when the report keeps it (an example
    /// of a change, a rule's first firing, a guard's first trip).
    pub event_id: &'a dyn Fn() -> EventKey,
    /// The tool's place in this report ([`Accumulator::tool_slot`]).
    pub tool: ToolSlot,
    pub agent: &'a str,
    pub session: &'a str,
    /// The recorded verdict (`None` for generated calls).
    pub recorded: Option<Verdict>,
    /// The recording shows the call was never forwarded.
    pub never_forwarded: bool,
    /// How the recorded approval ended, if the call needed one.
    pub approval: Option<crate::audit::schema::ApprovalOutcome>,
    /// The candidate's verdict, the rule that decided and, for a throttle
    /// by a runaway guard, which one.
    pub verdict: Verdict,
    pub rule: Option<&'a str>,
    pub guard: Option<Guard>,
}

impl Accumulator {
    pub fn new(policy: &str, file: &str, sha256: &str) -> Self {
        Accumulator {
            policy: policy.to_string(),
            file: file.to_string(),
            sha256: sha256.to_string(),
            totals: Counts::default(),
            tools: Vec::new(),
            tool_slots: HashMap::default(),
            by_agent: Instances::default(),
            by_session: Instances::default(),
            rules: Vec::new(),
            rule_index: HashMap::default(),
            diff: Diff::default(),
            assumed_successful: 0,
            bucket_us: 60_000_000,
            buckets: BTreeMap::new(),
            current: None,
            guard: None,
            recorded_approvals: [0; ApprovalOutcome::VALUES.len()],
        }
    }

    /// The place of a tool's counts in this report (made on first sight):
    /// find it once per distinct tool, then count calls by it.
    pub fn tool_slot(&mut self, tool: &str) -> ToolSlot {
        if let Some(&slot) = self.tool_slots.get(tool) {
            return slot;
        }
        let slot = ToolSlot(u32::try_from(self.tools.len()).expect("fewer than 2^32 tools"));
        self.tools.push(Named {
            name: tool.to_string(),
            counts: Counts::default(),
        });
        self.tool_slots.insert(tool.to_string(), slot);
        slot
    }

    /// Adds the guard section (for a candidate with runaway guards).
    pub fn with_guards(mut self, has_guards: bool) -> Self {
        if has_guards {
            self.guard = Some(Default::default());
        }
        self
    }

    pub fn add(&mut self, e: Seen<'_>) {
        let Seen {
            ts_us,
            event_id,
            tool,
            agent,
            session,
            recorded,
            never_forwarded,
            approval,
            verdict,
            rule,
            guard,
        } = e;
        if let Some(a) = approval {
            self.recorded_approvals[a as usize] += 1;
        }
        if let (Some(kind), Some((g, trips))) = (guard, &mut self.guard) {
            match kind {
                Guard::RepeatLimit => g.repeat_limit += 1,
                Guard::CircuitBreaker => g.circuit_breaker += 1,
            }
            if recorded.is_none_or(|r| r == Verdict::Allow) && !never_forwarded {
                g.calls_saved += 1;
            }
            match trips.get_mut(session) {
                Some(t) => t.refused += 1,
                None => {
                    trips.insert(
                        session.to_string(),
                        Trip {
                            session: session.to_string(),
                            agent: agent.to_string(),
                            tool: self.tools[tool.0 as usize].name.clone(),
                            guard: kind,
                            rule: rule.unwrap_or_default().to_string(),
                            ts: format_us(ts_us),
                            event_id: event_id(),
                            refused: 1,
                        },
                    );
                }
            }
        }
        self.totals.add(verdict);
        self.tools[tool.0 as usize].counts.add(verdict);
        if verdict != Verdict::Allow {
            self.by_agent
                .get_or_insert_with(agent, Counts::default)
                .1
                .add(verdict);
            self.by_session
                .get_or_insert_with(session, Counts::default)
                .1
                .add(verdict);
        }
        if let Some(rule) = rule {
            const SCANNED: usize = 8;
            let known = self
                .rules
                .iter()
                .take(SCANNED)
                .position(|f| f.rule == rule)
                .or_else(|| {
                    (self.rules.len() > SCANNED)
                        .then(|| self.rule_index.get(rule).copied())
                        .flatten()
                });
            match known {
                Some(i) => self.rules[i].count += 1,
                None => {
                    self.rule_index.insert(rule.to_string(), self.rules.len());
                    self.rules.push(FirstFired {
                        rule: rule.to_string(),
                        ts: format_us(ts_us),
                        event_id: event_id(),
                        verdict,
                        count: 1,
                    });
                }
            }
        }
        if let Some(rec) = recorded {
            self.diff.compared += 1;
            match (rec == Verdict::Allow, verdict == Verdict::Allow) {
                _ if rec == verdict => self.diff.unchanged += 1,
                (true, false) => self.diff.newly_blocked.add(event_id),
                (false, true) => self.diff.newly_allowed.add(event_id),
                _ => self.diff.changed.add(event_id),
            }
        }
        if never_forwarded && verdict == Verdict::Allow {
            self.assumed_successful += 1;
        }
        // The current bucket's start is always aligned to the width: the
        // common case is a range check, not a division.
        let width = self.bucket_us;
        match &mut self.current {
            Some((b, c)) if ts_us >= *b && ts_us - *b < width => c.add(verdict),
            _ => {
                let bucket = ts_us.div_euclid(width) * width;
                self.flush_bucket();
                let mut c = Counts::default();
                c.add(verdict);
                self.current = Some((bucket, c));
                if self.buckets.len() > MAX_BUCKETS {
                    self.widen_buckets();
                }
            }
        }
    }

    fn flush_bucket(&mut self) {
        if let Some((b, c)) = self.current.take() {
            let start = b.div_euclid(self.bucket_us) * self.bucket_us;
            self.buckets.entry(start).or_default().merge(&c);
        }
    }

    /// Doubles the bucket width, merging neighbours, to keep the timeline small.
    fn widen_buckets(&mut self) {
        let current = self.current.take();
        self.bucket_us *= 2;
        let old = std::mem::take(&mut self.buckets);
        for (start, c) in old {
            let b = start.div_euclid(self.bucket_us) * self.bucket_us;
            self.buckets.entry(b).or_default().merge(&c);
        }
        if let Some((b, c)) = current {
            self.current = Some((b.div_euclid(self.bucket_us) * self.bucket_us, c));
        }
    }

    /// The rows whose ids the finished report will show and that were
    /// not read with their events (read them, then [`Accumulator::finish`]).
    pub fn rows_to_name(&self) -> Vec<RowAt> {
        let trips = self.guard.iter().flat_map(|(_, t)| first_trips(t.values()));
        let kept = self
            .diff
            .ids()
            .chain(self.rules.iter().map(|r| &r.event_id))
            .chain(trips.map(|t| &t.event_id));
        kept.filter_map(|k| match k {
            EventKey::Id(_) => None,
            EventKey::At(at) => Some(at.clone()),
        })
        .collect()
    }

    /// The report, each kept event named by `name` (see
    /// [`Accumulator::rows_to_name`]).
    pub fn finish(mut self, name: &mut dyn FnMut(EventKey) -> String) -> CandidateReport {
        self.flush_bucket();
        let top = |m: Instances<Counts>, limit: usize| {
            let mut v: Vec<Named> = m
                .iter()
                .map(|(name, counts)| Named {
                    name: name.to_string(),
                    counts: *counts,
                })
                .collect();
            v.sort_by(|a, b| {
                b.counts
                    .refused()
                    .cmp(&a.counts.refused())
                    .then_with(|| a.name.cmp(&b.name))
            });
            v.truncate(limit);
            v
        };
        let mut by_tool = self.tools;
        by_tool.sort_by(|a, b| {
            b.counts
                .total()
                .cmp(&a.counts.total())
                .then_with(|| a.name.cmp(&b.name))
        });
        let guard = self.guard.map(|(mut g, trips)| {
            g.sessions_tripped = trips.len() as u64;
            g.first_trips = first_trips(trips.values())
                .into_iter()
                .map(|t| t.clone().named(name))
                .collect();
            g
        });
        let rules = self.rules.into_iter().map(|r| r.named(name)).collect();
        CandidateReport {
            policy: self.policy,
            file: self.file,
            sha256: self.sha256,
            totals: self.totals,
            by_tool,
            top_agents: top(self.by_agent, TOP),
            top_sessions: top(self.by_session, TOP),
            rules,
            diff: self.diff.named(name),
            assumed_successful: self.assumed_successful,
            timeline_bucket_seconds: (self.bucket_us / 1_000_000) as u64,
            timeline: self
                .buckets
                .into_iter()
                .map(|(start, counts)| Bucket {
                    start: format_us(start),
                    counts,
                })
                .collect(),
            agents_made: Vec::new(),
            guard,
            recorded_approvals: ApprovalOutcome::VALUES
                .iter()
                .zip(self.recorded_approvals)
                .filter(|(_, n)| *n > 0)
                .map(|(a, n)| (a.to_string(), n))
                .collect(),
        }
    }
}

impl GuardReport {
    /// One line: what the guards stopped.
    pub fn summary(&self) -> String {
        format!(
            "runaway guard: {} repeat(s) and {} call(s) to an open circuit refused in {} session(s); {} call(s) kept from the server",
            self.repeat_limit, self.circuit_breaker, self.sessions_tripped, self.calls_saved
        )
    }
}

/// The whole replay report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Version of this JSON structure.
    pub flightrec_replay_report: u32,
    pub inputs: Vec<String>,
    pub events: u64,
    pub skipped_non_calls: u64,
    pub filtered_out: u64,
    pub late_events: u64,
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
    pub approvals: crate::policy::ApprovalMode,
    pub candidates: Vec<CandidateReport>,
}

/// How `flightrec replay` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReportFormat {
    /// A plain-text table for the terminal
    #[default]
    Table,
    /// The report's JSON structure (docs/replay.md)
    Json,
    Markdown,
    /// A self-contained page with a timeline
    Html,
}

impl Report {
    /// The report in `format`.
    pub fn render(&self, format: ReportFormat) -> String {
        match format {
            ReportFormat::Json => self.to_json() + "\n",
            ReportFormat::Markdown => self.to_markdown(),
            ReportFormat::Html => self.to_html(),
            ReportFormat::Table => self.to_table(),
        }
    }

    /// True when any candidate decides any recorded event differently.
    pub fn has_changes(&self) -> bool {
        self.candidates.iter().any(|c| {
            c.diff.newly_blocked.count + c.diff.newly_allowed.count + c.diff.changed.count > 0
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    fn header_lines(&self) -> Vec<String> {
        vec![
            format!("inputs: {}", self.inputs.join(", ")),
            format!(
                "{} calls replayed ({} → {}), {} other requests skipped, {} filtered out, {} arrived late",
                self.events,
                self.first_ts.as_deref().unwrap_or("-"),
                self.last_ts.as_deref().unwrap_or("-"),
                self.skipped_non_calls,
                self.filtered_out,
                self.late_events
            ),
            format!(
                "approvals: {} (what an approval verdict does to counters)",
                self.approvals
            ),
        ]
    }

    pub fn to_table(&self) -> String {
        let mut s = String::new();
        for l in self.header_lines() {
            let _ = writeln!(s, "{l}");
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<28} {:>9} {:>9} {:>9} {:>9}   {:>14} {:>14} {:>9}",
            "policy",
            "allow",
            "deny",
            "throttle",
            "approval",
            "newly blocked",
            "newly allowed",
            "changed"
        );
        for c in &self.candidates {
            let _ = writeln!(
                s,
                "{:<28} {:>9} {:>9} {:>9} {:>9}   {:>14} {:>14} {:>9}",
                truncate(&c.policy, 28),
                c.totals.allow,
                c.totals.deny,
                c.totals.throttle,
                c.totals.approval,
                c.diff.newly_blocked.count,
                c.diff.newly_allowed.count,
                c.diff.changed.count
            );
        }
        for c in &self.candidates {
            let _ = writeln!(s, "\n== {} ({})", c.policy, c.file);
            let _ = writeln!(
                s,
                "  {:<32} {:>8} {:>8} {:>8} {:>8}",
                "tool", "allow", "deny", "throttle", "approval"
            );
            for t in c.by_tool.iter().take(15) {
                let _ = writeln!(
                    s,
                    "  {:<32} {:>8} {:>8} {:>8} {:>8}",
                    truncate(&t.name, 32),
                    t.counts.allow,
                    t.counts.deny,
                    t.counts.throttle,
                    t.counts.approval
                );
            }
            if !c.rules.is_empty() {
                let _ = writeln!(s, "  rules fired (first time):");
                for r in &c.rules {
                    let _ = writeln!(
                        s,
                        "    {:<36} {:>7}× {:<9} first {} ({})",
                        truncate(&r.rule, 36),
                        r.count,
                        r.verdict.as_str(),
                        r.ts,
                        r.event_id
                    );
                }
            }
            for (what, list) in [("agents", &c.top_agents), ("sessions", &c.top_sessions)] {
                if !list.is_empty() {
                    let top: Vec<String> = list
                        .iter()
                        .take(5)
                        .map(|n| format!("{} ({})", n.name, n.counts.refused()))
                        .collect();
                    let _ = writeln!(s, "  most refused {what}: {}", top.join(", "));
                }
            }
            let d = &c.diff;
            let _ = writeln!(
                s,
                "  vs recorded: {} compared, {} unchanged",
                d.compared, d.unchanged
            );
            for (what, ch) in [
                ("newly blocked", &d.newly_blocked),
                ("newly allowed", &d.newly_allowed),
                ("changed", &d.changed),
            ] {
                if ch.count > 0 {
                    let _ = writeln!(
                        s,
                        "    {what}: {} (e.g. {})",
                        ch.count,
                        ch.examples.join(", ")
                    );
                }
            }
            for a in &c.agents_made {
                let _ = writeln!(
                    s,
                    "  agent {} made {} call(s) ({} retries); {} got through",
                    a.agent, a.calls, a.retries, a.allowed
                );
            }
            if !c.recorded_approvals.is_empty() {
                let parts: Vec<String> = c
                    .recorded_approvals
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect();
                let _ = writeln!(s, "  recorded approvals: {}", parts.join(", "));
            }
            if let Some(g) = &c.guard {
                let _ = writeln!(s, "  {}", g.summary());
                for t in &g.first_trips {
                    let _ = writeln!(
                        s,
                        "    session {} ({}): {} {} first at {} by \"{}\" ({}), {} refused",
                        t.session,
                        t.agent,
                        t.tool,
                        t.guard.as_str(),
                        t.ts,
                        t.rule,
                        t.event_id,
                        t.refused
                    );
                }
            }
            if c.assumed_successful > 0 {
                let _ = writeln!(
                    s,
                    "  note: {} call(s) were never forwarded when recorded but this policy allows them; replay assumes they succeeded",
                    c.assumed_successful
                );
            }
        }
        s
    }

    pub fn to_markdown(&self) -> String {
        let mut s = String::from("# flightrec replay report\n\n");
        for l in self.header_lines() {
            let _ = writeln!(s, "- {l}");
        }
        let _ = writeln!(
            s,
            "\n| policy | allow | deny | throttle | approval | newly blocked | newly allowed | changed |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for c in &self.candidates {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                md(&c.policy),
                c.totals.allow,
                c.totals.deny,
                c.totals.throttle,
                c.totals.approval,
                c.diff.newly_blocked.count,
                c.diff.newly_allowed.count,
                c.diff.changed.count
            );
        }
        for c in &self.candidates {
            let _ = writeln!(
                s,
                "\n## {}\n\n`{}` (sha256 `{}`)\n",
                md(&c.policy),
                md(&c.file),
                &c.sha256[..12.min(c.sha256.len())]
            );
            let _ = writeln!(
                s,
                "| tool | allow | deny | throttle | approval |\n|---|---:|---:|---:|---:|"
            );
            for t in &c.by_tool {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    md(&t.name),
                    t.counts.allow,
                    t.counts.deny,
                    t.counts.throttle,
                    t.counts.approval
                );
            }
            if !c.rules.is_empty() {
                let _ = writeln!(
                    s,
                    "\n| rule | verdict | times | first fired | event |\n|---|---|---:|---|---|"
                );
                for r in &c.rules {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | `{}` |",
                        md(&r.rule),
                        r.verdict.as_str(),
                        r.count,
                        r.ts,
                        r.event_id
                    );
                }
            }
            let d = &c.diff;
            let _ = writeln!(
                s,
                "\nAgainst the recorded decisions: {} compared, {} unchanged, {} newly blocked, {} newly allowed, {} changed.",
                d.compared,
                d.unchanged,
                d.newly_blocked.count,
                d.newly_allowed.count,
                d.changed.count
            );
            for (what, ch) in [
                ("Newly blocked", &d.newly_blocked),
                ("Newly allowed", &d.newly_allowed),
                ("Changed", &d.changed),
            ] {
                if ch.count > 0 {
                    let _ = writeln!(
                        s,
                        "- {what}, e.g.: {}",
                        ch.examples
                            .iter()
                            .map(|e| format!("`{e}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
            if let Some(g) = &c.guard {
                let _ = writeln!(s, "\n{}", md(&g.summary()));
                if !g.first_trips.is_empty() {
                    let _ = writeln!(
                        s,
                        "\n| session | agent | tool | guard | rule | first trip | refused |\n|---|---|---|---|---|---|---:|"
                    );
                    for t in &g.first_trips {
                        let _ = writeln!(
                            s,
                            "| {} | {} | {} | {} | {} | {} | {} |",
                            md(&t.session),
                            md(&t.agent),
                            md(&t.tool),
                            t.guard.as_str(),
                            md(&t.rule),
                            t.ts,
                            t.refused
                        );
                    }
                }
            }
            if c.assumed_successful > 0 {
                let _ = writeln!(
                    s,
                    "\n> {} call(s) were never forwarded when recorded but this policy allows them; replay assumes they succeeded.",
                    c.assumed_successful
                );
            }
        }
        s
    }

    /// One self-contained page: inline CSS and SVG, no scripts, no fetches.
    pub fn to_html(&self) -> String {
        let mut s = String::from(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>flightrec replay report</title>\n<style>\
body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}\
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th:first-child,td:first-child{text-align:left}\
.allow{fill:#4caf50}.deny{fill:#e53935}.throttle{fill:#fb8c00}.approval{fill:#5e35b1}\
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}</style></head><body>\n<h1>flightrec replay report</h1>\n<ul>",
        );
        for l in self.header_lines() {
            let _ = write!(s, "<li>{}</li>", html(&l));
        }
        s.push_str("</ul>\n<table><tr><th>policy</th><th>allow</th><th>deny</th><th>throttle</th><th>approval</th><th>newly blocked</th><th>newly allowed</th><th>changed</th></tr>\n");
        for c in &self.candidates {
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                html(&c.policy),
                c.totals.allow,
                c.totals.deny,
                c.totals.throttle,
                c.totals.approval,
                c.diff.newly_blocked.count,
                c.diff.newly_allowed.count,
                c.diff.changed.count
            );
        }
        s.push_str("</table>\n<p class=\"legend\"><span style=\"background:#4caf50\"></span>allow<span style=\"background:#e53935\"></span>deny<span style=\"background:#fb8c00\"></span>throttle<span style=\"background:#5e35b1\"></span>approval</p>\n");
        for c in &self.candidates {
            let _ = writeln!(
                s,
                "<h2>{}</h2><p><code>{}</code></p>",
                html(&c.policy),
                html(&c.file)
            );
            s.push_str(&timeline_svg(c));
            s.push_str("<table><tr><th>tool</th><th>allow</th><th>deny</th><th>throttle</th><th>approval</th></tr>\n");
            for t in &c.by_tool {
                let _ = writeln!(
                    s,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    html(&t.name),
                    t.counts.allow,
                    t.counts.deny,
                    t.counts.throttle,
                    t.counts.approval
                );
            }
            s.push_str("</table>\n");
            if !c.rules.is_empty() {
                s.push_str("<table><tr><th>rule</th><th>verdict</th><th>times</th><th>first fired</th><th>event</th></tr>\n");
                for r in &c.rules {
                    let _ = writeln!(
                        s,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        html(&r.rule),
                        r.verdict.as_str(),
                        r.count,
                        html(&r.ts),
                        html(&r.event_id)
                    );
                }
                s.push_str("</table>\n");
            }
            let d = &c.diff;
            let _ = writeln!(
                s,
                "<p>Against the recorded decisions: {} compared, {} unchanged, <b>{} newly blocked</b>, <b>{} newly allowed</b>, {} changed.</p>",
                d.compared,
                d.unchanged,
                d.newly_blocked.count,
                d.newly_allowed.count,
                d.changed.count
            );
            if let Some(g) = &c.guard {
                let _ = writeln!(s, "<p>{}</p>", html(&g.summary()));
            }
        }
        s.push_str("</body></html>\n");
        s
    }
}

/// A stacked bar chart of verdicts per time bucket.
fn timeline_svg(c: &CandidateReport) -> String {
    let (w, h) = (900.0f64, 160.0f64);
    let n = c.timeline.len().max(1) as f64;
    let max = c
        .timeline
        .iter()
        .map(|b| b.counts.total())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let bw = w / n;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" role=\"img\" aria-label=\"verdicts over time\">",
        h + 20.0
    );
    for (i, b) in c.timeline.iter().enumerate() {
        let x = i as f64 * bw;
        let mut y = h;
        for (class, v) in [
            ("allow", b.counts.allow),
            ("throttle", b.counts.throttle),
            ("approval", b.counts.approval),
            ("deny", b.counts.deny),
        ] {
            if v == 0 {
                continue;
            }
            let bh = v as f64 / max * h;
            y -= bh;
            let _ = write!(
                s,
                "<rect class=\"{class}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"><title>{} {class}: {v}</title></rect>",
                (bw - 1.0).max(1.0),
                html(&b.start)
            );
        }
    }
    if let (Some(first), Some(last)) = (c.timeline.first(), c.timeline.last()) {
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{}\" font-size=\"11\">{}</text><text x=\"{w}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{} ({} s buckets)</text>",
            h + 15.0,
            html(&first.start),
            h + 15.0,
            html(&last.start),
            c.timeline_bucket_seconds
        );
    }
    s.push_str("</svg>\n");
    s
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

fn md(s: &str) -> String {
    s.replace('|', "\\|")
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::source::EventNames;

    /// The report counts recorded approvals in an array indexed by the
    /// outcome: each outcome's index must be its place in `VALUES`, and
    /// the report must name each by its column text.
    #[test]
    fn recorded_approvals_are_counted_by_outcome() {
        for (i, a) in ApprovalOutcome::VALUES.iter().enumerate() {
            assert_eq!(*a as usize, i, "{a}");
        }
        let mut acc = Accumulator::new("p", "p.yaml", "");
        let tool = acc.tool_slot("t");
        for (n, a) in [
            ApprovalOutcome::Denied,
            ApprovalOutcome::Granted,
            ApprovalOutcome::Denied,
        ]
        .into_iter()
        .enumerate()
        {
            acc.add(Seen {
                ts_us: n as i64,
                event_id: &|| EventKey::Id("e".into()),
                tool,
                agent: "a",
                session: "s",
                recorded: Some(Verdict::Approval),
                never_forwarded: false,
                approval: Some(a),
                verdict: Verdict::Approval,
                rule: Some("r"),
                guard: None,
            });
        }
        let report = acc.finish(&mut |k| EventNames::default().name(k));
        let counts: Vec<_> = report
            .recorded_approvals
            .iter()
            .map(|(k, n)| (k.as_str(), *n))
            .collect();
        assert_eq!(counts, [("denied", 2), ("granted", 1)]);
    }

    /// Rules are listed in the order they first fired, each with its
    /// count, however many there are (the first few are found by a scan,
    /// the rest by name).
    #[test]
    fn rules_keep_first_fired_order_and_counts() {
        let mut acc = Accumulator::new("p", "p.yaml", "");
        let tool = acc.tool_slot("t");
        let names: Vec<String> = (0..20).map(|i| format!("rule {}", 19 - i)).collect();
        for round in 0..3 {
            for (i, name) in names.iter().enumerate().skip(round) {
                acc.add(Seen {
                    ts_us: (round * 100 + i) as i64,
                    event_id: &|| EventKey::Id("e".into()),
                    tool,
                    agent: "a",
                    session: "s",
                    recorded: None,
                    never_forwarded: false,
                    approval: None,
                    verdict: Verdict::Deny,
                    rule: Some(name),
                    guard: None,
                });
            }
        }
        let report = acc.finish(&mut |k| EventNames::default().name(k));
        let got: Vec<_> = report
            .rules
            .iter()
            .map(|f| (f.rule.clone(), f.count, f.ts.clone()))
            .collect();
        let expected: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), (i.min(2) + 1) as u64, format_us(i as i64)))
            .collect();
        assert_eq!(got, expected);
    }
}
