//! `flightrec export --format ecs` and `--format cef`: the SIEM formats.
//!
//! ECS documents are checked against the field names and types of ECS
//! 9.0.0 (the table below, from the ECS field reference), CEF lines
//! against the format's escaping rules on hostile values.

mod common;

use common::{run, stderr, write_plain_parquet};
use flightrec::audit::schema::{ApprovalOutcome, AuditRow, RecordedDecision, Transport};
use flightrec::policy::{Category, Outcome, Risk};
use serde_json::Value;
use std::collections::BTreeMap;

const T0: i64 = 1_795_564_800_000_000; // 2026-11-25T00:00:00Z

/// The ECS 9.0.0 fields the export writes, with their ECS types (ECS field
/// reference: Base, ECS, Event, Rule, User, Source, Destination, Service,
/// User agent, Error and Observer fields).
const ECS_FIELDS: &[(&str, &str)] = &[
    ("@timestamp", "date"),
    ("message", "match_only_text"),
    ("ecs.version", "keyword"),
    ("event.kind", "keyword"),
    ("event.category", "keyword"),
    ("event.type", "keyword"),
    ("event.action", "keyword"),
    ("event.outcome", "keyword"),
    ("event.id", "keyword"),
    ("event.sequence", "long"),
    ("event.duration", "long"),
    ("event.reason", "keyword"),
    ("event.severity", "long"),
    ("event.dataset", "keyword"),
    ("event.module", "keyword"),
    ("event.provider", "keyword"),
    ("event.hash", "keyword"),
    ("rule.name", "keyword"),
    ("rule.ruleset", "keyword"),
    ("user.name", "keyword"),
    ("source.bytes", "long"),
    ("destination.bytes", "long"),
    ("service.name", "keyword"),
    ("user_agent.name", "keyword"),
    ("user_agent.version", "keyword"),
    ("error.code", "keyword"),
    ("error.message", "match_only_text"),
    ("observer.product", "keyword"),
    ("observer.vendor", "keyword"),
    ("observer.version", "keyword"),
    ("observer.type", "keyword"),
];

/// ECS fields that hold arrays (of keywords).
const ECS_ARRAYS: &[&str] = &["event.category", "event.type"];

/// Allowed values of the categorization fields (ECS 9.0.0).
const EVENT_KIND: &[&str] = &[
    "alert",
    "asset",
    "enrichment",
    "event",
    "metric",
    "state",
    "pipeline_error",
    "signal",
];
/// The expected `event.type` values of category `api`.
const API_TYPES: &[&str] = &[
    "access", "admin", "allowed", "change", "creation", "deletion", "denied", "end", "info",
    "start", "user",
];
const EVENT_OUTCOME: &[&str] = &["failure", "success", "unknown"];

fn row(i: u64) -> AuditRow {
    AuditRow {
        event_id: format!("0195a000-0000-7000-8000-{i:012}"),
        seq: i,
        ts_us: T0 + i as i64 * 1_000,
        session_id: "session-1".into(),
        agent_id: "agent-1".into(),
        client_name: Some("claude-code".into()),
        client_version: Some("1.0".into()),
        server: "awslabs.healthimaging-mcp-server".into(),
        transport: Transport::Http,
        method: "tools/call".into(),
        jsonrpc_id: Some(i.to_string()),
        tool: Some("delete_image_set".into()),
        category: Some(Category::Destructive),
        risk: Some(Risk::High),
        decision: RecordedDecision::Deny,
        rule: Some("no deletes".into()),
        reason: Some("refused".into()),
        policy_sha256: "cd".repeat(32),
        outcome: Outcome::NotForwarded,
        latency_us: Some(12_345),
        request_bytes: 100,
        response_bytes: 200,
        prev_hash: "0".repeat(64),
        hash: "ef".repeat(32),
        ..AuditRow::default()
    }
}

/// A row of every decision, outcome, approval and category.
fn rows() -> Vec<AuditRow> {
    let mut out = Vec::new();
    let cats = [
        None,
        Some(Category::Read),
        Some(Category::Write),
        Some(Category::Execute),
        Some(Category::Destructive),
        Some(Category::Unknown),
    ];
    let approvals = [
        None,
        Some(ApprovalOutcome::Pending),
        Some(ApprovalOutcome::Granted),
        Some(ApprovalOutcome::Denied),
        Some(ApprovalOutcome::Timeout),
        Some(ApprovalOutcome::Cancelled),
    ];
    let mut i = 0;
    for d in [
        RecordedDecision::Allow,
        RecordedDecision::Deny,
        RecordedDecision::Throttle,
        RecordedDecision::Approval,
        RecordedDecision::Unrecorded,
    ] {
        for o in Outcome::ALL {
            for a in approvals {
                let mut r = row(i);
                r.decision = d;
                r.outcome = o;
                r.approval = a;
                r.category = cats[i as usize % cats.len()];
                if i % 3 == 0 {
                    r.client_name = None;
                    r.rule = None;
                    r.error_code = Some(-32601);
                    r.error_message = Some("Method not found".into());
                }
                out.push(r);
                i += 1;
            }
        }
    }
    out
}

