//! The audit log through the real binary: crash safety under kill -9,
//! tamper detection by `audit verify`, export formats and Intercept import.

mod common;

use common::{Rng, bin, dir_rows, file_rows, run, stderr};
use flightrec::audit::schema::{AuditRow, rows_to_batch};
use flightrec::audit::{Recorder, RecorderConfig, layout};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const T0: i64 = 1_795_564_800_000_000;

fn row(i: u64, tool: &str, decision: &str) -> AuditRow {
    AuditRow {
        event_id: format!("ev-{i:06}"),
        ts_us: T0 + i as i64 * 250_000,
        session_id: format!("s{}", i % 3),
        agent_id: if i.is_multiple_of(2) {
            "imaging-assistant".into()
        } else {
            "records-admin".into()
        },
        server: "awslabs.healthimaging-mcp-server".into(),
        tool: Some(tool.into()),
        category: Some("write".parse().unwrap()),
        args_json: Some(format!("{{\"source_image_set_id\":\"set-{i}\"}}")),
        decision: decision.parse().unwrap(),
        policy_sha256: "ab".repeat(32),
        request_bytes: 100 + i,
        ..AuditRow::default()
    }
}

/// A writer in a child process is killed with SIGKILL at random moments,
/// many times, and restarted. Every row it acknowledged must be in the log
/// exactly once, begun calls it never finished must come back as
/// `interrupted`, and the chain must verify.
#[test]
fn kill_9_loses_no_acknowledged_row() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    // FLIGHTREC_KILL_SEED reruns the test with other kill moments.
    let seed = std::env::var("FLIGHTREC_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_1234_ABCD_0001u64);
    let mut rng = Rng(seed | 1);
    let mut acked: Vec<String> = Vec::new();
    let mut begun_acked: Vec<String> = Vec::new();
    let mut next = 0u64;
    let rounds = 12;
    for round in 0..=rounds {
        let mut child = bin()
            .args([
                "audit",
                "append",
                audit.to_str().unwrap(),
                "--rotate-bytes",
                "6000",
                "--sync",
                "never",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let last = round == rounds;
        let target_acks = if last { 50 } else { 20 + rng.below(200) };
        let mut got = 0;
        let mut open_calls: Vec<String> = Vec::new();
        while got < target_acks {
            let i = next;
            next += 1;
            let op = match rng.below(10) {
                0..=5 => {
                    serde_json::json!({"op": "record", "row": row(i, "copy_image_set", "allow")})
                }
                6..=7 => {
                    open_calls.push(format!("ev-{i:06}"));
                    serde_json::json!({"op": "begin", "row": row(i, "copy_image_set", "allow")})
                }
                _ => match open_calls.pop() {
                    Some(id) => {
                        serde_json::json!({"op": "complete", "event_id": id, "outcome": "tool_error"})
                    }
                    None => {
                        serde_json::json!({"op": "record", "row": row(i, "list_image_sets", "deny")})
                    }
                },
            };
            if writeln!(stdin, "{op}").is_err() {
                break;
            }
            let _ = stdin.flush();
            // Wait for this op's ack (the writer answers in order).
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(ack) => {
                    let id = ack.strip_prefix("ack ").expect("ack line").to_string();
                    match op["op"].as_str().unwrap() {
                        "begin" => begun_acked.push(id),
                        "record" => acked.push(id),
                        _ => {
                            // A completed call is acknowledged as finished.
                            begun_acked.retain(|b| b != &id);
                            acked.push(id);
                        }
                    }
                    got += 1;
                }
                Err(_) => panic!(
                    "writer stopped answering: {:?}",
                    child.wait_with_output().map(|o| stderr(&o))
                ),
            }
        }
        if last {
            drop(stdin);
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
        } else {
            // Fire more writes without waiting, then kill mid-stream.
            for k in 0..rng.below(50) {
                let _ = writeln!(
                    stdin,
                    "{}",
                    serde_json::json!({"op": "record", "row": row(1_000_000 + next * 100 + k, "copy_image_set", "allow")})
                );
            }
            std::thread::sleep(Duration::from_micros(rng.below(3000)));
            child.kill().unwrap();
            let _ = child.wait();
        }
        let _ = reader.join();
    }

    let rows = dir_rows(&audit);
    let mut count: HashMap<&str, usize> = HashMap::new();
    for r in &rows {
        *count.entry(r.event_id.as_str()).or_default() += 1;
    }
    for (id, n) in &count {
        assert_eq!(*n, 1, "event {id} recorded {n} times");
    }
    for id in &acked {
        assert!(
            count.contains_key(id.as_str()),
            "acknowledged row {id} lost"
        );
    }
    for id in &begun_acked {
        let r = rows
            .iter()
            .find(|r| &r.event_id == id)
            .unwrap_or_else(|| panic!("begun call {id} lost"));
        assert!(r.outcome.as_str() == "interrupted", "{id}: {}", r.outcome);
    }
    assert!(
        acked.len() > 500,
        "the test exercised {} acknowledged rows",
        acked.len()
    );
    assert!(
        layout::data_files(&audit).unwrap().len() > 5,
        "rotations happened"
    );
    let out = run(&["audit", "verify", audit.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "verify after crashes: {}",
        stderr(&out)
    );
}

/// Builds a three-file log (chained across rotations and a restart).
fn make_log(dir: &Path) -> Vec<PathBuf> {
    for chunk in [0..40u64, 40..80, 80..120] {
        let mut rec = Recorder::open(dir, RecorderConfig::default()).unwrap();
        rec.record_all(chunk.map(|i| {
            row(
                i,
                if i % 5 == 0 {
                    "delete_image_set"
                } else {
                    "copy_image_set"
                },
                if i % 7 == 0 { "deny" } else { "allow" },
            )
        }))
        .unwrap();
        rec.close().unwrap();
    }
    let files = layout::data_files(dir).unwrap();
    assert_eq!(files.len(), 3);
    files
}

/// Rewrites a data file from rows, keeping its footer metadata.
fn rewrite(file: &Path, rows: &[AuditRow]) {
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap()).unwrap();
    let kv = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let out = std::fs::File::create(file).unwrap();
    let mut w = ArrowWriter::try_new(out, flightrec::audit::schema::schema(), None).unwrap();
    for entry in kv {
        w.append_key_value_metadata(entry);
    }
    w.write(&rows_to_batch(rows)).unwrap();
    w.close().unwrap();
}

fn verify(dir: &Path) -> Output {
    run(&["audit", "verify", dir.to_str().unwrap()])
}

#[test]
fn verify_detects_every_kind_of_tampering() {
    let base = tempfile::tempdir().unwrap();
    let pristine = base.path().join("pristine");
    make_log(&pristine);
    let out = verify(&pristine);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("120 rows in 3 files"));

    type Tamper = fn(&[PathBuf]);
    let cases: Vec<(&str, Tamper, i32, &str)> = vec![
        (
            "value changed",
            |f| {
                let mut rows = file_rows(&f[1]);
                rows[5].decision = "allow".parse().unwrap();
                rows[5].tool = Some("list_image_sets".into());
                rewrite(&f[1], &rows);
            },
            1,
            "row 5 (seq 45): hash mismatch",
        ),
        (
            "row deleted",
            |f| {
                let mut rows = file_rows(&f[1]);
                rows.remove(7);
                rewrite(&f[1], &rows);
            },
            1,
            "row 7 (seq 48): chain broken",
        ),
        (
            "row inserted",
            |f| {
                let mut rows = file_rows(&f[0]);
                let copy = rows[3].clone();
                rows.insert(4, copy);
                rewrite(&f[0], &rows);
            },
            1,
            "row 4 (seq 3): chain broken",
        ),
        (
            "file removed from the middle",
            |f| std::fs::remove_file(&f[1]).unwrap(),
            1,
            "chain broken between files",
        ),
        (
            "files reordered",
            |f| {
                let tmp = f[0].with_extension("swap");
                std::fs::rename(&f[0], &tmp).unwrap();
                std::fs::rename(&f[2], &f[0]).unwrap();
                std::fs::rename(&tmp, &f[2]).unwrap();
            },
            1,
            "chain broken",
        ),
        (
            "last file removed",
            |f| std::fs::remove_file(&f[2]).unwrap(),
            1,
            "chain tip is at seq 119 but the data files end at seq 79",
        ),
        (
            "truncated file",
            |f| {
                let data = std::fs::read(&f[1]).unwrap();
                std::fs::write(&f[1], &data[..data.len() / 2]).unwrap();
            },
            2,
            "not a readable Parquet audit file",
        ),
        (
            "not parquet",
            |f| std::fs::write(&f[2], b"hello, I am not a parquet file").unwrap(),
            2,
            "not a readable Parquet audit file",
        ),
    ];
    for (name, tamper, code, needle) in cases {
        let dir = base.path().join(name.replace(' ', "-"));
        common::copy_dir(&pristine, &dir);
        let files = layout::data_files(&dir).unwrap();
        tamper(&files);
        let out = verify(&dir);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{name}: {err}");
        assert!(err.contains(needle), "{name}: expected {needle:?} in {err}");
        if code == 2 || name == "value changed" || name.starts_with("row") {
            let named = files
                .iter()
                .any(|f| err.contains(&f.file_name().unwrap().to_string_lossy().to_string()));
            assert!(named, "{name}: the file is named in {err}");
        }
    }
}

