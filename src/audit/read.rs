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
    /// Add each row's number in its file (from 0, counting every row
    /// group) as an `Int64` column named [`ROW_NUMBER`], so a reader can
    /// come back for columns it did not read ([`read_event_ids`]).
    pub row_numbers: bool,
}

/// The column [`ScanOptions::row_numbers`] adds (not an audit column: a
/// position the reader makes, never stored).
pub const ROW_NUMBER: &str = "flightrec.row_number";

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            columns: None,
            from_us: None,
            to_us: None,
            batch_size: 8192,
            string_views: false,
            row_numbers: false,
        }
    }
}

impl ScanOptions {
    /// Strings as views (see [`ScanOptions::string_views`]).
    pub fn string_views(mut self) -> Self {
        self.string_views = true;
        self
    }

    /// Rows numbered (see [`ScanOptions::row_numbers`]).
    pub fn row_numbers(mut self) -> Self {
        self.row_numbers = true;
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
            let builder = remote_builder(file, &ScanOptions::default())?;
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
    options: &ScanOptions,
) -> Result<ParquetRecordBatchStreamBuilder<remote::StoreReader>, AuditError> {
    remote::block_on(remote_builder_async(file, options))
}

async fn remote_builder_async(
    file: &DataFile,
    options: &ScanOptions,
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
    let meta = as_scanned(meta, options).map_err(unreadable)?;
    Ok(ParquetRecordBatchStreamBuilder::new_with_metadata(
        reader, meta,
    ))
}

/// The same reader metadata as `options` read the file: every `Utf8`
/// column as `Utf8View` when asked, and the row number column when asked.
fn as_scanned(
    meta: ArrowReaderMetadata,
    options: &ScanOptions,
) -> Result<ArrowReaderMetadata, parquet::errors::ParquetError> {
    use arrow::datatypes::{DataType, Field, Schema};
    if !options.string_views && !options.row_numbers {
        return Ok(meta);
    }
    let mut reader_options = ArrowReaderOptions::new();
    if options.string_views {
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
        reader_options = reader_options.with_schema(std::sync::Arc::new(schema));
    }
    if options.row_numbers {
        let field = Field::new(ROW_NUMBER, DataType::Int64, false)
            .with_extension_type(parquet::arrow::RowNumber);
        reader_options = reader_options.with_virtual_columns(vec![std::sync::Arc::new(field)])?;
    }
    ArrowReaderMetadata::try_new(meta.metadata().clone(), reader_options)
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
                let meta = ArrowReaderMetadata::load(&f, ArrowReaderOptions::new())
                    .and_then(|m| as_scanned(m, options))
                    .map_err(|e| AuditError::parquet(local, e))?;
                let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(f, meta);
                let (builder, skipped, total) = configure(builder, options, local)?;
                let reader = builder.build().map_err(|e| AuditError::parquet(local, e))?;
                (Reader::Local(reader), skipped, total)
            }
            DataFile::Remote { .. } => {
                let builder = remote_builder(file, options)?;
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
    Box::new(scan_indexed(files, options).map(|item| item.map(|(_, batch)| batch)))
}

/// As [`scan`], each batch with the index in `files` of the file it came
/// from.
pub fn scan_indexed(
    files: Vec<DataFile>,
    options: ScanOptions,
) -> Box<dyn Iterator<Item = Result<(usize, RecordBatch), AuditError>> + Send> {
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

fn scan_ahead(
    files: Vec<DataFile>,
    options: ScanOptions,
) -> impl Iterator<Item = Result<(usize, RecordBatch), AuditError>> {
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
                            if tx.blocking_send(item.map(|(_, batch)| batch)).is_err() {
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
    // The coordinator sends one receiver per file, in file order: the
    // n-th received is file n.
    let mut current: Option<(usize, tokio::sync::mpsc::Receiver<BatchResult>)> = None;
    let mut opened = 0;
    std::iter::from_fn(move || {
        loop {
            if let Some((index, rx)) = &mut current {
                match rx.blocking_recv() {
                    Some(item) => return Some(item.map(|batch| (*index, batch))),
                    None => current = None,
                }
            }
            current = Some((opened, files_rx.blocking_recv()?));
            opened += 1;
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
        let builder = remote_builder_async(file, options).await?;
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
) -> impl Iterator<Item = Result<(usize, RecordBatch), AuditError>> {
    let mut files = files.into_iter().enumerate();
    let mut current: Option<(usize, FileScan)> = None;
    std::iter::from_fn(move || {
        loop {
            if let Some((index, scan)) = &mut current {
                match scan.next() {
                    Some(item) => return Some(item.map(|batch| (*index, batch))),
                    None => current = None,
                }
            }
            let (index, next) = files.next()?;
            match FileScan::open(&next, &options) {
                Ok(s) => current = Some((index, s)),
                Err(e) => return Some(Err(e)),
            }
        }
    })
}

/// The `event_id` of each of `rows` (row numbers in `file`, as
/// [`ScanOptions::row_numbers`] gives them), in the order asked: only the
/// row groups holding them are read, and in them only the pages holding
/// them (by the file's offset index, when it has one).
pub fn read_event_ids(file: &DataFile, rows: &[u64]) -> Result<Vec<String>, AuditError> {
    let mut wanted: Vec<u64> = rows.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let label = file.label();
    let bad = |e: parquet::errors::ParquetError| AuditError::parquet(&label, e);
    let unreadable = |e: parquet::errors::ParquetError| AuditError::Corrupt {
        path: label.clone(),
        detail: format!("unreadable data: {e}"),
    };
    let batches = match file {
        DataFile::Local(path) => {
            let f = File::open(path).map_err(|e| AuditError::io("open", path, e))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(
                f,
                ArrowReaderOptions::new()
                    .with_offset_index_policy(parquet::file::metadata::PageIndexPolicy::Optional),
            )
            .map_err(bad)?;
            select_rows(builder, &wanted, &label)?
                .build()
                .map_err(bad)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| unreadable(e.into()))?
        }
        DataFile::Remote { .. } => remote::block_on(async {
            use futures::TryStreamExt;
            let builder = remote_builder_async(file, &ScanOptions::default()).await?;
            select_rows(builder, &wanted, &label)?
                .build()
                .map_err(bad)?
                .try_collect::<Vec<_>>()
                .await
                .map_err(unreadable)
        })?,
    };
    let mut found = Vec::with_capacity(wanted.len());
    for b in &batches {
        let not_text = |detail: String| AuditError::Schema {
            path: label.clone(),
            detail,
        };
        let column = b
            .column_by_name(col::EVENT_ID)
            .ok_or_else(|| not_text(format!("has no column `{}`", col::EVENT_ID)))?;
        let text = arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8)
            .map_err(|e| not_text(format!("column `{}`: {e}", col::EVENT_ID)))?;
        let text = arrow::array::AsArray::as_string::<i32>(&text);
        found.extend(text.iter().map(|v| v.unwrap_or_default().to_string()));
    }
    if found.len() != wanted.len() {
        return Err(AuditError::Corrupt {
            path: label,
            detail: format!(
                "{} of {} event ids read back (has the file changed?)",
                found.len(),
                wanted.len()
            ),
        });
    }
    Ok(rows
        .iter()
        .map(|r| found[wanted.binary_search(r).expect("every row is wanted")].clone())
        .collect())
}

/// A reader builder (local or remote: the same decisions) narrowed to the
/// `event_id` of the sorted, distinct `rows`: the row groups that hold
/// them, and a selection of those rows within them.
fn select_rows<T>(
    builder: ArrowReaderBuilder<T>,
    rows: &[u64],
    path: &Path,
) -> Result<ArrowReaderBuilder<T>, AuditError> {
    use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
    let mut groups = Vec::new();
    let mut selectors = Vec::new();
    let skip = |selectors: &mut Vec<RowSelector>, n: u64| {
        if n > 0 {
            selectors.push(RowSelector::skip(n as usize));
        }
    };
    let mut next = rows.iter().copied().peekable();
    let mut start = 0u64;
    for (i, rg) in builder.metadata().row_groups().iter().enumerate() {
        let end = start + rg.num_rows() as u64;
        if next.peek().is_some_and(|r| *r < end) {
            groups.push(i);
            let mut at = start;
            while let Some(r) = next.next_if(|r| *r < end) {
                skip(&mut selectors, r - at);
                selectors.push(RowSelector::select(1));
                at = r + 1;
            }
            skip(&mut selectors, end - at);
        }
        start = end;
    }
    if let Some(r) = next.next() {
        return Err(beyond_end(path, r));
    }
    let mask = ProjectionMask::columns(builder.parquet_schema(), [col::EVENT_ID]);
    Ok(builder
        .with_projection(mask)
        .with_row_groups(groups)
        .with_row_selection(RowSelection::from(selectors)))
}

fn beyond_end(path: &Path, row: u64) -> AuditError {
    AuditError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("has no row {row} any more (has the file changed?)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::schema::AuditRow;
    use crate::audit::{Recorder, RecorderConfig};

    /// Ids read back by row number: first and last rows of row groups,
    /// neighbours, repeats and any order, from a file of 4-row groups; a
    /// row past the end is an error naming the file.
    #[test]
    fn event_ids_are_read_back_by_row_number() {
        let dir = tempfile::tempdir().unwrap();
        let config = RecorderConfig {
            row_group_rows: 4,
            ..RecorderConfig::default()
        };
        let mut rec = Recorder::open(dir.path(), config).unwrap();
        for i in 0..30 {
            rec.record(AuditRow {
                event_id: format!("id-{i:02}"),
                ts_us: 1_000 + i,
                method: "tools/call".into(),
                tool: Some("t".into()),
                decision: "allow".parse().unwrap(),
                ..AuditRow::default()
            })
            .unwrap();
        }
        rec.close().unwrap();
        let files = layout::data_files(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        let file = DataFile::Local(files[0].clone());
        let meta =
            ArrowReaderMetadata::load(&File::open(&files[0]).unwrap(), ArrowReaderOptions::new())
                .unwrap();
        assert!(meta.metadata().num_row_groups() > 5, "small row groups");
        let rows = [29, 0, 3, 4, 5, 3, 17, 28, 8];
        let ids = read_event_ids(&file, &rows).unwrap();
        let expected: Vec<String> = rows.iter().map(|r| format!("id-{r:02}")).collect();
        assert_eq!(ids, expected);
        let err = read_event_ids(&file, &[2, 30]).unwrap_err().to_string();
        assert!(err.contains("row 30"), "{err}");
        assert!(err.contains(files[0].to_str().unwrap()), "{err}");
    }
}
