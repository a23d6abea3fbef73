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
use crate::audit::filter::RowFilter;
use crate::audit::read::{ScanOptions, scan};
use crate::audit::schema::{ApprovalOutcome, ColumnValue};
use crate::audit::schema::{BatchView, col};
use crate::policy::{Category, Outcome, Risk};
use arrow::array::{Array, AsArray, PrimitiveArray, StringArray};
use arrow::datatypes::{TimestampMicrosecondType, UInt64Type};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

/// A decoded batch of calls: Arrow columns kept as read (no per-event
/// copies), plus the few per-row values that need parsing.
pub struct EventBatch {
    pub input: usize,
    event_id: StringArray,
    ts: PrimitiveArray<TimestampMicrosecondType>,
    session: StringArray,
    agent: StringArray,
    server: Option<StringArray>,
    tool: StringArray,
    category: Vec<Option<Category>>,
    risk: Vec<Option<Risk>>,
    recorded: Vec<Option<crate::policy::Verdict>>,
    outcome: Vec<Outcome>,
    /// The recorded `approval` (schema 1.1; `None` in 1.0 files).
    approval: Vec<Option<ApprovalOutcome>>,
    /// Rows that continue a multi-round call (`continues` set; 1.1).
    continues: Option<StringArray>,
    /// `latency_us`, when the input has it.
    latency: Option<PrimitiveArray<UInt64Type>>,
    /// `args_sha256` (read with the arguments).
    args_hash: Option<StringArray>,
    args: Vec<Arc<serde_json::Value>>,
    /// Rows that are calls and pass the filters.
    pub rows: Vec<u32>,
}

/// One call to replay: a row of an [`EventBatch`].
#[derive(Clone, Copy)]
pub struct EventRef<'b> {
    batch: &'b EventBatch,
    row: usize,
}

static NULL_ARGS: std::sync::LazyLock<Arc<serde_json::Value>> =
    std::sync::LazyLock::new(|| Arc::new(serde_json::Value::Null));

impl EventBatch {
    pub fn event(&self, row: u32) -> EventRef<'_> {
        EventRef {
            batch: self,
            row: row as usize,
        }
    }

    pub fn ts(&self, row: u32) -> i64 {
        self.ts.value(row as usize)
    }
}

impl<'b> EventRef<'b> {
    pub fn event_id(&self) -> &'b str {
        self.batch.event_id.value(self.row)
    }
    pub fn ts_us(&self) -> i64 {
        self.batch.ts.value(self.row)
    }
    pub fn session_id(&self) -> &'b str {
        self.batch.session.value(self.row)
    }
    pub fn agent_id(&self) -> &'b str {
        self.batch.agent.value(self.row)
    }
    pub fn server(&self) -> &'b str {
        self.batch.server.as_ref().map_or("", |s| {
            if s.is_null(self.row) {
                ""
            } else {
                s.value(self.row)
            }
        })
    }
    pub fn tool(&self) -> &'b str {
        self.batch.tool.value(self.row)
    }
    pub fn category(&self) -> Option<Category> {
        self.batch.category.get(self.row).copied().flatten()
    }
    pub fn risk(&self) -> Option<Risk> {
        self.batch.risk.get(self.row).copied().flatten()
    }
    pub fn recorded(&self) -> Option<crate::policy::Verdict> {
        self.batch.recorded[self.row]
    }
    pub fn outcome(&self) -> Outcome {
        self.batch.outcome[self.row]
    }
    /// Whether this row is a later round of a multi-round call (counted
    /// in its first round).
    pub fn continues(&self) -> bool {
        self.batch
            .continues
            .as_ref()
            .is_some_and(|c| !c.is_null(self.row))
    }
    /// How the recorded approval ended, if the call needed one.
    pub fn approval(&self) -> Option<ApprovalOutcome> {
        self.batch.approval.get(self.row).copied().flatten()
    }
    /// How long the call took to complete, when recorded.
    pub fn latency_us(&self) -> Option<u64> {
        self.batch
            .latency
            .as_ref()
            .filter(|l| !l.is_null(self.row))
            .map(|l| l.value(self.row))
    }
    /// The recorded SHA-256 of the original arguments, when read.
    pub fn args_sha256(&self) -> Option<&'b str> {
        self.batch
            .args_hash
            .as_ref()
            .filter(|a| !a.is_null(self.row))
            .map(|a| a.value(self.row))
    }
    pub fn args(&self) -> &'b serde_json::Value {
        self.batch.args.get(self.row).map_or(&NULL_ARGS, |a| a)
    }
}

