//! The audit log read by the real DuckDB and pyarrow (installed by .ci/run
//! into .venv): row counts, column types and the Hive partition column.

mod common;

use common::Timed;
use flightrec::audit::schema::{AuditRow, ShadowDecision};
use flightrec::audit::{Recorder, RecorderConfig};
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("FLIGHTREC_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run `bash .ci/run` (it installs duckdb and pyarrow into .venv), or set FLIGHTREC_PYTHON",
        venv.display()
    );
    venv
}

#[test]
fn duckdb_and_pyarrow_read_the_log_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let day = 86_400_000_000i64;
    let t0 = 1_795_564_800_000_000i64; // 2026-11-25T00:00:00Z
    let mut rec = Recorder::open(dir.path(), RecorderConfig::default()).unwrap();
    for i in 0..300i64 {
        // Two days: 200 rows on the 25th, 100 on the 26th.
        let ts = if i < 200 {
            t0 + i * 1_000_000
        } else {
            t0 + day + i * 1_000_000
        };
        rec.record(AuditRow {
            event_id: format!("e{i}"),
            ts_us: ts,
            session_id: "s".into(),
            agent_id: "a".into(),
            tool: Some("copy_image_set".into()),
            decision: if i % 3 == 0 {
                "throttle".parse().unwrap()
            } else {
                "allow".parse().unwrap()
            },
            retry_after_ms: (i % 3 == 0).then_some(1000),
            shadow: if i % 2 == 0 {
                vec![ShadowDecision {
                    policy_sha256: "p".into(),
                    decision: "deny".parse().unwrap(),
                    rule: Some("r".into()),
                }]
            } else {
                Vec::new()
            },
            error_code: (i == 7).then_some(-32601),
            ..AuditRow::default()
        })
        .unwrap();
    }
    rec.close().unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/read_audit.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(dir.path())
        .output_timed()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(seen["duckdb_count"], 300);
    assert_eq!(seen["pyarrow_count"], 300);
    assert_eq!(seen["duckdb_by_date"]["2026-11-25"], 200);
    assert_eq!(seen["duckdb_by_date"]["2026-11-26"], 100);
    assert_eq!(seen["duckdb_decisions"]["throttle"], 100);
    assert_eq!(seen["duckdb_shadow_items"], 150);
    assert_eq!(seen["duckdb_max_ts"].as_str().unwrap()[..10], *"2026-11-26");
    let d = &seen["duckdb_columns"];
    assert_eq!(d["ts"], "TIMESTAMP WITH TIME ZONE");
    assert_eq!(d["seq"], "UBIGINT");
    assert_eq!(d["error_code"], "BIGINT");
    assert_eq!(d["tool"], "VARCHAR");
    assert_eq!(d["date"], "DATE", "the Hive partition column");
    // DuckDB quotes `rule` (a keyword) in type names.
    assert_eq!(
        d["shadow"],
        "STRUCT(policy_sha256 VARCHAR, decision VARCHAR, \"rule\" VARCHAR)[]"
    );
    let p = &seen["pyarrow_types"];
    assert_eq!(p["ts"], "timestamp[us, tz=UTC]");
    assert_eq!(p["seq"], "uint64");
    assert_eq!(p["retry_after_ms"], "uint64");
    assert_eq!(
        p["shadow"],
        "list<item: struct<policy_sha256: string not null, decision: string not null, rule: string> not null>"
    );
    assert_eq!(seen["pyarrow_file_meta"]["flightrec.schema_version"], "1.1");
    assert_eq!(seen["pyarrow_file_meta"]["flightrec.first_seq"], "0");
    // The hash chain recomputed in Python from the documented encoding.
    assert_eq!(seen["python_chain_checked"], 300);
    assert_eq!(seen["python_chain_mismatched"], 0);
}
