//! Elastic Common Schema (ECS 9.0.0) documents, one JSON object per line,
//! for Elasticsearch and the SIEMs that read ECS. Standard fields carry what
//! ECS has a field for; the rest is under `flightrec.*` (a custom field set,
//! as ECS asks for fields it does not define). docs/audit-schema.md has the
//! mapping.

use super::ocsf;
use crate::audit::schema::{ApprovalOutcome, AuditRow, ColumnValue, RecordedDecision};
use crate::policy::{Category, Outcome};
use serde_json::{Map, Value, json};

/// The ECS release the documents follow.
pub const ECS_VERSION: &str = "9.0.0";

fn put(m: &mut Map<String, Value>, key: &str, value: impl Into<Value>) {
    let v = value.into();
    if !v.is_null() {
        m.insert(key.to_string(), v);
    }
}

/// `event.type` (expected types of the `api` category): what the call
/// does, then whether the control let it through.
fn event_types(r: &AuditRow) -> Vec<&'static str> {
    let mut types = vec![match r.category {
        Some(Category::Read) => "access",
        Some(Category::Write) => "change",
        Some(Category::Destructive) => "deletion",
        Some(Category::Execute) | Some(Category::Unknown) | None => "info",
    }];
    match (r.decision, r.approval) {
        (RecordedDecision::Allow, _)
        | (RecordedDecision::Approval, Some(ApprovalOutcome::Granted)) => types.push("allowed"),
        (RecordedDecision::Deny | RecordedDecision::Throttle, _)
        | (RecordedDecision::Approval, Some(ApprovalOutcome::Denied | ApprovalOutcome::Timeout)) => {
            types.push("denied")
        }
        _ => {}
    }
    types
}

/// `event.outcome`: success, failure, or unknown when nobody knows
/// (interrupted) or the client withdrew the call (cancelled).
fn event_outcome(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "success",
        Outcome::Interrupted | Outcome::Cancelled => "unknown",
        _ => "failure",
    }
}

/// One audit row as an ECS document.
pub fn document(r: &AuditRow) -> Value {
    let mut event = Map::new();
    put(&mut event, "kind", "event");
    put(&mut event, "category", json!(["api"]));
    put(&mut event, "type", json!(event_types(r)));
    put(
        &mut event,
        "action",
        r.tool.clone().unwrap_or_else(|| r.method.clone()),
    );
    put(&mut event, "outcome", event_outcome(r.outcome));
    put(&mut event, "id", r.event_id.clone());
    put(&mut event, "sequence", i64::try_from(r.seq).ok());
    put(
        &mut event,
        "duration",
        r.latency_us
            .and_then(|us| i64::try_from(us).ok()?.checked_mul(1000)),
    );
    put(&mut event, "reason", r.reason.clone());
    put(&mut event, "severity", ocsf::severity(r).0);
    put(&mut event, "dataset", "flightrec.audit");
    put(&mut event, "module", "flightrec");
    put(&mut event, "provider", r.server.clone());
    put(&mut event, "hash", r.hash.clone());

    let mut d = Map::new();
    put(&mut d, "@timestamp", crate::time::format_us(r.ts_us));
    put(&mut d, "ecs", json!({ "version": ECS_VERSION }));
    put(&mut d, "event", Value::Object(event));
    put(&mut d, "message", r.reason.clone());
    if let Some(rule) = &r.rule {
        let mut m = Map::new();
        put(&mut m, "name", rule.clone());
        if !r.policy_sha256.is_empty() {
            put(&mut m, "ruleset", r.policy_sha256.clone());
        }
        put(&mut d, "rule", Value::Object(m));
    }
    put(&mut d, "user", json!({ "name": r.agent_id }));
    // No client address is recorded: the source is what it sent.
    put(
        &mut d,
        "source",
        json!({ "bytes": i64::try_from(r.request_bytes).ok() }),
    );
    put(
        &mut d,
        "destination",
        json!({ "bytes": i64::try_from(r.response_bytes).ok() }),
    );
    put(&mut d, "service", json!({ "name": r.server }));
    if let Some(name) = &r.client_name {
        let mut ua = Map::new();
        put(&mut ua, "name", name.clone());
        put(&mut ua, "version", r.client_version.clone());
        put(&mut d, "user_agent", Value::Object(ua));
    }
    if r.error_code.is_some() || r.error_message.is_some() {
        let mut err = Map::new();
        put(&mut err, "code", r.error_code.map(|c| c.to_string()));
        put(&mut err, "message", r.error_message.clone());
        put(&mut d, "error", Value::Object(err));
    }
    put(
        &mut d,
        "observer",
        json!({"product": "flightrec", "vendor": "flightrec", "version": env!("CARGO_PKG_VERSION"), "type": "proxy"}),
    );

    let mut f = Map::new();
    put(&mut f, "schema_version", r.schema_version.clone());
    put(&mut f, "seq", r.seq);
    put(&mut f, "ts_us", r.ts_us);
    put(&mut f, "session_id", r.session_id.clone());
    put(&mut f, "transport", r.transport.as_str());
    put(&mut f, "method", r.method.clone());
    put(&mut f, "jsonrpc_id", r.jsonrpc_id.clone());
    put(&mut f, "tool", r.tool.clone());
    put(&mut f, "category", r.category.map(|c| c.as_str()));
    put(&mut f, "risk", r.risk.map(|c| c.as_str()));
    put(&mut f, "decision", r.decision.as_str());
    put(&mut f, "outcome", r.outcome.as_str());
    put(&mut f, "retry_after_ms", r.retry_after_ms);
    put(&mut f, "policy_sha256", r.policy_sha256.clone());
    put(&mut f, "args_sha256", r.args_sha256.clone());
    put(&mut f, "args_json", r.args_json.clone());
    if !r.shadow.is_empty() {
        put(&mut f, "shadow", json!(r.shadow));
    }
    put(&mut f, "error_code", r.error_code);
    put(&mut f, "latency_us", r.latency_us);
    put(&mut f, "prev_hash", r.prev_hash.clone());
    put(&mut f, "hash", r.hash.clone());
    put(&mut f, "approval", r.approval.map(|a| a.as_str()));
    put(&mut f, "approved_by", r.approved_by.clone());
    put(&mut f, "approval_ms", r.approval_ms);
    put(&mut f, "continues", r.continues.clone());
    put(&mut f, "round", r.round);
    put(&mut d, "flightrec", Value::Object(f));
    Value::Object(d)
}
