//! OCSF 1.8.0 API Activity (class 6003) events, one per audit row.
//!
//! Every event declares the `security_control` profile (it carries the
//! decision as `action`/`disposition`, the deciding rule and the policy)
//! and nothing else: the audit schema records no trace context, cloud or
//! host details. Attributes are omitted, never null. What OCSF has no
//! attribute for (the hash chain above all) goes into `unmapped`.
//! docs/audit-schema.md has the mapping table.

use crate::audit::schema::{ApprovalOutcome, AuditRow, ColumnValue, RecordedDecision, Transport};
use crate::policy::{Category, Outcome, Risk};
use serde_json::{Map, Value, json};

/// The OCSF release the events conform to.
pub const OCSF_VERSION: &str = "1.8.0";
/// The profiles every event declares in `metadata.profiles`.
pub const PROFILES: [&str; 1] = ["security_control"];

pub const CLASS_UID: i64 = 6003;
const CLASS_NAME: &str = "API Activity";
const CATEGORY_UID: i64 = 6;
const CATEGORY_NAME: &str = "Application Activity";

/// `activity_id` and `activity_name`: from the tool's category; a request
/// that is not a tool call (no category) by its method: the MCP listing
/// and reading methods are reads, anything else is unknown.
pub fn activity(r: &AuditRow) -> (i64, &'static str) {
    match r.category {
        Some(Category::Read) => (2, "Read"),
        Some(Category::Write) => (3, "Update"),
        Some(Category::Destructive) => (4, "Delete"),
        // OCSF has no "execute" activity: Other, named by the source.
        Some(Category::Execute) => (99, "Execute"),
        Some(Category::Unknown) => (0, "Unknown"),
        None if is_read_method(&r.method) => (2, "Read"),
        None => (0, "Unknown"),
    }
}

fn is_read_method(method: &str) -> bool {
    matches!(
        method,
        "tools/list"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
            | "prompts/list"
            | "prompts/get"
    )
}

fn activity_caption(id: i64) -> &'static str {
    match id {
        1 => "Create",
        2 => "Read",
        3 => "Update",
        4 => "Delete",
        99 => "Other",
        _ => "Unknown",
    }
}

/// The security control's outcome: (`action_id`, `action`,
/// `disposition_id`, `disposition`).
///
/// | decision | approval | action | disposition |
/// |---|---|---|---|
/// | allow | | 1 Allowed | 1 Allowed |
/// | deny | | 2 Denied | 2 Blocked |
/// | throttle | | 2 Denied | 2 Blocked |
/// | approval | granted | 1 Allowed | 8 Approved |
/// | approval | denied | 2 Denied | 25 Rejected |
/// | approval | timeout | 2 Denied | 2 Blocked |
/// | approval | pending | 0 Unknown | 14 Delayed |
/// | approval | cancelled | 0 Unknown | 16 No Action |
/// | approval | (none) | 0 Unknown | 0 Unknown |
/// | unrecorded | | 0 Unknown | 0 Unknown |
pub fn control(r: &AuditRow) -> (i64, &'static str, i64, &'static str) {
    const ALLOWED: (i64, &str) = (1, "Allowed");
    const DENIED: (i64, &str) = (2, "Denied");
    const UNKNOWN: (i64, &str) = (0, "Unknown");
    let (action, disposition) = match (r.decision, r.approval) {
        (RecordedDecision::Allow, _) => (ALLOWED, (1, "Allowed")),
        (RecordedDecision::Deny | RecordedDecision::Throttle, _) => (DENIED, (2, "Blocked")),
        (RecordedDecision::Approval, Some(ApprovalOutcome::Granted)) => (ALLOWED, (8, "Approved")),
        (RecordedDecision::Approval, Some(ApprovalOutcome::Denied)) => (DENIED, (25, "Rejected")),
        (RecordedDecision::Approval, Some(ApprovalOutcome::Timeout)) => (DENIED, (2, "Blocked")),
        (RecordedDecision::Approval, Some(ApprovalOutcome::Pending)) => (UNKNOWN, (14, "Delayed")),
        (RecordedDecision::Approval, Some(ApprovalOutcome::Cancelled)) => {
            (UNKNOWN, (16, "No Action"))
        }
        (RecordedDecision::Approval, None) | (RecordedDecision::Unrecorded, _) => {
            (UNKNOWN, UNKNOWN)
        }
    };
    (action.0, action.1, disposition.0, disposition.1)
}

