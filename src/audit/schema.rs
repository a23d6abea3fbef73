//! Audit log schema v1: the one definition of the Parquet columns, the
//! Rust row type, and conversions between rows and Arrow record batches.
//!
//! The schema is a public contract read by DuckDB, pyarrow, Athena, Spark and
//! by replay. Minor versions only add columns (at the end); a reader that
//! knows 1.0 reads any 1.x file. docs/audit-schema.md documents each column.

use crate::policy::{Category, Outcome, Risk, Verdict};
use arrow::array::{
    Array, ArrayRef, AsArray, Int64Builder, ListBuilder, RecordBatch, StringBuilder, StructBuilder,
    TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{
    DataType, Field, Fields, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
    UInt64Type,
};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

/// The value of the `schema_version` column written by this build.
pub const SCHEMA_VERSION: &str = "1.1";

/// Whether rows of `schema_version` carry the 1.1 columns (`approval`,
/// `approved_by`, `approval_ms`): every version but 1.0.
pub fn has_approval_columns(schema_version: &str) -> bool {
    schema_version != "1.0"
}

/// `prev_hash` of the first row ever written to an audit directory.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Column names, in schema order.
pub mod col {
    pub const SCHEMA_VERSION: &str = "schema_version";
    pub const EVENT_ID: &str = "event_id";
    pub const SEQ: &str = "seq";
    pub const TS: &str = "ts";
    pub const SESSION_ID: &str = "session_id";
    pub const AGENT_ID: &str = "agent_id";
    pub const CLIENT_NAME: &str = "client_name";
    pub const CLIENT_VERSION: &str = "client_version";
    pub const SERVER: &str = "server";
    pub const TRANSPORT: &str = "transport";
    pub const METHOD: &str = "method";
    pub const JSONRPC_ID: &str = "jsonrpc_id";
    pub const TOOL: &str = "tool";
    pub const CATEGORY: &str = "category";
    pub const RISK: &str = "risk";
    pub const ARGS_JSON: &str = "args_json";
    pub const ARGS_SHA256: &str = "args_sha256";
    pub const DECISION: &str = "decision";
    pub const RULE: &str = "rule";
    pub const REASON: &str = "reason";
    pub const RETRY_AFTER_MS: &str = "retry_after_ms";
    pub const POLICY_SHA256: &str = "policy_sha256";
    pub const SHADOW: &str = "shadow";
    pub const OUTCOME: &str = "outcome";
    pub const ERROR_CODE: &str = "error_code";
    pub const ERROR_MESSAGE: &str = "error_message";
    pub const LATENCY_US: &str = "latency_us";
    pub const REQUEST_BYTES: &str = "request_bytes";
    pub const RESPONSE_BYTES: &str = "response_bytes";
    pub const PREV_HASH: &str = "prev_hash";
    pub const HASH: &str = "hash";
    /// Schema 1.1.
    pub const APPROVAL: &str = "approval";
    pub const APPROVED_BY: &str = "approved_by";
    pub const APPROVAL_MS: &str = "approval_ms";
    pub const CONTINUES: &str = "continues";
    pub const ROUND: &str = "round";
    /// The columns 1.0 files do not have.
    pub const ADDED_IN_1_1: [&str; 5] = [APPROVAL, APPROVED_BY, APPROVAL_MS, CONTINUES, ROUND];
}

fn shadow_fields() -> Fields {
    Fields::from(vec![
        Field::new("policy_sha256", DataType::Utf8, false),
        Field::new("decision", DataType::Utf8, false),
        Field::new("rule", DataType::Utf8, true),
    ])
}

fn shadow_item_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(shadow_fields()), false))
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    use DataType::*;
    let utf8 = |name: &str, nullable: bool| Field::new(name, Utf8, nullable);
    Arc::new(Schema::new(vec![
        utf8(col::SCHEMA_VERSION, false),
        utf8(col::EVENT_ID, false),
        Field::new(col::SEQ, UInt64, false),
        Field::new(
            col::TS,
            Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        utf8(col::SESSION_ID, false),
        utf8(col::AGENT_ID, false),
        utf8(col::CLIENT_NAME, true),
        utf8(col::CLIENT_VERSION, true),
        utf8(col::SERVER, false),
        utf8(col::TRANSPORT, false),
        utf8(col::METHOD, false),
        utf8(col::JSONRPC_ID, true),
        utf8(col::TOOL, true),
        utf8(col::CATEGORY, true),
        utf8(col::RISK, true),
        utf8(col::ARGS_JSON, true),
        utf8(col::ARGS_SHA256, true),
        utf8(col::DECISION, false),
        utf8(col::RULE, true),
        utf8(col::REASON, true),
        Field::new(col::RETRY_AFTER_MS, UInt64, true),
        utf8(col::POLICY_SHA256, false),
        Field::new(col::SHADOW, List(shadow_item_field()), false),
        utf8(col::OUTCOME, false),
        Field::new(col::ERROR_CODE, Int64, true),
        utf8(col::ERROR_MESSAGE, true),
        Field::new(col::LATENCY_US, UInt64, true),
        Field::new(col::REQUEST_BYTES, UInt64, false),
        Field::new(col::RESPONSE_BYTES, UInt64, false),
        utf8(col::PREV_HASH, false),
        utf8(col::HASH, false),
        utf8(col::APPROVAL, true),
        utf8(col::APPROVED_BY, true),
        Field::new(col::APPROVAL_MS, UInt64, true),
        utf8(col::CONTINUES, true),
        Field::new(col::ROUND, UInt64, true),
    ]))
});

