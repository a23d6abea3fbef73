//! Audit log throughput (issue 3): sustained recording into Parquet with the
//! hash chain and journal, and scanning back the columns replay needs.
//!
//! Run: `cargo bench --bench audit`.

use divan::{Bencher, counter::ItemsCount};
use flightrec::audit::read::{ScanOptions, scan};
use flightrec::audit::remote::DataFile;
use flightrec::audit::schema::{AuditRow, col};
use flightrec::audit::{Recorder, RecorderConfig, layout};

// The same allocator as the flightrec binary, so figures match it.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

const T0: i64 = 1_795_564_800_000_000;

fn row(i: u64) -> AuditRow {
    AuditRow {
        event_id: format!("0193{i:028x}"),
        ts_us: T0 + i as i64 * 1_000,
        session_id: format!("session-{:04}", i % 1000),
        agent_id: format!("agent-{}", i % 20),
        client_name: Some("mcp".into()),
        client_version: Some("2.3.0".into()),
        server: "awslabs.healthimaging-mcp-server".into(),
        jsonrpc_id: Some((i % 10_000).to_string()),
        tool: Some(
            [
                "copy_image_set",
                "list_image_sets",
                "get_image_set",
                "delete_image_set",
            ][(i % 4) as usize]
                .into(),
        ),
        category: Some("write".parse().unwrap()),
        risk: Some("medium".parse().unwrap()),
        args_json: Some(format!(
            "{{\"datastoreId\":\"ds-0123456789\",\"sourceImageSetId\":\"set-{i}\"}}"
        )),
        args_sha256: Some(format!("{:064x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15))),
        decision: if i.is_multiple_of(10) {
            "throttle".parse().unwrap()
        } else {
            "allow".parse().unwrap()
        },
        rule: i
            .is_multiple_of(10)
            .then(|| "copy budget per session".into()),
        policy_sha256: "ab".repeat(32),
        latency_us: Some(800 + i % 100),
        request_bytes: 180,
        response_bytes: 240,
        ..AuditRow::default()
    }
}

const RECORD_ROWS: u64 = 200_000;

/// Batches of 1,000 rows through `record_all` (one journal write each),
/// chained, streamed into Parquet, closed into place.
#[divan::bench(sample_count = 10)]
fn record_batched(bencher: Bencher) {
    let rows: Vec<AuditRow> = (0..RECORD_ROWS).map(row).collect();
    bencher
        .counter(ItemsCount::new(RECORD_ROWS as usize))
        .with_inputs(|| (tempfile::tempdir().unwrap(), rows.clone()))
        .bench_local_values(|(dir, rows)| {
            let mut rec = Recorder::open(dir.path(), RecorderConfig::default()).unwrap();
            let mut it = rows.into_iter();
            loop {
                let chunk: Vec<AuditRow> = it.by_ref().take(1000).collect();
                if chunk.is_empty() {
                    break;
                }
                rec.record_all(chunk).unwrap();
            }
            rec.close().unwrap();
            dir
        });
}

/// One `record` per row, as the live proxy does (one journal write each).
#[divan::bench(sample_count = 10)]
fn record_one_by_one(bencher: Bencher) {
    let n = 50_000u64;
    let rows: Vec<AuditRow> = (0..n).map(row).collect();
    bencher
        .counter(ItemsCount::new(n as usize))
        .with_inputs(|| (tempfile::tempdir().unwrap(), rows.clone()))
        .bench_local_values(|(dir, rows)| {
            let mut rec = Recorder::open(dir.path(), RecorderConfig::default()).unwrap();
            for r in rows {
                rec.record(r).unwrap();
            }
            rec.close().unwrap();
            dir
        });
}

const SCAN_ROWS: u64 = 2_000_000;

/// The columns replay reads, over a 2M-row log.
#[divan::bench(sample_count = 10)]
fn scan_replay_columns(bencher: Bencher) {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = Recorder::open(dir.path(), RecorderConfig::default()).unwrap();
    for chunk in (0..SCAN_ROWS).collect::<Vec<_>>().chunks(10_000) {
        rec.record_all(chunk.iter().map(|&i| row(i))).unwrap();
    }
    rec.close().unwrap();
    let files: Vec<DataFile> = layout::data_files(dir.path())
        .unwrap()
        .into_iter()
        .map(DataFile::Local)
        .collect();
    let columns = [
        col::EVENT_ID,
        col::TS,
        col::SESSION_ID,
        col::AGENT_ID,
        col::SERVER,
        col::TOOL,
        col::CATEGORY,
        col::RISK,
        col::ARGS_JSON,
        col::DECISION,
        col::OUTCOME,
    ];
    bencher
        .counter(ItemsCount::new(SCAN_ROWS as usize))
        .bench(|| {
            let mut n = 0usize;
            for b in scan(files.clone(), ScanOptions::default().columns(&columns)) {
                n += b.unwrap().num_rows();
            }
            assert_eq!(n as u64, SCAN_ROWS);
            n
        });
}