/// `severity_id`: by decision (allow 1, throttle and approval 2, deny 3),
/// one step up for a high-risk tool; 0 Unknown for generated rows.
pub fn severity(r: &AuditRow) -> (i64, &'static str) {
    let base = match r.decision {
        RecordedDecision::Allow => 1,
        RecordedDecision::Throttle | RecordedDecision::Approval => 2,
        RecordedDecision::Deny => 3,
        RecordedDecision::Unrecorded => return (0, "Unknown"),
    };
    let id = base + i64::from(r.risk == Some(Risk::High));
    let name = match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        _ => "High",
    };
    (id, name)
}

/// `status_id` and `status` from the outcome: ok is Success; an outcome
/// nobody knows (`interrupted`) Unknown; a call the client withdrew
/// (`cancelled`) Other; every other outcome (refused, errors, timeouts) a
/// Failure.
pub fn status(outcome: Outcome) -> (i64, &'static str) {
    match outcome {
        Outcome::Ok => (1, "Success"),
        Outcome::Interrupted => (0, "Unknown"),
        Outcome::Cancelled => (99, "Cancelled"),
        Outcome::ToolError
        | Outcome::RpcError
        | Outcome::NotForwarded
        | Outcome::Timeout
        | Outcome::UpstreamGone
        | Outcome::ResponseTooLarge => (2, "Failure"),
    }
}

/// Inserts `value` under `key` unless it is null (OCSF omits what is not
/// known; it has no nulls).
fn put(m: &mut Map<String, Value>, key: &str, value: impl Into<Value>) {
    let v = value.into();
    if !v.is_null() {
        m.insert(key.to_string(), v);
    }
}

/// An OCSF `integer_t` (32 bits), if the value fits.
fn int32<T: TryInto<i32>>(v: Option<T>) -> Value {
    v.and_then(|n| n.try_into().ok())
        .map_or(Value::Null, Value::from)
}

fn object(m: Map<String, Value>) -> Value {
    if m.is_empty() {
        Value::Null
    } else {
        Value::Object(m)
    }
}