/// The Arrow schema of audit log v1.
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

/// How a recorded request reached the proxy (the `transport` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Stdio,
    Http,
    Bridge,
    /// Imported from another tool's log that does not say.
    Unknown,
    /// A scenario's simulated call.
    Generated,
}

/// The `approval` column (schema 1.1): what became of a call the policy
/// sent for approval. Null for every other call (and in 1.0 files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalOutcome {
    /// Asked and not answered in this row (the first round of a
    /// 2026-07-28 input-required exchange; its retry has the answer).
    Pending,
    /// A human said yes: the call went on to the rest of the policy.
    Granted,
    /// A human said no (or the client's dialog was declined).
    Denied,
    /// Nobody answered within `--approval-timeout`.
    Timeout,
    /// The client cancelled the call, or the dialog, while it waited.
    Cancelled,
}

impl ColumnValue for ApprovalOutcome {
    const VALUES: &'static [Self] = &[
        ApprovalOutcome::Pending,
        ApprovalOutcome::Granted,
        ApprovalOutcome::Denied,
        ApprovalOutcome::Timeout,
        ApprovalOutcome::Cancelled,
    ];
    fn as_str(self) -> &'static str {
        match self {
            ApprovalOutcome::Pending => "pending",
            ApprovalOutcome::Granted => "granted",
            ApprovalOutcome::Denied => "denied",
            ApprovalOutcome::Timeout => "timeout",
            ApprovalOutcome::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for ApprovalOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(ColumnValue::as_str(*self))
    }
}

/// The `decision` column: a verdict, or `unrecorded` for generated events
/// no policy decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RecordedDecision {
    Allow,
    Deny,
    Throttle,
    Approval,
    Unrecorded,
}

impl RecordedDecision {
    /// The verdict, `None` for `unrecorded`.
    pub fn verdict(self) -> Option<Verdict> {
        match self {
            RecordedDecision::Allow => Some(Verdict::Allow),
            RecordedDecision::Deny => Some(Verdict::Deny),
            RecordedDecision::Throttle => Some(Verdict::Throttle),
            RecordedDecision::Approval => Some(Verdict::Approval),
            RecordedDecision::Unrecorded => None,
        }
    }
}