#[test]
fn export_formats_filters_and_ocsf() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("log");
    make_log(&dir);
    let d = dir.to_str().unwrap();
    let out_path = |n: &str| base.path().join(n).to_str().unwrap().to_string();

    // JSON lines, filtered by tool glob and decision.
    let jsonl = out_path("deny.jsonl");
    let out = run(&[
        "export",
        d,
        "--format",
        "jsonl",
        "--tool",
        "delete_*",
        "--decision",
        "deny",
        "-o",
        &jsonl,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected = (0..120u64).filter(|i| i % 5 == 0 && i % 7 == 0).count();
    assert_eq!(lines.len(), expected);
    assert!(
        lines
            .iter()
            .all(|l| l["tool"] == "delete_image_set" && l["decision"] == "deny")
    );
    assert_eq!(lines[0]["ts"], "2026-11-25T00:00:00.000000Z");

    // Time range (half-open) and agent filters on Parquet output.
    let pq = out_path("range.parquet");
    let from = flightrec::time::format_us(T0 + 10 * 250_000);
    let to = flightrec::time::format_us(T0 + 30 * 250_000);
    let out = run(&[
        "export",
        d,
        "--format",
        "parquet",
        "--from",
        &from,
        "--to",
        &to,
        "--agent",
        "records-*",
        "-o",
        &pq,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = file_rows(Path::new(&pq));
    assert_eq!(rows.len(), 10, "odd rows in [10, 30)");
    assert!(
        rows.iter()
            .all(|r| r.agent_id == "records-admin" && r.seq >= 10 && r.seq < 30)
    );

    // CSV has the schema's header and one line per row.
    let csv = out_path("all.csv");
    let out = run(&["export", d, "--format", "csv", "-o", &csv]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(header.len(), 36);
    assert_eq!(header[3], "ts");
    assert_eq!(reader.records().count(), 120);

    // OCSF API Activity events.
    let ocsf = out_path("all.ocsf.jsonl");
    let out = run(&[
        "export",
        d,
        "--format",
        "ocsf",
        "--session",
        "s1",
        "-o",
        &ocsf,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&ocsf)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 40);
    for e in &events {
        assert_eq!(e["class_uid"], 6003);
        assert_eq!(e["category_uid"], 6);
        assert_eq!(e["type_uid"], 600300 + e["activity_id"].as_i64().unwrap());
        assert_eq!(e["actor"]["session"]["uid"], "s1");
        assert!(e["time"].as_i64().unwrap() >= T0 / 1000);
    }
    assert!(events.iter().any(|e| e["disposition"] == "Blocked"));

    // Bad input: unknown format, bad time, missing input.
    let out = run(&["export", d, "--format", "xml", "-o", &out_path("x")]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&[
        "export",
        d,
        "--format",
        "csv",
        "--from",
        "last tuesday",
        "-o",
        &out_path("x"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--from"));
    let out = run(&[
        "export",
        "/nonexistent/dir",
        "--format",
        "csv",
        "-o",
        &out_path("x"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/dir"));
}

#[test]
fn intercept_events_import_into_the_audit_schema() {
    let base = tempfile::tempdir().unwrap();
    let events = base.path().join("a1b2c3d4.jsonl");
    std::fs::write(
        &events,
        [
            r#"{"ts":"2026-03-04T10:00:00Z","type":"startup","instance":"a1b2c3d4","server":"server-github","config":"p.yaml","pid":7}"#,
            r#"{"ts":"2026-03-04T10:00:01.5Z","type":"tool_call","instance":"a1b2c3d4","tool":"create_issue","result":"allowed","args_hash":"sha256:00ff"}"#,
            r#"{"ts":"2026-03-04T10:00:02Z","type":"tool_call","instance":"a1b2c3d4","tool":"delete_repository","result":"denied","rule":"block repo deletion","message":"no"}"#,
            "this is not json",
            r#"{"ts":"2026-03-04T10:01:00Z","type":"heartbeat","instance":"a1b2c3d4","counters":{"x":1}}"#,
            r#"{"ts":"2026-03-04T10:02:00Z","type":"tool_call","instance":"a1b2c3d4","tool":"x","result":"maybe"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out_file = base.path().join("imported.parquet");
    let out = run(&[
        "import",
        "intercept",
        events.to_str().unwrap(),
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "bad lines make it an input error"
    );
    let err = stderr(&out);
    assert!(err.contains("a1b2c3d4.jsonl:4: not JSON"), "{err}");
    assert!(
        err.contains("a1b2c3d4.jsonl:6: result must be allowed or denied"),
        "{err}"
    );
    assert!(
        err.contains("skipped other events: 1 heartbeat, 1 startup"),
        "{err}"
    );
    let rows = file_rows(&out_file);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].agent_id, "intercept:a1b2c3d4");
    assert_eq!(rows[0].server, "server-github");
    assert_eq!(rows[0].decision.as_str(), "allow");
    assert_eq!(rows[0].args_sha256.as_deref(), Some("00ff"));
    assert_eq!(
        rows[0].ts_us,
        flightrec::time::parse_rfc3339_us("2026-03-04T10:00:01.5Z").unwrap()
    );
    assert_eq!(rows[1].decision.as_str(), "deny");
    assert_eq!(rows[1].outcome.as_str(), "not_forwarded");
    assert_eq!(rows[1].rule.as_deref(), Some("block repo deletion"));
    assert!(rows[0].args_json.is_none());
    // Importing again gives identical rows (deterministic ids and chain).
    let again = base.path().join("again.parquet");
    run(&[
        "import",
        "intercept",
        events.to_str().unwrap(),
        "-o",
        again.to_str().unwrap(),
    ]);
    assert_eq!(file_rows(&again), rows);
}

#[test]
fn unwritable_directory_is_a_clear_error() {
    let base = tempfile::tempdir().unwrap();
    let file = base.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let mut child = bin()
        .args(["audit", "append", file.join("sub").to_str().unwrap()])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot create"), "{}", stderr(&out));
}

#[test]
fn torn_journal_tail_is_cut_and_reported() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("log");
    let writer = {
        let mut rec = Recorder::open(&dir, RecorderConfig::default()).unwrap();
        for i in 0..5 {
            rec.record(row(i, "copy_image_set", "allow")).unwrap();
        }
        // Crash: dropped without close; rows are only in the journal.
        rec.writer().to_string()
    };
    let jdir = layout::writer_dir(&dir, &writer).join(layout::JOURNAL_DIR);
    let seg = std::fs::read_dir(&jdir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut data = std::fs::read(&seg).unwrap();
    data.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, b'C', b'{']);
    std::fs::write(&seg, data).unwrap();
    let mut child = bin()
        .args(["audit", "append", dir.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("recovered 5 journaled row(s)"), "{err}");
    assert!(err.contains("torn tail"), "{err}");
    assert_eq!(dir_rows(&dir).len(), 5);
    assert!(verify(&dir).status.success());
}

/// Several writers share one directory at once (as when an MCP client starts
/// the same `flightrec proxy --audit-dir …` line for several windows), each
/// stopped cleanly or killed with SIGKILL at random and restarted: every
/// acknowledged row is present exactly once, every chain verifies, and
/// export merges the writers by time.
#[test]
fn several_writers_share_a_directory_through_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let begun = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..3u64)
        .map(|k| {
            let (audit, acked, begun) = (audit.clone(), acked.clone(), begun.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x5EED ^ ((k + 1) * 0x9E37_79B9));
                let mut next = (k + 1) * 100_000;
                for round in 0..4 {
                    let mut child = bin()
                        .args(["audit", "append", audit.to_str().unwrap(), "--rotate-bytes", "4000"])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap();
                    let mut stdin = child.stdin.take().unwrap();
                    let mut acks = BufReader::new(child.stdout.take().unwrap()).lines();
                    let mut open_calls = Vec::new();
                    for _ in 0..(20 + rng.below(60)) {
                        let i = next;
                        next += 1;
                        let op = if rng.below(4) == 0 {
                            open_calls.push(format!("ev-{i:06}"));
                            serde_json::json!({"op": "begin", "row": row(i, "copy_image_set", "allow")})
                        } else {
                            serde_json::json!({"op": "record", "row": row(i, "copy_image_set", "allow")})
                        };
                        writeln!(stdin, "{op}").unwrap();
                        stdin.flush().unwrap();
                        let ack = acks.next().expect("an ack").unwrap();
                        let id = ack.strip_prefix("ack ").unwrap().to_string();
                        if op["op"] == "begin" {
                            begun.lock().unwrap().push(id);
                        } else {
                            acked.lock().unwrap().push(id);
                        }
                    }
                    if round % 2 == 1 || rng.below(2) == 0 {
                        child.kill().unwrap();
                        let _ = child.wait();
                    } else {
                        drop(stdin);
                        let out = child.wait_with_output().unwrap();
                        assert!(out.status.success(), "{}", stderr(&out));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // Writers that were killed last are taken over (their journals
    // recovered) by the next process to open the directory: open one
    // recorder per writer, each takes over a different one.
    let writers = layout::writer_ids(&audit).unwrap();
    assert!(
        writers.len() >= 2,
        "concurrent writers had their own chains: {writers:?}"
    );
    let recs: Vec<Recorder> = writers
        .iter()
        .map(|_| Recorder::open(&audit, RecorderConfig::default()).unwrap())
        .collect();
    let mut taken: Vec<String> = recs.iter().map(|r| r.writer().to_string()).collect();
    taken.sort();
    assert_eq!(taken, writers);
    for r in recs {
        r.close().unwrap();
    }
    let rows = dir_rows(&audit);
    let mut count: HashMap<&str, usize> = HashMap::new();
    for r in &rows {
        *count.entry(r.event_id.as_str()).or_default() += 1;
    }
    for (id, n) in &count {
        assert_eq!(*n, 1, "event {id} recorded {n} times");
    }
    for id in acked.lock().unwrap().iter() {
        assert!(
            count.contains_key(id.as_str()),
            "acknowledged row {id} lost"
        );
    }
    for id in begun.lock().unwrap().iter() {
        let r = rows.iter().find(|r| &r.event_id == id).unwrap();
        assert_eq!(r.outcome.as_str(), "interrupted", "{id}");
    }
    let out = common::assert_verified(&audit);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{} chains intact", writers.len())),
        "{text}"
    );
    for w in &writers {
        assert!(text.contains(&format!("writer {w}:")), "{text}");
    }
    // Export reads every chain.
    let exported = export_jsonl(&audit, dir.path()).lines().count();
    assert_eq!(exported, rows.len());
}

/// Two writers' chains interleaved in time: export and replay merge them
/// by time, each chain keeping its own order.
#[test]
fn export_and_replay_merge_writers_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let mut a = Recorder::open(&audit, RecorderConfig::default()).unwrap();
    let mut b = Recorder::open(&audit, RecorderConfig::default()).unwrap();
    for i in 0..200u64 {
        // Even rows to one writer, odd to the other: each chain is in time
        // order, and the two alternate in time.
        let rec = if i % 2 == 0 { &mut a } else { &mut b };
        rec.record(row(i, "copy_image_set", "allow")).unwrap();
    }
    a.close().unwrap();
    b.close().unwrap();
    assert_eq!(layout::writer_ids(&audit).unwrap().len(), 2);
    let ids: Vec<String> = export_jsonl(&audit, dir.path())
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let expected: Vec<String> = (0..200u64).map(|i| format!("ev-{i:06}")).collect();
    assert_eq!(ids, expected, "export in time order across writers");
    // Parquet export too (rebuilt from the merged rows).
    let pq = dir.path().join("all.parquet");
    let out = run(&[
        "export",
        audit.to_str().unwrap(),
        "--format",
        "parquet",
        "-o",
        pq.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ids: Vec<String> = file_rows(&pq).into_iter().map(|r| r.event_id).collect();
    assert_eq!(ids, expected);
    // Replay sees every call once, none of them late.
    let policy = dir.path().join("p.yaml");
    std::fs::write(&policy, "version: \"1\"\ntools: {}\n").unwrap();
    let out = run(&[
        "replay",
        audit.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--format",
        "json",
        "--reorder-window",
        "1ms",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["events"], 200);
    assert_eq!(report["late_events"], 0);
}

/// `flightrec export AUDIT --format jsonl` into `scratch/all.jsonl`; returns
/// the file's text.
fn export_jsonl(audit: &Path, scratch: &Path) -> String {
    let out_file = scratch.join("all.jsonl");
    let out = run(&[
        "export",
        audit.to_str().unwrap(),
        "--format",
        "jsonl",
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::read_to_string(&out_file).unwrap()
}
