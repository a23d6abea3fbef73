//! The replay engine: one decode of the inputs, shared by every candidate
//! policy, each deciding on its own thread with its own fresh state on the
//! events' virtual clock.
//!
//! Semantics (docs/replay.md): events in `ts` order (stable for ties); decided by the
//! same core as the live proxy; a recorded JSON-RPC error (`rpc_error`) rolls
//! the call's counters back exactly as live; a call that was never forwarded
//! but that a candidate allows is assumed to succeed (and counted); approval
//! verdicts reserve counters only with `--approvals grant`.

use crate::audit::AuditError;
use crate::audit::filter::RowFilter;
use crate::audit::read::resolve_inputs;
use crate::audit::remote::{DataFile, StoreOptions};
use crate::policy::ToolRoute;
use crate::policy::engine::{Approvals, Decided, Text};
use crate::policy::{
    ApprovalMode, Call, CallReads, CounterStore, Outcome, Policy, PolicyState, Reservation,
};
use crate::replay::decisions::DecisionsWriter;
use crate::replay::report::{Accumulator, CandidateReport, Report, Seen, ToolSlot};
use crate::replay::source::{
    EventNames, EventRef, Reads, Reorder, Segment, SourceStats, merge, recorded_events,
};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};

/// A policy under test.
pub struct Candidate {
    /// Short name shown in reports (the file stem, made unique).
    pub name: String,
    pub file: String,
    pub policy: Policy,
}

#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub approvals: ApprovalMode,
    pub filter: RowFilter,
    /// How far (in event time) rows may arrive out of order and still be
    /// sorted into place.
    pub reorder_window_us: i64,
    pub decisions_out: Option<PathBuf>,
    /// Print progress on stderr (only when it is a terminal; see
    /// [`crate::progress`]).
    pub progress: bool,
    /// The rows the inputs hold, for the progress line's percentage.
    pub progress_total: Option<u64>,
    /// How to reach inputs in object stores (`s3://…`).
    pub store: StoreOptions,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            approvals: ApprovalMode::Deny,
            filter: RowFilter::default(),
            reorder_window_us: 60_000_000,
            decisions_out: None,
            progress: true,
            progress_total: None,
            store: StoreOptions::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("a candidate's worker failed: {0}")]
    Worker(String),
}

const CHUNK: usize = 4096;

/// Chunks the reader may hand a candidate before it has decided them: a
/// candidate's turn on a core may come late (three candidates and the
/// reader share two cores), and with too short a queue the others then
/// wait for the reader, which waits for it. 16 chunks (about 130,000
/// events, some 30 MB shared by all candidates) keep them apart; peak
/// memory stays bounded, whatever the number of events.
const CHUNKS_AHEAD: usize = 16;

/// Replays recorded inputs (each a file, directory or glob of audit Parquet)
/// against the candidates.
pub fn replay(
    inputs: &[PathBuf],
    candidates: Vec<Candidate>,
    config: &ReplayConfig,
) -> Result<Report, ReplayError> {
    let stats = Arc::new(Mutex::new(SourceStats::default()));
    let fields = reads_of(&candidates);
    let events = recorded_stream(inputs, config, fields, stats.clone())?;
    let input_names = inputs.iter().map(|p| p.display().to_string()).collect();
    run_events(events, input_names, candidates, config, stats)
}

/// The recorded inputs as one stream of `tools/call` events in time order
/// (each writer's chain of each input sorted within the reorder window,
/// then all merged).
pub(crate) fn recorded_stream(
    inputs: &[PathBuf],
    config: &ReplayConfig,
    fields: CallReads,
    stats: Arc<Mutex<SourceStats>>,
) -> Result<impl Iterator<Item = Result<Segment, AuditError>> + use<>, AuditError> {
    let mut groups = Vec::new();
    for input in inputs {
        groups.push(resolve_inputs(
            std::slice::from_ref(input),
            &config.store,
            crate::audit::layout::TimeRange {
                from_us: config.filter.from_us,
                to_us: config.filter.to_us,
            },
        )?);
    }
    stream_files(groups, config, fields, stats)
}

/// The call fields any of `candidates` reads.
pub(crate) fn reads_of(candidates: &[Candidate]) -> CallReads {
    candidates
        .iter()
        .fold(CallReads::default(), |r, c| r | c.policy.reads())
}