impl From<Verdict> for RecordedDecision {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Allow => RecordedDecision::Allow,
            Verdict::Deny => RecordedDecision::Deny,
            Verdict::Throttle => RecordedDecision::Throttle,
            Verdict::Approval => RecordedDecision::Approval,
        }
    }
}

/// The enum-valued columns: typed in Rust, their snake_case names in
/// Parquet, JSON, CSV and the hash chain. This is the only place they
/// become text and back.
pub trait ColumnValue: Copy + 'static {
    const VALUES: &'static [Self];
    fn as_str(self) -> &'static str;

    /// Parses a column value; the error names the accepted values.
    fn parse_value(text: &str) -> Result<Self, String> {
        Self::VALUES
            .iter()
            .copied()
            .find(|v| v.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::VALUES.iter().map(|v| v.as_str()).collect();
                format!("unknown value `{text}` (expected {})", names.join(", "))
            })
    }
}

impl ColumnValue for Transport {
    const VALUES: &'static [Self] = &[
        Transport::Stdio,
        Transport::Http,
        Transport::Bridge,
        Transport::Unknown,
        Transport::Generated,
    ];
    fn as_str(self) -> &'static str {
        Transport::as_str(self)
    }
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Stdio => "stdio",
            Transport::Http => "http",
            Transport::Bridge => "bridge",
            Transport::Unknown => "unknown",
            Transport::Generated => "generated",
        }
    }
}

impl ColumnValue for RecordedDecision {
    const VALUES: &'static [Self] = &[
        RecordedDecision::Allow,
        RecordedDecision::Deny,
        RecordedDecision::Throttle,
        RecordedDecision::Approval,
        RecordedDecision::Unrecorded,
    ];
    fn as_str(self) -> &'static str {
        RecordedDecision::as_str(self)
    }
}

impl RecordedDecision {
    pub fn as_str(self) -> &'static str {
        match self.verdict() {
            Some(v) => v.as_str(),
            None => "unrecorded",
        }
    }
}

impl ColumnValue for Verdict {
    const VALUES: &'static [Self] = &Verdict::ALL;
    fn as_str(self) -> &'static str {
        Verdict::as_str(self)
    }
}

impl ColumnValue for Outcome {
    const VALUES: &'static [Self] = &Outcome::ALL;
    fn as_str(self) -> &'static str {
        Outcome::as_str(self)
    }
}

impl ColumnValue for Category {
    const VALUES: &'static [Self] = &Category::ALL;
    fn as_str(self) -> &'static str {
        Category::as_str(self)
    }
}

impl ColumnValue for Risk {
    const VALUES: &'static [Self] = &Risk::ALL;
    fn as_str(self) -> &'static str {
        Risk::as_str(self)
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for RecordedDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RecordedDecision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse_value(s)
    }
}

impl FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse_value(s)
    }
}

/// A candidate policy's verdict recorded in shadow mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowDecision {
    pub policy_sha256: String,
    pub decision: Verdict,
    pub rule: Option<String>,
}

/// One audit row: one JSON-RPC request from the client and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    pub schema_version: String,
    pub event_id: String,
    pub seq: u64,
    /// When the request was received, µs since the Unix epoch (UTC).
    pub ts_us: i64,
    pub session_id: String,
    pub agent_id: String,
    pub client_name: Option<String>,
    pub client_version: Option<String>,
    pub server: String,
    pub transport: Transport,
    pub method: String,
    pub jsonrpc_id: Option<String>,
    pub tool: Option<String>,
    pub category: Option<Category>,
    pub risk: Option<Risk>,
    pub args_json: Option<String>,
    pub args_sha256: Option<String>,
    pub decision: RecordedDecision,
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub retry_after_ms: Option<u64>,
    pub policy_sha256: String,
    pub shadow: Vec<ShadowDecision>,
    pub outcome: Outcome,
    pub error_code: Option<i64>,
    pub error_message: Option<String>,
    pub latency_us: Option<u64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub prev_hash: String,
    pub hash: String,
    /// Schema 1.1: what became of an approval (null for other calls).
    #[serde(default)]
    pub approval: Option<ApprovalOutcome>,
    /// Schema 1.1: who answered (`--as NAME` on the queue, the client's
    /// name for an in-client dialog).
    #[serde(default)]
    pub approved_by: Option<String>,
    /// Schema 1.1: how long the call waited for the answer.
    #[serde(default)]
    pub approval_ms: Option<u64>,
    /// Schema 1.1: for a later round of a multi-round call (a 2026-07-28
    /// retry carrying the server's `requestState`), the `event_id` of its
    /// first round.
    #[serde(default)]
    pub continues: Option<String>,
    /// Schema 1.1: the round of a multi-round call (1, 2, …); null for a
    /// call answered in one round.
    #[serde(default)]
    pub round: Option<u64>,
}