/// An event waiting in the pipeline: its batch and row.
pub type Pending = (Arc<EventBatch>, u32);

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

/// The columns replay reads (plus `args_json` when a candidate looks at
/// arguments).
pub const REPLAY_COLUMNS: [&str; 14] = [
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
    col::LATENCY_US,
    col::APPROVAL,
    col::CONTINUES,
];

/// Reads a recorded input's `tools/call` rows as events, batch by batch.
pub fn recorded_events(
    files: Vec<crate::audit::remote::DataFile>,
    input: usize,
    filter: RowFilter,
    with_args: bool,
    stats: Arc<std::sync::Mutex<SourceStats>>,
) -> impl Iterator<Item = Result<Pending, AuditError>> {
    let mut columns = REPLAY_COLUMNS.to_vec();
    if with_args {
        columns.push(col::ARGS_JSON);
        columns.push(col::ARGS_SHA256);
    }
    let options = ScanOptions {
        from_us: filter.from_us,
        to_us: filter.to_us,
        ..ScanOptions::default().columns(&columns)
    };
    scan(files, options).flat_map(
        move |batch| -> Box<dyn Iterator<Item = Result<Pending, AuditError>>> {
            match batch.and_then(|b| decode_batch(&b, input, &filter, with_args)) {
                Err(e) => Box::new(std::iter::once(Err(e))),
                Ok((batch, non_calls, filtered)) => {
                    let mut s = stats.lock().expect("stats lock");
                    s.non_calls += non_calls;
                    s.filtered += filtered;
                    drop(s);
                    let batch = Arc::new(batch);
                    let rows = batch.rows.clone();
                    Box::new(rows.into_iter().map(move |r| Ok((batch.clone(), r))))
                }
            }
        },
    )
}

/// Any Arrow string layout as a plain Utf8 array.
fn utf8(
    array: &arrow::array::ArrayRef,
    name: &str,
    input: usize,
) -> Result<StringArray, AuditError> {
    let cast = if array.data_type() == &arrow::datatypes::DataType::Utf8 {
        array.clone()
    } else {
        arrow::compute::cast(array, &arrow::datatypes::DataType::Utf8).map_err(|e| {
            AuditError::Schema {
                path: PathBuf::from(format!("input {}", input + 1)),
                detail: format!("column `{name}`: {e}"),
            }
        })?
    };
    Ok(cast.as_string::<i32>().clone())
}

