//! The journal's compact binary row encoding.
//!
//! Journal bytes are the recorder's main cost (every row is copied into the
//! page cache before it is acknowledged), so rows are encoded tightly:
//! columns in schema order, integers as LEB128 varints (signed ones
//! zig-zagged), and each text column as a tag — `0` null, `1` same as the
//! previous row of the same journal write, `2` literal (varint length +
//! UTF-8), `3` a 64-digit lowercase hex string stored as its 32 bytes.
//! `prev_hash` and `hash` are not stored: recovery recomputes them by
//! re-linking the chain, which is deterministic.

use crate::audit::schema::{AuditRow, ColumnValue, ShadowDecision, has_approval_columns};

const NULL: u8 = 0;
const SAME: u8 = 1;
const LITERAL: u8 = 2;
const HEX32: u8 = 3;

/// Appends `row`'s encoding to `out`, using `prev` for repeated values.
pub fn encode(row: &AuditRow, prev: Option<&AuditRow>, out: &mut Vec<u8>) {
    let mut e = Encoder { out, prev };
    e.text(Some(&row.schema_version), |p| Some(&p.schema_version));
    e.text(Some(&row.event_id), |p| Some(&p.event_id));
    e.out_varint(row.seq);
    e.out_varint(zigzag(row.ts_us));
    e.text(Some(&row.session_id), |p| Some(&p.session_id));
    e.text(Some(&row.agent_id), |p| Some(&p.agent_id));
    e.text(row.client_name.as_deref(), |p| p.client_name.as_deref());
    e.text(row.client_version.as_deref(), |p| {
        p.client_version.as_deref()
    });
    e.text(Some(&row.server), |p| Some(&p.server));
    e.text(Some(row.transport.as_str()), |p| Some(p.transport.as_str()));
    e.text(Some(&row.method), |p| Some(&p.method));
    e.text(row.jsonrpc_id.as_deref(), |p| p.jsonrpc_id.as_deref());
    e.text(row.tool.as_deref(), |p| p.tool.as_deref());
    e.text(row.category.map(ColumnValue::as_str), |p| {
        p.category.map(ColumnValue::as_str)
    });
    e.text(row.risk.map(ColumnValue::as_str), |p| {
        p.risk.map(ColumnValue::as_str)
    });
    e.text(row.args_json.as_deref(), |p| p.args_json.as_deref());
    e.text(row.args_sha256.as_deref(), |p| p.args_sha256.as_deref());
    e.text(Some(row.decision.as_str()), |p| Some(p.decision.as_str()));
    e.text(row.rule.as_deref(), |p| p.rule.as_deref());
    e.text(row.reason.as_deref(), |p| p.reason.as_deref());
    e.opt_u64(row.retry_after_ms);
    e.text(Some(&row.policy_sha256), |p| Some(&p.policy_sha256));
    e.out_varint(row.shadow.len() as u64);
    for s in &row.shadow {
        e.literal(Some(&s.policy_sha256));
        e.literal(Some(s.decision.as_str()));
        e.literal(s.rule.as_deref());
    }
    e.text(Some(row.outcome.as_str()), |p| Some(p.outcome.as_str()));
    match row.error_code {
        None => e.out.push(NULL),
        Some(c) => {
            e.out.push(LITERAL);
            e.out_varint(zigzag(c));
        }
    }
    e.text(row.error_message.as_deref(), |p| p.error_message.as_deref());
    e.opt_u64(row.latency_us);
    e.out_varint(row.request_bytes);
    e.out_varint(row.response_bytes);
    // Schema 1.1 adds three columns at the end; a 1.0 row (an older
    // process's journal) stops here.
    if has_approval_columns(&row.schema_version) {
        e.text(row.approval.map(ColumnValue::as_str), |p| {
            p.approval.map(ColumnValue::as_str)
        });
        e.text(row.approved_by.as_deref(), |p| p.approved_by.as_deref());
        e.opt_u64(row.approval_ms);
        e.text(row.continues.as_deref(), |p| p.continues.as_deref());
        e.opt_u64(row.round);
    }
}