/// As [`recorded_stream`], for inputs already listed as files (one list per
/// input).
pub(crate) fn stream_files(
    inputs: Vec<Vec<DataFile>>,
    config: &ReplayConfig,
    fields: CallReads,
    stats: Arc<Mutex<SourceStats>>,
) -> Result<impl Iterator<Item = Result<Segment, AuditError>> + use<>, AuditError> {
    let mut streams = Vec::new();
    for (i, files) in inputs.into_iter().enumerate() {
        // Each writer's chain is one stream (nearly in time order); the
        // writers of a directory are merged by time like separate inputs.
        for (_, files) in crate::audit::layout::files_by_writer(&files) {
            let reads = Reads {
                fields,
                ids: config.decisions_out.is_some(),
            };
            let events = recorded_events(files, i, config.filter.clone(), reads, stats.clone());
            streams.push(Reorder::new(
                events,
                config.reorder_window_us,
                stats.clone(),
            ));
        }
    }
    Ok(merge(streams))
}

/// Replays an already-ordered stream of event segments.
pub fn run_events(
    events: impl Iterator<Item = Result<Segment, AuditError>>,
    input_names: Vec<String>,
    candidates: Vec<Candidate>,
    config: &ReplayConfig,
    stats: Arc<Mutex<SourceStats>>,
) -> Result<Report, ReplayError> {
    let decisions_dir = config
        .decisions_out
        .as_ref()
        .map(|p| p.parent().map(Path::to_path_buf).unwrap_or_default());
    let mut senders = Vec::new();
    let mut workers = Vec::new();
    for (index, c) in candidates.into_iter().enumerate() {
        let (tx, rx) = sync_channel::<Arc<Vec<Segment>>>(CHUNKS_AHEAD);
        senders.push(tx);
        let approvals = config.approvals;
        let part = decisions_dir.as_ref().map(|d| {
            d.join(format!(
                ".flightrec-decisions-{}-{index}.partial",
                std::process::id()
            ))
        });
        workers.push(std::thread::spawn(move || worker(c, rx, approvals, part)));
    }

    let mut count = 0u64;
    let (mut first_ts, mut last_ts) = (None, None);
    let mut progress = crate::progress::Progress::new(
        "replay",
        "calls",
        config.progress_total,
        config.progress && std::io::stderr().is_terminal(),
    );
    // Segments go to the candidates in chunks of about CHUNK events: one
    // hand-off per chunk, shared by every candidate, read-only.
    let mut chunk = Vec::new();
    let mut in_chunk = 0;
    let mut source_error = None;
    for segment in events {
        let segment = match segment {
            Ok(s) if s.is_empty() => continue,
            Ok(s) => s,
            Err(e) => {
                source_error = Some(e);
                break;
            }
        };
        count += segment.len() as u64;
        progress.inc(segment.len() as u64);
        first_ts.get_or_insert(segment.first_ts());
        last_ts = Some(segment.last_ts());
        in_chunk += segment.len();
        chunk.push(segment);
        if in_chunk >= CHUNK {
            let full = Arc::new(std::mem::take(&mut chunk));
            in_chunk = 0;
            for tx in &senders {
                let _ = tx.send(full.clone());
            }
        }
    }
    if !chunk.is_empty() {
        let full = Arc::new(chunk);
        for tx in &senders {
            let _ = tx.send(full.clone());
        }
    }
    drop(senders);
    progress.finish();
    let mut accumulators = Vec::new();
    let mut parts = Vec::new();
    for w in workers {
        let (acc, part) = w
            .join()
            .map_err(|_| ReplayError::Worker("a replay thread panicked".into()))?
            .map_err(ReplayError::Audit)?;
        accumulators.push(acc);
        parts.extend(part);
    }
    if let Some(e) = source_error {
        for p in &parts {
            let _ = std::fs::remove_file(p);
        }
        return Err(e.into());
    }
    if let Some(out) = &config.decisions_out {
        crate::replay::decisions::concatenate(&parts, out)?;
    }
    let names = EventNames::read(accumulators.iter().flat_map(Accumulator::rows_to_name))?;
    let reports: Vec<CandidateReport> = accumulators
        .into_iter()
        .map(|acc| acc.finish(&mut |key| names.name(key)))
        .collect();
    let s = stats.lock().expect("stats lock").clone();
    Ok(Report {
        flightrec_replay_report: 1,
        inputs: input_names,
        events: count,
        skipped_non_calls: s.non_calls,
        filtered_out: s.filtered,
        late_events: s.late,
        first_ts: first_ts.map(crate::time::format_us),
        last_ts: last_ts.map(crate::time::format_us),
        approvals: config.approvals,
        candidates: reports,
    })
}

