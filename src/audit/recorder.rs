//! The recorder: the API the proxy (and generators and importers) write
//! audit rows through.
//!
//! Durability contract:
//! - [`Recorder::begin`] journals a decided call *before* the proxy forwards
//!   or answers it; [`Recorder::complete`] journals its final, chained row.
//!   [`Recorder::record`] does both at once for calls finished on the spot
//!   (denials, invalid frames, generated rows).
//! - A row is acknowledged when the call returns `Ok`: it is in the journal,
//!   and no crash of this process loses it.
//! - Finished rows stream into a Parquet file under a hidden `.partial` name;
//!   on rotation (size, age, UTC midnight) or close the file gets its footer,
//!   is synced and renamed into `D/date=YYYY-MM-DD/<uuidv7>.parquet`, and
//!   only then is the journal that covered it retired. Readers never see a
//!   partial file.
//! - [`Recorder::open`] recovers whatever a crash left: journal rows not yet
//!   in a data file are written out, and decided calls that never finished
//!   become rows with outcome `interrupted`. A torn journal tail is cut at the
//!   last whole frame and reported.
//!
//! The hash chain (`seq`, `prev_hash`, `hash`) is assigned when a row is
//! finished, so rows are chained in completion order, and it continues
//! across rotations and restarts of the same directory.

use crate::audit::chain;
use crate::audit::error::AuditError;
use crate::audit::journal::{self, Journal, Kind, SyncMode, TornTail};
use crate::audit::layout::{self, FileMeta, meta};
use crate::audit::schema::{self, AuditRow, GENESIS_HASH, col};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Tunables of a recorder.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// Rotate when the current data file reaches about this many bytes.
    pub rotate_bytes: u64,
    /// Rotate when the current data file has been open this long.
    pub rotate_age: Duration,
    /// Rows per Parquet row group (scans prune by each group's `ts` range).
    pub row_group_rows: usize,
    /// When journal appends are forced to stable storage.
    pub sync: SyncMode,
    /// Zstandard level for data files.
    pub zstd_level: i32,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            rotate_bytes: 64 * 1024 * 1024,
            rotate_age: Duration::from_secs(300),
            row_group_rows: 128 * 1024,
            sync: SyncMode::Interval(Duration::from_millis(100)),
            zstd_level: 1,
        }
    }
}

/// What [`Recorder::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Finished rows found only in the journal, now written to a data file.
    pub rows_recovered: u64,
    /// Decided calls that never finished, written with outcome `interrupted`.
    pub interrupted: u64,
    /// Torn journal tails that were cut, with their segment.
    pub torn: Vec<(PathBuf, TornTail)>,
    /// Half-written data files that were removed.
    pub partial_files_removed: u64,
}

impl Recovery {
    pub fn is_clean(&self) -> bool {
        *self == Recovery::default()
    }

    /// What was repaired in `dir`, one sentence per line (empty when
    /// clean): what the proxy and `audit append` print at start.
    pub fn report(&self, dir: &Path) -> Vec<String> {
        let mut lines = Vec::new();
        if self.rows_recovered > 0 || self.interrupted > 0 {
            lines.push(format!(
                "recovered {} journaled row(s) and {} interrupted call(s) in {}",
                self.rows_recovered,
                self.interrupted,
                dir.display()
            ));
        }
        for (segment, torn) in &self.torn {
            lines.push(format!(
                "journal {} had a torn tail ({}): cut at byte {}, {} byte(s) of an unacknowledged write dropped",
                segment.display(),
                torn.reason,
                torn.offset,
                torn.dropped
            ));
        }
        if self.partial_files_removed > 0 {
            lines.push(format!(
                "removed {} half-written data file(s)",
                self.partial_files_removed
            ));
        }
        lines
    }
}

/// The last link of the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Tip {
    /// Sequence number of the next row.
    next_seq: u64,
    last_hash: String,
}

struct OpenFile {
    writer: ArrowWriter<File>,
    partial: PathBuf,
    final_path: PathBuf,
    day: i64,
    opened: Instant,
    first_seq: u64,
    first_hash: String,
    /// The chain position of the last row written into this file (the
    /// recorder's tip may already be ahead: a finished row waiting for the
    /// next file).
    last_seq: u64,
    last_hash: String,
    rows: u64,
}

