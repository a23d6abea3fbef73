//! Where replayed events come from, and how they are put in time order.
//!
//! A recorded input is audit Parquet (files, directories, globs): rows are
//! read with only the columns replay needs, `tools/call` rows become
//! [`ReplayEvent`]s, and everything else is counted and skipped. Rows are
//! written in completion order, which is nearly but not exactly `ts` order,
//! so each input passes through a [`Reorder`] buffer (events within a window
//! of event time are sorted; an event later than that is replayed where it
//! arrives and counted as late). Inputs are then merged by `ts`, ties broken
//! by input order and then arrival order (stable).

use crate::audit::AuditError;
use crate::audit::read::{ScanOptions, scan};
use crate::audit::schema::{BatchView, col};
use crate::policy::{Category, Outcome, Risk};
use globset::GlobMatcher;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

/// One call to replay.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayEvent {
    pub event_id: String,
    pub ts_us: i64,
    pub session_id: String,
    pub agent_id: String,
    pub server: String,
    pub tool: String,
    pub category: Option<Category>,
    pub risk: Option<Risk>,
    /// Parsed `args_json` (null when absent or when no policy reads args).
    pub args: Arc<serde_json::Value>,
    /// The recorded verdict, or `None` for generated (`unrecorded`) rows.
    pub recorded: Option<crate::policy::Verdict>,
    pub outcome: Outcome,
    /// Which input it came from (ties in time keep input order).
    pub input: usize,
}

/// Row filters applied while reading.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    pub agent: Option<GlobMatcher>,
    pub tool: Option<GlobMatcher>,
    pub session: Option<String>,
}

/// Counts of what reading saw besides the events it yields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Rows that are not `tools/call` (initialize, tools/list, invalid frames…).
    pub non_calls: u64,
    /// Calls removed by --agent / --tool / --session.
    pub filtered: u64,
    /// Events that arrived later than the reorder window allowed.
    pub late: u64,
}

/// Reads a recorded input's `tools/call` rows as events, batch by batch.
pub fn recorded_events(
    files: Vec<PathBuf>,
    input: usize,
    filter: EventFilter,
    with_args: bool,
    stats: Arc<std::sync::Mutex<SourceStats>>,
) -> impl Iterator<Item = Result<ReplayEvent, AuditError>> {
    let mut columns = vec![
        col::EVENT_ID,
        col::TS,
        col::SESSION_ID,
        col::AGENT_ID,
        col::SERVER,
        col::METHOD,
        col::TOOL,
        col::CATEGORY,
        col::RISK,
        col::DECISION,
        col::OUTCOME,
    ];
    if with_args {
        columns.push(col::ARGS_JSON);
    }
    let options = ScanOptions {
        from_us: filter.from_us,
        to_us: filter.to_us,
        ..ScanOptions::default().columns(&columns)
    };
    scan(files, options).flat_map(move |batch| -> Vec<Result<ReplayEvent, AuditError>> {
        match batch {
            Err(e) => vec![Err(e)],
            Ok(b) => match decode_batch(&b, input, &filter, with_args) {
                Ok((events, non_calls, filtered)) => {
                    let mut s = stats.lock().expect("stats lock");
                    s.non_calls += non_calls;
                    s.filtered += filtered;
                    events.into_iter().map(Ok).collect()
                }
                Err(e) => vec![Err(e)],
            },
        }
    })
}

