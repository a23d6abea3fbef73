//! Compliance export: stream an audit log, filtered, into Parquet, CSV,
//! JSON lines, OCSF 1.8.0 API Activity events ([`ocsf`]; as Parquet in
//! Amazon Security Lake's layout: [`lake`]), ECS documents ([`ecs`]) or CEF
//! lines ([`cef`]), in bounded memory (one record batch at a time). The
//! output is written under a temporary name and renamed into place when
//! complete.

pub mod cef;
pub mod ecs;
pub mod lake;
pub mod ocsf;

use crate::audit::error::AuditError;
use crate::audit::filter::RowFilter;
use crate::audit::read::{ScanOptions, scan};
use crate::audit::remote::DataFile;
use crate::audit::schema::{self, AuditRow, BatchView, col};
use arrow::array::{BooleanArray, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::{Value, json};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// What `flightrec export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// The audit schema, unchanged
    Parquet,
    /// One header line, then one line per row
    Csv,
    /// One JSON object per row
    Jsonl,
    /// OCSF 1.8.0 API Activity (6003), one JSON object per line
    Ocsf,
    /// Elastic Common Schema 9.0.0, one JSON object per line
    Ecs,
    /// ArcSight Common Event Format (CEF:0), one event per line
    Cef,
    /// OCSF events as Parquet in Amazon Security Lake's custom-source layout
    /// (-o DIR; with --region and --account-id)
    OcsfParquet,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub rows_read: u64,
    pub rows_written: u64,
}