impl Default for AuditRow {
    fn default() -> Self {
        AuditRow {
            schema_version: SCHEMA_VERSION.to_string(),
            event_id: String::new(),
            seq: 0,
            ts_us: 0,
            session_id: String::new(),
            agent_id: String::new(),
            client_name: None,
            client_version: None,
            server: String::new(),
            transport: Transport::Stdio,
            method: "tools/call".to_string(),
            jsonrpc_id: None,
            tool: None,
            category: None,
            risk: None,
            args_json: None,
            args_sha256: None,
            decision: RecordedDecision::Allow,
            rule: None,
            reason: None,
            retry_after_ms: None,
            policy_sha256: String::new(),
            shadow: Vec::new(),
            outcome: Outcome::Ok,
            error_code: None,
            error_message: None,
            latency_us: None,
            request_bytes: 0,
            response_bytes: 0,
            prev_hash: String::new(),
            hash: String::new(),
            approval: None,
            approved_by: None,
            approval_ms: None,
            continues: None,
            round: None,
        }
    }
}

/// A new UUIDv7 (time-ordered) as text: event ids and file names.
pub fn new_uuid_v7() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Builds a record batch (full schema v1) from rows.
pub fn rows_to_batch(rows: &[AuditRow]) -> RecordBatch {
    let n = rows.len();
    // Exact byte capacities: one allocation per column, no regrowth.
    let strings = |f: &dyn Fn(&AuditRow) -> &str| -> ArrayRef {
        let bytes = rows.iter().map(|r| f(r).len()).sum();
        let mut b = StringBuilder::with_capacity(n, bytes);
        for r in rows {
            b.append_value(f(r));
        }
        Arc::new(b.finish())
    };
    let opt_strings = |f: &dyn Fn(&AuditRow) -> Option<&str>| -> ArrayRef {
        let bytes = rows.iter().map(|r| f(r).map_or(0, str::len)).sum();
        let mut b = StringBuilder::with_capacity(n, bytes);
        for r in rows {
            b.append_option(f(r));
        }
        Arc::new(b.finish())
    };
    let u64s = |f: &dyn Fn(&AuditRow) -> Option<u64>| -> ArrayRef {
        let mut b = UInt64Builder::with_capacity(n);
        for r in rows {
            b.append_option(f(r));
        }
        Arc::new(b.finish())
    };
    let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    for r in rows {
        ts.append_value(r.ts_us);
    }
    let mut error_code = Int64Builder::with_capacity(n);
    for r in rows {
        error_code.append_option(r.error_code);
    }
    let struct_builder = StructBuilder::from_fields(shadow_fields(), 0);
    let mut shadow = ListBuilder::new(struct_builder).with_field(shadow_item_field());
    for r in rows {
        let sb = shadow.values();
        for s in &r.shadow {
            sb.field_builder::<StringBuilder>(0)
                .expect("policy_sha256")
                .append_value(&s.policy_sha256);
            sb.field_builder::<StringBuilder>(1)
                .expect("decision")
                .append_value(s.decision.as_str());
            sb.field_builder::<StringBuilder>(2)
                .expect("rule")
                .append_option(s.rule.as_deref());
            sb.append(true);
        }
        shadow.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        strings(&|r| &r.schema_version),
        strings(&|r| &r.event_id),
        u64s(&|r| Some(r.seq)),
        Arc::new(ts.finish()),
        strings(&|r| &r.session_id),
        strings(&|r| &r.agent_id),
        opt_strings(&|r| r.client_name.as_deref()),
        opt_strings(&|r| r.client_version.as_deref()),
        strings(&|r| &r.server),
        strings(&|r| r.transport.as_str()),
        strings(&|r| &r.method),
        opt_strings(&|r| r.jsonrpc_id.as_deref()),
        opt_strings(&|r| r.tool.as_deref()),
        opt_strings(&|r| r.category.map(Category::as_str)),
        opt_strings(&|r| r.risk.map(Risk::as_str)),
        opt_strings(&|r| r.args_json.as_deref()),
        opt_strings(&|r| r.args_sha256.as_deref()),
        strings(&|r| r.decision.as_str()),
        opt_strings(&|r| r.rule.as_deref()),
        opt_strings(&|r| r.reason.as_deref()),
        u64s(&|r| r.retry_after_ms),
        strings(&|r| &r.policy_sha256),
        Arc::new(shadow.finish()),
        strings(&|r| r.outcome.as_str()),
        Arc::new(error_code.finish()),
        opt_strings(&|r| r.error_message.as_deref()),
        u64s(&|r| r.latency_us),
        u64s(&|r| Some(r.request_bytes)),
        u64s(&|r| Some(r.response_bytes)),
        strings(&|r| &r.prev_hash),
        strings(&|r| &r.hash),
        opt_strings(&|r| r.approval.map(ColumnValue::as_str)),
        opt_strings(&|r| r.approved_by.as_deref()),
        u64s(&|r| r.approval_ms),
        opt_strings(&|r| r.continues.as_deref()),
        u64s(&|r| r.round),
    ];
    RecordBatch::try_new(schema(), columns).expect("columns match the schema by construction")
}

