//! Where things live in an audit directory, and how Parquet files are written
//! and listed.
//!
//! Several writers (proxies started by several MCP clients at once) share
//! one directory; each has its own files and its own hash chain:
//!
//! ```text
//! D/date=2026-11-25/<uuidv7>.<writer>.parquet  data files (readers look here)
//! D/date=2026-11-25/.<uuidv7>.<writer>.partial a file being written (never matched by *.parquet)
//! D/_flightrec/writers/<writer>/lock           held by the process writing as <writer>
//! D/_flightrec/writers/<writer>/tip.json       that chain's last sequence number and hash
//! D/_flightrec/writers/<writer>/journal/*.wal  that writer's write-ahead journal segments
//! ```
//!
//! A writer id is 8 lowercase hex digits. A process opening the directory
//! takes over the first writer whose lock is free (continuing its chain and
//! recovering its journal), else starts a new one. Directories written
//! before writers existed hold one chain with the empty writer id: files
//! `<uuidv7>.parquet` and state directly in `D/_flightrec/` (lock, tip.json,
//! journal/); it is taken over like any other.
//!
//! File names start with UUIDv7s, kept strictly increasing by each writer
//! (even if the clock steps back), so within a writer name order is write
//! order: `audit verify` relies on it to notice files that were removed or
//! reordered.

use crate::audit::error::AuditError;
use parquet::file::reader::{FileReader, SerializedFileReader};
use std::fs::File;
use std::path::{Path, PathBuf};

pub const STATE_DIR: &str = "_flightrec";
pub const JOURNAL_DIR: &str = "journal";
pub const TIP_FILE: &str = "tip.json";
pub const LOCK_FILE: &str = "lock";
pub const WRITERS_DIR: &str = "writers";

/// Key-value metadata keys written in every data file's footer.
pub mod meta {
    pub const SCHEMA_VERSION: &str = "flightrec.schema_version";
    pub const FIRST_SEQ: &str = "flightrec.first_seq";
    pub const LAST_SEQ: &str = "flightrec.last_seq";
    pub const FIRST_HASH: &str = "flightrec.first_hash";
    pub const LAST_HASH: &str = "flightrec.last_hash";
    pub const ROWS: &str = "flightrec.rows";
    pub const WRITER: &str = "flightrec.writer";
    /// The writer id of the chain the file belongs to (absent: the
    /// original single chain).
    pub const WRITER_ID: &str = "flightrec.writer_id";
}

pub fn state_dir(dir: &Path) -> PathBuf {
    dir.join(STATE_DIR)
}

/// A writer's own state directory (lock, tip, journal); the original single
/// writer (empty id) keeps its state in `D/_flightrec/` itself.
pub fn writer_dir(dir: &Path, writer: &str) -> PathBuf {
    if writer.is_empty() {
        state_dir(dir)
    } else {
        state_dir(dir).join(WRITERS_DIR).join(writer)
    }
}

/// The writer ids with a state directory in `dir` (not the original one).
pub fn writer_ids(dir: &Path) -> Result<Vec<String>, AuditError> {
    let wdir = state_dir(dir).join(WRITERS_DIR);
    let mut out = Vec::new();
    match std::fs::read_dir(&wdir) {
        Ok(entries) => {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if is_writer_id(&name) {
                    out.push(name);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AuditError::io("list", &wdir, e)),
    }
    out.sort();
    Ok(out)
}

pub fn is_writer_id(s: &str) -> bool {
    s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A data file's name for a writer.
pub fn data_file_name(uuid: &uuid::Uuid, writer: &str) -> String {
    if writer.is_empty() {
        format!("{uuid}.parquet")
    } else {
        format!("{uuid}.{writer}.parquet")
    }
}

/// The writer id in a data file's name (`""` for the original chain).
pub fn file_writer(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let stem = name.strip_suffix(".parquet").unwrap_or(&name);
    match stem.split_once('.') {
        Some((_, w)) if is_writer_id(w) => w.to_string(),
        _ => String::new(),
    }
}

/// Data files grouped by writer (each group in name order), writers in
/// id order.
pub fn files_by_writer(
    files: &[crate::audit::remote::DataFile],
) -> Vec<(String, Vec<crate::audit::remote::DataFile>)> {
    let mut groups: std::collections::BTreeMap<String, Vec<crate::audit::remote::DataFile>> =
        Default::default();
    for f in files {
        groups.entry(f.writer()).or_default().push(f.clone());
    }
    groups.into_iter().collect()
}

/// `D/date=YYYY-MM-DD` for a timestamp (UTC).
pub fn partition_dir(dir: &Path, ts_us: i64) -> PathBuf {
    dir.join(format!("date={}", date_of(ts_us)))
}

/// Days since the Unix epoch (UTC) of a timestamp: cheap day comparisons.
pub fn day_of(ts_us: i64) -> i64 {
    ts_us.div_euclid(86_400_000_000)
}

pub fn date_of(ts_us: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(ts_us)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "1970-01-01".to_string())
}

/// Every data file under `dir` (skipping `_`/`.` folders and partial files),
/// sorted by file name, which is write order.
pub fn data_files(dir: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    out.sort_by(|a, b| a.file_name().cmp(&b.file_name()).then_with(|| a.cmp(b)));
    Ok(out)
}

/// A time range of rows (`ts >= from_us`, `ts < to_us`), for choosing
/// which date partitions to list at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
}