fn export(rows: &[AuditRow], format: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.parquet");
    write_plain_parquet(&file, rows);
    let out = dir.path().join("out");
    let o = run(&[
        "export",
        file.to_str().unwrap(),
        "--format",
        format,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "export {format}: {}", stderr(&o));
    std::fs::read_to_string(&out).unwrap()
}

/// Every leaf of `v` as (dotted name, value); arrays are leaves.
fn leaves(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&name, x, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

fn ecs_type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "keyword" | "match_only_text" => v.is_string(),
        "long" => v.is_i64(),
        "date" => v
            .as_str()
            .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok() && s.ends_with('Z')),
        _ => false,
    }
}

#[test]
fn ecs_documents_use_ecs_fields_with_their_types() {
    let rows = rows();
    let text = export(&rows, "ecs");
    let docs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), rows.len());
    let table: BTreeMap<&str, &str> = ECS_FIELDS.iter().copied().collect();
    let mut seen = std::collections::BTreeSet::new();
    for (r, d) in rows.iter().zip(&docs) {
        let mut fields = Vec::new();
        leaves("", d, &mut fields);
        for (name, v) in fields {
            if name.starts_with("flightrec.") {
                continue; // the custom field set
            }
            let ty = table
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{name} is not an ECS 9.0.0 field the export declares"));
            if ECS_ARRAYS.contains(&name.as_str()) {
                let items = v
                    .as_array()
                    .unwrap_or_else(|| panic!("{name}: not an array"));
                assert!(!items.is_empty(), "{name}: empty");
                for x in items {
                    assert!(ecs_type_ok(ty, x), "{name}: {x} is not {ty}");
                }
            } else {
                assert!(ecs_type_ok(ty, &v), "{name}: {v} is not {ty}");
            }
            seen.insert(name);
        }
        assert_eq!(d["ecs"]["version"], "9.0.0");
        assert!(EVENT_KIND.contains(&d["event"]["kind"].as_str().unwrap()));
        assert_eq!(d["event"]["category"], serde_json::json!(["api"]));
        for t in d["event"]["type"].as_array().unwrap() {
            assert!(API_TYPES.contains(&t.as_str().unwrap()), "event.type {t}");
        }
        assert!(EVENT_OUTCOME.contains(&d["event"]["outcome"].as_str().unwrap()));
        let want_outcome = match r.outcome {
            Outcome::Ok => "success",
            Outcome::Interrupted | Outcome::Cancelled => "unknown",
            _ => "failure",
        };
        assert_eq!(d["event"]["outcome"], want_outcome);
        let types: Vec<&str> = d["event"]["type"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let allowed = r.decision == RecordedDecision::Allow
            || (r.decision == RecordedDecision::Approval
                && r.approval == Some(ApprovalOutcome::Granted));
        assert_eq!(types.contains(&"allowed"), allowed, "{types:?}");
        assert!(!(types.contains(&"allowed") && types.contains(&"denied")));
        assert_eq!(d["@timestamp"], flightrec::time::format_us(r.ts_us));
        assert_eq!(d["event"]["id"], r.event_id);
        assert_eq!(d["event"]["duration"], 12_345_000);
        assert_eq!(d["user"]["name"], r.agent_id);
        assert_eq!(d["flightrec"]["session_id"], r.session_id);
        assert_eq!(d["flightrec"]["hash"], r.hash);
        assert_eq!(d["flightrec"]["prev_hash"], r.prev_hash);
        assert_eq!(d["event"]["hash"], r.hash);
    }
    // Each declared field is written by some row: the table is not stale.
    for (name, _) in ECS_FIELDS {
        assert!(seen.contains(*name), "{name} never written");
    }
}