/// Why a batch could not be read as audit rows.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("column `{column}`: {problem}")]
pub struct ColumnError {
    pub column: String,
    pub problem: String,
}

/// Typed access to a batch's columns by name, tolerant of projection (a
/// missing column reads as null/empty) but strict about types.
pub struct BatchView<'b> {
    batch: &'b RecordBatch,
}

impl<'b> BatchView<'b> {
    pub fn new(batch: &'b RecordBatch) -> Self {
        BatchView { batch }
    }

    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.num_rows() == 0
    }

    fn column(&self, name: &str) -> Option<&'b ArrayRef> {
        self.batch.column_by_name(name)
    }

    fn type_error(name: &str, expected: &str, found: &DataType) -> ColumnError {
        ColumnError {
            column: name.to_string(),
            problem: format!("expected {expected}, found {found}"),
        }
    }

    /// A string column (Utf8, LargeUtf8 or Utf8View), if present.
    pub fn strings(&self, name: &str) -> Result<Option<StrColumn<'b>>, ColumnError> {
        let Some(array) = self.column(name) else {
            return Ok(None);
        };
        match array.data_type() {
            DataType::Utf8 => Ok(Some(StrColumn::Utf8(array.as_string::<i32>()))),
            DataType::LargeUtf8 => Ok(Some(StrColumn::Large(array.as_string::<i64>()))),
            DataType::Utf8View => Ok(Some(StrColumn::View(array.as_string_view()))),
            DataType::Dictionary(_, v) if **v == DataType::Utf8 => {
                // Dictionary-encoded strings (some writers): decode once.
                let decoded =
                    arrow::compute::cast(array, &DataType::Utf8).map_err(|e| ColumnError {
                        column: name.into(),
                        problem: e.to_string(),
                    })?;
                Ok(Some(StrColumn::Owned(decoded)))
            }
            other => Err(Self::type_error(name, "Utf8", other)),
        }
    }

    pub fn u64s(
        &self,
        name: &str,
    ) -> Result<Option<&'b arrow::array::PrimitiveArray<UInt64Type>>, ColumnError> {
        let Some(array) = self.column(name) else {
            return Ok(None);
        };
        match array.data_type() {
            DataType::UInt64 => Ok(Some(array.as_primitive::<UInt64Type>())),
            other => Err(Self::type_error(name, "UInt64", other)),
        }
    }

    pub fn i64s(
        &self,
        name: &str,
    ) -> Result<Option<&'b arrow::array::PrimitiveArray<Int64Type>>, ColumnError> {
        let Some(array) = self.column(name) else {
            return Ok(None);
        };
        match array.data_type() {
            DataType::Int64 => Ok(Some(array.as_primitive::<Int64Type>())),
            other => Err(Self::type_error(name, "Int64", other)),
        }
    }

    /// The `ts` column as µs UTC (timestamp columns of any timezone label).
    pub fn timestamps(
        &self,
        name: &str,
    ) -> Result<Option<&'b arrow::array::PrimitiveArray<TimestampMicrosecondType>>, ColumnError>
    {
        let Some(array) = self.column(name) else {
            return Ok(None);
        };
        match array.data_type() {
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                Ok(Some(array.as_primitive::<TimestampMicrosecondType>()))
            }
            other => Err(Self::type_error(name, "Timestamp(µs, UTC)", other)),
        }
    }

    /// Converts every row of a full-schema batch back to [`AuditRow`]s.
    pub fn rows(&self) -> Result<Vec<AuditRow>, ColumnError> {
        let n = self.len();
        let req = |c: Option<StrColumn<'b>>, name: &str| {
            c.ok_or_else(|| ColumnError {
                column: name.into(),
                problem: "missing".into(),
            })
        };
        let schema_version = req(self.strings(col::SCHEMA_VERSION)?, col::SCHEMA_VERSION)?;
        let event_id = req(self.strings(col::EVENT_ID)?, col::EVENT_ID)?;
        let seq = self.u64s(col::SEQ)?;
        let ts = self.timestamps(col::TS)?.ok_or_else(|| ColumnError {
            column: col::TS.into(),
            problem: "missing".into(),
        })?;
        let session_id = req(self.strings(col::SESSION_ID)?, col::SESSION_ID)?;
        let agent_id = req(self.strings(col::AGENT_ID)?, col::AGENT_ID)?;
        let client_name = self.strings(col::CLIENT_NAME)?;
        let client_version = self.strings(col::CLIENT_VERSION)?;
        let server = self.strings(col::SERVER)?;
        let transport = self.strings(col::TRANSPORT)?;
        let method = self.strings(col::METHOD)?;
        let jsonrpc_id = self.strings(col::JSONRPC_ID)?;
        let tool = self.strings(col::TOOL)?;
        let category = self.strings(col::CATEGORY)?;
        let risk = self.strings(col::RISK)?;
        let args_json = self.strings(col::ARGS_JSON)?;
        let args_sha256 = self.strings(col::ARGS_SHA256)?;
        let decision = self.strings(col::DECISION)?;
        let rule = self.strings(col::RULE)?;
        let reason = self.strings(col::REASON)?;
        let retry = self.u64s(col::RETRY_AFTER_MS)?;
        let policy_sha = self.strings(col::POLICY_SHA256)?;
        let outcome = self.strings(col::OUTCOME)?;
        let error_code = self.i64s(col::ERROR_CODE)?;
        let error_message = self.strings(col::ERROR_MESSAGE)?;
        let latency = self.u64s(col::LATENCY_US)?;
        let request_bytes = self.u64s(col::REQUEST_BYTES)?;
        let response_bytes = self.u64s(col::RESPONSE_BYTES)?;
        let prev_hash = self.strings(col::PREV_HASH)?;
        let hash = self.strings(col::HASH)?;
        let approval = self.strings(col::APPROVAL)?;
        let approved_by = self.strings(col::APPROVED_BY)?;
        let approval_ms = self.u64s(col::APPROVAL_MS)?;
        let continues = self.strings(col::CONTINUES)?;
        let round = self.u64s(col::ROUND)?;
        let shadow = self.column(col::SHADOW);
        let shadow_list = match shadow {
            None => None,
            Some(a) => match a.data_type() {
                DataType::List(_) => Some(a.as_list::<i32>()),
                other => return Err(Self::type_error(col::SHADOW, "List<Struct>", other)),
            },
        };
        let opt = |c: &Option<StrColumn<'b>>, i: usize| {
            c.as_ref().and_then(|c| c.get(i)).map(str::to_string)
        };
        let text = |c: &Option<StrColumn<'b>>, i: usize| opt(c, i).unwrap_or_default();
        fn typed<T: ColumnValue>(
            c: &Option<StrColumn<'_>>,
            name: &str,
            i: usize,
        ) -> Result<Option<T>, ColumnError> {
            match c.as_ref().and_then(|c| c.get(i)) {
                None => Ok(None),
                Some(text) => T::parse_value(text)
                    .map(Some)
                    .map_err(|problem| ColumnError {
                        column: name.into(),
                        problem: format!("row {i}: {problem}"),
                    }),
            }
        }
        let required = |name: &str, i: usize| ColumnError {
            column: name.into(),
            problem: format!("row {i}: null in a required column"),
        };
        let num = |c: Option<&arrow::array::PrimitiveArray<UInt64Type>>, i: usize| {
            c.and_then(|c| if c.is_null(i) { None } else { Some(c.value(i)) })
        };
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            let shadow = match shadow_list {
                Some(list) if !list.is_null(i) => read_shadow(&list.value(i))?,
                _ => Vec::new(),
            };
            rows.push(AuditRow {
                schema_version: schema_version.get(i).unwrap_or_default().to_string(),
                event_id: event_id.get(i).unwrap_or_default().to_string(),
                seq: num(seq, i).unwrap_or_default(),
                ts_us: ts.value(i),
                session_id: session_id.get(i).unwrap_or_default().to_string(),
                agent_id: agent_id.get(i).unwrap_or_default().to_string(),
                client_name: opt(&client_name, i),
                client_version: opt(&client_version, i),
                server: text(&server, i),
                transport: typed(&transport, col::TRANSPORT, i)?
                    .ok_or_else(|| required(col::TRANSPORT, i))?,
                method: text(&method, i),
                jsonrpc_id: opt(&jsonrpc_id, i),
                tool: opt(&tool, i),
                category: typed(&category, col::CATEGORY, i)?,
                risk: typed(&risk, col::RISK, i)?,
                args_json: opt(&args_json, i),
                args_sha256: opt(&args_sha256, i),
                decision: typed(&decision, col::DECISION, i)?
                    .ok_or_else(|| required(col::DECISION, i))?,
                rule: opt(&rule, i),
                reason: opt(&reason, i),
                retry_after_ms: num(retry, i),
                policy_sha256: text(&policy_sha, i),
                shadow,
                outcome: typed(&outcome, col::OUTCOME, i)?
                    .ok_or_else(|| required(col::OUTCOME, i))?,
                error_code: error_code
                    .and_then(|c| if c.is_null(i) { None } else { Some(c.value(i)) }),
                error_message: opt(&error_message, i),
                latency_us: num(latency, i),
                request_bytes: num(request_bytes, i).unwrap_or_default(),
                response_bytes: num(response_bytes, i).unwrap_or_default(),
                prev_hash: text(&prev_hash, i),
                hash: text(&hash, i),
                approval: typed(&approval, col::APPROVAL, i)?,
                approved_by: opt(&approved_by, i),
                approval_ms: num(approval_ms, i),
                continues: opt(&continues, i),
                round: num(round, i),
            });
        }
        Ok(rows)
    }
}

