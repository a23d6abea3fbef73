//! ArcSight Common Event Format (CEF 0) lines, for the SIEMs that take CEF
//! (ArcSight, QRadar, Sentinel, Splunk). docs/audit-schema.md has the
//! mapping.
//!
//! Escaping, as the format requires: in the header, `\` and `|` are escaped
//! with a backslash and a line break (not allowed there) becomes a space; in
//! extension values, `\` and `=` are escaped with a backslash and line
//! breaks are written `\n` and `\r`. Every event is one line.

use super::ocsf;
use crate::audit::schema::AuditRow;
use std::fmt::Write;

/// A header field: `\` and `|` escaped, line breaks as spaces.
pub fn header(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// An extension value: `\` and `=` escaped, line breaks as `\n`, `\r`.
pub fn value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// CEF severity (0–10) from the OCSF severity (0 Unknown … 4 High).
fn cef_severity(ocsf_severity: i64) -> u8 {
    match ocsf_severity {
        0 => 0,
        1 => 1,
        2 => 3,
        3 => 5,
        _ => 8,
    }
}

/// One audit row as one CEF line (without the line break).
pub fn line(r: &AuditRow) -> String {
    let operation = r.tool.as_deref().unwrap_or(&r.method);
    let mut out = format!(
        "CEF:0|flightrec|flightrec|{}|{}|{}|{}|",
        header(env!("CARGO_PKG_VERSION")),
        header(r.decision.as_str()),
        header(&format!("{operation} {}", r.decision.as_str())),
        cef_severity(ocsf::severity(r).0),
    );
    let mut ext: Vec<(&str, String)> = vec![
        ("rt", r.ts_us.div_euclid(1000).to_string()),
        ("externalId", r.event_id.clone()),
        ("act", r.decision.as_str().to_string()),
        ("outcome", r.outcome.as_str().to_string()),
        ("suser", r.agent_id.clone()),
        ("destinationServiceName", r.server.clone()),
        ("requestMethod", r.method.clone()),
        ("in", r.request_bytes.to_string()),
        ("out", r.response_bytes.to_string()),
    ];
    let mut opt = |k: &'static str, v: Option<String>| {
        if let Some(v) = v {
            ext.push((k, v));
        }
    };
    opt("requestClientApplication", r.client_name.clone());
    opt("cat", r.category.map(|c| c.as_str().to_string()));
    opt("reason", r.reason.clone());
    opt("msg", r.error_message.clone());
    let labelled: [(&str, &str, Option<String>); 9] = [
        ("cs1", "tool", r.tool.clone()),
        ("cs2", "rule", r.rule.clone()),
        ("cs3", "session", Some(r.session_id.clone())),
        ("cs4", "policy_sha256", Some(r.policy_sha256.clone())),
        ("cs5", "hash", Some(r.hash.clone())),
        ("cs6", "prev_hash", Some(r.prev_hash.clone())),
        (
            "cn1",
            "seq",
            i64::try_from(r.seq).ok().map(|n| n.to_string()),
        ),
        (
            "cn2",
            "latency_us",
            r.latency_us
                .and_then(|n| i64::try_from(n).ok())
                .map(|n| n.to_string()),
        ),
        ("cn3", "error_code", r.error_code.map(|n| n.to_string())),
    ];
    for (key, label, v) in labelled {
        if let Some(v) = v {
            ext.push((key, v));
            // The label key: `cs1Label`, `cn2Label`, …
            ext.push((
                match key {
                    "cs1" => "cs1Label",
                    "cs2" => "cs2Label",
                    "cs3" => "cs3Label",
                    "cs4" => "cs4Label",
                    "cs5" => "cs5Label",
                    "cs6" => "cs6Label",
                    "cn1" => "cn1Label",
                    "cn2" => "cn2Label",
                    _ => "cn3Label",
                },
                label.to_string(),
            ));
        }
    }
    for (i, (k, v)) in ext.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{k}={}", value(v));
    }
    out
}