/// Writes one chain of an audit directory. Each recorder holds its
/// writer's lock; other processes write other chains of the same directory.
pub struct Recorder {
    dir: PathBuf,
    writer: String,
    config: RecorderConfig,
    _lock: File,
    journal: Journal,
    /// Older journal segments still covering rows of the open data file.
    retired_segments: Vec<PathBuf>,
    tip: Tip,
    pending: HashMap<String, AuditRow>,
    buffer: Vec<AuditRow>,
    file: Option<OpenFile>,
    /// When the oldest row still waiting for a data file arrived (rows
    /// are buffered before a file is opened).
    buffered_since: Option<Instant>,
    last_uuid: Option<uuid::Uuid>,
    recovery: Recovery,
}

impl Recorder {
    /// Opens (creating if needed) an audit directory for writing, as the
    /// first writer whose lock is free (recovering anything it left behind)
    /// or as a new writer when every existing one is in use.
    pub fn open(dir: &Path, config: RecorderConfig) -> Result<Recorder, AuditError> {
        let state = layout::state_dir(dir);
        std::fs::create_dir_all(&state).map_err(|e| AuditError::io("create", &state, e))?;
        let files = layout::data_files(dir)?;
        let mut candidates = Vec::new();
        if has_original_chain(dir, &files) {
            candidates.push(String::new());
        }
        candidates.extend(layout::writer_ids(dir)?);
        for writer in candidates {
            if let Some(lock) = try_lock(&layout::writer_dir(dir, &writer))? {
                return Recorder::open_as(dir, writer, lock, &files, config);
            }
        }
        loop {
            // The random part of a UUIDv7: fresh writers do not collide.
            let id = uuid::Uuid::now_v7().simple().to_string()[24..].to_string();
            let wdir = layout::writer_dir(dir, &id);
            if let Some(parent) = wdir.parent() {
                std::fs::create_dir_all(parent).map_err(|e| AuditError::io("create", parent, e))?;
            }
            match std::fs::create_dir(&wdir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(AuditError::io("create", &wdir, e)),
            }
            if let Some(lock) = try_lock(&wdir)? {
                return Recorder::open_as(dir, id, lock, &files, config);
            }
        }
    }

