//! The write-ahead journal: where a row becomes durable before the proxy
//! acts on it.
//!
//! A segment is a file of frames, each `[u32 LE payload length][u32 LE
//! CRC-32 of payload][payload]`, after an 8-byte magic header. The payload is
//! one byte of kind (`B`: a call decided but not finished; `C`: a finished,
//! chained row; lower case when the frame continues the same write and may
//! refer to the frame before it) followed by the row in the compact encoding
//! of [`crate::audit::codec`]. A frame is acknowledged once
//! `write(2)` returned: it then survives a `kill -9` of the process (the page
//! cache holds it); `fdatasync` (every append, or on an interval) makes it
//! survive power loss too.
//!
//! Reading stops at the first frame that is cut short or fails its CRC: that
//! is a torn tail from a crash mid-write, reported with its offset, and
//! everything before it is kept.

use crate::audit::codec;
use crate::audit::schema::AuditRow;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const MAGIC: &[u8; 8] = b"FRJRNL1\n";
/// Frames larger than this are treated as corruption, not allocated.
const MAX_FRAME: usize = 256 * 1024 * 1024;

/// What a journal frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A decided call whose outcome is not known yet.
    Begun,
    /// A finished row with its sequence number and hashes.
    Complete,
}

impl Kind {
    fn byte(self, continues: bool) -> u8 {
        match (self, continues) {
            (Kind::Begun, false) => b'B',
            (Kind::Complete, false) => b'C',
            (Kind::Begun, true) => b'b',
            (Kind::Complete, true) => b'c',
        }
    }
}

/// `--fsync` / `--sync`: when the audit journal is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Fsync {
    /// At most every 100 ms: a process crash loses nothing, power loss at most 100 ms
    #[default]
    Interval,
    /// After every write: survives power loss, slower
    Always,
    /// Never forced; the OS writes back when it likes
    Never,
}

impl From<Fsync> for SyncMode {
    fn from(f: Fsync) -> SyncMode {
        match f {
            Fsync::Interval => SyncMode::Interval(Duration::from_millis(100)),
            Fsync::Always => SyncMode::Always,
            Fsync::Never => SyncMode::Never,
        }
    }
}

/// When appended frames are forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// `fdatasync` after every append: survives power loss, slowest.
    Always,
    /// `fdatasync` every this long, from a thread of the journal's own (an
    /// append never waits for the disk). Process crashes lose nothing;
    /// power loss loses at most about the interval.
    Interval(Duration),
    /// Never force; the OS writes back when it likes.
    Never,
}

/// An open segment being appended to.
pub struct Journal {
    file: Arc<File>,
    path: PathBuf,
    bytes: u64,
    sync: SyncMode,
    buf: Vec<u8>,
    /// For [`SyncMode::Interval`]: the background syncer's flags.
    syncer: Option<Syncer>,
}

/// Flags shared with the thread that forces an interval journal to disk.
struct Syncer {
    /// Something was written since the last `fdatasync`.
    dirty: Arc<AtomicBool>,
    /// The journal was dropped: sync what is left and stop.
    stop: Arc<AtomicBool>,
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Some(s) = &self.syncer {
            s.stop.store(true, Ordering::Release);
        }
    }
}

/// Forces `file` to disk every `every` while it has unsynced writes.
fn spawn_syncer(file: Arc<File>, every: Duration) -> Syncer {
    let dirty = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (d, s) = (dirty.clone(), stop.clone());
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(every);
            let stopping = s.load(Ordering::Acquire);
            if d.swap(false, Ordering::AcqRel) {
                let _ = file.sync_data();
            }
            if stopping {
                return;
            }
        }
    });
    Syncer { dirty, stop }
}

