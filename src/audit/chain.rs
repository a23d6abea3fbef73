//! The SHA-256 hash chain over audit rows.
//!
//! `hash = SHA-256(canonical(row))`, where `canonical` encodes every column
//! except `hash` itself — `prev_hash` included, which links each row to the
//! one before it — in schema order. Each column becomes:
//! - `0x00` when null;
//! - `0x01`, the value's text as a 4-byte big-endian length, then its UTF-8
//!   bytes. Text is the string itself; integers in decimal; `ts` as decimal
//!   microseconds since the epoch; `shadow` as compact JSON
//!   `[{"policy_sha256":…,"decision":…,"rule":…}, …]` (keys in that order,
//!   `rule` null when absent).
//!
//! This is deliberately simple to recompute outside flightrec (a dozen lines
//! of Python); docs/audit-schema.md shows how.

use crate::audit::schema::{AuditRow, ShadowDecision};
use sha2::{Digest, Sha256};

/// The canonical byte encoding of a row (all columns but `hash`).
pub fn canonical_bytes(row: &AuditRow) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let mut text = |v: Option<&str>| match v {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    };
    let mut buf = itoa_buf();
    text(Some(&row.schema_version));
    text(Some(&row.event_id));
    text(Some(buf.u(row.seq)));
    text(Some(buf.i(row.ts_us)));
    text(Some(&row.session_id));
    text(Some(&row.agent_id));
    text(row.client_name.as_deref());
    text(row.client_version.as_deref());
    text(Some(&row.server));
    text(Some(&row.transport));
    text(Some(&row.method));
    text(row.jsonrpc_id.as_deref());
    text(row.tool.as_deref());
    text(row.category.as_deref());
    text(row.risk.as_deref());
    text(row.args_json.as_deref());
    text(row.args_sha256.as_deref());
    text(Some(&row.decision));
    text(row.rule.as_deref());
    text(row.reason.as_deref());
    text(
        row.retry_after_ms
            .map(|v| buf.u(v))
            .map(str::to_string)
            .as_deref(),
    );
    text(Some(&row.policy_sha256));
    text(Some(&shadow_json(&row.shadow)));
    text(Some(&row.outcome));
    text(row.error_code.map(|v| buf.i(v).to_string()).as_deref());
    text(row.error_message.as_deref());
    text(row.latency_us.map(|v| buf.u(v).to_string()).as_deref());
    text(Some(buf.u(row.request_bytes)));
    text(Some(buf.u(row.response_bytes)));
    text(Some(&row.prev_hash));
    out
}

/// The row's hash as lowercase hex.
pub fn row_hash(row: &AuditRow) -> String {
    hex::encode(Sha256::digest(canonical_bytes(row)))
}

/// Sets `row.prev_hash` and `row.hash`, linking it after `prev`.
pub fn link(row: &mut AuditRow, prev: &str) {
    row.prev_hash.clear();
    row.prev_hash.push_str(prev);
    row.hash = row_hash(row);
}

fn shadow_json(shadow: &[ShadowDecision]) -> String {
    let mut s = String::from("[");
    for (i, d) in shadow.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str("{\"policy_sha256\":");
        s.push_str(&serde_json::Value::from(d.policy_sha256.as_str()).to_string());
        s.push_str(",\"decision\":");
        s.push_str(&serde_json::Value::from(d.decision.as_str()).to_string());
        s.push_str(",\"rule\":");
        match &d.rule {
            Some(r) => s.push_str(&serde_json::Value::from(r.as_str()).to_string()),
            None => s.push_str("null"),
        }
        s.push('}');
    }
    s.push(']');
    s
}

/// Small integer formatting without allocation per call.
struct IntBuf {
    buf: String,
}

fn itoa_buf() -> IntBuf {
    IntBuf {
        buf: String::with_capacity(24),
    }
}

impl IntBuf {
    fn u(&mut self, v: u64) -> &str {
        use std::fmt::Write;
        self.buf.clear();
        let _ = write!(self.buf, "{v}");
        &self.buf
    }

    fn i(&mut self, v: i64) -> &str {
        use std::fmt::Write;
        self.buf.clear();
        let _ = write!(self.buf, "{v}");
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::schema::GENESIS_HASH;

    #[test]
    fn any_column_change_changes_the_hash() {
        let mut row = AuditRow {
            event_id: "e".into(),
            ..AuditRow::default()
        };
        link(&mut row, GENESIS_HASH);
        let h = row.hash.clone();
        assert_eq!(row_hash(&row), h);
        let mut changed = row.clone();
        changed.response_bytes = 1;
        assert_ne!(row_hash(&changed), h);
        let mut changed = row.clone();
        changed.rule = Some(String::new());
        assert_ne!(row_hash(&changed), h, "null and empty differ");
        let mut changed = row.clone();
        changed.prev_hash = "1".repeat(64);
        assert_ne!(row_hash(&changed), h);
    }
}
