//! `policy eval`: decide a JSONL stream of calls, one JSON decision per line.
//!
//! Each input line is one call record:
//! `{"ts", "session", "agent", "server", "tool", "args", "category"?, "risk"?, "outcome"?}`
//! where `ts` is RFC 3339 text or integer microseconds. Field names of the
//! audit schema (`session_id`, `agent_id`) are accepted too, so exported logs
//! can be piped in. Calls are decided in input order; a call's `outcome`
//! settles its reservations before the next line (`rpc_error` rolls back).

use crate::policy::{Call, Category, CounterStore, Decision, Outcome, Policy, PolicyState, Risk};
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::{BufRead, Write};

/// One input record, as read from JSON.
#[derive(Debug, Deserialize)]
pub struct CallRecord {
    pub ts: TimeField,
    #[serde(default, alias = "session_id")]
    pub session: String,
    #[serde(default, alias = "agent_id")]
    pub agent: String,
    #[serde(default)]
    pub server: String,
    pub tool: String,
    #[serde(default)]
    pub args: Value,
    #[serde(default)]
    pub category: Option<Category>,
    #[serde(default)]
    pub risk: Option<Risk>,
    #[serde(default)]
    pub outcome: Option<Outcome>,
}

/// A timestamp as RFC 3339 text or integer microseconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TimeField {
    Micros(i64),
    Text(String),
}

impl CallRecord {
    /// Parses one JSON line, naming what is wrong.
    pub fn parse(line: &str) -> Result<CallRecord, String> {
        let record: CallRecord = serde_json::from_str(line).map_err(|e| format!("{e}"))?;
        record.ts_us()?;
        if !(record.args.is_object() || record.args.is_null()) {
            return Err("\"args\" must be a JSON object".into());
        }
        Ok(record)
    }

    pub fn ts_us(&self) -> Result<i64, String> {
        match &self.ts {
            TimeField::Micros(us) => Ok(*us),
            TimeField::Text(t) => crate::time::parse_rfc3339_us(t),
        }
    }

    pub fn as_call(&self) -> Call<'_> {
        Call {
            ts_us: self.ts_us().unwrap_or_default(),
            session: &self.session,
            agent: &self.agent,
            server: &self.server,
            tool: &self.tool,
            category: self.category,
            risk: self.risk,
            args: &self.args,
            args_sha256: None,
        }
    }
}

/// The JSON line written for one decision.
pub fn decision_json(d: &Decision) -> Value {
    json!({
        "decision": d.verdict.as_str(),
        "rule": d.rule.as_deref(),
        "message": d.message.as_deref(),
        "retry_after_ms": d.retry_after_ms,
    })
}

/// A bad input line.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("line {line}: {message}")]
    BadLine { line: usize, message: String },
    #[error("reading input: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing output: {0}")]
    Write(#[source] std::io::Error),
}

/// Counts of what an evaluation run saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EvalSummary {
    pub decided: usize,
    pub bad_lines: usize,
}

/// Decides every line of `input`, writing one JSON line per input line.
/// Blank lines are skipped. With `keep_going`, a bad line produces an
/// `{"error": …}` line instead of stopping.
pub fn run(
    policy: &Policy,
    input: impl BufRead,
    mut output: impl Write,
    keep_going: bool,
) -> Result<EvalSummary, EvalError> {
    let mut state = PolicyState::new(policy);
    let mut summary = EvalSummary::default();
    for (i, line) in input.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(EvalError::Read)?;
        if line.trim().is_empty() {
            continue;
        }
        let out = match CallRecord::parse(&line) {
            Ok(record) => {
                let decision = policy.decide(&mut state, &record.as_call());
                let out = decision_json(&decision);
                state.settle(decision.reservation, record.outcome.unwrap_or(Outcome::Ok));
                summary.decided += 1;
                out
            }
            Err(message) => {
                if !keep_going {
                    return Err(EvalError::BadLine {
                        line: line_no,
                        message,
                    });
                }
                summary.bad_lines += 1;
                json!({ "error": format!("line {line_no}: {message}") })
            }
        };
        serde_json::to_writer(&mut output, &out).map_err(|e| EvalError::Write(e.into()))?;
        output.write_all(b"\n").map_err(EvalError::Write)?;
    }
    output.flush().map_err(EvalError::Write)?;
    Ok(summary)
}
