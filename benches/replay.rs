//! Replay versus a plain scan of the same columns with the same reader, on a
//! generated 10-million-event log, in one run (issue 5). The ratio the target
//! asks for is scan time / replay time (≥ 0.5 means replay takes at most
//! twice the scan).
//!
//! Run: `cargo bench --bench replay`. The logs are generated once into
//! target/bench-data/ (about a minute) and reused.

use divan::Bencher;
use flightrec::audit::read::{ScanOptions, scan};
use flightrec::audit::remote::DataFile;
use flightrec::audit::schema::AuditRow;
use flightrec::audit::{Recorder, RecorderConfig, layout};
use flightrec::policy::Policy;
use flightrec::replay::REPLAY_COLUMNS;
use flightrec::replay::{Candidate, ReplayConfig, replay};
use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

const T0: i64 = 1_795_564_800_000_000;

/// A generated log of `n` calls: 2,000 sessions, 50 agents, 8 tools, ~100
/// calls/s of traffic.
pub fn log(n: u64) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/bench-data/replay-{n}"));
    if dir.join("_flightrec/tip.json").exists() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut rec = Recorder::open(&dir, RecorderConfig::default()).unwrap();
    let tools = [
        "copy_image_set",
        "list_image_sets",
        "get_image_set",
        "search_image_sets",
        "delete_image_set",
        "get_image_frame",
        "tag_resource",
        "update_image_set_metadata",
    ];
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..n {
        batch.push(AuditRow {
            event_id: format!("0193{i:028x}"),
            ts_us: T0 + i as i64 * 10_000,
            session_id: format!("session-{:05}", (i * 7919) % 2000),
            agent_id: format!("agent-{}", i % 50),
            server: "awslabs.healthimaging-mcp-server".into(),
            tool: Some(tools[(i % 8) as usize].into()),
            category: Some("write".parse().unwrap()),
            args_json: Some(format!("{{\"imageSetId\":\"set-{i}\"}}")),
            policy_sha256: "ab".repeat(32),
            outcome: if i % 50 == 0 {
                "rpc_error".parse().unwrap()
            } else {
                "ok".parse().unwrap()
            },
            ..AuditRow::default()
        });
        if batch.len() == 10_000 {
            rec.record_all(std::mem::take(&mut batch)).unwrap();
        }
    }
    rec.record_all(batch).unwrap();
    rec.close().unwrap();
    dir
}

fn policy() -> Policy {
    Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/replay-policy.yaml")).unwrap()
}

/// Exactly the columns replay reads for a policy that does not look at
/// arguments (and, as it reads them, string views and row numbers), so
/// the scan is a fair baseline.
const COLUMNS: [&str; REPLAY_COLUMNS.len()] = REPLAY_COLUMNS;

const N: u64 = 10_000_000;

#[divan::bench(sample_count = 3)]
fn scan_same_columns(bencher: Bencher) {
    let dir = log(N);
    let files: Vec<DataFile> = layout::data_files(&dir)
        .unwrap()
        .into_iter()
        .map(DataFile::Local)
        .collect();
    bencher.bench(|| {
        let mut rows = 0usize;
        let options = ScanOptions::default()
            .columns(&COLUMNS)
            .string_views()
            .row_numbers();
        for b in scan(files.clone(), options) {
            rows += b.unwrap().num_rows();
        }
        assert_eq!(rows as u64, N);
    });
}

fn replay_log(dir: &Path, n: u64) {
    let candidates = vec![Candidate {
        name: "bench".into(),
        file: "bench.yaml".into(),
        policy: policy(),
    }];
    let config = ReplayConfig {
        progress: false,
        ..ReplayConfig::default()
    };
    let report = replay(&[dir.to_path_buf()], candidates, &config).unwrap();
    assert_eq!(report.events, n);
}

/// The same replay on a tenth of the log (and it generates the 1M-event log
/// the memory comparison in docs/performance.md uses).
#[divan::bench(sample_count = 3)]
fn replay_one_policy_1m(bencher: Bencher) {
    let dir = log(1_000_000);
    bencher.bench(|| replay_log(&dir, 1_000_000));
}

#[divan::bench(sample_count = 3)]
fn replay_one_policy(bencher: Bencher) {
    let dir = log(N);
    bencher.bench(|| replay_log(&dir, N));
}
