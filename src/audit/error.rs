//! Audit log errors: every one names the file or directory involved.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a readable Parquet audit file: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{}: {detail}", path.display())]
    Schema { path: PathBuf, detail: String },
    #[error("{}: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    /// An object store refused or could not be reached; `url` names the
    /// bucket and key, `detail` what the store said.
    #[error("{url}: {detail}")]
    Store { url: String, detail: String },
    #[error("event {event_id} was never begun (or was already completed)")]
    UnknownEvent { event_id: String },
}

impl AuditError {
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> AuditError {
        AuditError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn parquet(path: &Path, source: parquet::errors::ParquetError) -> AuditError {
        AuditError::Parquet {
            path: path.to_path_buf(),
            source,
        }
    }
}
