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

use crate::audit::schema::{AuditRow, ColumnValue, ShadowDecision};
use sha2::{Digest, Sha256};

/// The row's hash as lowercase hex.
pub fn row_hash(row: &AuditRow) -> String {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
    }
    // One contiguous buffer hashes faster than many small updates.
    let digest = SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        walk_canonical(row, &mut |bytes| buf.extend_from_slice(bytes));
        Sha256::digest(&buf[..])
    });
    to_hex(&digest)
}

/// Lowercase hex, table-driven (the `hex` crate's iterator is slower, and
/// this runs once per recorded row).
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 0xf) as usize]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Sets `row.prev_hash` and `row.hash`, linking it after `prev`.
pub fn link(row: &mut AuditRow, prev: &str) {
    row.prev_hash.clear();
    row.prev_hash.push_str(prev);
    row.hash = row_hash(row);
}

/// Feeds the canonical encoding to `sink` piece by piece (hashing streams
/// it; nothing is buffered).
fn walk_canonical(row: &AuditRow, sink: &mut dyn FnMut(&[u8])) {
    let mut text = |v: Option<&str>| match v {
        None => sink(&[0]),
        Some(s) => {
            let mut head = [1u8; 5];
            head[1..].copy_from_slice(&(s.len() as u32).to_be_bytes());
            sink(&head);
            sink(s.as_bytes());
        }
    };
    let mut n1 = NumBuf::default();
    let mut n2 = NumBuf::default();
    text(Some(&row.schema_version));
    text(Some(&row.event_id));
    text(Some(n1.u(row.seq)));
    text(Some(n1.i(row.ts_us)));
    text(Some(&row.session_id));
    text(Some(&row.agent_id));
    text(row.client_name.as_deref());
    text(row.client_version.as_deref());
    text(Some(&row.server));
    text(Some(row.transport.as_str()));
    text(Some(&row.method));
    text(row.jsonrpc_id.as_deref());
    text(row.tool.as_deref());
    text(row.category.map(ColumnValue::as_str));
    text(row.risk.map(ColumnValue::as_str));
    text(row.args_json.as_deref());
    text(row.args_sha256.as_deref());
    text(Some(row.decision.as_str()));
    text(row.rule.as_deref());
    text(row.reason.as_deref());
    text(row.retry_after_ms.map(|v| n1.u(v)));
    text(Some(&row.policy_sha256));
    if row.shadow.is_empty() {
        text(Some("[]"));
    } else {
        text(Some(&shadow_json(&row.shadow)));
    }
    text(Some(row.outcome.as_str()));
    text(row.error_code.map(|v| n2.i(v)));
    text(row.error_message.as_deref());
    text(row.latency_us.map(|v| n1.u(v)));
    text(Some(n1.u(row.request_bytes)));
    text(Some(n2.u(row.response_bytes)));
    text(Some(&row.prev_hash));
    // Schema 1.1's columns follow `hash` in the file; the encoding takes
    // every column but `hash` in schema order, so they come last.
    if crate::audit::schema::has_approval_columns(&row.schema_version) {
        text(row.approval.map(ColumnValue::as_str));
        text(row.approved_by.as_deref());
        text(row.approval_ms.map(|v| n1.u(v)));
        text(row.continues.as_deref());
        text(row.round.map(|v| n2.u(v)));
    }
}

/// Decimal formatting into a stack buffer.
#[derive(Default)]
struct NumBuf {
    buf: [u8; 24],
    len: usize,
}

impl NumBuf {
    fn u(&mut self, v: u64) -> &str {
        self.fmt(format_args!("{v}"))
    }

    fn i(&mut self, v: i64) -> &str {
        self.fmt(format_args!("{v}"))
    }

    fn fmt(&mut self, args: std::fmt::Arguments<'_>) -> &str {
        use std::io::Write;
        let mut cursor = std::io::Cursor::new(&mut self.buf[..]);
        cursor
            .write_fmt(args)
            .expect("a 64-bit integer fits in 24 bytes");
        self.len = cursor.position() as usize;
        std::str::from_utf8(&self.buf[..self.len]).expect("digits are ASCII")
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::schema::GENESIS_HASH;

    #[test]
    fn hex_matches_the_hex_crate() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(to_hex(&bytes), hex::encode(&bytes));
    }

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
