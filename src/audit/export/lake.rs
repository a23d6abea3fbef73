//! OCSF events as Parquet in Amazon Security Lake's custom-source layout:
//! `DIR/region=R/accountId=A/eventDay=YYYYMMDD/<uuidv7>.parquet`, the
//! events' objects as nested structs (never JSON text).
//!
//! The events are exactly those of `--format ocsf` ([`super::ocsf::event`]),
//! converted to Arrow by one fixed schema ([`schema`]); an attribute the
//! schema has no column for is an error, never silently dropped. Files are
//! written under hidden `.partial` names and renamed when the whole export
//! is complete.

use super::ocsf;
use crate::audit::error::AuditError;
use crate::audit::schema::AuditRow;
use arrow::array::{
    ArrayRef, BooleanBuilder, Int32Builder, Int64Builder, ListArray, RecordBatch, StringBuilder,
    StructArray, UInt64Builder,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the files go: the partition values of the custom source.
#[derive(Debug, Clone)]
pub struct LakeTarget {
    /// An AWS region, e.g. `eu-west-1`.
    pub region: String,
    /// A 12-digit AWS account id.
    pub account_id: String,
}

impl LakeTarget {
    /// Checks the values (they become directory names).
    pub fn new(region: &str, account_id: &str) -> Result<LakeTarget, String> {
        let region_ok = {
            let parts: Vec<&str> = region.split('-').collect();
            parts.len() >= 3
                && parts.iter().all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                })
                && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        };
        if !region_ok {
            return Err(format!(
                "--region {region:?} is not an AWS region (like eu-west-1)"
            ));
        }
        if account_id.len() != 12 || !account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "--account-id {account_id:?} is not a 12-digit AWS account id"
            ));
        }
        Ok(LakeTarget {
            region: region.to_string(),
            account_id: account_id.to_string(),
        })
    }
}

fn s(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}
fn i32f(name: &str) -> Field {
    Field::new(name, DataType::Int32, true)
}
fn i64f(name: &str) -> Field {
    Field::new(name, DataType::Int64, true)
}
fn u64f(name: &str) -> Field {
    Field::new(name, DataType::UInt64, true)
}
fn b(name: &str) -> Field {
    Field::new(name, DataType::Boolean, true)
}
fn st(name: &str, fields: Vec<Field>) -> Field {
    Field::new(name, DataType::Struct(Fields::from(fields)), true)
}
fn list(name: &str, item: DataType) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", item, true))),
        true,
    )
}

/// The Arrow schema of the events: OCSF's `integer_t` as Int32, `long_t`
/// and `timestamp_t` (ms since the epoch) as Int64, objects as structs,
/// arrays as lists; `unmapped` as a struct of the audit columns it holds.
pub fn schema() -> SchemaRef {
    let shadow = DataType::Struct(Fields::from(vec![
        s("policy_sha256"),
        s("decision"),
        s("rule"),
    ]));
    Arc::new(Schema::new(vec![
        i32f("class_uid"),
        s("class_name"),
        i32f("category_uid"),
        s("category_name"),
        i32f("activity_id"),
        s("activity_name"),
        i64f("type_uid"),
        s("type_name"),
        i64f("time"),
        i32f("severity_id"),
        s("severity"),
        i32f("status_id"),
        s("status"),
        s("status_code"),
        s("status_detail"),
        s("message"),
        i64f("duration"),
        i32f("action_id"),
        s("action"),
        i32f("disposition_id"),
        s("disposition"),
        b("is_alert"),
        st("firewall_rule", vec![s("name")]),
        st("policy", vec![s("uid"), b("is_applied")]),
        st(
            "metadata",
            vec![
                s("version"),
                list("profiles", DataType::Utf8),
                st("product", vec![s("name"), s("vendor_name"), s("version")]),
                s("uid"),
                s("correlation_uid"),
                i32f("sequence"),
                s("log_name"),
                s("log_version"),
            ],
        ),
        st(
            "api",
            vec![
                s("operation"),
                st("service", vec![s("name")]),
                st("request", vec![s("uid")]),
                st(
                    "response",
                    vec![i32f("code"), s("error"), s("error_message")],
                ),
            ],
        ),
        st(
            "actor",
            vec![
                st("user", vec![s("name")]),
                st("session", vec![s("uid")]),
                s("app_name"),
            ],
        ),
        st("src_endpoint", vec![s("name"), s("hostname")]),
        st(
            "unmapped",
            vec![
                s("schema_version"),
                u64f("seq"),
                s("prev_hash"),
                s("hash"),
                i64f("ts_us"),
                s("transport"),
                s("method"),
                s("jsonrpc_id"),
                s("category"),
                s("risk"),
                s("decision"),
                u64f("retry_after_ms"),
                s("args_sha256"),
                s("args_json"),
                list("shadow", shadow),
                s("client_version"),
                i64f("error_code"),
                u64f("latency_us"),
                u64f("request_bytes"),
                u64f("response_bytes"),
                s("approval"),
                s("approved_by"),
                u64f("approval_ms"),
                s("continues"),
                u64f("round"),
            ],
        ),
    ]))
}

