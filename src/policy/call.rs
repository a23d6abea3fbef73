//! What goes into the decision core: a [`Call`].

use crate::policy::vocab::{Category, Risk};

/// One `tools/call` as the decision core sees it. Time is an input: the live
/// proxy passes the wall clock, replay passes recorded or generated time.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// Microseconds since the Unix epoch, UTC.
    pub ts_us: i64,
    pub session: &'a str,
    pub agent: &'a str,
    pub server: &'a str,
    pub tool: &'a str,
    /// The category known from the server's annotations or the record, if any.
    pub category: Option<Category>,
    pub risk: Option<Risk>,
    /// The call's `arguments` object (JSON `null` when the call had none).
    pub args: &'a serde_json::Value,
    /// The SHA-256 of the original arguments' canonical JSON, when the
    /// caller has it (the audit log's `args_sha256`; replay must use it,
    /// since `args_json` may be redacted). `None`: computed from `args`
    /// when a `repeat_limit` needs it.
    pub args_sha256: Option<&'a str>,
}
