//! `audit verify`: proves an audit directory is whole and unaltered.
//!
//! A directory holds one hash chain per writer (see [`layout`]); each is
//! verified on its own. Within a chain, files are read in name order (the
//! writer's order). Every row's hash is
//! recomputed; every `prev_hash` must equal the previous row's hash and every
//! `seq` must follow the previous one, across file boundaries; each file's
//! footer metadata must agree with its rows; and the directory's recorded
//! chain tip must match the last row. A changed value breaks its row's hash;
//! a deleted, inserted or moved row, a removed file or reordered files break
//! the links.

use crate::audit::chain;
use crate::audit::error::AuditError;
use crate::audit::layout;
use crate::audit::read::{FileScan, ScanOptions};
use crate::audit::remote::{DataFile, StoreDir};
use crate::audit::schema::{BatchView, GENESIS_HASH};
use std::path::{Path, PathBuf};

/// What an intact directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub files: usize,
    pub rows: u64,
    /// Every writer's chain, in writer id order.
    pub chains: Vec<Chain>,
}

/// One writer's intact chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The writer id (`""`: the original single chain).
    pub writer: String,
    pub files: usize,
    pub rows: u64,
    pub last_hash: String,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: PathBuf,
    /// 0-based row index within the file, when the problem is a row.
    pub row: Option<u64>,
    pub seq: Option<u64>,
    pub problem: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(row) = self.row {
            write!(f, ": row {row}")?;
        }
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// Verifies a directory. `Err` means a file could not be read at all (exit
/// 2); `Ok(Err(finding))` means the log was altered or has gaps (exit 1).
pub fn verify_dir(dir: &Path) -> Result<Result<Verified, Finding>, AuditError> {
    if !dir.is_dir() {
        return Err(AuditError::io(
            "read",
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not an audit directory"),
        ));
    }
    let files: Vec<DataFile> = layout::data_files(dir)?
        .into_iter()
        .map(DataFile::Local)
        .collect();
    // Writers whose state says they wrote rows must have their files here.
    let mut writers: Vec<String> = layout::writer_ids(dir)?;
    if layout::state_dir(dir).join(layout::TIP_FILE).exists() {
        writers.push(String::new());
    }
    verify_files(&files, &writers, |w| {
        Some(layout::writer_dir(dir, w).join(layout::TIP_FILE))
    })
}

/// Verifies the audit files under a store prefix (`s3://BUCKET/PREFIX`):
/// every chain from its genesis row through its last shipped file. The
/// writers' tips stay in their local directories, so files missing after
/// a chain's last shipped one show in `audit status` of that directory,
/// not here.
pub fn verify_store(dir: &StoreDir) -> Result<Result<Verified, Finding>, AuditError> {
    let files = dir.data_files(layout::TimeRange::default())?;
    if files.is_empty() {
        return Err(AuditError::Store {
            url: dir.url(),
            detail: "no audit data files (*.parquet) under this prefix".to_string(),
        });
    }
    verify_files(&files, &[], |_| None)
}