    fn open_as(
        dir: &Path,
        writer: String,
        lock: File,
        all_files: &[PathBuf],
        config: RecorderConfig,
    ) -> Result<Recorder, AuditError> {
        let wdir = layout::writer_dir(dir, &writer);
        let jdir = wdir.join(layout::JOURNAL_DIR);
        std::fs::create_dir_all(&jdir).map_err(|e| AuditError::io("create", &jdir, e))?;
        let mut recovery = Recovery::default();
        let files: Vec<PathBuf> = all_files
            .iter()
            .filter(|f| layout::file_writer(f) == writer)
            .cloned()
            .collect();
        recovery.partial_files_removed = remove_partials(dir, &writer)?;
        let last_uuid = files.iter().filter_map(|f| layout::file_uuid(f)).max();
        let tip = find_tip(&wdir, &files)?;

        let mut segments: Vec<PathBuf> = std::fs::read_dir(&jdir)
            .map_err(|e| AuditError::io("list", &jdir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        segments.sort();

        let journal_path = jdir.join(format!("{}.wal", uuid::Uuid::now_v7()));
        let journal = Journal::create(&journal_path, config.sync)
            .map_err(|e| AuditError::io("create", &journal_path, e))?;
        let mut rec = Recorder {
            dir: dir.to_path_buf(),
            writer,
            config,
            _lock: lock,
            journal,
            retired_segments: Vec::new(),
            tip,
            pending: HashMap::new(),
            buffer: Vec::new(),
            file: None,
            buffered_since: None,
            last_uuid,
            recovery: Recovery::default(),
        };
        rec.recover(&segments, &mut recovery)?;
        rec.recovery = recovery;
        Ok(rec)
    }

    /// This recorder's writer id (`""`: the original single chain).
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// What opening the directory recovered.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replays old journal segments into data files, then retires them.
    fn recover(&mut self, segments: &[PathBuf], recovery: &mut Recovery) -> Result<(), AuditError> {
        if segments.is_empty() {
            return Ok(());
        }
        let mut complete: Vec<AuditRow> = Vec::new();
        let mut begun: Vec<AuditRow> = Vec::new();
        for seg in segments {
            let s = journal::read_segment(seg).map_err(|e| AuditError::io("read", seg, e))?;
            if let Some(t) = s.torn {
                recovery.torn.push((seg.clone(), t));
            }
            for (kind, row) in s.frames {
                match kind {
                    Kind::Complete => complete.push(row),
                    Kind::Begun => begun.push(row),
                }
            }
        }
        let finished: std::collections::HashSet<String> =
            complete.iter().map(|r| r.event_id.clone()).collect();
        complete.sort_by_key(|r| r.seq);
        complete.dedup_by_key(|r| r.seq);
        for mut row in complete {
            if row.seq < self.tip.next_seq {
                continue; // already in a data file
            }
            if row.seq != self.tip.next_seq {
                return Err(AuditError::Corrupt {
                    path: layout::writer_dir(&self.dir, &self.writer).join(layout::JOURNAL_DIR),
                    detail: format!(
                        "journal row seq {} does not continue the chain at seq {}; the journal and the data files disagree",
                        row.seq, self.tip.next_seq
                    ),
                });
            }
            self.rotate_for_day(row.ts_us)?;
            // The journal does not store hashes: re-linking recomputes them.
            crate::audit::chain::link(&mut row, &self.tip.last_hash);
            self.tip.next_seq = row.seq + 1;
            self.tip.last_hash.clone_from(&row.hash);
            self.append_finished(row)?;
            recovery.rows_recovered += 1;
        }
        let mut seen = std::collections::HashSet::new();
        for mut row in begun {
            if finished.contains(&row.event_id) || !seen.insert(row.event_id.clone()) {
                continue;
            }
            row.outcome = crate::policy::Outcome::Interrupted;
            // Through the journal like any finished row, so that a crash
            // during recovery cannot finish the same call twice.
            self.record(row)?;
            recovery.interrupted += 1;
        }
        // The old segments go only once their rows are in a data file: a crash
        // before that replays them again, skipping rows already written.
        self.rotate()?;
        for seg in segments {
            std::fs::remove_file(seg).map_err(|e| AuditError::io("remove", seg, e))?;
        }
        Ok(())
    }

    /// Journals a decided call whose outcome is not known yet. Its
    /// `event_id` must be unique; `seq`, `prev_hash` and `hash` are set later.
    pub fn begin(&mut self, row: AuditRow) -> Result<(), AuditError> {
        self.journal
            .append([(Kind::Begun, &row)])
            .map_err(|e| AuditError::io("write", self.journal.path(), e))?;
        self.pending.insert(row.event_id.clone(), row);
        Ok(())
    }

    /// Finishes a begun call: `update` fills in its outcome columns.
    pub fn complete(
        &mut self,
        event_id: &str,
        update: impl FnOnce(&mut AuditRow),
    ) -> Result<(), AuditError> {
        let mut row = self
            .pending
            .remove(event_id)
            .ok_or_else(|| AuditError::UnknownEvent {
                event_id: event_id.to_string(),
            })?;
        update(&mut row);
        self.record(row)
    }

    /// Finishes every begun call with `update` (shutdown, upstream gone).
    pub fn complete_all(&mut self, update: impl Fn(&mut AuditRow)) -> Result<usize, AuditError> {
        let mut ids: Vec<String> = self.pending.keys().cloned().collect();
        ids.sort();
        for id in &ids {
            self.complete(id, &update)?;
        }
        Ok(ids.len())
    }

    /// Event ids of calls begun but not completed.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Records a finished row (chained, journaled, then buffered for Parquet).
    pub fn record(&mut self, mut row: AuditRow) -> Result<(), AuditError> {
        self.rotate_for_day(row.ts_us)?;
        self.finish(&mut row);
        self.journal
            .append([(Kind::Complete, &row)])
            .map_err(|e| AuditError::io("write", self.journal.path(), e))?;
        self.append_finished(row)
    }

    /// Records many finished rows, with one journal write per UTC day they
    /// span.
    pub fn record_all(
        &mut self,
        rows: impl IntoIterator<Item = AuditRow>,
    ) -> Result<(), AuditError> {
        let mut rows = rows.into_iter().peekable();
        let mut group: Vec<AuditRow> = Vec::new();
        while let Some(first) = rows.next() {
            self.rotate_for_day(first.ts_us)?;
            let day = layout::day_of(first.ts_us);
            group.clear();
            group.push(first);
            while let Some(next) = rows.next_if(|r| layout::day_of(r.ts_us) <= day) {
                group.push(next);
            }
            for row in &mut group {
                self.finish(row);
            }
            self.journal
                .append(group.iter().map(|r| (Kind::Complete, r)))
                .map_err(|e| AuditError::io("write", self.journal.path(), e))?;
            for row in group.drain(..) {
                self.append_finished(row)?;
            }
        }
        Ok(())
    }

    /// Assigns the row its place in the chain.
    fn finish(&mut self, row: &mut AuditRow) {
        if row.schema_version != schema::SCHEMA_VERSION {
            row.schema_version = schema::SCHEMA_VERSION.to_string();
        }
        row.seq = self.tip.next_seq;
        chain::link(row, &self.tip.last_hash);
        self.tip.next_seq += 1;
        self.tip.last_hash.clone_from(&row.hash);
    }

    /// Closes the current file first when a row of a later UTC day arrives,
    /// so each file sits in its day's partition. Called before the row is
    /// chained: rotation must only ever see rows that are already buffered.
    fn rotate_for_day(&mut self, ts_us: i64) -> Result<(), AuditError> {
        let current = match (&self.file, self.buffer.first()) {
            (Some(f), _) => Some(f.day),
            (None, Some(first)) => Some(layout::day_of(first.ts_us)),
            (None, None) => None,
        };
        if current.is_some_and(|d| layout::day_of(ts_us) > d) {
            self.rotate()?;
        }
        Ok(())
    }

    /// Buffers a finished (chained and journaled) row for the data file.
    fn append_finished(&mut self, row: AuditRow) -> Result<(), AuditError> {
        if self.file.is_none() && self.buffered_since.is_none() {
            self.buffered_since = Some(Instant::now());
        }
        self.buffer.push(row);
        if self.buffer.len() >= 8192 {
            self.write_buffer()?;
        }
        self.maybe_rotate()
    }

    /// Rotates if the open file (or the rows waiting for one) is big or
    /// old enough. Cheap; the proxy also calls it from a timer so quiet
    /// periods still produce files.
    pub fn maybe_rotate(&mut self) -> Result<(), AuditError> {
        let due = match &self.file {
            Some(f) => {
                f.opened.elapsed() >= self.config.rotate_age
                    || f.writer.bytes_written() as u64 + f.writer.in_progress_size() as u64
                        >= self.config.rotate_bytes
            }
            None => self
                .buffered_since
                .is_some_and(|t| !self.buffer.is_empty() && t.elapsed() >= self.config.rotate_age),
        };
        if due {
            self.rotate()?;
        }
        Ok(())
    }

    fn writer_properties(&self) -> WriterProperties {
        let plain = [
            col::EVENT_ID,
            col::TS,
            col::ARGS_JSON,
            col::JSONRPC_ID,
            col::ARGS_SHA256,
            col::PREV_HASH,
            col::HASH,
            col::SEQ,
        ];
        let mut b = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(self.config.zstd_level).unwrap_or_default(),
            ))
            .set_max_row_group_row_count(Some(self.config.row_group_rows))
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_created_by(format!("flightrec {}", env!("CARGO_PKG_VERSION")));
        for c in plain {
            // Unique values: a dictionary only costs time and space.
            b = b.set_column_dictionary_enabled(ColumnPath::from(c), false);
        }
        b.build()
    }

