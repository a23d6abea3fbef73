//! Replay of the 10-million-event benchmark log (the one `cargo bench
//! --bench replay` generates into target/bench-data/replay-10000000) read
//! straight from an S3-compatible server on loopback (moto, which `bash
//! .ci/run` installs into `.venv-s3/`) versus from local disk, in one run:
//! the log is shipped with `flightrec audit ship`, then `flightrec replay`
//! runs on the directory and on `s3://…` in turn, three rounds; medians,
//! the ratio and the bytes the store served are printed.
//!
//! Run: `cargo bench --bench replay` once, then `cargo bench --bench replay_s3`.

mod support;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
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
    let moto_bin = root.join(".venv-s3/bin/moto_server");
    assert!(
        moto_bin.exists(),
        "{} is missing: run `bash .ci/run`",
        moto_bin.display()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut moto = Command::new(&moto_bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let env = |cmd: &mut Command| {
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &endpoint);
    };
    let status = Command::new(root.join(".venv-s3/bin/python"))
        .arg(root.join("tests/e2e/s3_tool.py"))
        .args([&endpoint, "mkbucket", "bench"])
        .status()
        .unwrap();
    assert!(status.success());
    // A private copy of the directory: shipping writes receipts into it.
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("log");
    copy_dir(&dir, &local);
    let url = "s3://bench/replay-10000000";
    let t = Instant::now();
    let mut ship = Command::new(&flightrec);
    ship.args(["audit", "ship"])
        .arg(&local)
        .arg(url)
        .stdout(Stdio::null());
    env(&mut ship);
    assert!(ship.status().unwrap().success());
    let ship_s = t.elapsed().as_secs_f64();
    let bytes: u64 = walk(&local);
    let replay = |input: &str| {
        let mut cmd = Command::new(&flightrec);
        cmd.args(["replay", input, "--policy"]).arg(&policy);
        env(&mut cmd);
        let t = Instant::now();
        let status = cmd
            .args(["--format", "json", "-o", "/dev/null", "--quiet"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        t.elapsed().as_secs_f64()
    };
    let mut times: [Vec<f64>; 2] = Default::default();
    for _ in 0..3 {
        times[0].push(replay(local.to_str().unwrap()));
        times[1].push(replay(url));
    }
    let _ = moto.kill();
    let _ = moto.wait();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let [disk, s3] = times.each_mut().map(median);
    println!(
        "replay_s3: 10,000,000 events ({:.0} MB in Parquet), medians of 3 rounds",
        bytes as f64 / 1e6
    );
    println!("  audit ship to moto (once)        {ship_s:6.2} s");
    println!(
        "  replay from local disk           {disk:6.2} s   ({:.1} M events/s)",
        10.0 / disk
    );
    println!(
        "  replay from s3:// (moto)         {s3:6.2} s   ({:.1} M events/s)",
        10.0 / s3
    );
    println!("  s3 / disk:                       {:.2}x", s3 / disk);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        // The writers' locks and journals are not part of the data.
        if name == "lock" || name.to_string_lossy().ends_with(".wal") {
            continue;
        }
        let target = to.join(&name);
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn walk(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            n += walk(&e.path());
        } else if e.path().extension().is_some_and(|x| x == "parquet") {
            n += e.metadata().unwrap().len();
        }
    }
    n
}