fn decode_batch(
    batch: &arrow::array::RecordBatch,
    input: usize,
    filter: &RowFilter,
    with_args: bool,
) -> Result<(EventBatch, u64, u64), AuditError> {
    let schema_err = |detail: String| AuditError::Schema {
        path: PathBuf::from(format!("input {}", input + 1)),
        detail,
    };
    let column = |name: &str| batch.column_by_name(name);
    let required = |name: &str| -> Result<StringArray, AuditError> {
        let a = column(name).ok_or_else(|| schema_err(format!("column `{name}` is missing")))?;
        utf8(a, name, input)
    };
    let optional = |name: &str| -> Result<Option<StringArray>, AuditError> {
        column(name).map(|a| utf8(a, name, input)).transpose()
    };
    let v = BatchView::new(batch);
    let ts = v
        .timestamps(col::TS)
        .map_err(|e| schema_err(e.to_string()))?
        .ok_or_else(|| schema_err("column `ts` is missing".into()))?
        .clone();
    let event_id = required(col::EVENT_ID)?;
    let session = required(col::SESSION_ID)?;
    let agent = required(col::AGENT_ID)?;
    let tool = required(col::TOOL)?;
    let server = optional(col::SERVER)?;
    let method = optional(col::METHOD)?;
    let category = optional(col::CATEGORY)?;
    let risk = optional(col::RISK)?;
    let decision = optional(col::DECISION)?;
    let outcome = optional(col::OUTCOME)?;
    let approval = optional(col::APPROVAL)?;
    let continues = optional(col::CONTINUES)?;
    // Only used to time rollbacks: a foreign file's other type is ignored.
    let latency = v.u64s(col::LATENCY_US).ok().flatten().cloned();
    let (args, args_hash) = if with_args {
        (optional(col::ARGS_JSON)?, optional(col::ARGS_SHA256)?)
    } else {
        (None, None)
    };
    let n = batch.num_rows();
    fn get(a: &Option<StringArray>, i: usize) -> Option<&str> {
        a.as_ref().and_then(|a| (!a.is_null(i)).then(|| a.value(i)))
    }
    let mut rows = Vec::with_capacity(n);
    let (mut non_calls, mut filtered) = (0u64, 0u64);
    let field_filters = filter.has_field_filters();
    for i in 0..n {
        if tool.is_null(i) || get(&method, i).is_some_and(|m| m != "tools/call") {
            non_calls += 1;
            continue;
        }
        if field_filters
            && !filter.keeps_fields(
                Some(agent.value(i)),
                Some(tool.value(i)),
                Some(session.value(i)),
                get(&decision, i),
            )
        {
            filtered += 1;
            continue;
        }
        rows.push(i as u32);
    }
    // Parse the small per-row fields once, here, for every candidate.
    /// Parses a column's values, reusing the previous row's result when the
    /// text repeats (these columns take a handful of values).
    fn parse<T: Copy>(
        a: &Option<StringArray>,
        n: usize,
        f: impl Fn(&str) -> Option<T>,
    ) -> Vec<Option<T>> {
        let mut out = Vec::with_capacity(n);
        let mut last: Option<(&str, Option<T>)> = None;
        for i in 0..n {
            let v = match get(a, i) {
                None => None,
                Some(text) => match last {
                    Some((t, v)) if t == text => v,
                    _ => {
                        let v = f(text);
                        last = Some((text, v));
                        v
                    }
                },
            };
            out.push(v);
        }
        out
    }
    let args = match &args {
        Some(a) => (0..n)
            .map(|i| {
                if a.is_null(i) {
                    NULL_ARGS.clone()
                } else {
                    Arc::new(serde_json::from_str(a.value(i)).unwrap_or(serde_json::Value::Null))
                }
            })
            .collect(),
        None => Vec::new(),
    };
    Ok((
        EventBatch {
            input,
            category: parse(&category, n, |c| Category::from_str(c).ok()),
            risk: parse(&risk, n, |r| Risk::from_str(r).ok()),
            recorded: parse(&decision, n, |d| crate::policy::Verdict::from_str(d).ok()),
            continues,
            approval: if approval.is_some() {
                parse(&approval, n, |a| ApprovalOutcome::parse_value(a).ok())
            } else {
                Vec::new()
            },
            outcome: parse(&outcome, n, |o| Outcome::from_str(o).ok())
                .into_iter()
                .map(|o| o.unwrap_or(Outcome::Ok))
                .collect(),
            latency,
            args_hash,
            args,
            event_id,
            ts,
            session,
            agent,
            server,
            tool,
            rows,
        },
        non_calls,
        filtered,
    ))
}

/// Sorts a nearly-sorted stream by `ts` within a window of event time.
///
/// Events that arrive in order (the common case) queue in a deque at O(1);
/// only out-of-order ones go through a heap. An event is released once the
/// newest time seen is a full window past it.
pub struct Reorder<I> {
    inner: I,
    window_us: i64,
    in_order: VecDeque<(i64, u64, Pending)>,
    heap: BinaryHeap<Reverse<(i64, u64, HeapSlot)>>,
    arrivals: u64,
    max_seen: i64,
    last_out: i64,
    done: bool,
    stats: Arc<std::sync::Mutex<SourceStats>>,
}

/// Heap payload ordered only by the key in front of it.
struct HeapSlot(Pending);

impl PartialEq for HeapSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for HeapSlot {}
impl PartialOrd for HeapSlot {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeapSlot {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl<I> Reorder<I> {
    pub fn new(inner: I, window_us: i64, stats: Arc<std::sync::Mutex<SourceStats>>) -> Self {
        Reorder {
            inner,
            window_us,
            in_order: VecDeque::new(),
            heap: BinaryHeap::new(),
            arrivals: 0,
            max_seen: i64::MIN,
            last_out: i64::MIN,
            done: false,
            stats,
        }
    }

