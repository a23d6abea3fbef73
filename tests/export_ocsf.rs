//! `flightrec export --format ocsf`: OCSF 1.8.0 API Activity events.
//!
//! The tests marked `#[ignore]` validate against the OCSF schema's own files
//! (`../shared/compat/ocsf-schema-1.8.0`, beside the clone on CI; see
//! tests/common/ocsf.rs for the validator). `.ci/run` runs them with
//! `--ignored` when that directory exists and says they were skipped when
//! it does not; run alone they fail when it is missing, never pass.
//! The tests without `#[ignore]` check the mapping itself and need nothing.

mod common;

use common::ocsf::{Schema, schema_dir};
use common::{Rng, run, stderr, write_plain_parquet};
use flightrec::audit::schema::{ApprovalOutcome, AuditRow, RecordedDecision, ShadowDecision};
use flightrec::audit::schema::{ColumnValue, Transport};
use flightrec::policy::{Category, Outcome, Risk, Verdict};
use serde_json::{Value, json};
use std::path::Path;

const T0: i64 = 1_795_564_800_000_000; // 2026-11-25T00:00:00Z

fn schema() -> Schema {
    let dir = schema_dir();
    assert!(
        dir.join("dictionary.json").exists(),
        "{} is missing: these tests validate against the OCSF 1.8.0 schema files \
         (CI keeps them beside the clone); .ci/run skips them when they are absent",
        dir.display()
    );
    Schema::load(&dir)
}