    /// Moves buffered rows into the open data file (opening one if needed).
    fn write_buffer(&mut self) -> Result<(), AuditError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            let first = &self.buffer[0];
            let uuid = layout::next_file_uuid(self.last_uuid.as_ref());
            self.last_uuid = Some(uuid);
            let part_dir = layout::partition_dir(&self.dir, first.ts_us);
            std::fs::create_dir_all(&part_dir)
                .map_err(|e| AuditError::io("create", &part_dir, e))?;
            let name = layout::data_file_name(&uuid, &self.writer);
            let partial = part_dir.join(format!(
                ".{}.partial",
                name.strip_suffix(".parquet").unwrap_or(&name)
            ));
            let final_path = part_dir.join(name);
            let out = File::create(&partial).map_err(|e| AuditError::io("create", &partial, e))?;
            let writer =
                ArrowWriter::try_new(out, schema::schema(), Some(self.writer_properties()))
                    .map_err(|e| AuditError::parquet(&partial, e))?;
            self.file = Some(OpenFile {
                writer,
                partial,
                final_path,
                day: layout::day_of(first.ts_us),
                opened: Instant::now(),
                first_seq: first.seq,
                first_hash: first.hash.clone(),
                last_seq: first.seq,
                last_hash: first.hash.clone(),
                rows: 0,
            });
        }
        let f = self.file.as_mut().expect("opened above");
        let batch = schema::rows_to_batch(&self.buffer);
        f.writer
            .write(&batch)
            .map_err(|e| AuditError::parquet(&f.partial, e))?;
        f.rows += self.buffer.len() as u64;
        let last = self.buffer.last().expect("not empty");
        f.last_seq = last.seq;
        f.last_hash.clone_from(&last.hash);
        self.buffer.clear();
        Ok(())
    }

    /// Closes the open data file into place and retires the journal that
    /// covered it.
    pub fn rotate(&mut self) -> Result<(), AuditError> {
        self.write_buffer()?;
        self.buffered_since = None;
        let Some(mut f) = self.file.take() else {
            return Ok(());
        };
        // Every finished row is in this file now: the tip and the retired
        // journal depend on it.
        debug_assert_eq!(f.last_seq + 1, self.tip.next_seq);
        debug_assert_eq!(f.last_hash, self.tip.last_hash);
        for (k, v) in [
            (meta::SCHEMA_VERSION, schema::SCHEMA_VERSION.to_string()),
            (meta::FIRST_SEQ, f.first_seq.to_string()),
            (meta::LAST_SEQ, f.last_seq.to_string()),
            (meta::FIRST_HASH, f.first_hash.clone()),
            (meta::LAST_HASH, f.last_hash.clone()),
            (meta::ROWS, f.rows.to_string()),
            (
                meta::WRITER,
                format!("flightrec {}", env!("CARGO_PKG_VERSION")),
            ),
            (meta::WRITER_ID, self.writer.clone()),
        ] {
            f.writer
                .append_key_value_metadata(parquet::file::metadata::KeyValue::new(
                    k.to_string(),
                    v,
                ));
        }
        let file = f
            .writer
            .into_inner()
            .map_err(|e| AuditError::parquet(&f.partial, e))?;
        file.sync_all()
            .map_err(|e| AuditError::io("sync", &f.partial, e))?;
        drop(file);
        std::fs::rename(&f.partial, &f.final_path)
            .map_err(|e| AuditError::io("rename", &f.partial, e))?;
        let part_dir = f
            .final_path
            .parent()
            .expect("data files live in a partition");
        journal::sync_dir(part_dir).map_err(|e| AuditError::io("sync", part_dir, e))?;
        self.write_tip()?;
        self.retire_journal()
    }

    fn write_tip(&self) -> Result<(), AuditError> {
        let path = layout::writer_dir(&self.dir, &self.writer).join(layout::TIP_FILE);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string(&self.tip).expect("tip serializes");
        std::fs::write(&tmp, text).map_err(|e| AuditError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| AuditError::io("rename", &tmp, e))
    }

    /// Starts a fresh journal segment holding only the still-pending calls,
    /// then deletes the old segments (everything else in them is now in data
    /// files).
    fn retire_journal(&mut self) -> Result<(), AuditError> {
        let jdir = layout::writer_dir(&self.dir, &self.writer).join(layout::JOURNAL_DIR);
        let path = jdir.join(format!("{}.wal", uuid::Uuid::now_v7()));
        let mut fresh = Journal::create(&path, self.config.sync)
            .map_err(|e| AuditError::io("create", &path, e))?;
        let mut pending: Vec<&AuditRow> = self.pending.values().collect();
        pending.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        if !pending.is_empty() {
            fresh
                .append(pending.into_iter().map(|r| (Kind::Begun, r)))
                .and_then(|_| fresh.sync())
                .map_err(|e| AuditError::io("write", &path, e))?;
        }
        let old = std::mem::replace(&mut self.journal, fresh);
        let old_path = old.path().to_path_buf();
        drop(old);
        for seg in self.retired_segments.drain(..).chain([old_path]) {
            std::fs::remove_file(&seg).map_err(|e| AuditError::io("remove", &seg, e))?;
        }
        Ok(())
    }

    /// Forces the journal to stable storage now.
    pub fn sync(&mut self) -> Result<(), AuditError> {
        self.journal
            .sync()
            .map_err(|e| AuditError::io("sync", self.journal.path(), e))
    }

    /// Clean shutdown: calls still pending are recorded as `interrupted`,
    /// the data file is closed into place and the journal retired.
    pub fn close(mut self) -> Result<(), AuditError> {
        self.complete_all(|row| row.outcome = crate::policy::Outcome::Interrupted)?;
        self.rotate()?;
        let path = self.journal.path().to_path_buf();
        std::fs::remove_file(&path).map_err(|e| AuditError::io("remove", &path, e))
    }
}

