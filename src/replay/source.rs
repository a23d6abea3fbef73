//! Where replayed events come from, and how they are put in time order.
//!
//! A recorded input is audit Parquet (files, directories, globs): rows are
//! read with only the columns replay needs into [`EventBatch`]es whose
//! `tools/call` rows are the events; everything else is counted and
//! skipped. The pipeline moves [`Segment`]s (in-order runs of a batch). Rows are
//! written in completion order, which is nearly but not exactly `ts` order,
//! so each input passes through a [`Reorder`] buffer (events within a window
//! of event time are sorted; an event later than that is replayed where it
//! arrives and counted as late). Inputs are then merged by `ts`, ties broken
//! by input order and then arrival order (stable).

use crate::audit::AuditError;
use crate::audit::filter::RowFilter;
use crate::audit::read::{ROW_NUMBER, ScanOptions, scan_indexed};
use crate::audit::remote::DataFile;
use crate::audit::schema::{ApprovalOutcome, ColumnValue};
use crate::audit::schema::{BatchView, col};
use crate::policy::{CallReads, Category, Outcome, Risk};
use arrow::array::{Array, AsArray, PrimitiveArray, StringViewArray};
use arrow::datatypes::{TimestampMicrosecondType, UInt64Type};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

/// A decoded batch of calls: Arrow columns kept as read (string views into
/// the decoded pages: no per-event copies), plus the few per-row values
/// that need parsing.
pub struct EventBatch {
    pub input: usize,
    /// This batch's number, unique in the process: with a string's Arrow
    /// view it names the string exactly ([`EventRef::tool_key`]).
    serial: u64,
    /// Each row's `event_id`, or where the row is to read it later: a
    /// report keeps a few dozen ids of millions of events, so replay reads
    /// the column (the widest it would read) only to write every
    /// decision.
    ids: EventIds,
    ts: PrimitiveArray<TimestampMicrosecondType>,
    session: StringViewArray,
    agent: StringViewArray,
    server: Option<StringViewArray>,
    tool: StringViewArray,
    category: Vec<Option<Category>>,
    risk: Vec<Option<Risk>>,
    recorded: Vec<Option<crate::policy::Verdict>>,
    outcome: Vec<Outcome>,
    /// The recorded `approval` (schema 1.1; `None` in 1.0 files).
    approval: Vec<Option<ApprovalOutcome>>,
    /// Rows that continue a multi-round call (`continues` set; 1.1).
    continues: Option<StringViewArray>,
    /// `latency_us`, when the input has it.
    latency: Option<PrimitiveArray<UInt64Type>>,
    /// `args_sha256` (read with the arguments).
    args_hash: Option<StringViewArray>,
    args: Vec<Arc<serde_json::Value>>,
    /// Rows that are calls and pass the filters.
    pub rows: Vec<u32>,
}

/// How a batch knows its events' ids.
enum EventIds {
    Read(StringViewArray),
    /// The file the batch came from and each row's number in it.
    At(Arc<DataFile>, PrimitiveArray<arrow::datatypes::Int64Type>),
}

/// An event's id as a report keeps it: the text, or the row to read it
/// from once the report is finished ([`crate::audit::read::read_event_ids`]).
#[derive(Debug, Clone)]
pub enum EventKey {
    Id(String),
    At(RowAt),
}

/// A row of an audit file.
#[derive(Debug, Clone)]
pub struct RowAt {
    pub file: Arc<DataFile>,
    pub row: u64,
}

/// Event ids read back for the rows reports keep ([`EventKey::At`]).
#[derive(Debug, Default)]
pub struct EventNames(std::collections::HashMap<(PathBuf, u64), String>);