fn verify_files(
    files: &[DataFile],
    writers: &[String],
    tip_of: impl Fn(&str) -> Option<PathBuf>,
) -> Result<Result<Verified, Finding>, AuditError> {
    let mut groups = layout::files_by_writer(files);
    for w in writers {
        if !groups.iter().any(|(g, _)| g == w) {
            groups.push((w.clone(), Vec::new()));
        }
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    let mut verified = Verified {
        files: files.len(),
        rows: 0,
        chains: Vec::new(),
    };
    for (writer, files) in groups {
        match verify_chain(tip_of(&writer), &writer, &files)? {
            Ok(chain) => {
                verified.rows += chain.rows;
                verified.chains.push(chain);
            }
            Err(finding) => return Ok(Err(finding)),
        }
    }
    Ok(Ok(verified))
}

/// Verifies one writer's chain: its files in name order, then its tip.
fn verify_chain(
    tip_path: Option<PathBuf>,
    writer: &str,
    files: &[DataFile],
) -> Result<Result<Chain, Finding>, AuditError> {
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut next_seq = 0u64;
    let mut rows_total = 0u64;
    let mut prev_file: Option<PathBuf> = None;
    for file in files {
        let meta = crate::audit::read::file_meta(file)?;
        let label = file.label();
        let finding = |row: Option<u64>, seq: Option<u64>, problem: String| Finding {
            file: label.clone(),
            row,
            seq,
            problem,
        };
        let mut index = 0u64;
        let mut first_hash = None;
        for batch in FileScan::open(file, &ScanOptions::default())? {
            let batch = batch?;
            // A value outside the schema's vocabulary (an unknown decision,
            // say) is an altered file, like a hash that does not match.
            let rows = match BatchView::new(&batch).rows() {
                Ok(rows) => rows,
                Err(e) => {
                    return Ok(Err(finding(
                        None,
                        None,
                        format!(
                            "unreadable row: {e} (the file was altered or is not a flightrec audit file)"
                        ),
                    )));
                }
            };
            for row in rows {
                if row.prev_hash != prev_hash {
                    let problem = if index == 0 {
                        match &prev_file {
                            Some(p) => format!(
                                "chain broken between files: prev_hash does not match the last hash of {} (a file was removed, or files were reordered or renamed)",
                                p.display()
                            ),
                            None => "chain broken at the start: the first row does not follow the genesis hash (earlier files were removed)".to_string(),
                        }
                    } else {
                        "chain broken: prev_hash does not match the previous row's hash (a row was deleted, inserted or moved)".to_string()
                    };
                    return Ok(Err(finding(Some(index), Some(row.seq), problem)));
                }
                if chain::row_hash(&row) != row.hash {
                    return Ok(Err(finding(
                        Some(index),
                        Some(row.seq),
                        "hash mismatch: a value in this row was changed".to_string(),
                    )));
                }
                if row.seq != next_seq {
                    return Ok(Err(finding(
                        Some(index),
                        Some(row.seq),
                        format!("sequence gap: expected seq {next_seq}"),
                    )));
                }
                if index == 0 {
                    first_hash = Some(row.hash.clone());
                }
                prev_hash = row.hash;
                next_seq += 1;
                index += 1;
            }
        }
        if index != meta.rows {
            return Ok(Err(finding(
                None,
                None,
                format!("footer says {} rows, read {index}", meta.rows),
            )));
        }
        let checks = [
            (
                "first_hash",
                meta.first_hash.as_deref(),
                first_hash.as_deref(),
            ),
            (
                "last_hash",
                meta.last_hash.as_deref(),
                (index > 0).then_some(prev_hash.as_str()),
            ),
        ];
        for (name, recorded, actual) in checks {
            if let (Some(recorded), Some(actual)) = (recorded, actual)
                && recorded != actual
            {
                return Ok(Err(finding(
                    None,
                    None,
                    format!("footer metadata {name} {recorded} does not match the rows ({actual})"),
                )));
            }
        }
        if let (Some(last), true) = (meta.last_seq, index > 0)
            && last + 1 != next_seq
        {
            return Ok(Err(finding(
                None,
                None,
                format!("footer metadata last_seq {last} does not match the rows"),
            )));
        }
        rows_total += index;
        prev_file = Some(label);
    }
    // The writer's tip: rows missing at the end show here.
    if let Some(tip_path) = tip_path
        && let Ok(text) = std::fs::read_to_string(&tip_path)
    {
        let tip: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| AuditError::Corrupt {
                path: tip_path.clone(),
                detail: format!("unreadable chain tip: {e}"),
            })?;
        let tip_next = tip["next_seq"].as_u64().unwrap_or(0);
        let tip_hash = tip["last_hash"].as_str().unwrap_or_default();
        if tip_next != next_seq || (tip_next > 0 && tip_hash != prev_hash) {
            return Ok(Err(Finding {
                file: tip_path,
                row: None,
                seq: None,
                problem: format!(
                    "the writer's chain tip is at seq {} but the data files end at seq {} (files at the end were removed or altered)",
                    tip_next as i64 - 1,
                    next_seq as i64 - 1
                ),
            }));
        }
    }
    Ok(Ok(Chain {
        writer: writer.to_string(),
        files: files.len(),
        rows: rows_total,
        last_hash: prev_hash,
    }))
}
