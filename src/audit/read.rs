//! Streaming readers over audit Parquet files, directories and globs.
//!
//! Readers never load a whole log: they yield record batches file by file,
//! row group by row group, reading only the columns asked for and skipping
//! row groups whose `ts` statistics fall outside the requested range. They
//! accept any Parquet file with the audit schema's column names and types, whoever wrote
//! it; flightrec's own footer metadata is not required.

use crate::audit::error::AuditError;
use crate::audit::layout;
use crate::audit::remote::{self, DataFile, StoreDir, StoreOptions};
use crate::audit::schema::col;
use arrow::array::{BooleanArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderBuilder, ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::async_reader::ParquetRecordBatchStream;
use parquet::file::statistics::Statistics;
use std::fs::File;
use std::path::{Path, PathBuf};

/// What to read.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Columns to read (`None`: all).
    pub columns: Option<Vec<String>>,
    /// Keep rows with `ts >= from_us`.
    pub from_us: Option<i64>,
    /// Keep rows with `ts < to_us`.
    pub to_us: Option<i64>,
    pub batch_size: usize,
    /// Read string columns as Arrow string views (`Utf8View`) instead of
    /// `Utf8`: each value points into the decoded page (for
    /// dictionary-encoded columns, into the dictionary) instead of being
    /// copied row by row. Replay reads this way; readers that hand batches
    /// on unchanged (export) keep the schema's `Utf8`.
    pub string_views: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            columns: None,
            from_us: None,
            to_us: None,
            batch_size: 8192,
            string_views: false,
        }
    }
}

impl ScanOptions {
    /// Strings as views (see [`ScanOptions::string_views`]).
    pub fn string_views(mut self) -> Self {
        self.string_views = true;
        self
    }

    pub fn columns(mut self, names: &[&str]) -> Self {
        self.columns = Some(names.iter().map(|s| s.to_string()).collect());
        self
    }

    fn has_range(&self) -> bool {
        self.from_us.is_some() || self.to_us.is_some()
    }

    fn overlaps(&self, min: i64, max: i64) -> bool {
        self.from_us.is_none_or(|f| max >= f) && self.to_us.is_none_or(|t| min < t)
    }
}

/// The rows of `files` by their footers (no data read); unreadable files
/// count 0 (for progress totals only).
pub fn row_count(files: &[DataFile]) -> u64 {
    files
        .iter()
        .filter_map(|f| file_meta(f).ok())
        .map(|m| m.rows)
        .sum()
}

/// The flightrec footer metadata of a data file, local or in a store.
pub fn file_meta(file: &DataFile) -> Result<layout::FileMeta, AuditError> {
    match file {
        DataFile::Local(p) => layout::read_meta(p),
        DataFile::Remote { .. } => {
            let builder = remote_builder(file, false)?;
            Ok(layout::meta_of(builder.metadata().file_metadata()))
        }
    }
}