/// Whether `dir` holds the original single chain (state directly in
/// `_flightrec/`, or data files without a writer id).
fn has_original_chain(dir: &Path, files: &[PathBuf]) -> bool {
    let state = layout::state_dir(dir);
    state.join(layout::TIP_FILE).exists()
        || std::fs::read_dir(state.join(layout::JOURNAL_DIR)).is_ok_and(|mut d| d.next().is_some())
        || files.iter().any(|f| layout::file_writer(f).is_empty())
}

/// Takes `wdir/lock` if no other process holds it.
fn try_lock(wdir: &Path) -> Result<Option<File>, AuditError> {
    std::fs::create_dir_all(wdir).map_err(|e| AuditError::io("create", wdir, e))?;
    let lock_path = wdir.join(layout::LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| AuditError::io("create", &lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(AuditError::io("lock", &lock_path, e)),
    }
}

/// Removes the half-written data files of `writer` (whose lock we hold:
/// its previous process is gone). Other writers' files are theirs.
fn remove_partials(dir: &Path, writer: &str) -> Result<u64, AuditError> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return Err(AuditError::io("list", dir, e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && entry.file_name().to_string_lossy().starts_with("date=") {
            for inner in std::fs::read_dir(&path)
                .map_err(|e| AuditError::io("list", &path, e))?
                .flatten()
            {
                let name = inner.file_name();
                let name = name.to_string_lossy();
                let Some(stem) = name
                    .strip_prefix('.')
                    .and_then(|n| n.strip_suffix(".partial"))
                else {
                    continue;
                };
                let owner = stem.split_once('.').map_or("", |(_, w)| w);
                if owner == writer {
                    std::fs::remove_file(inner.path())
                        .map_err(|e| AuditError::io("remove", &inner.path(), e))?;
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}

/// A writer's chain tip: its tip file, or its newest data file if that is
/// further along (`wdir` is the writer's state directory).
fn find_tip(wdir: &Path, files: &[PathBuf]) -> Result<Tip, AuditError> {
    let mut tip = Tip {
        next_seq: 0,
        last_hash: GENESIS_HASH.to_string(),
    };
    let tip_path = wdir.join(layout::TIP_FILE);
    if let Ok(text) = std::fs::read_to_string(&tip_path) {
        tip = serde_json::from_str(&text).map_err(|e| AuditError::Corrupt {
            path: tip_path.clone(),
            detail: format!("unreadable chain tip: {e}"),
        })?;
    }
    if let Some(newest) = files.last() {
        let FileMeta {
            last_seq,
            last_hash,
            ..
        } = layout::read_meta(newest)?;
        if let (Some(seq), Some(hash)) = (last_seq, last_hash)
            && seq + 1 > tip.next_seq
        {
            tip = Tip {
                next_seq: seq + 1,
                last_hash: hash,
            };
        }
    }
    Ok(tip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: u64) -> AuditRow {
        AuditRow {
            event_id: format!("e{i:04}"),
            ts_us: 1_795_564_800_000_000 + i as i64 * 1000,
            session_id: "s".into(),
            agent_id: "a".into(),
            ..AuditRow::default()
        }
    }

    fn read_all(dir: &Path) -> Vec<AuditRow> {
        let mut rows = Vec::new();
        for f in layout::data_files(dir).unwrap() {
            let file = File::open(&f).unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap();
            for b in reader {
                rows.extend(schema::BatchView::new(&b.unwrap()).rows().unwrap());
            }
        }
        rows
    }

    #[test]
    fn rows_land_in_parquet_with_a_continuous_chain_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = Recorder::open(dir.path(), RecorderConfig::default()).unwrap();
        for i in 0..10 {
            rec.record(row(i)).unwrap();
        }
        rec.close().unwrap();
        let mut rec = Recorder::open(dir.path(), RecorderConfig::default()).unwrap();
        assert!(rec.recovery().is_clean());
        rec.record_all((10..15).map(row)).unwrap();
        rec.close().unwrap();
        let rows = read_all(dir.path());
        assert_eq!(rows.len(), 15);
        let mut prev = GENESIS_HASH.to_string();
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.seq, i as u64);
            assert_eq!(r.prev_hash, prev);
            assert_eq!(chain::row_hash(r), r.hash);
            prev = r.hash.clone();
        }
        assert_eq!(layout::data_files(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn a_second_writer_gets_its_own_chain_and_a_free_one_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Recorder::open(dir.path(), RecorderConfig::default()).unwrap();
        let mut b = Recorder::open(dir.path(), RecorderConfig::default()).unwrap();
        assert_ne!(a.writer(), b.writer());
        assert!(layout::is_writer_id(a.writer()) && layout::is_writer_id(b.writer()));
        a.record(row(0)).unwrap();
        b.record(row(1)).unwrap();
        let (wa, wb) = (a.writer().to_string(), b.writer().to_string());
        a.close().unwrap();
        b.close().unwrap();
        let files = layout::data_files(dir.path()).unwrap();
        let writers: Vec<String> = files.iter().map(|f| layout::file_writer(f)).collect();
        assert_eq!(writers.len(), 2);
        assert!(writers.contains(&wa) && writers.contains(&wb));
        // Both chains start at the genesis hash.
        for r in read_all(dir.path()) {
            assert_eq!(r.seq, 0);
            assert_eq!(r.prev_hash, GENESIS_HASH);
        }
        // A new process takes over a free writer and continues its chain.
        let mut c = Recorder::open(dir.path(), RecorderConfig::default()).unwrap();
        assert!(c.writer() == wa || c.writer() == wb);
        c.record(row(2)).unwrap();
        c.close().unwrap();
        let next: Vec<u64> = read_all(dir.path())
            .iter()
            .filter(|r| r.event_id == "e0002")
            .map(|r| r.seq)
            .collect();
        assert_eq!(next, [1]);
    }

    #[test]
    fn crash_recovery_writes_journal_rows_and_interrupts_pending_calls() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = Recorder::open(dir.path(), RecorderConfig::default()).unwrap();
        rec.record(row(0)).unwrap();
        rec.begin(row(1)).unwrap();
        rec.begin(row(2)).unwrap();
        rec.complete("e0002", |r| r.outcome = crate::policy::Outcome::Ok)
            .unwrap();
        // A crash: nothing is closed or rotated (the kill -9 integration test
        // does this with a real process).
        drop(rec);
        assert!(layout::data_files(dir.path()).unwrap().is_empty());
        let rec = Recorder::open(dir.path(), RecorderConfig::default()).unwrap();
        assert_eq!(rec.recovery().rows_recovered, 2);
        assert_eq!(rec.recovery().interrupted, 1);
        rec.close().unwrap();
        let rows = read_all(dir.path());
        let outcomes: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.event_id.as_str(), r.outcome.as_str()))
            .collect();
        assert_eq!(
            outcomes,
            [("e0000", "ok"), ("e0002", "ok"), ("e0001", "interrupted")]
        );
        // Reopening again finds nothing left to do.
        let rec = Recorder::open(dir.path(), RecorderConfig::default()).unwrap();
        assert!(rec.recovery().is_clean(), "{:?}", rec.recovery());
    }

    #[test]
    fn the_row_that_starts_a_new_day_survives_a_crash_right_after() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = Recorder::open(dir.path(), RecorderConfig::default()).unwrap();
        let mut late = row(0);
        late.ts_us -= 1;
        rec.record(late).unwrap();
        rec.record(row(1)).unwrap(); // rotates day 1 into place, retires its journal
        drop(rec); // crash
        let rec = Recorder::open(dir.path(), RecorderConfig::default()).unwrap();
        assert_eq!(rec.recovery().rows_recovered, 1);
        rec.close().unwrap();
        let rows = read_all(dir.path());
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1]);
        assert!(matches!(
            crate::audit::verify::verify_dir(dir.path()),
            Ok(Ok(_))
        ));
    }

    #[test]
    fn day_boundary_rotates_into_a_new_partition() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = Recorder::open(dir.path(), RecorderConfig::default()).unwrap();
        let mut late = row(0);
        late.ts_us -= 1; // 23:59:59.999999 the day before
        rec.record(late).unwrap();
        rec.record(row(1)).unwrap();
        rec.close().unwrap();
        let files = layout::data_files(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        assert!(files[0].to_string_lossy().contains("date=2026-11-24"));
        assert!(files[1].to_string_lossy().contains("date=2026-11-25"));
    }
}