/// One audit row as an OCSF 1.8.0 API Activity event.
pub fn event(r: &AuditRow) -> Value {
    let (activity_id, activity_name) = activity(r);
    let (severity_id, severity_name) = severity(r);
    let (status_id, status_name) = status(r.outcome);
    let (action_id, action, disposition_id, disposition) = control(r);
    let mut e = Map::new();
    put(&mut e, "class_uid", CLASS_UID);
    put(&mut e, "class_name", CLASS_NAME);
    put(&mut e, "category_uid", CATEGORY_UID);
    put(&mut e, "category_name", CATEGORY_NAME);
    put(&mut e, "activity_id", activity_id);
    put(&mut e, "activity_name", activity_name);
    put(&mut e, "type_uid", CLASS_UID * 100 + activity_id);
    put(
        &mut e,
        "type_name",
        format!("{CLASS_NAME}: {}", activity_caption(activity_id)),
    );
    put(&mut e, "time", r.ts_us.div_euclid(1000));
    put(&mut e, "severity_id", severity_id);
    put(&mut e, "severity", severity_name);
    put(&mut e, "status_id", status_id);
    put(&mut e, "status", status_name);
    put(&mut e, "status_code", r.outcome.as_str());
    put(
        &mut e,
        "status_detail",
        r.error_message.clone().or_else(|| r.reason.clone()),
    );
    put(&mut e, "message", r.reason.clone());
    put(
        &mut e,
        "duration",
        r.latency_us.and_then(|us| i64::try_from(us / 1000).ok()),
    );

    // The security_control profile.
    put(&mut e, "action_id", action_id);
    put(&mut e, "action", action);
    put(&mut e, "disposition_id", disposition_id);
    put(&mut e, "disposition", disposition);
    put(
        &mut e,
        "is_alert",
        r.decision == RecordedDecision::Deny && r.risk == Some(Risk::High),
    );
    if let Some(rule) = &r.rule {
        put(&mut e, "firewall_rule", json!({ "name": rule }));
    }
    if !r.policy_sha256.is_empty() {
        put(
            &mut e,
            "policy",
            json!({ "uid": r.policy_sha256, "is_applied": true }),
        );
    }

    let mut metadata = Map::new();
    put(&mut metadata, "version", OCSF_VERSION);
    put(&mut metadata, "profiles", json!(PROFILES));
    put(
        &mut metadata,
        "product",
        json!({"name": "flightrec", "vendor_name": "flightrec", "version": env!("CARGO_PKG_VERSION")}),
    );
    put(&mut metadata, "uid", r.event_id.clone());
    put(&mut metadata, "correlation_uid", r.session_id.clone());
    put(&mut metadata, "sequence", int32(Some(r.seq)));
    put(&mut metadata, "log_name", "flightrec audit");
    put(&mut metadata, "log_version", r.schema_version.clone());
    put(&mut e, "metadata", Value::Object(metadata));

    let mut api = Map::new();
    put(
        &mut api,
        "operation",
        r.tool.clone().unwrap_or_else(|| r.method.clone()),
    );
    put(&mut api, "service", json!({ "name": r.server }));
    put(
        &mut api,
        "request",
        json!({ "uid": r.jsonrpc_id.clone().unwrap_or_else(|| r.event_id.clone()) }),
    );
    if r.outcome != Outcome::NotForwarded {
        let mut response = Map::new();
        put(&mut response, "code", int32(r.error_code));
        if r.outcome != Outcome::Ok {
            put(&mut response, "error", r.outcome.as_str());
        }
        put(&mut response, "error_message", r.error_message.clone());
        put(&mut api, "response", object(response));
    }
    put(&mut e, "api", Value::Object(api));

    let mut actor = Map::new();
    put(&mut actor, "user", json!({ "name": r.agent_id }));
    put(&mut actor, "session", json!({ "uid": r.session_id }));
    put(&mut actor, "app_name", r.client_name.clone());
    put(&mut e, "actor", Value::Object(actor));

    // The audit schema records no client address: the source endpoint is
    // named by the client application (the agent when it gave no name).
    let mut src = Map::new();
    put(
        &mut src,
        "name",
        r.client_name.clone().unwrap_or_else(|| r.agent_id.clone()),
    );
    if r.transport == Transport::Stdio {
        // A stdio client is the local process that started the proxy.
        put(&mut src, "hostname", "localhost");
    }
    put(&mut e, "src_endpoint", Value::Object(src));

    put(&mut e, "unmapped", unmapped(r));
    Value::Object(e)
}

/// What OCSF has no attribute for, and exact values where an attribute
/// rounds (time, latency) or narrows (sequence, error code).
fn unmapped(r: &AuditRow) -> Value {
    let mut u = Map::new();
    put(&mut u, "schema_version", r.schema_version.clone());
    put(&mut u, "seq", r.seq);
    put(&mut u, "prev_hash", r.prev_hash.clone());
    put(&mut u, "hash", r.hash.clone());
    put(&mut u, "ts_us", r.ts_us);
    put(&mut u, "transport", r.transport.as_str());
    put(&mut u, "method", r.method.clone());
    put(&mut u, "jsonrpc_id", r.jsonrpc_id.clone());
    put(&mut u, "category", r.category.map(|c| c.as_str()));
    put(&mut u, "risk", r.risk.map(|c| c.as_str()));
    put(&mut u, "decision", r.decision.as_str());
    put(&mut u, "retry_after_ms", r.retry_after_ms);
    put(&mut u, "args_sha256", r.args_sha256.clone());
    put(&mut u, "args_json", r.args_json.clone());
    if !r.shadow.is_empty() {
        put(&mut u, "shadow", json!(r.shadow));
    }
    put(&mut u, "client_version", r.client_version.clone());
    put(&mut u, "error_code", r.error_code);
    put(&mut u, "latency_us", r.latency_us);
    put(&mut u, "request_bytes", r.request_bytes);
    put(&mut u, "response_bytes", r.response_bytes);
    put(&mut u, "approval", r.approval.map(|a| a.as_str()));
    put(&mut u, "approved_by", r.approved_by.clone());
    put(&mut u, "approval_ms", r.approval_ms);
    put(&mut u, "continues", r.continues.clone());
    put(&mut u, "round", r.round);
    Value::Object(u)
}