fn read_shadow(items: &ArrayRef) -> Result<Vec<ShadowDecision>, ColumnError> {
    let bad = |p: &str| ColumnError {
        column: col::SHADOW.into(),
        problem: p.into(),
    };
    let s = items
        .as_struct_opt()
        .ok_or_else(|| bad("items are not structs"))?;
    let field = |name: &str| -> Result<StrColumn<'_>, ColumnError> {
        let a = s
            .column_by_name(name)
            .ok_or_else(|| bad(&format!("missing field {name}")))?;
        match a.data_type() {
            DataType::Utf8 => Ok(StrColumn::Utf8(a.as_string::<i32>())),
            DataType::LargeUtf8 => Ok(StrColumn::Large(a.as_string::<i64>())),
            DataType::Utf8View => Ok(StrColumn::View(a.as_string_view())),
            other => Err(bad(&format!("field {name}: expected Utf8, found {other}"))),
        }
    };
    let (p, d, r) = (field("policy_sha256")?, field("decision")?, field("rule")?);
    (0..s.len())
        .map(|i| {
            Ok(ShadowDecision {
                policy_sha256: p.get(i).unwrap_or_default().to_string(),
                decision: Verdict::parse_value(d.get(i).unwrap_or_default())
                    .map_err(|e| bad(&format!("decision: {e}")))?,
                rule: r.get(i).map(str::to_string),
            })
        })
        .collect()
}