/// Decides recorded calls against one candidate, in time order, and counts
/// them in its report: the one place replay turns a recorded row into a
/// decision.
///
/// A call that ended in a JSON-RPC error gives its counts back when its
/// answer arrived, as live: at `ts + latency_us`, not at once; a circuit
/// breaker hears a call's outcome at that moment too. Calls decided in
/// between (pipelined calls, other sessions) see the state as the proxy
/// did. Without a recorded latency the outcome applies at once.
///
/// One decider serves one candidate: the same policy and report for every
/// call (it remembers each tool's route under the policy and slot in the
/// report).
#[derive(Default)]
pub(crate) struct RecordedDecider {
    deferred: BinaryHeap<Reverse<Deferred>>,
    seq: u64,
    tools: ToolCache,
    /// Where each call's counts are reserved (empty between calls).
    reservation: Reservation,
}

/// Each tool's [`ToolRoute`] and report slot, resolved once per distinct
/// name and found again per call by the row's [`EventRef::tool_key`] (two
/// integer compares instead of hashing and comparing the name, twice).
struct ToolCache {
    /// Open addressing by key, probing up to [`TOOL_PROBES`] lines from
    /// the key's own; a line of an earlier batch is free (nothing is
    /// removed within a batch, so a probe that meets a free line has not
    /// passed its key). A new batch, or more tools than fit, only costs a
    /// lookup by name.
    lines: Vec<ToolLine>,
    by_name: hashbrown::HashMap<String, (ToolRoute, ToolSlot)>,
}

#[derive(Clone, Copy)]
struct ToolLine {
    key: (u64, u128),
    route: ToolRoute,
    slot: ToolSlot,
}

const TOOL_LINES: usize = 64;
const TOOL_PROBES: usize = 4;

impl Default for ToolCache {
    fn default() -> Self {
        ToolCache {
            // No batch has serial u64::MAX: every line starts empty.
            lines: vec![
                ToolLine {
                    key: (u64::MAX, 0),
                    route: ToolRoute::default(),
                    slot: ToolSlot::default(),
                };
                TOOL_LINES
            ],
            by_name: Default::default(),
        }
    }
}

impl ToolCache {
    fn get(
        &mut self,
        policy: &Policy,
        acc: &mut Accumulator,
        e: &EventRef<'_>,
    ) -> (ToolRoute, ToolSlot) {
        let key = e.tool_key();
        let mix = (key.1 as u64) ^ ((key.1 >> 64) as u64) ^ key.0;
        let home = (mix.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % TOOL_LINES;
        // A dictionary-encoded column (what the audit writer makes) gives a
        // batch one key per tool: the first probe nearly always hits.
        let mut free = home;
        for i in 0..TOOL_PROBES {
            let at = (home + i) % TOOL_LINES;
            let line = &self.lines[at];
            if line.key == key {
                return (line.route, line.slot);
            }
            if line.key.0 != key.0 {
                free = at;
                break;
            }
        }
        let tool = e.tool();
        let (route, slot) = match self.by_name.get(tool) {
            Some(&found) => found,
            None => {
                let found = (policy.route(tool), acc.tool_slot(tool));
                self.by_name.insert(tool.to_string(), found);
                found
            }
        };
        self.lines[free] = ToolLine { key, route, slot };
        (route, slot)
    }
}

/// A rollback waiting for the recorded time of its answer.
struct Deferred {
    at: i64,
    seq: u64,
    reservation: Reservation,
    outcome: Outcome,
}

impl PartialEq for Deferred {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Deferred {}
impl PartialOrd for Deferred {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Deferred {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

impl RecordedDecider {
    /// Applies every rollback whose answer arrived at or before `t`.
    pub(crate) fn settle_until(&mut self, state: &mut PolicyState, t: i64) {
        while self.deferred.peek().is_some_and(|Reverse(d)| d.at <= t) {
            let Reverse(d) = self.deferred.pop().expect("peeked");
            state.settle(d.reservation, d.outcome);
        }
    }

    /// Applies the rollbacks still waiting (the end of the input).
    pub(crate) fn finish(&mut self, state: &mut PolicyState) {
        self.settle_until(state, i64::MAX);
    }