/// Exports `input` (a directory or file) as OCSF and returns the events.
fn export_ocsf(input: &Path) -> Vec<Value> {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("events.jsonl");
    let o = run(&[
        "export",
        input.to_str().unwrap(),
        "--format",
        "ocsf",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "export: {}", stderr(&o));
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Exports `rows` (written as one plain Parquet file) as OCSF.
fn export_rows(rows: &[AuditRow]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.parquet");
    write_plain_parquet(&file, rows);
    let events = export_ocsf(&file);
    assert_eq!(events.len(), rows.len());
    events
}

/// Validates every event; fails naming the first problems.
fn assert_valid(schema: &Schema, events: &[Value], what: &str) {
    let mut problems = Vec::new();
    for e in events {
        for p in schema.validate(e) {
            problems.push(format!("{}: {p}", e["metadata"]["uid"]));
        }
    }
    assert!(
        problems.is_empty(),
        "{what}: {} problems in {} events, first: {:#?}",
        problems.len(),
        events.len(),
        &problems[..problems.len().min(20)]
    );
    eprintln!(
        "{what}: 0 problems over {} events (OCSF {})",
        events.len(),
        schema.version
    );
}

fn base_row(i: u64) -> AuditRow {
    AuditRow {
        event_id: format!("0195a000-0000-7000-8000-{i:012}"),
        seq: i,
        ts_us: T0 + i as i64 * 1_000,
        session_id: "session-1".into(),
        agent_id: "agent-1".into(),
        client_name: Some("claude-code".into()),
        client_version: Some("1.0".into()),
        server: "awslabs.healthimaging-mcp-server".into(),
        transport: Transport::Stdio,
        method: "tools/call".into(),
        jsonrpc_id: Some(i.to_string()),
        tool: Some("delete_image_set".into()),
        category: Some(Category::Destructive),
        risk: Some(Risk::High),
        args_json: Some(r#"{"id":"x"}"#.into()),
        args_sha256: Some("ab".repeat(32)),
        decision: RecordedDecision::Allow,
        policy_sha256: "cd".repeat(32),
        outcome: Outcome::Ok,
        latency_us: Some(12_345),
        request_bytes: 100,
        response_bytes: 200,
        prev_hash: "0".repeat(64),
        hash: "ef".repeat(32),
        ..AuditRow::default()
    }
}

/// Every decision × outcome × approval kind, the categories, risks and
/// transports cycled through them.
fn every_kind() -> Vec<AuditRow> {
    let decisions = [
        RecordedDecision::Allow,
        RecordedDecision::Deny,
        RecordedDecision::Throttle,
        RecordedDecision::Approval,
        RecordedDecision::Unrecorded,
    ];
    let approvals = [
        None,
        Some(ApprovalOutcome::Pending),
        Some(ApprovalOutcome::Granted),
        Some(ApprovalOutcome::Denied),
        Some(ApprovalOutcome::Timeout),
        Some(ApprovalOutcome::Cancelled),
    ];
    let categories = [
        None,
        Some(Category::Read),
        Some(Category::Write),
        Some(Category::Execute),
        Some(Category::Destructive),
        Some(Category::Unknown),
    ];
    let risks = [None, Some(Risk::Low), Some(Risk::Medium), Some(Risk::High)];
    let transports = [
        Transport::Stdio,
        Transport::Http,
        Transport::Bridge,
        Transport::Unknown,
        Transport::Generated,
    ];
    let mut rows = Vec::new();
    let mut i = 0u64;
    for d in decisions {
        for o in Outcome::ALL {
            for a in approvals {
                let mut r = base_row(i);
                r.decision = d;
                r.outcome = o;
                r.approval = a;
                r.approved_by = a.map(|_| "queue:alice".into());
                r.approval_ms = a.map(|_| 1500);
                r.category = categories[i as usize % categories.len()];
                r.risk = risks[i as usize % risks.len()];
                r.transport = transports[i as usize % transports.len()];
                if r.category.is_none() {
                    r.tool = None;
                    r.method = ["tools/list", "initialize", "<invalid>", "resources/read"]
                        [i as usize % 4]
                        .into();
                }
                if d != RecordedDecision::Allow {
                    r.rule = Some("a rule".into());
                    r.reason = Some("refused: a rule".into());
                }
                if d == RecordedDecision::Throttle {
                    r.retry_after_ms = Some(2500);
                }
                if matches!(o, Outcome::RpcError | Outcome::ToolError) {
                    r.error_code = Some(-32601);
                    r.error_message = Some("Method not found".into());
                }
                if i.is_multiple_of(7) {
                    r.shadow = vec![ShadowDecision {
                        policy_sha256: "11".repeat(32),
                        decision: Verdict::Deny,
                        rule: None,
                    }];
                }
                if i.is_multiple_of(11) {
                    r.continues = Some(base_row(0).event_id);
                    r.round = Some(2);
                }
                rows.push(r);
                i += 1;
            }
        }
    }
    rows
}

/// Hostile and extreme values: any text in any string column, numbers at
/// and beyond OCSF's 32-bit integers, absent optional columns.
fn random_rows(seed: u64, n: usize) -> Vec<AuditRow> {
    let mut rng = Rng(seed);
    let long = "x".repeat(300);
    let texts: Vec<&str> = vec![
        "",
        "a|b=c\\d",
        "line\nbreak\r",
        "画像をコピー",
        "\u{0}nul",
        "\"quoted\"",
        &long,
        "tools/call",
        "127.0.0.1",
    ];
    let pick = |rng: &mut Rng| texts[rng.below(texts.len() as u64) as usize].to_string();
    let maybe = |rng: &mut Rng| (rng.below(3) > 0).then(|| pick(rng));
    (0..n as u64)
        .map(|i| {
            let mut r = base_row(i);
            r.seq = if rng.below(4) == 0 {
                u64::MAX - rng.below(1000)
            } else {
                rng.below(1 << 40)
            };
            r.ts_us = T0 + rng.below(1 << 42) as i64 - (1 << 41);
            r.session_id = pick(&mut rng);
            r.agent_id = pick(&mut rng);
            r.client_name = maybe(&mut rng);
            r.client_version = maybe(&mut rng);
            r.server = pick(&mut rng);
            r.transport = [
                Transport::Stdio,
                Transport::Http,
                Transport::Bridge,
                Transport::Unknown,
                Transport::Generated,
            ][rng.below(5) as usize];
            r.method = pick(&mut rng);
            r.jsonrpc_id = maybe(&mut rng);
            r.tool = maybe(&mut rng);
            r.category = [
                None,
                Some(Category::Read),
                Some(Category::Write),
                Some(Category::Execute),
                Some(Category::Destructive),
                Some(Category::Unknown),
            ][rng.below(6) as usize];
            r.risk = [None, Some(Risk::Low), Some(Risk::Medium), Some(Risk::High)]
                [rng.below(4) as usize];
            r.args_json = maybe(&mut rng);
            r.args_sha256 = maybe(&mut rng);
            r.decision = RecordedDecision::VALUES[rng.below(5) as usize];
            r.rule = maybe(&mut rng);
            r.reason = maybe(&mut rng);
            r.retry_after_ms = (rng.below(2) == 0).then(|| rng.next());
            r.policy_sha256 = pick(&mut rng);
            r.outcome = Outcome::ALL[rng.below(9) as usize];
            r.error_code = (rng.below(2) == 0).then(|| rng.next() as i64);
            r.error_message = maybe(&mut rng);
            r.latency_us = (rng.below(2) == 0).then(|| rng.next());
            r.request_bytes = rng.next();
            r.response_bytes = rng.below(1 << 20);
            r.approval =
                (rng.below(2) == 0).then(|| ApprovalOutcome::VALUES[rng.below(5) as usize]);
            r.approved_by = maybe(&mut rng);
            r.approval_ms = (rng.below(2) == 0).then(|| rng.next());
            r.continues = maybe(&mut rng);
            r.round = (rng.below(2) == 0).then(|| rng.next());
            r
        })
        .collect()
}

/// The mapping of the decision and its approval to the security control's
/// action and disposition, of the outcome to the status, of risk and
/// decision to the severity (docs/audit-schema.md).
#[test]
fn decisions_approvals_and_outcomes_map_as_documented() {
    let rows = every_kind();
    let events = export_rows(&rows);
    for (r, e) in rows.iter().zip(&events) {
        let (action, disposition) = match (r.decision, r.approval) {
            (RecordedDecision::Allow, _) => (1, 1),
            (RecordedDecision::Deny | RecordedDecision::Throttle, _) => (2, 2),
            (RecordedDecision::Approval, Some(ApprovalOutcome::Granted)) => (1, 8),
            (RecordedDecision::Approval, Some(ApprovalOutcome::Denied)) => (2, 25),
            (RecordedDecision::Approval, Some(ApprovalOutcome::Timeout)) => (2, 2),
            (RecordedDecision::Approval, Some(ApprovalOutcome::Pending)) => (0, 14),
            (RecordedDecision::Approval, Some(ApprovalOutcome::Cancelled)) => (0, 16),
            (RecordedDecision::Approval, None) | (RecordedDecision::Unrecorded, _) => (0, 0),
        };
        let what = format!("{:?}/{:?}/{:?}", r.decision, r.approval, r.outcome);
        assert_eq!(e["action_id"], action, "{what}");
        assert_eq!(e["disposition_id"], disposition, "{what}");
        let status = match r.outcome {
            Outcome::Ok => 1,
            Outcome::Interrupted => 0,
            Outcome::Cancelled => 99,
            _ => 2,
        };
        assert_eq!(e["status_id"], status, "{what}");
        assert_eq!(e["status_code"], r.outcome.as_str(), "{what}");
        let base = match r.decision {
            RecordedDecision::Allow => 1,
            RecordedDecision::Throttle | RecordedDecision::Approval => 2,
            RecordedDecision::Deny => 3,
            RecordedDecision::Unrecorded => 0,
        };
        let severity = if base > 0 && r.risk == Some(Risk::High) {
            base + 1
        } else {
            base
        };
        assert_eq!(e["severity_id"], severity, "{what}");
        let activity = match (r.category, r.method.as_str()) {
            (Some(Category::Read), _) => 2,
            (Some(Category::Write), _) => 3,
            (Some(Category::Destructive), _) => 4,
            (Some(Category::Execute), _) => 99,
            (None, "tools/list" | "resources/read") => 2,
            _ => 0,
        };
        assert_eq!(e["activity_id"], activity, "{what} {:?}", r.category);
        assert_eq!(e["type_uid"], 600300 + activity);
        // Declared profile, version, identity and the chain.
        assert_eq!(e["metadata"]["version"], "1.8.0");
        assert_eq!(e["metadata"]["profiles"], json!(["security_control"]));
        assert_eq!(e["metadata"]["uid"], r.event_id);
        assert_eq!(e["metadata"]["correlation_uid"], r.session_id);
        assert_eq!(e["metadata"]["sequence"], r.seq);
        assert_eq!(e["unmapped"]["hash"], r.hash);
        assert_eq!(e["unmapped"]["prev_hash"], r.prev_hash);
        assert_eq!(e["unmapped"]["decision"], r.decision.as_str());
        assert_eq!(e["actor"]["user"]["name"], r.agent_id);
        assert_eq!(e["actor"]["session"]["uid"], r.session_id);
        assert_eq!(e["api"]["service"]["name"], r.server);
        assert_eq!(e["src_endpoint"]["name"], "claude-code");
        // OCSF has no nulls: an unknown value is left out (`unmapped` is
        // free-form: a shadow verdict's rule there is null when none).
        let mut mapped = e.clone();
        mapped.as_object_mut().unwrap().remove("unmapped");
        assert!(!mapped.to_string().contains(":null"), "{what}: {e}");
    }
}

/// Values OCSF's attributes cannot hold keep their exact value in
/// `unmapped` and leave the narrower attribute out.
#[test]
fn values_beyond_ocsf_integers_stay_exact_in_unmapped() {
    let mut r = base_row(0);
    r.seq = u64::from(u32::MAX) + 5;
    r.error_code = Some(i64::from(i32::MAX) + 1);
    r.outcome = Outcome::RpcError;
    r.ts_us = T0 + 123_456;
    let e = &export_rows(&[r.clone()])[0];
    assert!(e["metadata"].get("sequence").is_none(), "{e}");
    assert!(e["api"]["response"].get("code").is_none(), "{e}");
    assert_eq!(e["unmapped"]["seq"], r.seq);
    assert_eq!(e["unmapped"]["error_code"], r.error_code.unwrap());
    assert_eq!(e["unmapped"]["ts_us"], r.ts_us);
    assert_eq!(e["time"], r.ts_us / 1000);
}

#[test]
#[ignore = "needs the OCSF schema files in ../shared (run by .ci/run when present)"]
fn ocsf_validator_reads_the_schema_as_its_compiler_does() {
    // The raw files, resolved through `extends` and `$include`, give each
    // class and object the attribute set the compiled schema has; the
    // compiled file's class attributes without a profile mark are the
    // class's own in the validator too.
    let schema = schema();
    let compiled: Value =
        serde_json::from_str(&std::fs::read_to_string(schema_dir().join("compiled.json")).unwrap())
            .unwrap();
    let mut checked = 0;
    let mut core_profiles = schema.profile_names();
    core_profiles.insert("datetime".into());
    for (kind, names) in [
        ("classes", schema.class_names()),
        ("objects", schema.object_names()),
    ] {
        for name in names {
            let Some(c) = compiled[kind].get(&name) else {
                continue; // base and abstract ones are not compiled
            };
            let shape = if kind == "classes" {
                schema.class(&name)
            } else {
                schema.object(&name)
            };
            // The compiled file also holds the platform extensions'
            // attributes (their profiles are not in profiles/): not core.
            let core: Vec<(&String, &Value)> = c["attributes"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, a)| {
                    (schema.defines(k) || k.ends_with("_dt"))
                        && a["profile"]
                            .as_str()
                            .is_none_or(|p| core_profiles.contains(p))
                })
                .collect();
            let mine: Vec<&String> = shape.attrs.keys().collect();
            let mut theirs: Vec<&String> = core.iter().map(|(k, _)| *k).collect();
            theirs.sort();
            assert_eq!(mine, theirs, "{kind}/{name}");
            for (k, a) in core {
                if a["profile"].is_null() {
                    assert_eq!(shape.attrs[k].profile, None, "{kind}/{name}.{k}");
                }
                if name == "observable" && k == "type_id" {
                    // Generated from every type's `observable` number; the
                    // export declares no observables.
                    continue;
                }
                let want: Vec<&String> = a["enum"]
                    .as_object()
                    .map(|m| m.keys().collect())
                    .unwrap_or_default();
                let mut want = want;
                want.sort();
                let got: Vec<&String> = shape.attrs[k].enumeration.keys().collect();
                assert_eq!(got, want, "{kind}/{name}.{k} enum");
            }
            checked += 1;
        }
    }
    assert!(checked > 200, "only {checked} classes and objects compared");
    let api = schema.class("api_activity");
    assert_eq!(api.attrs["src_endpoint"].requirement, "required");
    assert_eq!(api.attrs["actor"].profile, None);
    assert_eq!(
        api.attrs["disposition_id"].profile.as_deref(),
        Some("security_control")
    );
}

#[test]
#[ignore = "needs the OCSF schema files in ../shared (run by .ci/run when present)"]
fn ocsf_validator_names_what_is_wrong_with_the_old_export() {
    // The event flightrec 0.1 wrote for a call sent for approval.
    let old = json!({
        "class_uid": 6003, "class_name": "API Activity",
        "category_uid": 6, "category_name": "Application Activity",
        "activity_id": 4, "activity_name": "Delete", "type_uid": 600304,
        "time": 1_795_564_800_000i64, "severity_id": 2,
        "status_id": 2, "status": "Failure", "status_code": null,
        "status_detail": "needs approval",
        "action_id": 2, "action": "Denied",
        "disposition_id": 20, "disposition": "Approval Required",
        "message": "needs approval", "duration": null,
        "metadata": {"version": "1.1.0", "uid": "e1", "sequence": 0,
            "product": {"name": "flightrec", "vendor_name": "flightrec", "version": "0.1.0"},
            "log_name": "flightrec audit"},
        "api": {"operation": "delete_image_set", "service": {"name": "hi"},
            "request": {"uid": "1"},
            "response": {"code": null, "error": "not_forwarded", "message": null}},
        "actor": {"user": {"name": "agent", "type": "Other"}, "session": {"uid": "s"},
            "app_name": "claude"},
        "firewall_rule": {"name": "ask first", "uid": "abc"},
        "unmapped": {"hash": "h", "prev_hash": "p"},
    });
    let problems = schema().validate(&old);
    let expect = [
        "src_endpoint: required by api_activity, missing",
        "action: belongs to the `security_control` profile, which metadata.profiles does not declare",
        "action_id: belongs to the `security_control` profile",
        "disposition: belongs to the `security_control` profile",
        "disposition_id: belongs to the `security_control` profile",
        "firewall_rule: belongs to the `security_control` profile",
        "disposition: \"Approval Required\" is not the caption of disposition_id 20 (\"Count\")",
        "metadata.version: Some(\"1.1.0\") is not the schema's 1.8.0",
        "status_code: null",
        "duration: null",
        "api.response.code: null",
    ];
    for e in expect {
        assert!(
            problems.iter().any(|p| p.starts_with(e)),
            "expected a problem starting {e:?} in {problems:#?}"
        );
    }
    // And the smaller mistakes: a wrong type, an enum value outside the
    // class's, an attribute the object does not have, a broken type_uid.
    let mut bad = export_rows(&[base_row(0)]).remove(0);
    bad["activity_id"] = json!(5);
    bad["severity_id"] = json!("1");
    bad["actor"]["user"]["shoe_size"] = json!(44);
    bad["api"]["request"] = json!({});
    bad["src_endpoint"] = json!({"port": 70000});
    let problems = schema().validate(&bad);
    for e in [
        "activity_id: 5 is not one of",
        "severity_id: \"1\" is not a integer_t",
        "actor.user.shoe_size: not an attribute of user",
        "api.request.uid: required by request, missing",
        "src_endpoint.port: 70000 is outside port_t's range",
        "src_endpoint: network_endpoint needs at least one of",
        "type_uid: Some(600304) is not class_uid * 100 + activity_id",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(e)),
            "expected a problem starting {e:?} in {problems:#?}"
        );
    }
}