/// Expands inputs into data files: a file stays itself, a directory yields
/// its data files (Hive partitions included, in write order), a path with
/// glob characters (`*`, `?`, `[`) matches files below its literal prefix,
/// and `s3://BUCKET/PREFIX` (or one object in it) lists the store; with
/// a time range, date partitions that cannot hold its rows are not listed.
/// `file:///DIR` is the local path.
pub fn resolve_inputs(
    inputs: &[PathBuf],
    store: &StoreOptions,
    range: layout::TimeRange,
) -> Result<Vec<DataFile>, AuditError> {
    let mut out = Vec::new();
    for input in inputs {
        let text = input.to_string_lossy();
        let local = remote::file_url_path(&text);
        if local.is_none() && remote::is_url(&text) {
            out.extend(StoreDir::parse(&text, store)?.resolve(range)?);
            continue;
        }
        let input = local.unwrap_or_else(|| input.clone());
        let text = input.to_string_lossy();
        if text.contains(['*', '?', '[']) {
            out.extend(expand_glob(&text)?.into_iter().map(DataFile::Local));
        } else if input.is_dir() {
            let files = if range == layout::TimeRange::default() {
                layout::data_files(&input)?
            } else {
                layout::data_files_in(&input, range)?
            };
            out.extend(files.into_iter().map(DataFile::Local));
        } else if input.exists() {
            out.push(DataFile::Local(input.clone()));
        } else {
            return Err(AuditError::io(
                "read",
                &input,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
    }
    Ok(out)
}

fn expand_glob(pattern: &str) -> Result<Vec<PathBuf>, AuditError> {
    let literal_end = pattern.find(['*', '?', '[']).unwrap_or(pattern.len());
    let base = match pattern[..literal_end].rfind('/') {
        Some(i) => &pattern[..i.max(1)],
        None => ".",
    };
    let glob = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| AuditError::Corrupt {
            path: PathBuf::from(pattern),
            detail: format!("invalid glob: {e}"),
        })?
        .compile_matcher();
    let base = Path::new(base);
    let mut files = Vec::new();
    collect_files(base, &mut files)?;
    let mut matched: Vec<PathBuf> = files.into_iter().filter(|f| glob.is_match(f)).collect();
    matched.sort_by(|a, b| a.file_name().cmp(&b.file_name()).then_with(|| a.cmp(b)));
    if matched.is_empty() {
        return Err(AuditError::io(
            "read",
            Path::new(pattern),
            std::io::Error::new(std::io::ErrorKind::NotFound, "the pattern matches no file"),
        ));
    }
    Ok(matched)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), AuditError> {
    for entry in std::fs::read_dir(dir).map_err(|e| AuditError::io("list", dir, e))? {
        let entry = entry.map_err(|e| AuditError::io("list", dir, e))?;
        let path = entry.path();
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// A streaming scan of one file.
pub struct FileScan {
    path: PathBuf,
    reader: Reader,
    options: ScanOptions,
    /// Row groups skipped by their `ts` statistics.
    pub row_groups_skipped: usize,
    pub row_groups_total: usize,
}

enum Reader {
    Local(ParquetRecordBatchReader),
    /// Row groups fetched from the store by ranges (only the projected
    /// column chunks of the kept row groups), one row group at a time.
    Remote(Box<ParquetRecordBatchStream<remote::StoreReader>>),
}

/// A remote file's reader builder (its footer fetched).
fn remote_builder(
    file: &DataFile,
    string_views: bool,
) -> Result<ParquetRecordBatchStreamBuilder<remote::StoreReader>, AuditError> {
    remote::block_on(remote_builder_async(file, string_views))
}

async fn remote_builder_async(
    file: &DataFile,
    string_views: bool,
) -> Result<ParquetRecordBatchStreamBuilder<remote::StoreReader>, AuditError> {
    let DataFile::Remote { dir, key, size } = file else {
        unreachable!("remote_builder takes remote files")
    };
    let unreadable = |e: parquet::errors::ParquetError| AuditError::Store {
        url: dir.url_of(key),
        detail: format!("not a readable Parquet audit file: {e}"),
    };
    let mut reader = remote::StoreReader::new(dir.bucket.store.clone(), key.clone(), *size);
    let meta = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
        .await
        .map_err(unreadable)?;
    let meta = if string_views {
        with_string_views(meta).map_err(unreadable)?
    } else {
        meta
    };
    Ok(ParquetRecordBatchStreamBuilder::new_with_metadata(
        reader, meta,
    ))
}

/// The same reader metadata with every `Utf8` column read as `Utf8View`.
fn with_string_views(
    meta: ArrowReaderMetadata,
) -> Result<ArrowReaderMetadata, parquet::errors::ParquetError> {
    use arrow::datatypes::{DataType, Field, Schema};
    let fields: Vec<Field> = meta
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 => f.as_ref().clone().with_data_type(DataType::Utf8View),
            _ => f.as_ref().clone(),
        })
        .collect();
    let schema = Schema::new_with_metadata(fields, meta.schema().metadata().clone());
    ArrowReaderMetadata::try_new(
        meta.metadata().clone(),
        ArrowReaderOptions::new().with_schema(std::sync::Arc::new(schema)),
    )
}

/// Applies the projection and row-group pruning of `options` to a reader
/// builder (local or remote: the same decisions).
fn configure<T>(
    builder: ArrowReaderBuilder<T>,
    options: &ScanOptions,
    path: &Path,
) -> Result<(ArrowReaderBuilder<T>, usize, usize), AuditError> {
    let arrow_schema = builder.schema().clone();
    let parquet_schema = builder.parquet_schema();
    let mut builder_mask = None;
    if let Some(cols) = &options.columns {
        let mut roots = Vec::new();
        for c in cols {
            match arrow_schema.index_of(c) {
                Ok(i) => roots.push(i),
                // Schema 1.1's columns are absent from 1.0 files: they
                // read as null.
                Err(_) if crate::audit::schema::col::ADDED_IN_1_1.contains(&c.as_str()) => {}
                Err(_) => {
                    return Err(AuditError::Schema {
                        path: path.to_path_buf(),
                        detail: format!("has no column `{c}` (is it an audit log v1 file?)"),
                    });
                }
            }
        }
        builder_mask = Some(ProjectionMask::roots(parquet_schema, roots));
    }
    // Row groups whose ts range misses the requested one are skipped.
    let total = builder.metadata().num_row_groups();
    let mut keep = Vec::with_capacity(total);
    if options.has_range() {
        let ts_leaf = parquet_schema
            .columns()
            .iter()
            .position(|c| c.path().parts() == [col::TS]);
        for (i, rg) in builder.metadata().row_groups().iter().enumerate() {
            let range = ts_leaf.and_then(|leaf| match rg.column(leaf).statistics() {
                Some(Statistics::Int64(s)) => Some((*s.min_opt()?, *s.max_opt()?)),
                _ => None,
            });
            match range {
                Some((min, max)) if !options.overlaps(min, max) => {}
                _ => keep.push(i),
            }
        }
    } else {
        keep.extend(0..total);
    }
    let skipped = total - keep.len();
    let mut builder = builder
        .with_batch_size(options.batch_size)
        .with_row_groups(keep);
    if let Some(mask) = builder_mask {
        builder = builder.with_projection(mask);
    }
    Ok((builder, skipped, total))
}

impl FileScan {
    pub fn open(file: &DataFile, options: &ScanOptions) -> Result<FileScan, AuditError> {
        let path = file.label();
        let (reader, skipped, total) = match file {
            DataFile::Local(local) => {
                let f = File::open(local).map_err(|e| AuditError::io("open", local, e))?;
                let mut meta = ArrowReaderMetadata::load(&f, ArrowReaderOptions::new())
                    .map_err(|e| AuditError::parquet(local, e))?;
                if options.string_views {
                    meta = with_string_views(meta).map_err(|e| AuditError::parquet(local, e))?;
                }
                let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(f, meta);
                let (builder, skipped, total) = configure(builder, options, local)?;
                let reader = builder.build().map_err(|e| AuditError::parquet(local, e))?;
                (Reader::Local(reader), skipped, total)
            }
            DataFile::Remote { .. } => {
                let builder = remote_builder(file, options.string_views)?;
                let (builder, skipped, total) = configure(builder, options, &path)?;
                let stream = builder.build().map_err(|e| AuditError::parquet(&path, e))?;
                (Reader::Remote(Box::new(stream)), skipped, total)
            }
        };
        Ok(FileScan {
            path,
            reader,
            options: options.clone(),
            row_groups_skipped: skipped,
            row_groups_total: total,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn next_batch(&mut self) -> Option<Result<RecordBatch, String>> {
        match &mut self.reader {
            Reader::Local(r) => r.next().map(|b| b.map_err(|e| e.to_string())),
            Reader::Remote(s) => {
                use futures::StreamExt;
                remote::block_on(s.next()).map(|b| b.map_err(|e| e.to_string()))
            }
        }
    }
}

impl Iterator for FileScan {
    type Item = Result<RecordBatch, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let batch = match self.next_batch()? {
                Ok(b) => b,
                Err(e) => {
                    return Some(Err(AuditError::Corrupt {
                        path: self.path.clone(),
                        detail: format!("unreadable data: {e}"),
                    }));
                }
            };
            if let Some(item) = keep_rows(batch, &self.options, &self.path) {
                return Some(item);
            }
        }
    }
}

fn filter_ts(batch: &RecordBatch, o: &ScanOptions) -> Result<RecordBatch, String> {
    let Some(ts) = batch.column_by_name(col::TS) else {
        return Ok(batch.clone());
    };
    let ts = ts
        .as_any()
        .downcast_ref::<arrow::array::PrimitiveArray<TimestampMicrosecondType>>()
        .ok_or_else(|| {
            format!(
                "column `ts` is {}, expected Timestamp(µs, UTC)",
                ts.data_type()
            )
        })?;
    let mask: BooleanArray = ts
        .iter()
        .map(|v| Some(v.is_some_and(|t| o.overlaps(t, t))))
        .collect();
    arrow::compute::filter_record_batch(batch, &mask).map_err(|e| e.to_string())
}

/// Scans many files in order, one after the other. Files in a store are
/// fetched and decoded ahead on the store runtime (a few batches, bounded),
/// so the next row group's ranges are in flight while the caller works on
/// the current one.
pub fn scan(
    files: Vec<DataFile>,
    options: ScanOptions,
) -> Box<dyn Iterator<Item = Result<RecordBatch, AuditError>> + Send> {
    if files.iter().any(|f| matches!(f, DataFile::Remote { .. })) {
        return Box::new(scan_ahead(files, options));
    }
    Box::new(scan_here(files, options))
}

/// How many store files are fetched and decoded at once, ahead of the
/// reader, and how many decoded batches each may hold: a store answers
/// each range request after a round trip, so a few files in flight keep
/// the reader busy; memory stays bounded by the two.
const FILES_AHEAD: usize = 4;
const BATCHES_AHEAD: usize = 16;

type BatchResult = Result<RecordBatch, AuditError>;

fn scan_ahead(files: Vec<DataFile>, options: ScanOptions) -> impl Iterator<Item = BatchResult> {
    // Each file gets its own bounded channel; the reader drains them in
    // file order. A coordinator starts a file only when fewer than
    // FILES_AHEAD are in flight.
    let (files_tx, mut files_rx) =
        tokio::sync::mpsc::channel::<tokio::sync::mpsc::Receiver<BatchResult>>(FILES_AHEAD);
    remote::spawn(async move {
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(FILES_AHEAD));
        for file in files {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (tx, rx) = tokio::sync::mpsc::channel(BATCHES_AHEAD);
            if files_tx.send(rx).await.is_err() {
                return;
            }
            let options = options.clone();
            match file {
                DataFile::Local(_) => {
                    tokio::task::spawn_blocking(move || {
                        for item in scan_here(vec![file], options) {
                            if tx.blocking_send(item).is_err() {
                                break;
                            }
                        }
                        drop(permit);
                    });
                }
                DataFile::Remote { .. } => {
                    tokio::spawn(async move {
                        stream_file(&file, &options, &tx).await;
                        drop(permit);
                    });
                }
            }
        }
    });
    let mut current: Option<tokio::sync::mpsc::Receiver<BatchResult>> = None;
    std::iter::from_fn(move || {
        loop {
            if let Some(rx) = &mut current {
                match rx.blocking_recv() {
                    Some(item) => return Some(item),
                    None => current = None,
                }
            }
            current = Some(files_rx.blocking_recv()?);
        }
    })
}

/// Streams one store file's kept batches into `tx` (an error ends it).
async fn stream_file(
    file: &DataFile,
    options: &ScanOptions,
    tx: &tokio::sync::mpsc::Sender<BatchResult>,
) {
    let label = file.label();
    let opened = async {
        let builder = remote_builder_async(file, options.string_views).await?;
        let (builder, _, _) = configure(builder, options, &label)?;
        let stream: ParquetRecordBatchStream<remote::StoreReader> = builder
            .build()
            .map_err(|e| AuditError::parquet(&label, e))?;
        Ok::<_, AuditError>(stream)
    };
    let mut stream = match opened.await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    use futures::StreamExt;
    while let Some(batch) = stream.next().await {
        let item = match batch {
            Ok(b) => match keep_rows(b, options, &label) {
                None => continue,
                Some(item) => item,
            },
            Err(e) => Err(AuditError::Corrupt {
                path: label.clone(),
                detail: format!("unreadable data: {e}"),
            }),
        };
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
}

/// A batch's rows within the scan's time range (`None`: none are).
fn keep_rows(
    batch: RecordBatch,
    options: &ScanOptions,
    path: &Path,
) -> Option<Result<RecordBatch, AuditError>> {
    if !options.has_range() {
        return Some(Ok(batch));
    }
    match filter_ts(&batch, options) {
        Ok(b) if b.num_rows() == 0 => None,
        Ok(b) => Some(Ok(b)),
        Err(detail) => Some(Err(AuditError::Schema {
            path: path.to_path_buf(),
            detail,
        })),
    }
}

fn scan_here(
    files: Vec<DataFile>,
    options: ScanOptions,
) -> impl Iterator<Item = Result<RecordBatch, AuditError>> {
    let mut files = files.into_iter();
    let mut current: Option<FileScan> = None;
    std::iter::from_fn(move || {
        loop {
            if let Some(scan) = &mut current {
                match scan.next() {
                    Some(item) => return Some(item),
                    None => current = None,
                }
            }
            let next = files.next()?;
            match FileScan::open(&next, &options) {
                Ok(s) => current = Some(s),
                Err(e) => return Some(Err(e)),
            }
        }
    })
}