    /// Decides one recorded call and counts it in the report; `then` sees
    /// the decision (which is dropped after it, not moved out: the
    /// decision is large and most callers only count it).
    pub(crate) fn decide<'p, R>(
        &mut self,
        policy: &'p Policy,
        state: &mut PolicyState,
        e: &EventRef<'_>,
        approvals: ApprovalMode,
        acc: &mut Accumulator,
        then: impl FnOnce(&Decided<'p>) -> R,
    ) -> R {
        let call = Call {
            ts_us: e.ts_us(),
            session: e.session_id(),
            agent: e.agent_id(),
            server: e.server(),
            tool: e.tool(),
            category: e.category(),
            risk: e.risk(),
            args: e.args(),
            args_sha256: e.args_sha256(),
        };
        self.settle_until(state, call.ts_us);
        let granted = e.approval() == Some(crate::audit::schema::ApprovalOutcome::Granted);
        let (route, tool) = self.tools.get(policy, acc, e);
        let mode = if e.continues() {
            // A later round: decided again, counted in its first round.
            Approvals::Continuation
        } else {
            approvals.for_call(granted).into()
        };
        let d = policy.decide_in(state, &call, &route, mode, &mut self.reservation);
        let outcome = e.outcome();
        // As live, with the recorded outcome. A call the recording never
        // forwarded has no outcome under this candidate: it counts, as if it
        // ran (conservative).
        let settled = match outcome {
            Outcome::NotForwarded => Outcome::Ok,
            o => o,
        };
        // Outcomes that change the state (a rollback; anything a circuit
        // breaker hears) take effect when the answer arrived.
        let matters = (settled.rolls_back() && !self.reservation.is_empty())
            || self.reservation.has_breaker();
        // Otherwise settling would change nothing: the counts are kept
        // (and the reservation's buffer serves the next call).
        if !matters {
            self.reservation.clear();
        } else {
            let reservation = std::mem::take(&mut self.reservation);
            match e.latency_us() {
                Some(latency) => {
                    self.seq += 1;
                    self.deferred.push(Reverse(Deferred {
                        at: call.ts_us.saturating_add(latency as i64),
                        seq: self.seq,
                        reservation,
                        outcome: settled,
                    }));
                }
                None => state.settle(reservation, settled),
            }
        }
        acc.add(Seen {
            ts_us: call.ts_us,
            event_id: &|| e.event_key(),
            tool,
            agent: call.agent,
            session: call.session,
            recorded: e.recorded(),
            never_forwarded: outcome == Outcome::NotForwarded,
            approval: e.approval(),
            verdict: d.verdict,
            rule: d.rule.as_ref().map(Text::as_str),
            guard: d.guard,
        });
        then(&d)
    }
}

type WorkerResult = Result<(Accumulator, Option<PathBuf>), AuditError>;

fn worker(
    c: Candidate,
    rx: Receiver<Arc<Vec<Segment>>>,
    approvals: ApprovalMode,
    part: Option<PathBuf>,
) -> WorkerResult {
    let mut state = PolicyState::new(&c.policy);
    let mut decider = RecordedDecider::default();
    let mut acc =
        Accumulator::new(&c.name, &c.file, &c.policy.sha256).with_guards(c.policy.has_guards());
    let mut out = match &part {
        Some(p) => Some(DecisionsWriter::create(p)?),
        None => None,
    };
    for chunk in rx {
        for (batch, row) in chunk
            .iter()
            .flat_map(|s| s.rows().iter().map(|r| (&s.batch, *r)))
        {
            let e = batch.event(row);
            decider.decide(
                &c.policy,
                &mut state,
                &e,
                approvals,
                &mut acc,
                |d| match &mut out {
                    Some(w) => w.push(
                        &e,
                        &c.name,
                        d.verdict,
                        d.rule.as_ref().map(Text::as_str),
                        d.message.as_ref().map(Text::as_str),
                        d.retry_after_ms,
                    ),
                    None => Ok(()),
                },
            )?;
        }
    }
    if let Some(w) = out {
        w.finish()?;
    }
    Ok((acc, part))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::schema::{AuditRow, rows_to_batch};
    use crate::replay::source::{EventNames, decode_batch_for_tests};

    /// One batch of calls to the given tools, one per millisecond from `t0`.
    fn batch(tools: &[&str], t0: i64) -> Arc<crate::replay::source::EventBatch> {
        let rows: Vec<AuditRow> = tools
            .iter()
            .enumerate()
            .map(|(i, tool)| AuditRow {
                event_id: format!("{t0}-{i}"),
                ts_us: t0 + i as i64 * 1000,
                tool: Some(tool.to_string()),
                ..AuditRow::default()
            })
            .collect();
        Arc::new(decode_batch_for_tests(&rows_to_batch(&rows)))
    }

    /// Replay's per-tool cache must never take one tool for another, even
    /// where the Arrow views of two different names are bit for bit equal
    /// (same length, same first four bytes, same place in their own
    /// batch's buffer), and must find a tool again across batches and in
    /// columns that repeat a value at other offsets.
    #[test]
    fn the_tool_cache_tells_equal_looking_names_apart() {
        let (policy, _) = Policy::from_yaml(
            "version: \"1\"\ntools:\n  long-tool-name-alpha:\n    rules:\n      - name: no alpha\n        action: deny\n",
            "t.yaml",
        )
        .unwrap();
        let a = "long-tool-name-alpha";
        let o = "long-tool-name-omega";
        let batches = [
            batch(&[a], 0),
            batch(&[o], 10_000),
            batch(&[o, a, o, a], 20_000),
            batch(&[a], 30_000),
        ];
        assert_eq!(
            batches[0].event(0).tool_key().1,
            batches[1].event(0).tool_key().1,
            "the test needs two names with equal views"
        );
        let mut state = PolicyState::new(&policy);
        let mut decider = RecordedDecider::default();
        let mut acc = Accumulator::new("p", "p.yaml", &policy.sha256);
        let mut verdicts = Vec::new();
        for b in &batches {
            for &row in &b.rows {
                let e = b.event(row);
                let verdict =
                    decider.decide(&policy, &mut state, &e, ApprovalMode::Deny, &mut acc, |d| {
                        d.verdict
                    });
                verdicts.push((e.tool(), verdict));
            }
        }
        for (tool, verdict) in &verdicts {
            let expected = if *tool == a {
                crate::policy::Verdict::Deny
            } else {
                crate::policy::Verdict::Allow
            };
            assert_eq!(*verdict, expected, "{tool}");
        }
        let report = acc.finish(&mut |k| EventNames::default().name(k));
        let by_tool: Vec<_> = report
            .by_tool
            .iter()
            .map(|n| (n.name.as_str(), n.counts.allow, n.counts.deny))
            .collect();
        assert_eq!(by_tool, [(a, 0, 4), (o, 3, 0)]);
    }

    /// More distinct tools in one batch than the cache has lines, met in
    /// an order that makes keys share and lose lines: every call is still
    /// decided by its own tool's rules and counted under its own name.
    #[test]
    fn the_tool_cache_stays_exact_when_tools_outnumber_its_lines() {
        let (policy, _) = Policy::from_yaml(
            "version: \"1\"\ntools:\n  \"tool-*-odd\":\n    rules:\n      - name: no odd\n        action: deny\n",
            "t.yaml",
        )
        .unwrap();
        let names: Vec<String> = (0..3 * TOOL_LINES)
            .map(|i| format!("tool-{i:03}-{}", if i % 2 == 1 { "odd" } else { "even" }))
            .collect();
        // Each name three times, far apart, in one batch.
        let order: Vec<&str> = (0..3)
            .flat_map(|_| names.iter().map(String::as_str))
            .collect();
        let b = batch(&order, 0);
        let mut state = PolicyState::new(&policy);
        let mut decider = RecordedDecider::default();
        let mut acc = Accumulator::new("p", "p.yaml", &policy.sha256);
        for &row in &b.rows {
            let e = b.event(row);
            let verdict =
                decider.decide(&policy, &mut state, &e, ApprovalMode::Deny, &mut acc, |d| {
                    d.verdict
                });
            let expected = if e.tool().ends_with("-odd") {
                crate::policy::Verdict::Deny
            } else {
                crate::policy::Verdict::Allow
            };
            assert_eq!(verdict, expected, "{}", e.tool());
        }
        let report = acc.finish(&mut |k| EventNames::default().name(k));
        assert_eq!(report.by_tool.len(), names.len());
        for n in &report.by_tool {
            assert_eq!(n.counts.total(), 3, "{}", n.name);
        }
    }
}