#[test]
#[ignore = "needs the OCSF schema files in ../shared (run by .ci/run when present)"]
fn ocsf_every_bundled_recording_exports_valid_events() {
    let schema = schema();
    let mut total = 0;
    for entry in std::fs::read_dir(common::root().join("recordings")).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let events = export_ocsf(&dir);
        assert!(!events.is_empty(), "{}: no events", dir.display());
        assert_valid(&schema, &events, &dir.display().to_string());
        total += events.len();
    }
    assert!(total > 1000, "only {total} recorded events");
}

#[test]
#[ignore = "needs the OCSF schema files in ../shared (run by .ci/run when present)"]
fn ocsf_every_decision_outcome_and_approval_kind_is_valid() {
    let schema = schema();
    let rows = every_kind();
    assert_eq!(rows.len(), 5 * 9 * 6);
    assert_valid(
        &schema,
        &export_rows(&rows),
        "every decision, outcome and approval",
    );
}

#[test]
#[ignore = "needs the OCSF schema files in ../shared (run by .ci/run when present)"]
fn ocsf_random_rows_are_valid() {
    let schema = schema();
    for seed in [1, 0x5eed, 0xdead_beef] {
        let rows = random_rows(seed, 700);
        assert_valid(
            &schema,
            &export_rows(&rows),
            &format!("random rows, seed {seed:#x}"),
        );
    }
}

/// The bundled live recording names the server it recorded in every row
/// (its first requests once said `env`, the launcher), and its chain,
/// rewritten by recordings/fix_live_server_name.py, verifies.
#[test]
fn the_live_recording_names_its_server_in_every_event() {
    let dir = common::root().join("recordings/live-healthimaging");
    common::assert_verified(&dir);
    let events = export_ocsf(&dir);
    assert_eq!(events.len(), 18);
    for e in &events {
        assert_eq!(
            e["api"]["service"]["name"], "awslabs.healthimaging-mcp-server",
            "{e}"
        );
    }
}