/// One column from the values at `name` of each object (absent: null).
fn column(field: &Field, values: &[Option<&Value>], path: &str) -> Result<ArrayRef, String> {
    let bad = |v: &Value| format!("{path}: {v} does not fit {}", field.data_type());
    Ok(match field.data_type() {
        DataType::Utf8 => {
            let mut a = StringBuilder::new();
            for v in values {
                match v {
                    None => a.append_null(),
                    Some(Value::String(t)) => a.append_value(t),
                    Some(v) => return Err(bad(v)),
                }
            }
            Arc::new(a.finish())
        }
        DataType::Boolean => {
            let mut a = BooleanBuilder::new();
            for v in values {
                match v {
                    None => a.append_null(),
                    Some(Value::Bool(x)) => a.append_value(*x),
                    Some(v) => return Err(bad(v)),
                }
            }
            Arc::new(a.finish())
        }
        DataType::Int32 => {
            let mut a = Int32Builder::new();
            for v in values {
                match v {
                    None => a.append_null(),
                    Some(v) => a.append_value(
                        v.as_i64()
                            .and_then(|n| i32::try_from(n).ok())
                            .ok_or_else(|| bad(v))?,
                    ),
                }
            }
            Arc::new(a.finish())
        }
        DataType::Int64 => {
            let mut a = Int64Builder::new();
            for v in values {
                match v {
                    None => a.append_null(),
                    Some(v) => a.append_value(v.as_i64().ok_or_else(|| bad(v))?),
                }
            }
            Arc::new(a.finish())
        }
        DataType::UInt64 => {
            let mut a = UInt64Builder::new();
            for v in values {
                match v {
                    None => a.append_null(),
                    Some(v) => a.append_value(v.as_u64().ok_or_else(|| bad(v))?),
                }
            }
            Arc::new(a.finish())
        }
        DataType::Struct(fields) => {
            let mut objects = Vec::with_capacity(values.len());
            for v in values {
                match v {
                    None | Some(Value::Null) => objects.push(None),
                    Some(Value::Object(m)) => {
                        if let Some(k) = m.keys().find(|k| fields.find(k).is_none()) {
                            return Err(format!("{path}.{k}: no column for this attribute"));
                        }
                        objects.push(Some(m));
                    }
                    Some(v) => return Err(bad(v)),
                }
            }
            let children = fields
                .iter()
                .map(|f| {
                    let vals: Vec<Option<&Value>> = objects
                        .iter()
                        .map(|o| o.and_then(|m| m.get(f.name())).filter(|v| !v.is_null()))
                        .collect();
                    column(f, &vals, &format!("{path}.{}", f.name()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let nulls = NullBuffer::from(objects.iter().map(Option::is_some).collect::<Vec<_>>());
            Arc::new(
                StructArray::try_new(fields.clone(), children, Some(nulls))
                    .map_err(|e| format!("{path}: {e}"))?,
            )
        }
        DataType::List(item) => {
            let mut lengths = Vec::with_capacity(values.len());
            let mut flat = Vec::new();
            let mut valid = Vec::with_capacity(values.len());
            for v in values {
                match v {
                    None => {
                        lengths.push(0);
                        valid.push(false);
                    }
                    Some(Value::Array(items)) => {
                        lengths.push(items.len());
                        valid.push(true);
                        flat.extend(items.iter().map(|x| (!x.is_null()).then_some(x)));
                    }
                    Some(v) => return Err(bad(v)),
                }
            }
            let child = column(item, &flat, &format!("{path}[]"))?;
            Arc::new(
                ListArray::try_new(
                    item.clone(),
                    OffsetBuffer::from_lengths(lengths),
                    child,
                    Some(NullBuffer::from(valid)),
                )
                .map_err(|e| format!("{path}: {e}"))?,
            )
        }
        other => return Err(format!("{path}: unsupported column type {other}")),
    })
}

/// OCSF events as one record batch of [`schema`].
pub fn events_to_batch(events: &[Value]) -> Result<RecordBatch, String> {
    let schema = schema();
    let top: Vec<Option<&Value>> = events.iter().map(Some).collect();
    let root = Field::new("event", DataType::Struct(schema.fields().clone()), false);
    let array = column(&root, &top, "")?;
    let s = array
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or("not a struct")?;
    RecordBatch::try_new(schema, s.columns().to_vec()).map_err(|e| e.to_string())
}

/// `eventDay` of a row: its UTC date as YYYYMMDD.
fn event_day(ts_us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(ts_us)
        .map(|t| t.format("%Y%m%d").to_string())
        .unwrap_or_else(|| "19700101".into())
}

const BATCH_ROWS: usize = 8192;

/// The file being written: one partition (day) at a time.
struct Open {
    day: String,
    writer: ArrowWriter<std::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
    events: Vec<Value>,
}

/// Writes the events of the rows it is given into `out`, one file per run
/// of rows of the same day (a new file when the day changes), in batches of
/// 8,192 events. Files are renamed into place only when all were written.
pub struct LakeWriter {
    out: PathBuf,
    target: LakeTarget,
    open: Option<Open>,
    done: Vec<(PathBuf, PathBuf)>,
}

impl LakeWriter {
    pub fn new(out: &Path, target: LakeTarget) -> LakeWriter {
        LakeWriter {
            out: out.to_path_buf(),
            target,
            open: None,
            done: Vec::new(),
        }
    }

    pub fn write(&mut self, row: &AuditRow) -> Result<(), AuditError> {
        let day = event_day(row.ts_us);
        if self.open.as_ref().is_some_and(|o| o.day != day) {
            self.close_current()?;
        }
        if self.open.is_none() {
            self.open = Some(self.start(day)?);
        }
        let open = self.open.as_mut().expect("opened above");
        open.events.push(ocsf::event(row));
        if open.events.len() >= BATCH_ROWS {
            flush(open)?;
        }
        Ok(())
    }

    fn start(&self, day: String) -> Result<Open, AuditError> {
        let dir = self
            .out
            .join(format!("region={}", self.target.region))
            .join(format!("accountId={}", self.target.account_id))
            .join(format!("eventDay={day}"));
        std::fs::create_dir_all(&dir).map_err(|e| AuditError::io("create", &dir, e))?;
        let name = format!("{}.parquet", uuid::Uuid::now_v7());
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.partial"));
        let file = std::fs::File::create(&tmp).map_err(|e| AuditError::io("create", &tmp, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
            .build();
        let writer = ArrowWriter::try_new(file, schema(), Some(props))
            .map_err(|e| AuditError::parquet(&tmp, e))?;
        Ok(Open {
            day,
            writer,
            tmp,
            path,
            events: Vec::with_capacity(BATCH_ROWS),
        })
    }

    fn close_current(&mut self) -> Result<(), AuditError> {
        if let Some(mut open) = self.open.take() {
            flush(&mut open)?;
            open.writer
                .close()
                .map_err(|e| AuditError::parquet(&open.tmp, e))?;
            self.done.push((open.tmp, open.path));
        }
        Ok(())
    }

    /// Closes the last file and renames every file into place; returns
    /// the files written.
    pub fn finish(mut self) -> Result<Vec<PathBuf>, AuditError> {
        self.close_current()?;
        let mut paths = Vec::new();
        for (tmp, path) in std::mem::take(&mut self.done) {
            std::fs::rename(&tmp, &path).map_err(|e| AuditError::io("rename", &tmp, e))?;
            paths.push(path);
        }
        Ok(paths)
    }

    /// Removes what an export that failed left.
    pub fn abandon(mut self) {
        if let Some(open) = self.open.take() {
            let _ = std::fs::remove_file(&open.tmp);
        }
        for (tmp, _) in std::mem::take(&mut self.done) {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

fn flush(open: &mut Open) -> Result<(), AuditError> {
    if open.events.is_empty() {
        return Ok(());
    }
    let batch = events_to_batch(&open.events).map_err(|detail| AuditError::Schema {
        path: open.path.clone(),
        detail,
    })?;
    open.writer
        .write(&batch)
        .map_err(|e| AuditError::parquet(&open.tmp, e))?;
    open.events.clear();
    Ok(())
}