/// Decodes one row; `prev` is the previous row of the same journal write.
pub fn decode(bytes: &[u8], prev: Option<&AuditRow>) -> Result<AuditRow, String> {
    let mut d = Decoder { bytes, at: 0, prev };
    let mut row = AuditRow {
        schema_version: d.req(|p| Some(&p.schema_version))?,
        event_id: d.req(|p| Some(&p.event_id))?,
        seq: d.varint()?,
        ts_us: unzigzag(d.varint()?),
        session_id: d.req(|p| Some(&p.session_id))?,
        agent_id: d.req(|p| Some(&p.agent_id))?,
        client_name: d.text(|p| p.client_name.as_deref())?,
        client_version: d.text(|p| p.client_version.as_deref())?,
        server: d.req(|p| Some(&p.server))?,
        transport: d.value(|p| Some(p.transport.as_str()))?,
        method: d.req(|p| Some(&p.method))?,
        jsonrpc_id: d.text(|p| p.jsonrpc_id.as_deref())?,
        tool: d.text(|p| p.tool.as_deref())?,
        category: d.opt_value(|p| p.category.map(ColumnValue::as_str))?,
        risk: d.opt_value(|p| p.risk.map(ColumnValue::as_str))?,
        args_json: d.text(|p| p.args_json.as_deref())?,
        args_sha256: d.text(|p| p.args_sha256.as_deref())?,
        decision: d.value(|p| Some(p.decision.as_str()))?,
        rule: d.text(|p| p.rule.as_deref())?,
        reason: d.text(|p| p.reason.as_deref())?,
        retry_after_ms: d.opt_u64()?,
        policy_sha256: d.req(|p| Some(&p.policy_sha256))?,
        shadow: {
            let n = d.varint()?;
            if n > 10_000 {
                return Err(format!("implausible shadow count {n}"));
            }
            let mut v = Vec::with_capacity(n as usize);
            for _ in 0..n {
                v.push(ShadowDecision {
                    policy_sha256: d.text(|_| None)?.unwrap_or_default(),
                    decision: d.value(|_| None)?,
                    rule: d.text(|_| None)?,
                });
            }
            v
        },
        outcome: d.value(|p| Some(p.outcome.as_str()))?,
        error_code: match d.byte()? {
            NULL => None,
            LITERAL => Some(unzigzag(d.varint()?)),
            other => return Err(format!("bad error_code tag {other}")),
        },
        error_message: d.text(|p| p.error_message.as_deref())?,
        latency_us: d.opt_u64()?,
        request_bytes: d.varint()?,
        response_bytes: d.varint()?,
        prev_hash: String::new(),
        hash: String::new(),
        approval: None,
        approved_by: None,
        approval_ms: None,
        continues: None,
        round: None,
    };
    if has_approval_columns(&row.schema_version) {
        row.approval = d.opt_value(|p| p.approval.map(ColumnValue::as_str))?;
        row.approved_by = d.text(|p| p.approved_by.as_deref())?;
        row.approval_ms = d.opt_u64()?;
        row.continues = d.text(|p| p.continues.as_deref())?;
        row.round = d.opt_u64()?;
    }
    if d.at != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - d.at));
    }
    Ok(row)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Encoder<'a, 'p> {
    out: &'a mut Vec<u8>,
    prev: Option<&'p AuditRow>,
}

