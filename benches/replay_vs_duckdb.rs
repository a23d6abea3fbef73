//! Replay at scan speed, in one sitting on the same files (the 10-million
//! event log `cargo bench --bench replay` generates into
//! target/bench-data/replay-10000000): `flightrec replay` with 1 and with 3
//! candidates (the release binary, report to /dev/null), flightrec's own
//! scan of the columns replay reads (as replay reads them: strings as views), and DuckDB with one thread (the test
//! venv's Python) computing `count(*)`, distinct sessions, agents, tools and
//! outcomes, `sum(length(args_json))` and `max(ts)` over the same files.
//! Three rounds, the four in turn; medians and their ratios are printed.
//!
//! Run: `cargo bench --bench replay` once (it generates the log), then
//! `cargo bench --bench replay_vs_duckdb` (needs `.venv/bin/python` with
//! duckdb, which `bash .ci/run` installs).

mod support;
use flightrec::audit::layout;
use flightrec::audit::read::{ScanOptions, scan};
use flightrec::audit::remote::DataFile;
use flightrec::replay::REPLAY_COLUMNS;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;
use support::{build_release, target_dir};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/bench-data/replay-10000000");
    assert!(
        dir.join("_flightrec").exists(),
        "{} is missing: run `cargo bench --bench replay` first (it generates the log)",
        dir.display()
    );
    build_release("test_mcp_server");
    let flightrec = target_dir().join("flightrec");
    let policy = root.join("benches/replay-policy.yaml");
    let tmp = tempfile::tempdir().unwrap();
    // Three candidates: the same policy under three names (the same work
    // each, so the ratio shows the cost of each extra candidate).
    let copies: Vec<_> = (1..=3)
        .map(|i| {
            let p = tmp.path().join(format!("candidate-{i}.yaml"));
            std::fs::copy(&policy, &p).unwrap();
            p
        })
        .collect();
    let python = root.join(".venv/bin/python");
    let query = format!(
        "import duckdb, time\ncon = duckdb.connect()\ncon.execute('SET threads = 1')\nt = time.perf_counter()\ncon.execute(\"SELECT count(*), count(DISTINCT session_id), count(DISTINCT agent_id), count(DISTINCT tool), count(DISTINCT outcome), sum(length(args_json)), max(ts) FROM read_parquet('{}/**/*.parquet', union_by_name = true)\").fetchall()\nprint(time.perf_counter() - t)\n",
        dir.display()
    );
    let files: Vec<DataFile> = layout::data_files(&dir)
        .unwrap()
        .into_iter()
        .map(DataFile::Local)
        .collect();
    let replay = |candidates: &[std::path::PathBuf]| {
        let mut cmd = Command::new(&flightrec);
        cmd.arg("replay").arg(&dir);
        for c in candidates {
            cmd.arg("--policy").arg(c);
        }
        let t = Instant::now();
        let status = cmd
            .args(["--format", "json", "-o", "/dev/null", "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        t.elapsed().as_secs_f64()
    };
    let own_scan = || {
        let t = Instant::now();
        let mut rows = 0usize;
        for b in scan(
            files.clone(),
            // As replay reads: its columns, row numbers instead of ids.
            ScanOptions::default()
                .columns(&REPLAY_COLUMNS)
                .string_views()
                .row_numbers(),
        ) {
            rows += b.unwrap().num_rows();
        }
        assert_eq!(rows, 10_000_000);
        t.elapsed().as_secs_f64()
    };
    let duckdb = || {
        let out = Command::new(&python)
            .args(["-c", &query])
            .output()
            .expect("the test venv's python with duckdb");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<f64>()
            .unwrap()
    };
    let mut t: [Vec<f64>; 4] = Default::default();
    for _ in 0..3 {
        t[0].push(replay(&copies[..1]));
        t[1].push(replay(&copies));
        t[2].push(own_scan());
        t[3].push(duckdb());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let [one, three, own, duck] = t.each_mut().map(median);
    println!("replay_vs_duckdb: 10,000,000 events, medians of 3 rounds");
    println!(
        "  flightrec replay, 1 candidate    {one:6.2} s   ({:.1} M events/s)",
        10.0 / one
    );
    println!("  flightrec replay, 3 candidates   {three:6.2} s");
    println!("  flightrec scan of replay columns {own:6.2} s");
    println!("  DuckDB, 1 thread, 7 aggregates   {duck:6.2} s");
    println!(
        "  1 candidate / DuckDB:    {:.2}x   (target ≤ 2)",
        one / duck
    );
    println!(
        "  3 candidates / 1:        {:.2}x   (target ≤ 2)",
        three / one
    );
    println!("  1 candidate / own scan:  {:.2}x", one / own);
}