fn decode_batch(
    batch: &arrow::array::RecordBatch,
    input: usize,
    filter: &EventFilter,
    with_args: bool,
) -> Result<(Vec<ReplayEvent>, u64, u64), AuditError> {
    let schema_err = |e: crate::audit::schema::ColumnError| AuditError::Schema {
        path: PathBuf::from(format!("input {}", input + 1)),
        detail: e.to_string(),
    };
    let v = BatchView::new(batch);
    let missing = |name: &str| AuditError::Schema {
        path: PathBuf::from(format!("input {}", input + 1)),
        detail: format!("column `{name}` is missing"),
    };
    let event_id = v
        .strings(col::EVENT_ID)
        .map_err(schema_err)?
        .ok_or_else(|| missing(col::EVENT_ID))?;
    let ts = v
        .timestamps(col::TS)
        .map_err(schema_err)?
        .ok_or_else(|| missing(col::TS))?;
    let session = v
        .strings(col::SESSION_ID)
        .map_err(schema_err)?
        .ok_or_else(|| missing(col::SESSION_ID))?;
    let agent = v
        .strings(col::AGENT_ID)
        .map_err(schema_err)?
        .ok_or_else(|| missing(col::AGENT_ID))?;
    let server = v.strings(col::SERVER).map_err(schema_err)?;
    let method = v.strings(col::METHOD).map_err(schema_err)?;
    let tool = v
        .strings(col::TOOL)
        .map_err(schema_err)?
        .ok_or_else(|| missing(col::TOOL))?;
    let category = v.strings(col::CATEGORY).map_err(schema_err)?;
    let risk = v.strings(col::RISK).map_err(schema_err)?;
    let decision = v.strings(col::DECISION).map_err(schema_err)?;
    let outcome = v.strings(col::OUTCOME).map_err(schema_err)?;
    let args = if with_args {
        v.strings(col::ARGS_JSON).map_err(schema_err)?
    } else {
        None
    };
    let null_args = Arc::new(serde_json::Value::Null);
    let mut out = Vec::with_capacity(v.len());
    let (mut non_calls, mut filtered) = (0u64, 0u64);
    for i in 0..v.len() {
        let m = method
            .as_ref()
            .and_then(|m| m.get(i))
            .unwrap_or("tools/call");
        let Some(tool_name) = tool.get(i) else {
            non_calls += 1;
            continue;
        };
        if m != "tools/call" {
            non_calls += 1;
            continue;
        }
        let agent_id = agent.get(i).unwrap_or_default();
        let session_id = session.get(i).unwrap_or_default();
        if filter.agent.as_ref().is_some_and(|g| !g.is_match(agent_id))
            || filter.tool.as_ref().is_some_and(|g| !g.is_match(tool_name))
            || filter.session.as_deref().is_some_and(|s| s != session_id)
        {
            filtered += 1;
            continue;
        }
        let args_value = match args.as_ref().and_then(|a| a.get(i)) {
            Some(text) => Arc::new(serde_json::from_str(text).unwrap_or(serde_json::Value::Null)),
            None => null_args.clone(),
        };
        let recorded = decision
            .as_ref()
            .and_then(|d| d.get(i))
            .and_then(|d| crate::policy::Verdict::from_str(d).ok());
        out.push(ReplayEvent {
            event_id: event_id.get(i).unwrap_or_default().to_string(),
            ts_us: ts.value(i),
            session_id: session_id.to_string(),
            agent_id: agent_id.to_string(),
            server: server
                .as_ref()
                .and_then(|s| s.get(i))
                .unwrap_or_default()
                .to_string(),
            tool: tool_name.to_string(),
            category: category
                .as_ref()
                .and_then(|c| c.get(i))
                .and_then(|c| Category::from_str(c).ok()),
            risk: risk
                .as_ref()
                .and_then(|r| r.get(i))
                .and_then(|r| Risk::from_str(r).ok()),
            args: args_value,
            recorded,
            outcome: outcome
                .as_ref()
                .and_then(|o| o.get(i))
                .and_then(|o| Outcome::from_str(o).ok())
                .unwrap_or(Outcome::Ok),
            input,
        });
    }
    Ok((out, non_calls, filtered))
}

/// Sorts a nearly-sorted stream by `ts` within a window of event time.
pub struct Reorder<I> {
    inner: I,
    window_us: i64,
    heap: BinaryHeap<Reverse<(i64, u64, Slot)>>,
    arrivals: u64,
    max_seen: i64,
    last_out: i64,
    done: bool,
    stats: Arc<std::sync::Mutex<SourceStats>>,
}

/// Heap payload ordered only by the key in front of it.
struct Slot(Box<ReplayEvent>);