/// A string column in any of Arrow's string layouts.
pub enum StrColumn<'a> {
    Utf8(&'a arrow::array::StringArray),
    Large(&'a arrow::array::LargeStringArray),
    View(&'a arrow::array::StringViewArray),
    Owned(ArrayRef),
}

impl StrColumn<'_> {
    /// The value at `i`, `None` when null.
    pub fn get(&self, i: usize) -> Option<&str> {
        match self {
            StrColumn::Utf8(a) => (!a.is_null(i)).then(|| a.value(i)),
            StrColumn::Large(a) => (!a.is_null(i)).then(|| a.value(i)),
            StrColumn::View(a) => (!a.is_null(i)).then(|| a.value(i)),
            StrColumn::Owned(a) => {
                let a = a.as_string::<i32>();
                (!a.is_null(i)).then(|| a.value(i))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(i: u64) -> AuditRow {
        AuditRow {
            event_id: format!("e{i}"),
            seq: i,
            ts_us: 1_795_564_800_000_000 + i as i64,
            session_id: "s".into(),
            agent_id: "a".into(),
            client_name: Some("mcp".into()),
            tool: Some("copy_image_set".into()),
            args_json: Some("{\"x\":1}".into()),
            retry_after_ms: i.is_multiple_of(2).then_some(5),
            shadow: vec![ShadowDecision {
                policy_sha256: "p".into(),
                decision: crate::policy::Verdict::Deny,
                rule: None,
            }],
            error_code: Some(-32601),
            prev_hash: GENESIS_HASH.into(),
            hash: "h".into(),
            ..AuditRow::default()
        }
    }

    #[test]
    fn rows_round_trip_through_a_batch() {
        let rows: Vec<AuditRow> = (0..5).map(sample).collect();
        let batch = rows_to_batch(&rows);
        assert_eq!(batch.schema(), schema());
        assert_eq!(BatchView::new(&batch).rows().unwrap(), rows);
    }

    #[test]
    fn wrong_types_are_named() {
        let batch = RecordBatch::try_from_iter(vec![(
            "seq",
            Arc::new(arrow::array::StringArray::from(vec!["1"])) as ArrayRef,
        )])
        .unwrap();
        let err = BatchView::new(&batch).u64s("seq").unwrap_err();
        assert_eq!(err.column, "seq");
    }
}