impl EventNames {
    /// Reads the ids of `rows`, file by file (each file once, only the
    /// row groups and pages holding them).
    pub fn read(rows: impl IntoIterator<Item = RowAt>) -> Result<EventNames, AuditError> {
        let mut by_file: std::collections::HashMap<PathBuf, (Arc<DataFile>, Vec<u64>)> =
            Default::default();
        for at in rows {
            by_file
                .entry(at.file.label())
                .or_insert_with(|| (at.file.clone(), Vec::new()))
                .1
                .push(at.row);
        }
        let mut names = std::collections::HashMap::new();
        for (label, (file, rows)) in by_file {
            let ids = crate::audit::read::read_event_ids(&file, &rows)?;
            for (row, id) in rows.into_iter().zip(ids) {
                names.insert((label.clone(), row), id);
            }
        }
        Ok(EventNames(names))
    }

    /// The id of a kept event.
    pub fn name(&self, key: EventKey) -> String {
        match key {
            EventKey::Id(id) => id,
            EventKey::At(at) => {
                let label = at.file.label();
                match self.0.get(&(label.clone(), at.row)) {
                    Some(id) => id.clone(),
                    // Not asked for (a report that kept more than
                    // `rows_to_name` listed, a bug the tests would catch):
                    // still names the event exactly.
                    None => {
                        debug_assert!(false, "row {} of {} was not read", at.row, label.display());
                        format!("{}#row{}", label.display(), at.row)
                    }
                }
            }
        }
    }
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
    /// The event's id, when it was read with the event.
    pub fn event_id(&self) -> Option<&'b str> {
        match &self.batch.ids {
            EventIds::Read(ids) => Some(ids.value(self.row)),
            EventIds::At(..) => None,
        }
    }
    /// The event's id, or where to read it.
    pub fn event_key(&self) -> EventKey {
        match &self.batch.ids {
            EventIds::Read(ids) => EventKey::Id(ids.value(self.row).to_string()),
            EventIds::At(file, rows) => EventKey::At(RowAt {
                file: file.clone(),
                row: rows.value(self.row) as u64,
            }),
        }
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
    /// A key that names this row's tool text exactly and costs no look at
    /// the text: the batch's serial and the Arrow view of the value. A
    /// view holds the length and either the whole text (up to 12 bytes)
    /// or where in the batch's buffers it lies, so within one batch equal
    /// views are equal texts; a dictionary-encoded column (what the audit
    /// writer makes) gives every row of one value the same view. Equal
    /// texts may still have different keys (a plain-encoded column): a
    /// cache keyed by it misses, it never mixes two tools up.
    pub fn tool_key(&self) -> (u64, u128) {
        (self.batch.serial, self.batch.tool.views()[self.row])
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

/// One event on its own: its batch and row.
pub type Pending = (Arc<EventBatch>, u32);

/// Consecutive events of one decoded batch, in replay order: positions
/// `start..end` of the batch's kept rows, non-decreasing in `ts`. The
/// pipeline from the reader to the deciders moves segments, not events:
/// an in-order batch travels as one segment, whatever its length.
#[derive(Clone)]
pub struct Segment {
    pub batch: Arc<EventBatch>,
    start: u32,
    end: u32,
    /// The arrival number of the first event (within its stream), which
    /// breaks ties in time stably.
    arrival: u64,
}

impl Segment {
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The batch rows of the segment's events, in order.
    pub fn rows(&self) -> &[u32] {
        &self.batch.rows[self.start as usize..self.end as usize]
    }

    /// `ts` of the segment's `i`-th event.
    fn ts_at(&self, i: usize) -> i64 {
        self.batch.ts(self.batch.rows[self.start as usize + i])
    }

    pub fn first_ts(&self) -> i64 {
        self.ts_at(0)
    }

    pub fn last_ts(&self) -> i64 {
        self.ts_at(self.len() - 1)
    }

    /// The (ts, arrival) key of the first event.
    fn head(&self) -> (i64, u64) {
        (self.first_ts(), self.arrival)
    }

    /// How many leading events satisfy `keep` (which must hold for a
    /// prefix of the segment and then not).
    fn prefix(&self, keep: impl Fn(i64, u64) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if keep(self.ts_at(mid), self.arrival + mid as u64) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Splits off the first `n` events.
    fn take_front(&mut self, n: usize) -> Segment {
        let front = Segment {
            batch: self.batch.clone(),
            start: self.start,
            end: self.start + n as u32,
            arrival: self.arrival,
        };
        self.start += n as u32;
        self.arrival += n as u64;
        front
    }
}

/// A batch's kept rows as segments: each maximal run in `ts` order.
fn segments_of(batch: Arc<EventBatch>) -> Vec<Segment> {
    let mut out = Vec::new();
    let n = batch.rows.len();
    let mut start = 0;
    for i in 1..=n {
        if i == n || batch.ts(batch.rows[i]) < batch.ts(batch.rows[i - 1]) {
            out.push(Segment {
                batch: batch.clone(),
                start: start as u32,
                end: i as u32,
                arrival: 0,
            });
            start = i;
        }
    }
    out
}

/// Segments as single events (for consumers that step one call at a time).
pub fn events_of(
    segments: impl Iterator<Item = Result<Segment, AuditError>>,
) -> impl Iterator<Item = Result<Pending, AuditError>> {
    segments.flat_map(
        |s| -> Box<dyn Iterator<Item = Result<Pending, AuditError>>> {
            match s {
                Err(e) => Box::new(std::iter::once(Err(e))),
                Ok(s) => Box::new(
                    s.rows()
                        .to_vec()
                        .into_iter()
                        .map(move |r| Ok((s.batch.clone(), r))),
                ),
            }
        },
    )
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

/// The columns replay always reads. A call's other fields are read when a
/// candidate's rules look at them ([`CallReads`]): `server`, `category`
/// and `risk`, `args_json` and `args_sha256`; `event_id` when every
/// decision is written (otherwise each row's number in its file, to read
/// the few ids a report keeps).
pub const REPLAY_COLUMNS: [&str; 10] = [
    col::TS,
    col::SESSION_ID,
    col::AGENT_ID,
    col::METHOD,
    col::TOOL,
    col::DECISION,
    col::OUTCOME,
    col::LATENCY_US,
    col::APPROVAL,
    col::CONTINUES,
];

/// Reads a recorded input's `tools/call` rows as segments of events,
/// batch by batch (each batch's in-order runs).
pub fn recorded_events(
    files: Vec<DataFile>,
    input: usize,
    filter: RowFilter,
    reads: Reads,
    stats: Arc<std::sync::Mutex<SourceStats>>,
) -> impl Iterator<Item = Result<Segment, AuditError>> {
    let with_args = reads.fields.args;
    let mut columns = REPLAY_COLUMNS.to_vec();
    if with_args {
        columns.push(col::ARGS_JSON);
        columns.push(col::ARGS_SHA256);
    }
    if reads.fields.server {
        columns.push(col::SERVER);
    }
    if reads.fields.class {
        columns.push(col::CATEGORY);
        columns.push(col::RISK);
    }
    if reads.ids {
        columns.push(col::EVENT_ID);
    }
    let mut options = ScanOptions {
        from_us: filter.from_us,
        to_us: filter.to_us,
        ..ScanOptions::default().columns(&columns).string_views()
    };
    if !reads.ids {
        options = options.row_numbers();
    }
    let files: Vec<Arc<DataFile>> = files.into_iter().map(Arc::new).collect();
    let scanned = files.iter().map(|f| DataFile::clone(f)).collect();
    scan_indexed(scanned, options).flat_map(
        move |batch| -> Box<dyn Iterator<Item = Result<Segment, AuditError>>> {
            let decoded = batch.and_then(|(file, b)| {
                decode_batch(&b, input, &filter, with_args, Some(&files[file]))
            });
            match decoded {
                Err(e) => Box::new(std::iter::once(Err(e))),
                Ok((batch, non_calls, filtered)) => {
                    let mut s = stats.lock().expect("stats lock");
                    s.non_calls += non_calls;
                    s.filtered += filtered;
                    drop(s);
                    Box::new(segments_of(Arc::new(batch)).into_iter().map(Ok))
                }
            }
        },
    )
}

/// What replay reads beyond [`REPLAY_COLUMNS`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Reads {
    /// The call's fields some candidate looks at.
    pub fields: CallReads,
    /// `event_id` of every row (every decision is written); otherwise
    /// row numbers.
    pub ids: bool,
}

/// Any Arrow string layout as string views (what replay scans read;
/// other layouts, from foreign files or tests, are converted).
fn utf8(
    array: &arrow::array::ArrayRef,
    name: &str,
    input: usize,
) -> Result<StringViewArray, AuditError> {
    if let Some(views) = array.as_string_view_opt() {
        return Ok(views.clone());
    }
    let cast = arrow::compute::cast(array, &arrow::datatypes::DataType::Utf8View).map_err(|e| {
        AuditError::Schema {
            path: PathBuf::from(format!("input {}", input + 1)),
            detail: format!("column `{name}`: {e}"),
        }
    })?;
    Ok(cast.as_string_view().clone())
}

fn decode_batch(
    batch: &arrow::array::RecordBatch,
    input: usize,
    filter: &RowFilter,
    with_args: bool,
    file: Option<&Arc<DataFile>>,
) -> Result<(EventBatch, u64, u64), AuditError> {
    let schema_err = |detail: String| AuditError::Schema {
        path: PathBuf::from(format!("input {}", input + 1)),
        detail,
    };
    let column = |name: &str| batch.column_by_name(name);
    let required = |name: &str| -> Result<StringViewArray, AuditError> {
        let a = column(name).ok_or_else(|| schema_err(format!("column `{name}` is missing")))?;
        utf8(a, name, input)
    };
    let optional = |name: &str| -> Result<Option<StringViewArray>, AuditError> {
        column(name).map(|a| utf8(a, name, input)).transpose()
    };
    let v = BatchView::new(batch);
    let ts = v
        .timestamps(col::TS)
        .map_err(|e| schema_err(e.to_string()))?
        .ok_or_else(|| schema_err("column `ts` is missing".into()))?
        .clone();
    let ids = match (column(col::EVENT_ID), column(ROW_NUMBER), file) {
        (Some(_), _, _) | (None, None, _) | (None, Some(_), None) => {
            EventIds::Read(required(col::EVENT_ID)?)
        }
        (None, Some(rows), Some(file)) => EventIds::At(
            file.clone(),
            rows.as_primitive_opt()
                .cloned()
                .ok_or_else(|| schema_err("row numbers are not Int64".into()))?,
        ),
    };
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
    fn get(a: &Option<StringViewArray>, i: usize) -> Option<&str> {
        a.as_ref().and_then(|a| (!a.is_null(i)).then(|| a.value(i)))
    }
    let mut rows = Vec::with_capacity(n);
    let (mut non_calls, mut filtered) = (0u64, 0u64);
    let field_filters = filter.has_field_filters();
    // A row is a call when its method is `tools/call` (or absent): the
    // method column's view is compared first (this text fits in a view),
    // its text only when the view differs.
    const CALL: &str = "tools/call";
    let call_view = arrow::array::builder::make_view(CALL.as_bytes(), 0, 0);
    let is_call = |i: usize| match &method {
        Some(m) => m.is_null(i) || m.views()[i] == call_view || m.value(i) == CALL,
        None => true,
    };
    let tool_nulls = tool.null_count() > 0;
    for i in 0..n {
        if (tool_nulls && tool.is_null(i)) || !is_call(i) {
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
    /// Parses a column's values, each distinct value once: these columns
    /// take a handful of values, so results are kept by the value's Arrow
    /// view (within one array, equal views are equal texts; a
    /// dictionary-encoded column gives all rows of a value one view), and
    /// the text is read only when a view is new.
    fn parse<T: Copy>(
        a: &Option<StringViewArray>,
        n: usize,
        f: impl Fn(&str) -> Option<T>,
    ) -> Vec<Option<T>> {
        let Some(a) = a else {
            return vec![None; n];
        };
        let views = a.views();
        let mut known: [Option<(u128, Option<T>)>; 8] = [None; 8];
        // Runs of one value are the rule: the last view is checked first.
        let mut last: Option<(u128, Option<T>)> = None;
        let nulls = a.null_count() > 0;
        let mut out = Vec::with_capacity(n);
        for (i, &view) in views.iter().enumerate().take(n) {
            if nulls && a.is_null(i) {
                out.push(None);
                continue;
            }
            if let Some((seen, v)) = last
                && seen == view
            {
                out.push(v);
                continue;
            }
            let mix = (view as u64 ^ (view >> 64) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let slot = &mut known[(mix >> 61) as usize];
            let v = match *slot {
                Some((seen, v)) if seen == view => v,
                _ => {
                    let v = f(a.value(i));
                    *slot = Some((view, v));
                    v
                }
            };
            last = Some((view, v));
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
            serial: next_serial(),
            // Read only for a candidate that looks at them (absent: none).
            category: if category.is_some() {
                parse(&category, n, |c| Category::from_str(c).ok())
            } else {
                Vec::new()
            },
            risk: if risk.is_some() {
                parse(&risk, n, |r| Risk::from_str(r).ok())
            } else {
                Vec::new()
            },
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
            ids,
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

/// Decodes a batch as replay does (calls only, no filter, no arguments).
#[cfg(test)]
pub(crate) fn decode_batch_for_tests(batch: &arrow::array::RecordBatch) -> EventBatch {
    decode_batch(batch, 0, &RowFilter::default(), false, None)
        .expect("decodes")
        .0
}

/// A new [`EventBatch::serial`].
fn next_serial() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Sorts a nearly-sorted stream by `ts` within a window of event time.
///
/// Works on segments (runs already in order): buffered segments sit in a
/// heap by their first event's (ts, arrival); the earliest gives out the
/// longest prefix that is due (a full window older than the newest time
/// seen) and sorts before every other buffered event. An in-order input
/// passes through a batch at a time. An event older than one already given
/// out is too late to sort in: it is given out as it arrives and counted.
pub struct Reorder<I> {
    inner: I,
    window_us: i64,
    heap: BinaryHeap<Reverse<(i64, u64, HeapSlot)>>,
    arrivals: u64,
    max_seen: i64,
    last_out: i64,
    done: bool,
    stats: Arc<std::sync::Mutex<SourceStats>>,
}

/// Heap payload ordered only by the key in front of it.
struct HeapSlot(Segment);

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
            heap: BinaryHeap::new(),
            arrivals: 0,
            max_seen: i64::MIN,
            last_out: i64::MIN,
            done: false,
            stats,
        }
    }

    fn buffer(&mut self, s: Segment) {
        let (ts, arrival) = s.head();
        self.heap.push(Reverse((ts, arrival, HeapSlot(s))));
    }
}

impl<I: Iterator<Item = Result<Segment, AuditError>>> Iterator for Reorder<I> {
    type Item = Result<Segment, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let horizon = if self.done {
                i64::MAX
            } else {
                self.max_seen.saturating_sub(self.window_us)
            };
            if let Some(Reverse((ts, _, _))) = self.heap.peek() {
                if *ts <= horizon {
                    let Reverse((_, _, HeapSlot(mut s))) = self.heap.pop().expect("peeked");
                    let next = self.heap.peek().map(|Reverse((t, a, _))| (*t, *a));
                    let n = s.prefix(|ts, arrival| {
                        ts <= horizon && next.is_none_or(|k| (ts, arrival) < k)
                    });
                    let out = s.take_front(n.max(1));
                    if !s.is_empty() {
                        self.buffer(s);
                    }
                    self.last_out = self.last_out.max(out.last_ts());
                    return Some(Ok(out));
                }
            } else if self.done {
                return None;
            }
            match self.inner.next() {
                None => self.done = true,
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(mut s)) if !s.is_empty() => {
                    s.arrival = self.arrivals;
                    self.arrivals += s.len() as u64;
                    self.max_seen = self.max_seen.max(s.last_ts());
                    let last_out = self.last_out;
                    let late = s.prefix(|ts, _| ts < last_out);
                    if late > 0 {
                        // Too late to sort in: given out now, and said so.
                        self.stats.lock().expect("stats lock").late += late as u64;
                        let out = s.take_front(late);
                        if !s.is_empty() {
                            self.buffer(s);
                        }
                        return Some(Ok(out));
                    }
                    self.buffer(s);
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

/// Merges time-ordered streams by (ts, input order, arrival order), a
/// segment at a time: the stream whose next event is earliest gives out
/// the prefix of its segment that sorts before every other stream's next
/// event.
pub fn merge<I>(streams: Vec<I>) -> impl Iterator<Item = Result<Segment, AuditError>>
where
    I: Iterator<Item = Result<Segment, AuditError>>,
{
    let mut streams: Vec<I> = streams;
    let mut heads: Vec<Option<Segment>> = streams.iter().map(|_| None).collect();
    let mut ended = vec![false; streams.len()];
    std::iter::from_fn(move || {
        if streams.len() == 1 {
            return streams[0].next();
        }
        for (i, s) in streams.iter_mut().enumerate() {
            while heads[i].is_none() && !ended[i] {
                match s.next() {
                    None => ended[i] = true,
                    Some(Err(e)) => return Some(Err(e)),
                    Some(Ok(seg)) if seg.is_empty() => {}
                    Some(Ok(seg)) => heads[i] = Some(seg),
                }
            }
        }
        let key = |i: usize, h: &Option<Segment>| h.as_ref().map(|s| (s.first_ts(), i));
        let best = heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| key(i, h))
            .min()?;
        let bound = heads
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != best.1)
            .filter_map(|(i, h)| key(i, h))
            .min();
        let seg = heads[best.1].as_mut().expect("best has a head");
        let n = seg.prefix(|ts, _| bound.is_none_or(|b| (ts, best.1) < b));
        let out = seg.take_front(n.max(1));
        if seg.is_empty() {
            heads[best.1] = None;
        }
        Some(Ok(out))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::schema::{AuditRow, rows_to_batch};

    /// The given (ts, id) events, all calls: one batch per event (so the
    /// reorder sees them one at a time, in any order).
    fn events(items: &[(i64, &str)], input: usize) -> Vec<Result<Segment, AuditError>> {
        items
            .iter()
            .flat_map(|(ts, id)| batch_of(&[(*ts, id)], input))
            .collect()
    }

    /// One batch holding the given events (its in-order runs as segments).
    fn batch_of(items: &[(i64, &str)], input: usize) -> Vec<Result<Segment, AuditError>> {
        let rows: Vec<AuditRow> = items
            .iter()
            .map(|(ts, id)| AuditRow {
                event_id: id.to_string(),
                ts_us: *ts,
                tool: Some("t".into()),
                ..AuditRow::default()
            })
            .collect();
        let (batch, _, _) = decode_batch(
            &rows_to_batch(&rows),
            input,
            &RowFilter::default(),
            false,
            None,
        )
        .unwrap();
        segments_of(Arc::new(batch)).into_iter().map(Ok).collect()
    }

    fn ids(it: impl Iterator<Item = Result<Segment, AuditError>>) -> Vec<String> {
        events_of(it)
            .map(|e| {
                let (b, r) = e.unwrap();
                b.event(r).event_id().unwrap_or_default().to_string()
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

    /// The reorder's contract, one event at a time: buffered events leave
    /// in (ts, arrival) order once the newest time seen is a window past
    /// them; an event older than one already out leaves at once (late).
    fn reference_reorder(items: &[(i64, String)], window: i64) -> (Vec<String>, u64) {
        let (mut out, mut late) = (Vec::new(), 0);
        let mut buf: Vec<(i64, usize, String)> = Vec::new();
        let (mut max_seen, mut last_out) = (i64::MIN, i64::MIN);
        let release = |buf: &mut Vec<(i64, usize, String)>,
                       horizon: i64,
                       out: &mut Vec<String>,
                       last_out: &mut i64| {
            buf.sort();
            while buf.first().is_some_and(|e| e.0 <= horizon) {
                let e = buf.remove(0);
                *last_out = (*last_out).max(e.0);
                out.push(e.2);
            }
        };
        for (n, (ts, id)) in items.iter().enumerate() {
            if *ts < last_out {
                late += 1;
                out.push(id.clone());
                continue;
            }
            buf.push((*ts, n, id.clone()));
            max_seen = max_seen.max(*ts);
            release(
                &mut buf,
                max_seen.saturating_sub(window),
                &mut out,
                &mut last_out,
            );
        }
        release(&mut buf, i64::MAX, &mut out, &mut last_out);
        (out, late)
    }

    #[test]
    fn reorder_of_segments_matches_the_event_by_event_contract() {
        let mut next = crate::test_support::rng(0x2545_F491_4F6C_DD1D);
        for round in 0..200 {
            let n = 1 + next(60) as usize;
            let window = next(30) as i64;
            // Mostly increasing times with jitter, some far behind, ties.
            let mut t = 0i64;
            let items: Vec<(i64, String)> = (0..n)
                .map(|i| {
                    t += next(4) as i64;
                    let ts = match next(10) {
                        0 => t - next(80) as i64,
                        1 => t - next(8) as i64,
                        _ => t,
                    };
                    (ts, format!("e{i}"))
                })
                .collect();
            // Cut into batches of random sizes (each batch's runs become segments).
            let mut segments = Vec::new();
            let mut i = 0;
            while i < n {
                let len = (1 + next(12) as usize).min(n - i);
                let part: Vec<(i64, &str)> = items[i..i + len]
                    .iter()
                    .map(|(t, id)| (*t, id.as_str()))
                    .collect();
                segments.extend(batch_of(&part, 0));
                i += len;
            }
            let stats = Arc::new(std::sync::Mutex::new(SourceStats::default()));
            let got = ids(Reorder::new(segments.into_iter(), window, stats.clone()));
            let (want, late) = reference_reorder(&items, window);
            assert_eq!(got, want, "round {round}: window {window}, input {items:?}");
            assert_eq!(stats.lock().unwrap().late, late, "round {round}");
        }
    }

    #[test]
    fn merge_of_segments_interleaves_by_time_then_input() {
        let a = batch_of(&[(1, "a1"), (4, "a4"), (5, "a5"), (9, "a9")], 0);
        let b = batch_of(&[(2, "b2"), (4, "b4"), (5, "b5"), (6, "b6")], 1);
        let c = batch_of(&[(0, "c0"), (5, "c5")], 2);
        let out = ids(merge(vec![a.into_iter(), b.into_iter(), c.into_iter()]));
        assert_eq!(
            out,
            ["c0", "a1", "b2", "a4", "b4", "a5", "b5", "c5", "b6", "a9"]
        );
    }

    #[test]
    fn merge_is_stable_for_ties() {
        let a = events(&[(1, "a1"), (5, "a5"), (5, "a5b")], 0);
        let b = events(&[(1, "b1"), (3, "b3"), (5, "b5")], 1);
        let out = ids(merge(vec![a.into_iter(), b.into_iter()]));
        assert_eq!(out, ["a1", "b1", "b3", "a5", "a5b", "b5"]);
    }
}