impl PartialEq for Slot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Slot {}
impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Slot {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl<I> Reorder<I> {
    pub fn new(inner: I, window_us: i64, stats: Arc<std::sync::Mutex<SourceStats>>) -> Self {
        Reorder {
            inner,
            window_us,
            heap: BinaryHeap::new(),
            arrivals: 0,
            max_seen: i64::MIN,
            last_out: i64::MIN,
            done: false,
            stats,
        }
    }
}

impl<I: Iterator<Item = Result<ReplayEvent, AuditError>>> Iterator for Reorder<I> {
    type Item = Result<ReplayEvent, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(Reverse((ts, _, _))) = self.heap.peek() {
                let ready = self.done || *ts <= self.max_seen.saturating_sub(self.window_us);
                if ready {
                    let Reverse((ts, _, Slot(e))) = self.heap.pop().expect("peeked");
                    self.last_out = self.last_out.max(ts);
                    return Some(Ok(*e));
                }
            } else if self.done {
                return None;
            }
            match self.inner.next() {
                None => self.done = true,
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(e)) => {
                    if e.ts_us < self.last_out {
                        // Too late to sort in: replay it now, and say so.
                        self.stats.lock().expect("stats lock").late += 1;
                        return Some(Ok(e));
                    }
                    self.max_seen = self.max_seen.max(e.ts_us);
                    self.arrivals += 1;
                    self.heap
                        .push(Reverse((e.ts_us, self.arrivals, Slot(Box::new(e)))));
                }
            }
        }
    }
}

/// Merges time-ordered streams by (ts, input order, arrival order).
pub fn merge<I>(streams: Vec<I>) -> impl Iterator<Item = Result<ReplayEvent, AuditError>>
where
    I: Iterator<Item = Result<ReplayEvent, AuditError>>,
{
    let mut streams: Vec<std::iter::Peekable<I>> =
        streams.into_iter().map(Iterator::peekable).collect();
    std::iter::from_fn(move || {
        let mut best: Option<(usize, i64)> = None;
        for (i, s) in streams.iter_mut().enumerate() {
            match s.peek() {
                None => continue,
                Some(Err(_)) => return s.next(),
                Some(Ok(e)) => {
                    if best.is_none_or(|(_, ts)| e.ts_us < ts) {
                        best = Some((i, e.ts_us));
                    }
                }
            }
        }
        let (i, _) = best?;
        streams[i].next()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: i64, input: usize, id: &str) -> Result<ReplayEvent, AuditError> {
        Ok(ReplayEvent {
            event_id: id.into(),
            ts_us: ts,
            session_id: String::new(),
            agent_id: String::new(),
            server: String::new(),
            tool: "t".into(),
            category: None,
            risk: None,
            args: Arc::new(serde_json::Value::Null),
            recorded: None,
            outcome: Outcome::Ok,
            input,
        })
    }

    fn ids(it: impl Iterator<Item = Result<ReplayEvent, AuditError>>) -> Vec<String> {
        it.map(|e| e.unwrap().event_id).collect()
    }

    #[test]
    fn reorder_sorts_within_the_window_and_counts_late_events() {
        let stats = Arc::new(std::sync::Mutex::new(SourceStats::default()));
        let input = vec![
            ev(10, 0, "a"),
            ev(5, 0, "b"),
            ev(10, 0, "c"),
            ev(100, 0, "d"),
            ev(20, 0, "late"),
            ev(101, 0, "e"),
        ];
        let out = ids(Reorder::new(input.into_iter(), 50, stats.clone()));
        assert_eq!(out, ["b", "a", "c", "late", "d", "e"]);
        assert_eq!(
            stats.lock().unwrap().late,
            0,
            "20 was still within the window"
        );
        let input = vec![
            ev(10, 0, "a"),
            ev(100, 0, "b"),
            ev(200, 0, "c"),
            ev(20, 0, "late"),
        ];
        let out = ids(Reorder::new(input.into_iter(), 50, stats.clone()));
        assert_eq!(out, ["a", "b", "late", "c"]);
        assert_eq!(stats.lock().unwrap().late, 1);
    }

    #[test]
    fn merge_is_stable_for_ties() {
        let a = vec![ev(1, 0, "a1"), ev(5, 0, "a5"), ev(5, 0, "a5b")];
        let b = vec![ev(1, 1, "b1"), ev(3, 1, "b3"), ev(5, 1, "b5")];
        let out = ids(merge(vec![a.into_iter(), b.into_iter()]));
        assert_eq!(out, ["a1", "b1", "b3", "a5", "a5b", "b5"]);
    }
}