impl Journal {
    /// Creates a new, empty segment (fails if it exists).
    pub fn create(path: &Path, sync: SyncMode) -> io::Result<Journal> {
        let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        let file = Arc::new(file);
        let syncer = match sync {
            SyncMode::Interval(every) => Some(spawn_syncer(file.clone(), every)),
            _ => None,
        };
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            bytes: MAGIC.len() as u64,
            sync,
            buf: Vec::with_capacity(4096),
            syncer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends frames with one `write(2)`; returns once they are durable by
    /// the segment's [`SyncMode`].
    pub fn append<'r>(
        &mut self,
        frames: impl IntoIterator<Item = (Kind, &'r AuditRow)>,
    ) -> io::Result<()> {
        self.buf.clear();
        let mut prev: Option<&AuditRow> = None;
        for (kind, row) in frames {
            let start = self.buf.len();
            self.buf.extend_from_slice(&[0u8; 8]);
            self.buf.push(kind.byte(prev.is_some()));
            codec::encode(row, prev, &mut self.buf);
            prev = Some(row);
            let payload = &self.buf[start + 8..];
            let len = payload.len() as u32;
            let crc = crc32fast::hash(payload);
            self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
            self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        }
        (&*self.file).write_all(&self.buf)?;
        self.bytes += self.buf.len() as u64;
        match (&self.sync, &self.syncer) {
            (SyncMode::Always, _) => self.file.sync_data()?,
            (SyncMode::Interval(_), Some(s)) => s.dirty.store(true, Ordering::Release),
            _ => {}
        }
        Ok(())
    }

    /// Forces everything appended so far to stable storage.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// A torn or corrupt tail found while reading a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Offset of the first byte not kept.
    pub offset: u64,
    /// Bytes dropped after it.
    pub dropped: u64,
    pub reason: String,
}

/// The frames of one segment, in order, and its torn tail if any.
pub struct Segment {
    pub frames: Vec<(Kind, AuditRow)>,
    pub torn: Option<TornTail>,
}

/// Reads a segment, keeping every whole frame before the first bad one.
pub fn read_segment(path: &Path) -> io::Result<Segment> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let total = data.len() as u64;
    let mut frames = Vec::new();
    let torn_at = |offset: usize, reason: String| {
        Some(TornTail {
            offset: offset as u64,
            dropped: total - offset as u64,
            reason,
        })
    };
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        // A crash between create and the header write leaves a short file.
        let torn = if data.is_empty() {
            None
        } else {
            torn_at(0, "missing journal header".into())
        };
        return Ok(Segment { frames, torn });
    }
    let mut at = MAGIC.len();
    while at < data.len() {
        if data.len() - at < 8 {
            return Ok(Segment {
                frames,
                torn: torn_at(at, "frame header cut short".into()),
            });
        }
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_FRAME || data.len() - at - 8 < len {
            return Ok(Segment {
                frames,
                torn: torn_at(at, format!("frame of {len} bytes cut short")),
            });
        }
        let payload = &data[at + 8..at + 8 + len];
        if crc32fast::hash(payload) != crc {
            return Ok(Segment {
                frames,
                torn: torn_at(at, "frame checksum mismatch".into()),
            });
        }
        let (kind, continues) = match payload[0] {
            b'B' => (Kind::Begun, false),
            b'C' => (Kind::Complete, false),
            b'b' => (Kind::Begun, true),
            b'c' => (Kind::Complete, true),
            other => {
                return Ok(Segment {
                    frames,
                    torn: torn_at(at, format!("unknown frame kind 0x{other:02x}")),
                });
            }
        };
        let prev = if continues {
            frames.last().map(|(_, r): &(Kind, AuditRow)| r)
        } else {
            None
        };
        match codec::decode(&payload[1..], prev) {
            Ok(row) => frames.push((kind, row)),
            Err(e) => {
                return Ok(Segment {
                    frames,
                    torn: torn_at(at, format!("frame does not hold a row: {e}")),
                });
            }
        }
        at += 8 + len;
    }
    Ok(Segment { frames, torn: None })
}

/// fsync a directory so that a rename or create inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: u64) -> AuditRow {
        AuditRow {
            event_id: format!("e{i}"),
            seq: i,
            ..AuditRow::default()
        }
    }

    #[test]
    fn frames_round_trip_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wal");
        let mut j = Journal::create(&path, SyncMode::Never).unwrap();
        let rows: Vec<AuditRow> = (0..3).map(row).collect();
        j.append(rows.iter().map(|r| (Kind::Complete, r))).unwrap();
        j.append([(Kind::Begun, &row(9))]).unwrap();
        drop(j);
        let seg = read_segment(&path).unwrap();
        assert_eq!(seg.frames.len(), 4);
        assert!(seg.torn.is_none());
        assert_eq!(seg.frames[3], (Kind::Begun, row(9)));

        // Cut the file inside the last frame.
        let full = std::fs::read(&path).unwrap();
        for cut in [full.len() - 1, full.len() - 20] {
            std::fs::write(&path, &full[..cut]).unwrap();
            let seg = read_segment(&path).unwrap();
            assert_eq!(seg.frames.len(), 3);
            let torn = seg.torn.unwrap();
            assert_eq!(torn.offset + torn.dropped, cut as u64);
        }
        // Flip a byte in the second frame: it and everything after are dropped.
        let mut bad = full.clone();
        let second = MAGIC.len() + 8 + u32::from_le_bytes(full[8..12].try_into().unwrap()) as usize;
        bad[second + 12] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        let seg = read_segment(&path).unwrap();
        assert_eq!(seg.frames.len(), 1);
        assert_eq!(seg.torn.unwrap().reason, "frame checksum mismatch");
    }
}
