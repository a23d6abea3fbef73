//! `flightrec export --format ocsf-parquet`: OCSF events as Parquet in
//! Amazon Security Lake's custom-source layout, read by DuckDB and pyarrow
//! (installed by `.ci/run` into .venv; `FLIGHTREC_PYTHON` overrides).

mod common;

use common::{Timed, run, stderr, write_plain_parquet};
use flightrec::audit::schema::{AuditRow, RecordedDecision};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("FLIGHTREC_PYTHON") {
        return PathBuf::from(p);
    }
    common::need(common::root().join(".venv/bin/python"))
}

const T0: i64 = 1_795_564_800_000_000; // 2026-11-25T00:00:00Z
const DAY: i64 = 86_400_000_000;

/// 300 rows over two UTC days (200 on the 25th, 100 on the 26th), every
/// third denied, every seventh with a shadow verdict.
fn two_days() -> Vec<AuditRow> {
    (0..300u64)
        .map(|i| {
            let ts = if i < 200 {
                T0 + i as i64 * 1_000_000
            } else {
                T0 + DAY + i as i64 * 1_000_000
            };
            AuditRow {
                event_id: format!("0195a000-0000-7000-8000-{i:012}"),
                seq: i,
                ts_us: ts,
                session_id: "s".into(),
                agent_id: "a".into(),
                server: "srv".into(),
                method: "tools/call".into(),
                jsonrpc_id: Some(i.to_string()),
                tool: Some(
                    if i % 3 == 0 {
                        "delete_image_set"
                    } else {
                        "get_image_set"
                    }
                    .into(),
                ),
                decision: if i % 3 == 0 {
                    RecordedDecision::Deny
                } else {
                    RecordedDecision::Allow
                },
                rule: (i % 3 == 0).then(|| "no deletes".into()),
                shadow: if i % 7 == 0 {
                    vec![flightrec::audit::schema::ShadowDecision {
                        policy_sha256: "p".into(),
                        decision: flightrec::policy::Verdict::Deny,
                        rule: None,
                    }]
                } else {
                    Vec::new()
                },
                policy_sha256: "cd".repeat(32),
                prev_hash: "0".repeat(64),
                hash: format!("{i:064}"),
                ..AuditRow::default()
            }
        })
        .collect()
}