impl TimeRange {
    /// Whether the partition directory `name` (`date=YYYY-MM-DD`) can hold
    /// rows in the range. A file's rows are of its own day, except a call
    /// begun before midnight that finished after it: a partition may hold
    /// rows of the day before its date, so one day of slack is kept at
    /// the start. Names that are not date partitions are always kept.
    pub fn may_hold(&self, name: &str) -> bool {
        if !name.starts_with("date=") {
            return true;
        }
        const DAY: i64 = 86_400_000_000;
        let after_first = self
            .from_us
            .is_none_or(|f| name >= format!("date={}", date_of(f.saturating_sub(DAY))).as_str());
        let before_last = self
            .to_us
            .is_none_or(|t| name <= format!("date={}", date_of(t.saturating_add(DAY))).as_str());
        after_first && before_last
    }
}

/// The data files that can hold rows at or after `since_us`: partitions
/// of earlier days are not read at all.
pub fn data_files_from(dir: &Path, since_us: i64) -> Result<Vec<PathBuf>, AuditError> {
    data_files_in(
        dir,
        TimeRange {
            from_us: Some(since_us),
            to_us: None,
        },
    )
}

/// The data files that can hold rows in `range`: other days' partitions
/// are not read at all.
pub fn data_files_in(dir: &Path, range: TimeRange) -> Result<Vec<PathBuf>, AuditError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(AuditError::io("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| AuditError::io("list", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("date=") && range.may_hold(&name) && entry.path().is_dir() {
            walk(&entry.path(), &mut out)?;
        }
    }
    out.sort_by(|a, b| a.file_name().cmp(&b.file_name()).then_with(|| a.cmp(b)));
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), AuditError> {
    let entries = std::fs::read_dir(dir).map_err(|e| AuditError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| AuditError::io("list", dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let kind = entry
            .file_type()
            .map_err(|e| AuditError::io("stat", &path, e))?;
        if kind.is_dir() {
            walk(&path, out)?;
        } else if name.ends_with(".parquet") {
            out.push(path);
        }
    }
    Ok(())
}

/// The flightrec key-value metadata of a data file's footer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileMeta {
    pub rows: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub first_hash: Option<String>,
    pub last_hash: Option<String>,
}

/// Reads a data file's footer (not its rows).
pub fn read_meta(path: &Path) -> Result<FileMeta, AuditError> {
    let file = File::open(path).map_err(|e| AuditError::io("open", path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| AuditError::parquet(path, e))?;
    Ok(meta_of(reader.metadata().file_metadata()))
}

/// The flightrec metadata of a footer.
pub fn meta_of(md: &parquet::file::metadata::FileMetaData) -> FileMeta {
    let kv = |key: &str| {
        md.key_value_metadata()
            .and_then(|kvs| kvs.iter().find(|kv| kv.key == key))
            .and_then(|kv| kv.value.clone())
    };
    FileMeta {
        rows: md.num_rows() as u64,
        first_seq: kv(meta::FIRST_SEQ).and_then(|v| v.parse().ok()),
        last_seq: kv(meta::LAST_SEQ).and_then(|v| v.parse().ok()),
        first_hash: kv(meta::FIRST_HASH),
        last_hash: kv(meta::LAST_HASH),
    }
}

/// A UUIDv7 strictly greater than `after` (if given), even if the clock
/// stepped back.
pub fn next_file_uuid(after: Option<&uuid::Uuid>) -> uuid::Uuid {
    let now = uuid::Uuid::now_v7();
    match after {
        Some(last) if now <= *last => {
            let (secs, nanos) = last.get_timestamp().map(|t| t.to_unix()).unwrap_or((0, 0));
            let bumped = u128::from(secs) * 1_000_000_000 + u128::from(nanos) + 1_000_000;
            let ts = uuid::Timestamp::from_unix(
                uuid::NoContext,
                (bumped / 1_000_000_000) as u64,
                (bumped % 1_000_000_000) as u32,
            );
            uuid::Uuid::new_v7(ts)
        }
        _ => now,
    }
}

/// The UUID a data file's name starts with, if it has one.
pub fn file_uuid(path: &Path) -> Option<uuid::Uuid> {
    path.file_name()
        .and_then(|s| s.to_str())
        .and_then(|s| s.split('.').next())
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_ranges_keep_the_partitions_that_can_hold_their_rows() {
        let at = |d: &str| {
            chrono::DateTime::parse_from_rfc3339(d)
                .unwrap()
                .timestamp_micros()
        };
        let r = TimeRange {
            from_us: Some(at("2026-11-19T12:00:00Z")),
            to_us: Some(at("2026-11-20T06:00:00Z")),
        };
        // A day of slack before `from` (a call begun before midnight lands
        // in the next day's file) and after `to` (rows of day D sit in
        // partition D+1).
        for (name, kept) in [
            ("date=2026-11-17", false),
            ("date=2026-11-18", true),
            ("date=2026-11-19", true),
            ("date=2026-11-20", true),
            ("date=2026-11-21", true),
            ("date=2026-11-22", false),
            ("not-a-partition", true),
        ] {
            assert_eq!(r.may_hold(name), kept, "{name}");
        }
        assert!(TimeRange::default().may_hold("date=1970-01-01"));
    }
}
