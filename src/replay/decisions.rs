//! `--decisions-out`: one row per event per candidate policy, in Parquet.
//!
//! Columns: `event_id` Utf8, `ts` Timestamp(µs, UTC), `session_id` Utf8,
//! `tool` Utf8, `policy` Utf8, `decision` Utf8, `rule` Utf8 (null), `reason`
//! Utf8 (null), `retry_after_ms` UInt64 (null), `recorded_decision` Utf8
//! (`unrecorded` for generated events). Each candidate's worker writes its own
//! part; the parts are concatenated (candidate order) into the output.

use crate::audit::AuditError;
use crate::policy::Verdict;
use crate::replay::source::EventRef;
use arrow::array::{
    ArrayRef, RecordBatch, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("session_id", DataType::Utf8, false),
        Field::new("tool", DataType::Utf8, false),
        Field::new("policy", DataType::Utf8, false),
        Field::new("decision", DataType::Utf8, false),
        Field::new("rule", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("retry_after_ms", DataType::UInt64, true),
        Field::new("recorded_decision", DataType::Utf8, false),
    ]))
});

pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

fn props() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        .build()
}

struct Builders {
    event_id: StringBuilder,
    ts: TimestampMicrosecondBuilder,
    session: StringBuilder,
    tool: StringBuilder,
    policy: StringBuilder,
    decision: StringBuilder,
    rule: StringBuilder,
    reason: StringBuilder,
    retry: UInt64Builder,
    recorded: StringBuilder,
    rows: usize,
}

impl Builders {
    fn new() -> Self {
        Builders {
            event_id: StringBuilder::new(),
            ts: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            session: StringBuilder::new(),
            tool: StringBuilder::new(),
            policy: StringBuilder::new(),
            decision: StringBuilder::new(),
            rule: StringBuilder::new(),
            reason: StringBuilder::new(),
            retry: UInt64Builder::new(),
            recorded: StringBuilder::new(),
            rows: 0,
        }
    }

    fn finish(&mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.session.finish()),
            Arc::new(self.tool.finish()),
            Arc::new(self.policy.finish()),
            Arc::new(self.decision.finish()),
            Arc::new(self.rule.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.retry.finish()),
            Arc::new(self.recorded.finish()),
        ];
        self.rows = 0;
        RecordBatch::try_new(schema(), columns).expect("columns match the schema")
    }
}

/// Streams one candidate's decisions into a part file.
pub struct DecisionsWriter {
    path: PathBuf,
    writer: ArrowWriter<File>,
    b: Builders,
}

impl DecisionsWriter {
    pub fn create(path: &Path) -> Result<Self, AuditError> {
        let file = File::create(path).map_err(|e| AuditError::io("create", path, e))?;
        let writer = ArrowWriter::try_new(file, schema(), Some(props()))
            .map_err(|e| AuditError::parquet(path, e))?;
        Ok(DecisionsWriter {
            path: path.to_path_buf(),
            writer,
            b: Builders::new(),
        })
    }

    pub fn push(
        &mut self,
        e: &EventRef<'_>,
        policy: &str,
        verdict: Verdict,
        rule: Option<&str>,
        reason: Option<&str>,
        retry_after_ms: Option<u64>,
    ) -> Result<(), AuditError> {
        let Some(event_id) = e.event_id() else {
            return Err(AuditError::Schema {
                path: self.path.clone(),
                detail: "the input was read without event ids".into(),
            });
        };
        let b = &mut self.b;
        b.event_id.append_value(event_id);
        b.ts.append_value(e.ts_us());
        b.session.append_value(e.session_id());
        b.tool.append_value(e.tool());
        b.policy.append_value(policy);
        b.decision.append_value(verdict.as_str());
        b.rule.append_option(rule);
        b.reason.append_option(reason);
        b.retry.append_option(retry_after_ms);
        b.recorded
            .append_value(e.recorded().map_or("unrecorded", Verdict::as_str));
        b.rows += 1;
        if b.rows >= 8192 {
            let batch = b.finish();
            self.writer
                .write(&batch)
                .map_err(|e| AuditError::parquet(&self.path, e))?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<(), AuditError> {
        if self.b.rows > 0 {
            let batch = self.b.finish();
            self.writer
                .write(&batch)
                .map_err(|e| AuditError::parquet(&self.path, e))?;
        }
        self.writer
            .close()
            .map_err(|e| AuditError::parquet(&self.path, e))?;
        Ok(())
    }
}

/// Concatenates part files into `out` (streaming), removing the parts.
pub fn concatenate(parts: &[PathBuf], out: &Path) -> Result<(), AuditError> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = out.with_file_name(format!(".{name}.partial"));
    let file = File::create(&tmp).map_err(|e| AuditError::io("create", &tmp, e))?;
    let mut writer = ArrowWriter::try_new(file, schema(), Some(props()))
        .map_err(|e| AuditError::parquet(&tmp, e))?;
    for part in parts {
        let f = File::open(part).map_err(|e| AuditError::io("open", part, e))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(f)
            .and_then(|b| b.build())
            .map_err(|e| AuditError::parquet(part, e))?;
        for batch in reader {
            let batch = batch.map_err(|e| AuditError::Corrupt {
                path: part.clone(),
                detail: e.to_string(),
            })?;
            writer
                .write(&batch)
                .map_err(|e| AuditError::parquet(&tmp, e))?;
        }
        std::fs::remove_file(part).map_err(|e| AuditError::io("remove", part, e))?;
    }
    writer.close().map_err(|e| AuditError::parquet(&tmp, e))?;
    std::fs::rename(&tmp, out).map_err(|e| AuditError::io("rename", &tmp, e))
}
