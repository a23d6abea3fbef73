//! Which audit rows a command keeps: the one row filter that `export` and
//! `replay` share (`--from`, `--to`, `--agent`, `--tool`, `--session`, and
//! for export `--decision`).

use crate::audit::schema::RecordedDecision;
use globset::GlobMatcher;

/// Row filters; every unset field keeps everything. Tool and agent take
/// globs in the policy's dialect.
#[derive(Debug, Clone, Default)]
pub struct RowFilter {
    /// Rows with `ts` at or after this time (µs since the epoch).
    pub from_us: Option<i64>,
    /// Rows with `ts` before this time.
    pub to_us: Option<i64>,
    pub agent: Option<GlobMatcher>,
    pub tool: Option<GlobMatcher>,
    pub session: Option<String>,
    pub decision: Option<RecordedDecision>,
}

impl RowFilter {
    /// Whether a row at `ts_us` is inside `[from, to)`.
    pub fn keeps_ts(&self, ts_us: i64) -> bool {
        self.from_us.is_none_or(|f| ts_us >= f) && self.to_us.is_none_or(|t| ts_us < t)
    }

    /// Whether the filter asks for anything besides time.
    pub fn has_field_filters(&self) -> bool {
        self.agent.is_some()
            || self.tool.is_some()
            || self.session.is_some()
            || self.decision.is_some()
    }

    /// Whether a row with these values passes the field filters (a row
    /// without a tool fails a tool filter).
    pub fn keeps_fields(
        &self,
        agent: Option<&str>,
        tool: Option<&str>,
        session: Option<&str>,
        decision: Option<&str>,
    ) -> bool {
        self.agent
            .as_ref()
            .is_none_or(|g| agent.is_some_and(|a| g.is_match(a)))
            && self
                .tool
                .as_ref()
                .is_none_or(|g| tool.is_some_and(|t| g.is_match(t)))
            && self.session.as_deref().is_none_or(|s| session == Some(s))
            && self.decision.is_none_or(|d| decision == Some(d.as_str()))
    }
}
