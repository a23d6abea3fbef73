//! A single standalone audit file (`import`, `generate`): rows are chained
//! from the genesis hash, streamed into Parquet in batches, and the file is
//! renamed into place only when complete.

use crate::audit::chain;
use crate::audit::error::AuditError;
use crate::audit::layout::meta;
use crate::audit::schema::{self, AuditRow, GENESIS_HASH};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::path::{Path, PathBuf};

const BATCH: usize = 8192;

pub struct AuditFileWriter {
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    buffer: Vec<AuditRow>,
    next_seq: u64,
    last_hash: String,
    first_hash: Option<String>,
}

impl AuditFileWriter {
    pub fn create(path: &Path) -> Result<AuditFileWriter, AuditError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.partial"));
        let file = File::create(&tmp).map_err(|e| AuditError::io("create", &tmp, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
            .set_max_row_group_row_count(Some(128 * 1024))
            .build();
        let writer = ArrowWriter::try_new(file, schema::schema(), Some(props))
            .map_err(|e| AuditError::parquet(&tmp, e))?;
        Ok(AuditFileWriter {
            writer,
            tmp,
            path: path.to_path_buf(),
            buffer: Vec::with_capacity(BATCH),
            next_seq: 0,
            last_hash: GENESIS_HASH.to_string(),
            first_hash: None,
        })
    }

    /// Chains and appends one row.
    pub fn push(&mut self, mut row: AuditRow) -> Result<(), AuditError> {
        row.schema_version = schema::SCHEMA_VERSION.to_string();
        row.seq = self.next_seq;
        chain::link(&mut row, &self.last_hash);
        self.next_seq += 1;
        self.last_hash.clone_from(&row.hash);
        if self.first_hash.is_none() {
            self.first_hash = Some(row.hash.clone());
        }
        self.buffer.push(row);
        if self.buffer.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), AuditError> {
        if !self.buffer.is_empty() {
            let batch = schema::rows_to_batch(&self.buffer);
            self.writer
                .write(&batch)
                .map_err(|e| AuditError::parquet(&self.tmp, e))?;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Writes the footer and moves the file into place.
    pub fn finish(mut self) -> Result<u64, AuditError> {
        self.flush()?;
        let rows = self.next_seq;
        if rows > 0 {
            for (k, v) in [
                (meta::SCHEMA_VERSION, schema::SCHEMA_VERSION.to_string()),
                (meta::FIRST_SEQ, "0".to_string()),
                (meta::LAST_SEQ, (rows - 1).to_string()),
                (
                    meta::FIRST_HASH,
                    self.first_hash.clone().unwrap_or_default(),
                ),
                (meta::LAST_HASH, self.last_hash.clone()),
                (meta::ROWS, rows.to_string()),
                (
                    meta::WRITER,
                    format!("flightrec {}", env!("CARGO_PKG_VERSION")),
                ),
            ] {
                self.writer
                    .append_key_value_metadata(KeyValue::new(k.to_string(), v));
            }
        }
        let file = self
            .writer
            .into_inner()
            .map_err(|e| AuditError::parquet(&self.tmp, e))?;
        file.sync_all()
            .map_err(|e| AuditError::io("sync", &self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| AuditError::io("rename", &self.tmp, e))?;
        Ok(rows)
    }
}