    /// The (ts, arrival) key of the earliest buffered event, and whether it
    /// is in the deque.
    fn earliest(&self) -> Option<((i64, u64), bool)> {
        let a = self.in_order.front().map(|(t, n, _)| (*t, *n));
        let b = self.heap.peek().map(|Reverse((t, n, _))| (*t, *n));
        match (a, b) {
            (Some(a), Some(b)) => Some(if a <= b { (a, true) } else { (b, false) }),
            (Some(a), None) => Some((a, true)),
            (None, Some(b)) => Some((b, false)),
            (None, None) => None,
        }
    }
}

impl<I: Iterator<Item = Result<Pending, AuditError>>> Iterator for Reorder<I> {
    type Item = Result<Pending, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(((ts, _), from_deque)) = self.earliest() {
                if self.done || ts <= self.max_seen.saturating_sub(self.window_us) {
                    self.last_out = self.last_out.max(ts);
                    let p = if from_deque {
                        self.in_order.pop_front().expect("earliest").2
                    } else {
                        self.heap.pop().expect("earliest").0.2.0
                    };
                    return Some(Ok(p));
                }
            } else if self.done {
                return None;
            }
            match self.inner.next() {
                None => self.done = true,
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(p)) => {
                    let ts = p.0.ts(p.1);
                    if ts < self.last_out {
                        // Too late to sort in: replay it now, and say so.
                        self.stats.lock().expect("stats lock").late += 1;
                        return Some(Ok(p));
                    }
                    self.arrivals += 1;
                    let in_order = self.in_order.back().is_none_or(|(t, _, _)| ts >= *t);
                    if in_order {
                        self.in_order.push_back((ts, self.arrivals, p));
                    } else {
                        self.heap.push(Reverse((ts, self.arrivals, HeapSlot(p))));
                    }
                    self.max_seen = self.max_seen.max(ts);
                }
            }
        }
    }
}

/// Merges time-ordered streams by (ts, input order, arrival order).
pub fn merge<I>(streams: Vec<I>) -> impl Iterator<Item = Result<Pending, AuditError>>
where
    I: Iterator<Item = Result<Pending, AuditError>>,
{
    let mut streams: Vec<std::iter::Peekable<I>> =
        streams.into_iter().map(Iterator::peekable).collect();
    std::iter::from_fn(move || {
        if streams.len() == 1 {
            return streams[0].next();
        }
        let mut best: Option<(usize, i64)> = None;
        for (i, s) in streams.iter_mut().enumerate() {
            match s.peek() {
                None => continue,
                Some(Err(_)) => return s.next(),
                Some(Ok((b, r))) => {
                    let ts = b.ts(*r);
                    if best.is_none_or(|(_, t)| ts < t) {
                        best = Some((i, ts));
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
    use crate::audit::schema::{AuditRow, rows_to_batch};

    /// One batch holding the given (ts, id) events, all calls.
    fn events(items: &[(i64, &str)], input: usize) -> Vec<Result<Pending, AuditError>> {
        let rows: Vec<AuditRow> = items
            .iter()
            .map(|(ts, id)| AuditRow {
                event_id: id.to_string(),
                ts_us: *ts,
                tool: Some("t".into()),
                ..AuditRow::default()
            })
            .collect();
        let (batch, _, _) =
            decode_batch(&rows_to_batch(&rows), input, &RowFilter::default(), false).unwrap();
        let batch = Arc::new(batch);
        (0..items.len() as u32)
            .map(|r| Ok((batch.clone(), r)))
            .collect()
    }

    fn ids(it: impl Iterator<Item = Result<Pending, AuditError>>) -> Vec<String> {
        it.map(|e| {
            let (b, r) = e.unwrap();
            b.event(r).event_id().to_string()
        })
        .collect()
    }

    #[test]
    fn reorder_sorts_within_the_window_and_counts_late_events() {
        let stats = Arc::new(std::sync::Mutex::new(SourceStats::default()));
        let input = events(
            &[
                (10, "a"),
                (5, "b"),
                (10, "c"),
                (100, "d"),
                (20, "late"),
                (101, "e"),
            ],
            0,
        );
        let out = ids(Reorder::new(input.into_iter(), 50, stats.clone()));
        assert_eq!(out, ["b", "a", "c", "late", "d", "e"]);
        assert_eq!(
            stats.lock().unwrap().late,
            0,
            "20 was still within the window"
        );
        let input = events(&[(10, "a"), (100, "b"), (200, "c"), (20, "late")], 0);
        let out = ids(Reorder::new(input.into_iter(), 50, stats.clone()));
        assert_eq!(out, ["a", "b", "late", "c"]);
        assert_eq!(stats.lock().unwrap().late, 1);
    }

    #[test]
    fn merge_is_stable_for_ties() {
        let a = events(&[(1, "a1"), (5, "a5"), (5, "a5b")], 0);
        let b = events(&[(1, "b1"), (3, "b3"), (5, "b5")], 1);
        let out = ids(merge(vec![a.into_iter(), b.into_iter()]));
        assert_eq!(out, ["a1", "b1", "b3", "a5", "a5b", "b5"]);
    }
}