fn export(input: &Path, format: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "export",
        input.to_str().unwrap(),
        "--format",
        format,
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

const LAKE: &[&str] = &["--region", "eu-west-1", "--account-id", "123456789012"];

fn parquet_rows(f: &Path) -> usize {
    let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(f).unwrap(),
    )
    .unwrap();
    b.metadata().file_metadata().num_rows() as usize
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn ocsf_parquet_is_the_security_lake_layout_read_by_duckdb_and_pyarrow() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.parquet");
    let rows = two_days();
    write_plain_parquet(&input, &rows);
    let lake = dir.path().join("lake");
    let o = export(&input, "ocsf-parquet", &lake, LAKE);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("2 ocsf-parquet files"),
        "{}",
        stderr(&o)
    );

    // The layout: one file per day, nothing else (no partial files left).
    let mut files = Vec::new();
    files_under(&lake, &mut files);
    files.sort();
    let rel: Vec<String> = files
        .iter()
        .map(|f| {
            let r = f
                .strip_prefix(&lake)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            r.rsplit_once('/').unwrap().0.to_string()
        })
        .collect();
    assert_eq!(
        rel,
        vec![
            "region=eu-west-1/accountId=123456789012/eventDay=20261125",
            "region=eu-west-1/accountId=123456789012/eventDay=20261126",
        ],
        "{files:?}"
    );
    assert!(files.iter().all(|f| f.extension().unwrap() == "parquet"));

    let out = Command::new(python())
        .arg(common::root().join("tests/interop/read_ocsf_lake.py"))
        .arg(&lake)
        .output_timed()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["duckdb_count"], 300);
    assert_eq!(seen["pyarrow_count"], 300);
    assert_eq!(
        seen["duckdb_partitions"],
        serde_json::json!([
            "eu-west-1/123456789012/20261125:200",
            "eu-west-1/123456789012/20261126:100"
        ])
    );
    // Nested structs, not JSON text.
    let d = &seen["duckdb_columns"];
    assert!(
        d["api"]
            .as_str()
            .unwrap()
            .starts_with("STRUCT(operation VARCHAR"),
        "{d}"
    );
    assert!(
        d["metadata"]
            .as_str()
            .unwrap()
            .contains("profiles VARCHAR[]"),
        "{d}"
    );
    assert!(d["actor"].as_str().unwrap().starts_with("STRUCT("), "{d}");
    assert!(
        d["src_endpoint"].as_str().unwrap().starts_with("STRUCT("),
        "{d}"
    );
    assert_eq!(d["class_uid"], "INTEGER");
    assert_eq!(d["time"], "BIGINT");
    assert_eq!(d["type_uid"], "BIGINT");
    assert_eq!(
        seen["duckdb_blocked_ops"],
        serde_json::json!(["delete_image_set"])
    );
    assert_eq!(
        seen["duckdb_profiles"],
        serde_json::json!([["security_control"]])
    );
    let p = &seen["pyarrow_types"];
    assert!(
        p["api"]
            .as_str()
            .unwrap()
            .starts_with("struct<operation: string"),
        "{p}"
    );
    assert!(
        p["unmapped"]
            .as_str()
            .unwrap()
            .contains("shadow: list<item: struct<"),
        "{p}"
    );

    // Every event reads back as the `--format ocsf` line of the same row.
    let jsonl = dir.path().join("events.jsonl");
    let o = export(&input, "ocsf", &jsonl, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want: BTreeMap<String, Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["metadata"]["uid"].as_str().unwrap().to_string(), v)
        })
        .collect();
    let got = seen["pyarrow_events"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for mut e in got.iter().cloned() {
        // A shadow verdict without a rule: null in the audit log's JSON,
        // left out by the struct reader's null stripping.
        if let Some(items) = e
            .pointer_mut("/unmapped/shadow")
            .and_then(Value::as_array_mut)
        {
            for item in items {
                item.as_object_mut()
                    .unwrap()
                    .entry("rule")
                    .or_insert(Value::Null);
            }
        }
        let uid = e["metadata"]["uid"].as_str().unwrap().to_string();
        assert_eq!(e, want[&uid], "event {uid}");
    }
}

#[test]
fn ocsf_parquet_refuses_missing_or_bad_partition_values() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.parquet");
    write_plain_parquet(&input, &two_days()[..3]);
    let lake = dir.path().join("lake");
    for (extra, says) in [
        (&["--region", "eu-west-1"][..], "--account-id"),
        (
            &["--region", "../../etc", "--account-id", "123456789012"][..],
            "--region",
        ),
        (
            &["--region", "eu-west-1", "--account-id", "12345"][..],
            "--account-id",
        ),
    ] {
        let o = export(&input, "ocsf-parquet", &lake, extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}");
        assert!(stderr(&o).contains(says), "{extra:?}: {}", stderr(&o));
        assert!(!lake.exists(), "{extra:?}: nothing written");
    }
}

