//! Replay: what-if evaluation of recorded (and generated) sessions against
//! candidate policies, on a virtual clock taken from the events.
//!
//! Data path: [`source`] reads audit Parquet into [`source::EventBatch`]es
//! (one decode for all candidates, strings as views into the pages) and puts
//! their events in time order as [`source::Segment`]s (runs of a batch, so
//! an in-order batch moves as one item), [`engine`] hands chunks of segments
//! to one thread per candidate which decides them with the same core as
//! the live proxy, [`report`] accumulates and renders what each candidate
//! would have done and how it differs from the recording, and [`decisions`]
//! writes the per-event decisions when asked.

pub(crate) mod decisions;
pub(crate) mod engine;
pub(crate) mod report;
pub(crate) mod scenario;
pub(crate) mod source;
pub(crate) mod warm;

pub use engine::{Candidate, ReplayConfig, ReplayError, replay, run_events};
pub use report::{Report, ReportFormat};
pub use source::REPLAY_COLUMNS;