/// Exports `files` to `out`, reporting rows read to `progress`.
pub fn export(
    files: Vec<DataFile>,
    filter: &RowFilter,
    format: ExportFormat,
    out: &Path,
    progress: &mut crate::progress::Progress,
) -> Result<ExportSummary, AuditError> {
    let tmp = out.with_file_name(format!(
        ".{}.partial",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let result = export_to(files, filter, format, &tmp, progress);
    progress.finish();
    match result {
        Ok(summary) => {
            std::fs::rename(&tmp, out).map_err(|e| AuditError::io("rename", &tmp, e))?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Exports `files` to an object store key (`s3://BUCKET/KEY`): written to
/// a temporary local file first (bounded memory), then streamed up as a
/// multipart upload; the key appears only when the upload completes.
pub fn export_to_store(
    files: Vec<DataFile>,
    filter: &RowFilter,
    format: ExportFormat,
    dest: &crate::audit::remote::StoreDir,
    progress: &mut crate::progress::Progress,
) -> Result<ExportSummary, AuditError> {
    let tmp =
        std::env::temp_dir().join(format!("flightrec-export-{}.partial", uuid::Uuid::now_v7()));
    let result = export_to(files, filter, format, &tmp, progress);
    progress.finish();
    let result = result.and_then(|summary| {
        let store = dest.bucket.store.clone();
        let key = dest.prefix.clone();
        crate::audit::remote::block_on(async {
            use tokio::io::AsyncWriteExt;
            let mut file = tokio::fs::File::open(&tmp).await?;
            let mut up = object_store::buffered::BufWriter::new(store, key);
            tokio::io::copy(&mut file, &mut up).await?;
            up.shutdown().await
        })
        .map_err(|e| AuditError::Store {
            url: dest.url(),
            detail: e.to_string(),
        })?;
        Ok(summary)
    });
    let _ = std::fs::remove_file(&tmp);
    result
}

/// As [`export_lake`], into an object store prefix (`s3://BUCKET/PREFIX`):
/// the partitions are written to a temporary local directory first
/// (bounded memory), then each file is streamed up under the same relative
/// key (`PREFIX/region=…/accountId=…/eventDay=…/<uuidv7>.parquet`); a file
/// appears only when its upload completes. Returns the keys written.
pub fn export_lake_to_store(
    files: Vec<DataFile>,
    filter: &RowFilter,
    target: lake::LakeTarget,
    dest: &crate::audit::remote::StoreDir,
    progress: &mut crate::progress::Progress,
) -> Result<(ExportSummary, Vec<String>), AuditError> {
    let tmp = std::env::temp_dir().join(format!("flightrec-lake-{}", uuid::Uuid::now_v7()));
    let result =
        export_lake(files, filter, target, &tmp, progress).and_then(|(summary, written)| {
            let mut keys = Vec::with_capacity(written.len());
            for path in written {
                let relative = path
                    .strip_prefix(&tmp)
                    .map_err(|_| AuditError::Store {
                        url: dest.url(),
                        detail: format!("{} is outside the export directory", path.display()),
                    })?
                    .to_string_lossy()
                    .into_owned();
                let key = dest.key(&relative);
                let store = dest.bucket.store.clone();
                crate::audit::remote::block_on(async {
                    use tokio::io::AsyncWriteExt;
                    let mut file = tokio::fs::File::open(&path).await?;
                    let mut up = object_store::buffered::BufWriter::new(store, key.clone());
                    tokio::io::copy(&mut file, &mut up).await?;
                    up.shutdown().await
                })
                .map_err(|e| AuditError::Store {
                    url: dest.url_of(&key),
                    detail: e.to_string(),
                })?;
                keys.push(dest.url_of(&key));
            }
            Ok((summary, keys))
        });
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Exports `files` as OCSF Parquet into the directory `out` in Amazon
/// Security Lake's custom-source layout
/// (`region=…/accountId=…/eventDay=YYYYMMDD/<uuidv7>.parquet`); returns the
/// summary and the files written. Nothing appears under `out` unless the
/// whole export succeeded.
pub fn export_lake(
    files: Vec<DataFile>,
    filter: &RowFilter,
    target: lake::LakeTarget,
    out: &Path,
    progress: &mut crate::progress::Progress,
) -> Result<(ExportSummary, Vec<std::path::PathBuf>), AuditError> {
    let options = ScanOptions {
        from_us: filter.from_us,
        to_us: filter.to_us,
        ..ScanOptions::default()
    };
    let mut summary = ExportSummary::default();
    let mut writer = lake::LakeWriter::new(out, target);
    let result = for_each_row(files, options, filter, &mut summary, progress, out, |row| {
        writer.write(row)
    });
    progress.finish();
    match result {
        Ok(()) => Ok((summary, writer.finish()?)),
        Err(e) => {
            writer.abandon();
            Err(e)
        }
    }
}

fn export_to(
    files: Vec<DataFile>,
    filter: &RowFilter,
    format: ExportFormat,
    tmp: &Path,
    progress: &mut crate::progress::Progress,
) -> Result<ExportSummary, AuditError> {
    let options = ScanOptions {
        from_us: filter.from_us,
        to_us: filter.to_us,
        ..ScanOptions::default()
    };
    let file = File::create(tmp).map_err(|e| AuditError::io("create", tmp, e))?;
    let mut summary = ExportSummary::default();
    let werr = |e: std::io::Error| AuditError::io("write", tmp, e);
    match format {
        ExportFormat::Parquet => {
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
                .build();
            let mut writer = ArrowWriter::try_new(file, schema::schema(), Some(props))
                .map_err(|e| AuditError::parquet(tmp, e))?;
            if crate::audit::layout::files_by_writer(&files).len() <= 1 {
                // One chain: its batches go out as read (no row rebuilding).
                for batch in scan(files, options) {
                    let batch = batch?;
                    let (kept, n) = filter_batch(&batch, filter, tmp)?;
                    summary.rows_read += batch.num_rows() as u64;
                    progress.inc(batch.num_rows() as u64);
                    summary.rows_written += n;
                    if n > 0 {
                        let kept = align_to_schema(&kept, tmp)?;
                        writer
                            .write(&kept)
                            .map_err(|e| AuditError::parquet(tmp, e))?;
                    }
                }
            } else {
                // Several writers' chains, merged by time.
                let mut chunk: Vec<AuditRow> = Vec::with_capacity(8192);
                for_each_row(files, options, filter, &mut summary, progress, tmp, |row| {
                    chunk.push(row.clone());
                    if chunk.len() == 8192 {
                        writer
                            .write(&schema::rows_to_batch(&chunk))
                            .map_err(|e| AuditError::parquet(tmp, e))?;
                        chunk.clear();
                    }
                    Ok(())
                })?;
                if !chunk.is_empty() {
                    writer
                        .write(&schema::rows_to_batch(&chunk))
                        .map_err(|e| AuditError::parquet(tmp, e))?;
                }
            }
            writer.close().map_err(|e| AuditError::parquet(tmp, e))?;
        }
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(BufWriter::new(file));
            let names: Vec<String> = schema::schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            w.write_record(&names).map_err(|e| werr(e.into()))?;
            for_each_row(files, options, filter, &mut summary, progress, tmp, |row| {
                w.write_record(csv_fields(row)).map_err(|e| werr(e.into()))
            })?;
            w.flush().map_err(werr)?;
        }
        ExportFormat::OcsfParquet => {
            return Err(AuditError::Schema {
                path: tmp.to_path_buf(),
                detail: "ocsf-parquet writes a directory of partitions, not one file".into(),
            });
        }
        ExportFormat::Jsonl | ExportFormat::Ocsf | ExportFormat::Ecs | ExportFormat::Cef => {
            let mut w = BufWriter::new(file);
            for_each_row(files, options, filter, &mut summary, progress, tmp, |row| {
                match format {
                    ExportFormat::Cef => w.write_all(cef::line(row).as_bytes()).map_err(werr)?,
                    _ => {
                        let v = match format {
                            ExportFormat::Ocsf => ocsf::event(row),
                            ExportFormat::Ecs => ecs::document(row),
                            _ => row_json(row),
                        };
                        serde_json::to_writer(&mut w, &v).map_err(|e| werr(e.into()))?;
                    }
                }
                w.write_all(b"\n").map_err(werr)
            })?;
            w.flush().map_err(werr)?;
        }
    }
    Ok(summary)
}

/// A stream of rows read from audit files.
type RowStream = Box<dyn Iterator<Item = Result<AuditRow, AuditError>>>;

/// Every row of `files`, the chains of several writers merged by time
/// (each chain is read in its own order; the next row out is the earliest
/// of the chains' next rows). Streams: one batch per chain in memory.
fn merged_rows(
    files: Vec<DataFile>,
    options: ScanOptions,
    tmp: &Path,
) -> impl Iterator<Item = Result<AuditRow, AuditError>> {
    let tmp = tmp.to_path_buf();
    let mut chains: Vec<std::iter::Peekable<RowStream>> =
        crate::audit::layout::files_by_writer(&files)
            .into_iter()
            .map(|(_, group)| {
                let tmp = tmp.clone();
                let rows: Box<dyn Iterator<Item = Result<AuditRow, AuditError>>> =
                    Box::new(scan(group, options.clone()).flat_map(move |batch| {
                        let rows = batch.and_then(|b| {
                            BatchView::new(&b).rows().map_err(|e| AuditError::Schema {
                                path: tmp.clone(),
                                detail: e.to_string(),
                            })
                        });
                        match rows {
                            Ok(rows) => rows.into_iter().map(Ok).collect::<Vec<_>>(),
                            Err(e) => vec![Err(e)],
                        }
                    }));
                rows.peekable()
            })
            .collect();
    std::iter::from_fn(move || {
        // An error comes out first; else the chain whose next row is earliest.
        let mut best: Option<(usize, i64)> = None;
        for (i, c) in chains.iter_mut().enumerate() {
            match c.peek() {
                None => {}
                Some(Err(_)) => return c.next(),
                Some(Ok(r)) if best.is_none_or(|(_, ts)| r.ts_us < ts) => {
                    best = Some((i, r.ts_us));
                }
                Some(Ok(_)) => {}
            }
        }
        best.and_then(|(i, _)| chains[i].next())
    })
}

fn for_each_row(
    files: Vec<DataFile>,
    options: ScanOptions,
    filter: &RowFilter,
    summary: &mut ExportSummary,
    progress: &mut crate::progress::Progress,
    tmp: &Path,
    mut write: impl FnMut(&AuditRow) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    for row in merged_rows(files, options, tmp) {
        let row = row?;
        summary.rows_read += 1;
        progress.inc(1);
        if filter.keeps_fields(
            Some(&row.agent_id),
            row.tool.as_deref(),
            Some(&row.session_id),
            Some(row.decision.as_str()),
        ) {
            summary.rows_written += 1;
            write(&row)?;
        }
    }
    Ok(())
}

fn filter_batch(
    batch: &RecordBatch,
    filter: &RowFilter,
    path: &Path,
) -> Result<(RecordBatch, u64), AuditError> {
    let view = BatchView::new(batch);
    let schema_err = |e: schema::ColumnError| AuditError::Schema {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let agent = view.strings(col::AGENT_ID).map_err(schema_err)?;
    let tool = view.strings(col::TOOL).map_err(schema_err)?;
    let decision = view.strings(col::DECISION).map_err(schema_err)?;
    let session = view.strings(col::SESSION_ID).map_err(schema_err)?;
    fn get<'a>(c: &'a Option<schema::StrColumn<'_>>, i: usize) -> Option<&'a str> {
        c.as_ref().and_then(|c| c.get(i))
    }
    let mut kept = 0u64;
    let mask: BooleanArray = (0..batch.num_rows())
        .map(|i| {
            let keep = filter.keeps_fields(
                get(&agent, i),
                get(&tool, i),
                get(&session, i),
                get(&decision, i),
            );
            kept += u64::from(keep);
            Some(keep)
        })
        .collect();
    let out =
        arrow::compute::filter_record_batch(batch, &mask).map_err(|e| AuditError::Schema {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    Ok((out, kept))
}

/// Re-labels a batch read from any writer with flightrec's exact schema (same
/// columns and types; field metadata and nullability may differ).
fn align_to_schema(batch: &RecordBatch, path: &Path) -> Result<RecordBatch, AuditError> {
    let target = schema::schema();
    let mut columns = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let c = batch
            .column_by_name(field.name())
            .cloned()
            .or_else(|| {
                // A 1.0 file has no 1.1 columns: they read as null.
                schema::col::ADDED_IN_1_1
                    .contains(&field.name().as_str())
                    .then(|| arrow::array::new_null_array(field.data_type(), batch.num_rows()))
            })
            .ok_or_else(|| AuditError::Schema {
                path: path.to_path_buf(),
                detail: format!("missing column `{}`", field.name()),
            })?;
        let c = if c.data_type() == field.data_type() {
            c
        } else {
            arrow::compute::cast(&c, field.data_type()).map_err(|e| AuditError::Schema {
                path: path.to_path_buf(),
                detail: format!("column `{}`: {e}", field.name()),
            })?
        };
        columns.push(c);
    }
    RecordBatch::try_new(target, columns).map_err(|e| AuditError::Schema {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_default()
}

fn num<T: ToString>(v: Option<T>) -> String {
    v.map(|n| n.to_string()).unwrap_or_default()
}

fn csv_fields(r: &AuditRow) -> Vec<String> {
    vec![
        r.schema_version.clone(),
        r.event_id.clone(),
        r.seq.to_string(),
        crate::time::format_us(r.ts_us),
        r.session_id.clone(),
        r.agent_id.clone(),
        opt(&r.client_name),
        opt(&r.client_version),
        r.server.clone(),
        r.transport.as_str().to_string(),
        r.method.clone(),
        opt(&r.jsonrpc_id),
        opt(&r.tool),
        r.category
            .map(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
        r.risk.map(|c| c.as_str()).unwrap_or_default().to_string(),
        opt(&r.args_json),
        opt(&r.args_sha256),
        r.decision.as_str().to_string(),
        opt(&r.rule),
        opt(&r.reason),
        num(r.retry_after_ms),
        r.policy_sha256.clone(),
        serde_json::to_string(&r.shadow).unwrap_or_default(),
        r.outcome.as_str().to_string(),
        num(r.error_code),
        opt(&r.error_message),
        num(r.latency_us),
        r.request_bytes.to_string(),
        r.response_bytes.to_string(),
        r.prev_hash.clone(),
        r.hash.clone(),
        r.approval.map(|a| a.to_string()).unwrap_or_default(),
        opt(&r.approved_by),
        num(r.approval_ms),
        opt(&r.continues),
        num(r.round),
    ]
}

/// A row as one JSON object, with `ts` as RFC 3339 text.
pub fn row_json(r: &AuditRow) -> Value {
    json!({
        "schema_version": r.schema_version,
        "event_id": r.event_id,
        "seq": r.seq,
        "ts": crate::time::format_us(r.ts_us),
        "session_id": r.session_id,
        "agent_id": r.agent_id,
        "client_name": r.client_name,
        "client_version": r.client_version,
        "server": r.server,
        "transport": r.transport,
        "method": r.method,
        "jsonrpc_id": r.jsonrpc_id,
        "tool": r.tool,
        "category": r.category,
        "risk": r.risk,
        "args_json": r.args_json,
        "args_sha256": r.args_sha256,
        "decision": r.decision,
        "rule": r.rule,
        "reason": r.reason,
        "retry_after_ms": r.retry_after_ms,
        "policy_sha256": r.policy_sha256,
        "shadow": r.shadow,
        "outcome": r.outcome,
        "error_code": r.error_code,
        "error_message": r.error_message,
        "latency_us": r.latency_us,
        "request_bytes": r.request_bytes,
        "response_bytes": r.response_bytes,
        "prev_hash": r.prev_hash,
        "hash": r.hash,
        "approval": r.approval,
        "approved_by": r.approved_by,
        "approval_ms": r.approval_ms,
        "continues": r.continues,
        "round": r.round,
    })
}