/// `-o s3://BUCKET/PREFIX`: the same partitions, under the prefix, in a
/// real S3-compatible store (moto).
#[test]
fn ocsf_parquet_goes_to_a_bucket_in_the_same_layout() {
    let moto = common::s3::Moto::start();
    moto.bucket("lake", false);
    let src = common::root().join("recordings/sample-healthimaging");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("lake");
    assert!(export(&src, "ocsf-parquet", &local, LAKE).status.success());
    let mut files = Vec::new();
    files_under(&local, &mut files);
    let mut want: Vec<String> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(&local).unwrap();
            // Partition directories are the layout; file names are fresh ids.
            rel.parent().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    want.sort();
    let mut cmd = common::bin();
    cmd.args(["export", src.to_str().unwrap(), "--format", "ocsf-parquet"])
        .args(["-o", "s3://lake/security-lake/ext/flightrec"])
        .args(LAKE);
    common::s3::aws_env(&mut cmd, &moto.endpoint());
    let o = common::output_within(
        cmd.stdin(std::process::Stdio::null()),
        std::time::Duration::from_secs(300),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let keys = moto.tool(&["keys", "lake", "security-lake/ext/flightrec/"]);
    let mut got: Vec<String> = keys
        .lines()
        .map(|k| {
            assert!(k.ends_with(".parquet"), "{k}");
            let rel = k.strip_prefix("security-lake/ext/flightrec/").unwrap();
            rel.rsplit_once('/').unwrap().0.to_string()
        })
        .collect();
    got.sort();
    assert_eq!(got, want, "the same partitions, one file each as locally");
    assert!(got[0].starts_with("region=eu-west-1/accountId=123456789012/eventDay="));
}

#[test]
fn ocsf_parquet_of_the_bundled_recordings_has_every_row() {
    for name in ["sample-healthimaging", "live-healthimaging"] {
        let dir = tempfile::tempdir().unwrap();
        let src = common::root().join("recordings").join(name);
        let lake = dir.path().join("lake");
        let o = export(&src, "ocsf-parquet", &lake, LAKE);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let mut files = Vec::new();
        files_under(&lake, &mut files);
        let rows: usize = files.iter().map(|f| parquet_rows(f)).sum();
        assert_eq!(rows, common::dir_rows(&src).len(), "{name}");
    }
}

/// Values at the edges of every column type (counters beyond 63 bits,
/// error codes beyond 32, every decision, outcome and approval, text with
/// any characters) all fit the Parquet schema: nothing is refused or lost.
#[test]
fn ocsf_parquet_takes_every_kind_of_row() {
    use flightrec::audit::schema::{ApprovalOutcome, ColumnValue, Transport};
    use flightrec::policy::{Category, Outcome, Risk};
    let mut rows = Vec::new();
    let mut i = 0u64;
    for d in RecordedDecision::VALUES {
        for o in Outcome::ALL {
            for a in ApprovalOutcome::VALUES
                .iter()
                .map(|a| Some(*a))
                .chain([None])
            {
                let mut r = two_days()[0].clone();
                r.event_id = format!("e{i}");
                r.seq = if i.is_multiple_of(2) { u64::MAX - i } else { i };
                r.decision = *d;
                r.outcome = o;
                r.approval = a;
                r.approved_by = a.map(|_| "queue:al=ice|\\".into());
                r.approval_ms = a.map(|_| u64::MAX);
                r.error_code = Some(if i.is_multiple_of(2) {
                    i64::MIN
                } else {
                    -32601
                });
                r.error_message = Some("line\nbreak".into());
                r.latency_us = Some(u64::MAX);
                r.retry_after_ms = Some(u64::MAX);
                r.request_bytes = u64::MAX;
                r.category = [None, Some(Category::Execute), Some(Category::Read)][i as usize % 3];
                r.risk = [None, Some(Risk::High)][i as usize % 2];
                r.transport = [Transport::Stdio, Transport::Http][i as usize % 2];
                r.client_name = i.is_multiple_of(2).then(|| "画像".into());
                r.jsonrpc_id = (!i.is_multiple_of(3)).then(|| "\"abc\"".into());
                r.continues = Some("e0".into());
                r.round = Some(u64::MAX);
                rows.push(r);
                i += 1;
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.parquet");
    write_plain_parquet(&input, &rows);
    let lake = dir.path().join("lake");
    let o = export(&input, "ocsf-parquet", &lake, LAKE);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut files = Vec::new();
    files_under(&lake, &mut files);
    assert_eq!(
        files.iter().map(|f| parquet_rows(f)).sum::<usize>(),
        rows.len()
    );
}
