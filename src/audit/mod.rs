//! The audit log: schema v1 (Parquet), the crash-safe recorder with its hash
//! chain, streaming readers, verification, compliance export and import.
//!
//! Data path: the proxy hands [`AuditRow`]s to a [`Recorder`], which journals
//! them ([`journal`]), chains them ([`chain`]) and writes Parquet files laid
//! out as in [`layout`]. [`read`] streams them back (for replay and export);
//! [`verify`] checks the chain; [`export`] and [`import`] convert formats;
//! [`filter`] is the row filter export and replay share.

pub mod args;
pub(crate) mod chain;
pub(crate) mod codec;
pub(crate) mod error;
pub(crate) mod export;
pub(crate) mod file_writer;
pub(crate) mod filter;
pub(crate) mod import;
pub(crate) mod journal;
pub mod layout;
pub mod read;
pub(crate) mod recorder;
pub mod remote;
pub mod schema;
pub mod ship;
pub(crate) mod verify;

pub use error::AuditError;
pub use recorder::{Recorder, RecorderConfig, Recovery};
pub use schema::{AuditRow, ShadowDecision};