impl Encoder<'_, '_> {
    fn out_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
    }

    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.out.push(NULL),
            Some(n) => {
                self.out.push(LITERAL);
                self.out_varint(n);
            }
        }
    }

    fn text(&mut self, value: Option<&str>, field: impl Fn(&AuditRow) -> Option<&str>) {
        if let (Some(v), Some(p)) = (value, self.prev)
            && field(p) == Some(v)
        {
            self.out.push(SAME);
            return;
        }
        self.literal(value);
    }

    fn literal(&mut self, value: Option<&str>) {
        match value {
            None => self.out.push(NULL),
            Some(v)
                if v.len() == 64
                    && v.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                self.out.push(HEX32);
                let mut raw = [0u8; 32];
                hex::decode_to_slice(v, &mut raw).expect("checked hex");
                self.out.extend_from_slice(&raw);
            }
            Some(v) => {
                self.out.push(LITERAL);
                self.out_varint(v.len() as u64);
                self.out.extend_from_slice(v.as_bytes());
            }
        }
    }
}

struct Decoder<'a, 'p> {
    bytes: &'a [u8],
    at: usize,
    prev: Option<&'p AuditRow>,
}

impl Decoder<'_, '_> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.bytes.get(self.at).ok_or("row cut short")?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn opt_u64(&mut self) -> Result<Option<u64>, String> {
        match self.byte()? {
            NULL => Ok(None),
            LITERAL => Ok(Some(self.varint()?)),
            other => Err(format!("bad number tag {other}")),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("row cut short")?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn text(
        &mut self,
        field: impl Fn(&AuditRow) -> Option<&str>,
    ) -> Result<Option<String>, String> {
        match self.byte()? {
            NULL => Ok(None),
            SAME => {
                let p = self
                    .prev
                    .ok_or("`same as previous` in the first row of a write")?;
                Ok(field(p).map(str::to_string))
            }
            LITERAL => {
                let n = self.varint()? as usize;
                let raw = self.take(n)?;
                String::from_utf8(raw.to_vec())
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
            HEX32 => Ok(Some(hex::encode(self.take(32)?))),
            other => Err(format!("bad text tag {other}")),
        }
    }

    fn req(&mut self, field: impl Fn(&AuditRow) -> Option<&str>) -> Result<String, String> {
        self.text(field)?
            .ok_or_else(|| "a required column is null".to_string())
    }

    fn opt_value<T: ColumnValue>(
        &mut self,
        field: impl Fn(&AuditRow) -> Option<&str>,
    ) -> Result<Option<T>, String> {
        self.text(field)?.map(|t| T::parse_value(&t)).transpose()
    }

    fn value<T: ColumnValue>(
        &mut self,
        field: impl Fn(&AuditRow) -> Option<&str>,
    ) -> Result<T, String> {
        self.opt_value(field)?
            .ok_or_else(|| "a required column is null".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: u64) -> AuditRow {
        AuditRow {
            event_id: format!("e{i}"),
            seq: i,
            ts_us: -5 + i as i64,
            session_id: "s".into(),
            agent_id: "a".into(),
            client_name: i.is_multiple_of(2).then(|| "mcp".into()),
            tool: Some("copy_image_set".into()),
            args_json: Some("{\"x\":\"ü\"}".into()),
            args_sha256: Some("0f".repeat(32)),
            retry_after_ms: Some(i * 1000),
            policy_sha256: "AB".repeat(32),
            shadow: vec![ShadowDecision {
                policy_sha256: "ab".repeat(32),
                decision: crate::policy::Verdict::Deny,
                rule: None,
            }],
            error_code: Some(-32601),
            latency_us: None,
            request_bytes: 1 << 40,
            ..AuditRow::default()
        }
    }

    #[test]
    fn rows_round_trip_with_and_without_a_previous_row() {
        let a = sample(1);
        let b = sample(2);
        let mut buf = Vec::new();
        encode(&a, None, &mut buf);
        assert_eq!(decode(&buf, None).unwrap(), a);
        let mut buf2 = Vec::new();
        encode(&b, Some(&a), &mut buf2);
        assert!(
            buf2.len() < buf.len(),
            "repeated values are not written again"
        );
        assert_eq!(decode(&buf2, Some(&a)).unwrap(), b);
        assert!(
            decode(&buf2, None).is_err(),
            "a continuation needs its previous row"
        );
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut], None).is_err());
        }
    }
}