/// A tiny CEF reader: the seven header fields (split at unescaped `|`,
/// `\|` and `\\` unescaped) and the extension's key=value pairs (split at
/// the space before the next unescaped `key=`; `\=`, `\\`, `\n`, `\r`
/// unescaped).
fn parse_cef(line: &str) -> (Vec<String>, BTreeMap<String, String>) {
    let mut header = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars();
    while header.len() < 7 {
        match chars.next().expect("header ends early") {
            '\\' => match chars.next() {
                Some(c @ ('\\' | '|')) => cur.push(c),
                other => panic!("bad header escape \\{other:?} in {line}"),
            },
            '|' => header.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    let rest: String = chars.collect();
    // Tokens at unescaped spaces; a token with an unescaped `=` starts a pair.
    let mut ext = BTreeMap::new();
    let mut key: Option<String> = None;
    let mut val = String::new();
    let mut token = String::new();
    let flush = |key: &mut Option<String>, val: &mut String, ext: &mut BTreeMap<String, String>| {
        if let Some(k) = key.take() {
            ext.insert(k, std::mem::take(val));
        }
    };
    let mut it = rest.chars().peekable();
    let mut raw_tokens: Vec<String> = Vec::new();
    while let Some(c) = it.next() {
        match c {
            '\\' => {
                token.push(c);
                token.push(it.next().expect("escape at end"));
            }
            ' ' => raw_tokens.push(std::mem::take(&mut token)),
            c => token.push(c),
        }
    }
    raw_tokens.push(token);
    let unescape = |s: &str| {
        let mut out = String::new();
        let mut cs = s.chars();
        while let Some(c) = cs.next() {
            if c == '\\' {
                match cs.next() {
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    Some(c @ ('\\' | '=')) => out.push(c),
                    other => panic!("bad extension escape \\{other:?} in {s}"),
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    for t in raw_tokens {
        // An unescaped `=` in the token: a new key.
        let mut split = None;
        let b: Vec<char> = t.chars().collect();
        let mut i = 0;
        while i < b.len() {
            if b[i] == '\\' {
                i += 2;
                continue;
            }
            if b[i] == '=' {
                split = Some(i);
                break;
            }
            i += 1;
        }
        match split {
            Some(i) if b[..i].iter().all(|c| c.is_ascii_alphanumeric()) => {
                flush(&mut key, &mut val, &mut ext);
                key = Some(b[..i].iter().collect());
                val = unescape(&b[i + 1..].iter().collect::<String>());
            }
            _ => {
                assert!(key.is_some(), "text before the first key: {t}");
                val.push(' ');
                val.push_str(&unescape(&t));
            }
        }
    }
    flush(&mut key, &mut val, &mut ext);
    (header, ext)
}

#[test]
fn cef_escapes_hostile_values_and_reads_back() {
    let hostile = [
        "a|b",
        "x=y",
        "back\\slash",
        "two\nlines\r\nhere",
        "all|of=them\\\n at once=",
        "trailing\\",
        "=",
        "plain",
    ];
    let mut rows = Vec::new();
    for (i, h) in hostile.iter().enumerate() {
        let mut r = row(i as u64);
        r.tool = Some(h.to_string());
        r.reason = Some(format!("reason: {h}"));
        r.rule = Some(h.to_string());
        r.agent_id = h.to_string();
        rows.push(r);
    }
    let text = export(&rows, "cef");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), rows.len(), "one line per event: {text}");
    for (r, line) in rows.iter().zip(&lines) {
        let (header, ext) = parse_cef(line);
        assert_eq!(header[0], "CEF:0");
        assert_eq!(header[1], "flightrec");
        assert_eq!(header[4], "deny");
        let tool = r.tool.as_deref().unwrap();
        // The header cannot hold line breaks: they become spaces.
        assert_eq!(
            header[5],
            format!("{} deny", tool.replace(['\r', '\n'], " "))
        );
        assert_eq!(header[6], "8", "deny of a high-risk tool");
        assert_eq!(ext["cs1"], tool, "{line}");
        assert_eq!(ext["cs1Label"], "tool");
        assert_eq!(ext["cs2"], tool);
        assert_eq!(ext["reason"], r.reason.clone().unwrap());
        assert_eq!(ext["suser"], r.agent_id);
        assert_eq!(ext["externalId"], r.event_id);
        assert_eq!(ext["act"], "deny");
        assert_eq!(ext["outcome"], "not_forwarded");
        assert_eq!(ext["rt"], (r.ts_us / 1000).to_string());
        assert_eq!(ext["cs5"], r.hash);
        assert_eq!(ext["cs6"], r.prev_hash);
        assert_eq!(ext["cn1"], r.seq.to_string());
    }
    // The exact escapes, on the worst value.
    let worst = lines[4];
    assert!(
        worst.contains("|all\\|of=them\\\\  at once= deny|"),
        "header escapes: {worst}"
    );
    assert!(
        worst.contains("cs1=all|of\\=them\\\\\\n at once\\= "),
        "extension escapes: {worst}"
    );
}

#[test]
fn cef_covers_every_decision_outcome_and_approval() {
    let rows = rows();
    let text = export(&rows, "cef");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), rows.len());
    for (r, line) in rows.iter().zip(&lines) {
        let (header, ext) = parse_cef(line);
        assert_eq!(header.len(), 7);
        let sev: u8 = header[6].parse().unwrap();
        assert!(sev <= 10);
        assert_eq!(ext["act"], r.decision.as_str());
        assert_eq!(ext["outcome"], r.outcome.as_str());
        assert_eq!(ext.get("cn3").cloned(), r.error_code.map(|c| c.to_string()));
    }
}
