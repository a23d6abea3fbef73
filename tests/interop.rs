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

/// A directory written at schema 1.0 (the bundled live recording) that a
/// 1.1 writer continues: the chain verifies across the upgrade, flightrec
/// reads the 1.0 rows' approval columns as null, and DuckDB
/// (`union_by_name`) and pyarrow read both versions together.
#[test]
fn a_1_0_directory_continued_at_1_1_verifies_and_reads_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("recordings/live-healthimaging");
    let copy = Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(&audit)
        .status()
        .unwrap();
    assert!(copy.success());
    let before = common::dir_rows(&audit);
    assert!(before.iter().all(|r| r.schema_version == "1.0"));
    let mut rec = Recorder::open(&audit, RecorderConfig::default()).unwrap();
    for i in 0..3 {
        rec.record(AuditRow {
            event_id: format!("new{i}"),
            ts_us: flightrec::time::now_us(),
            tool: Some("copy_image_set".into()),
            decision: flightrec::audit::schema::RecordedDecision::Approval,
            approval: Some(flightrec::audit::schema::ApprovalOutcome::Granted),
            approved_by: Some("alice".into()),
            approval_ms: Some(1200),
            ..AuditRow::default()
        })
        .unwrap();
    }
    rec.close().unwrap();
    common::assert_verified(&audit);
    let rows = common::dir_rows(&audit);
    assert_eq!(rows.len(), before.len() + 3);
    assert_eq!(rows.iter().filter(|r| r.schema_version == "1.1").count(), 3);
    let script = format!(
        r#"
import duckdb, json, pyarrow as pa, pyarrow.dataset as ds, pyarrow.parquet as pq
root = {root:?}
con = duckdb.connect()
by_version = dict(con.execute(
    f"SELECT schema_version, count(approval) FROM read_parquet('{{root}}/**/*.parquet', union_by_name = true) GROUP BY 1"
).fetchall())
total = con.execute(f"SELECT count(*) FROM read_parquet('{{root}}/**/*.parquet', union_by_name = true)").fetchone()[0]
files = ds.dataset(root, format="parquet", partitioning="hive").files
schema = pa.unify_schemas([pq.read_schema(f) for f in files])
t = ds.dataset(root, format="parquet", partitioning="hive", schema=schema).to_table()
print(json.dumps({{"by_version": by_version, "total": total, "pyarrow": t.num_rows,
                   "pyarrow_approved": sum(1 for a in t.column("approval").to_pylist() if a == "granted")}}))
"#,
        root = audit.to_str().unwrap()
    );
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .output_timed()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["total"], rows.len());
    assert_eq!(seen["pyarrow"], rows.len());
    assert_eq!(seen["by_version"]["1.0"], 0);
    assert_eq!(seen["by_version"]["1.1"], 3);
    assert_eq!(seen["pyarrow_approved"], 3);
}
