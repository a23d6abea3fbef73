//! Helpers shared by the integration tests: the binary under test, files,
//! audit rows read back from Parquet, the Rust test MCP server, test peers
//! installed by `.ci/run`, and a small deterministic random generator.
//!
//! Each test crate uses a part of this module.
#![allow(dead_code)]

pub mod ocsf;
pub mod redis;
pub mod s3;

use flightrec::audit::layout;
use flightrec::audit::schema::{AuditRow, BatchView};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `flightrec` binary built for these tests.
pub fn flightrec() -> &'static str {
    env!("CARGO_BIN_EXE_flightrec")
}

pub fn bin() -> Command {
    Command::new(flightrec())
}

/// Runs `flightrec ARGS…` to completion (at most 5 minutes).
pub fn run(args: &[&str]) -> Output {
    output_within(
        bin().args(args).stdin(std::process::Stdio::null()),
        std::time::Duration::from_secs(300),
    )
}

/// Runs `flightrec audit verify AUDIT`, asserts every chain is intact, and
/// returns the output (its stdout names the chains checked).
pub fn assert_verified(audit: &Path) -> Output {
    let out = run(&["audit", "verify", audit.to_str().unwrap()]);
    assert!(out.status.success(), "audit verify: {}", stderr(&out));
    out
}

/// A thread that sends each line read from `from` to the returned channel,
/// until the stream ends or the receiver is gone.
pub fn line_channel(
    from: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(from).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Every row of one Parquet file in the audit schema, in file order.
pub fn file_rows(file: &Path) -> Vec<AuditRow> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
        .unwrap()
        .build()
        .unwrap();
    reader
        .flat_map(|b| BatchView::new(&b.unwrap()).rows().unwrap())
        .collect()
}

/// Every row of an audit directory, file by file in chain order.
pub fn dir_rows(dir: &Path) -> Vec<AuditRow> {
    layout::data_files(dir)
        .unwrap()
        .iter()
        .flat_map(|f| file_rows(f))
        .collect()
}

/// A path that `.ci/run` installs; a clear failure when it is missing.
pub fn need(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `bash .ci/run`, which installs the test peers",
        path.display()
    );
    path
}

/// The Rust test server (examples/test_mcp_server.rs), built on demand.
pub fn test_server() -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join("examples/test_mcp_server");
    BUILD.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--example", "test_mcp_server"])
            .current_dir(root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the test server failed");
    });
    assert!(
        p.exists(),
        "{} missing after `cargo build --example test_mcp_server`",
        p.display()
    );
    p
}

/// A small deterministic generator (xorshift) so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The rows of a `replay --decisions-out` file:
/// (event_id, policy, decision, rule, retry_after_ms, recorded_decision)
pub type DecisionRow = (String, String, String, Option<String>, Option<u64>, String);

pub fn read_decisions(path: &Path) -> Vec<DecisionRow> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::UInt64Type;
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
        let (id, policy, decision, rule, recorded) = (
            s("event_id"),
            s("policy"),
            s("decision"),
            s("rule"),
            s("recorded_decision"),
        );
        let retry = b
            .column_by_name("retry_after_ms")
            .unwrap()
            .as_primitive::<UInt64Type>()
            .clone();
        for i in 0..b.num_rows() {
            out.push((
                id.value(i).to_string(),
                policy.value(i).to_string(),
                decision.value(i).to_string(),
                (!rule.is_null(i)).then(|| rule.value(i).to_string()),
                (!retry.is_null(i)).then(|| retry.value(i)),
                recorded.value(i).to_string(),
            ));
        }
    }
    out
}

/// Waits for a child with a deadline: a hung peer fails the test instead of
/// hanging the run (the child is killed first).
pub fn wait_within(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Runs a command to completion within `limit` (killed and failed after),
/// capturing its output.
pub fn output_within(cmd: &mut Command, limit: std::time::Duration) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let ereader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let status = wait_within(&mut child, limit);
    Output {
        status,
        stdout: reader.join().unwrap(),
        stderr: ereader.join().unwrap(),
    }
}

/// Waits (at most 20 s) until the file at `path` has a line equal to `line`.
pub fn wait_for_line(path: &Path, line: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if std::fs::read_to_string(path).is_ok_and(|t| t.lines().any(|l| l == line)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} never got the line {line:?}",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// `output()` and `status()` with a deadline (5 minutes): a hung process
/// fails its test instead of hanging the run.
pub trait Timed {
    fn output_timed(&mut self) -> std::io::Result<Output>;
    fn status_timed(&mut self) -> std::io::Result<std::process::ExitStatus>;
}

impl Timed for Command {
    fn output_timed(&mut self) -> std::io::Result<Output> {
        Ok(output_within(
            self.stdin(std::process::Stdio::null()),
            std::time::Duration::from_secs(300),
        ))
    }

    fn status_timed(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.output_timed().map(|o| o.status)
    }
}

/// Writes `rows` as one plain Arrow Parquet file (no flightrec footer
/// metadata or chain state): a file "written by another tool".
pub fn write_plain_parquet(path: &Path, rows: &[AuditRow]) {
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        flightrec::audit::schema::schema(),
        None,
    )
    .unwrap();
    w.write(&flightrec::audit::schema::rows_to_batch(rows))
        .unwrap();
    w.close().unwrap();
}

/// Kills a child when the test ends, however it ends.
pub struct Guard(pub std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The official SDK's streamable-HTTP server (tests/e2e/sdk_http_server.py,
/// with `extra` arguments) on a free loopback port, once it accepts
/// connections.
pub fn sdk_http_server(extra: &[&str]) -> (Guard, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(need(root().join(".venv-sdk/bin/python")))
        .arg(root().join("tests/e2e/sdk_http_server.py"))
        .arg(port.to_string())
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let guard = Guard(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the SDK server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (guard, port)
}

/// Copies a directory tree (an audit directory a test then changes).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// `flightrec proxy ARGS…` (which must listen on HTTP): the process, the
/// address it printed, and its stderr lines after that one.
pub fn http_proxy_with_stderr(
    args: &[&str],
) -> (
    Guard,
    std::net::SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    use std::process::Stdio;
    let mut child = bin()
        .arg("proxy")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = line_channel(child.stderr.take().unwrap());
    let guard = Guard(child);
    loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the proxy prints its address");
        if let Some(rest) = line.strip_prefix("flightrec: listening on http://") {
            let addr = rest.split('/').next().unwrap().parse().unwrap();
            return (guard, addr, rx);
        }
    }
}

/// As [`http_proxy_with_stderr`], its stderr drained (so the proxy never
/// blocks writing it).
pub fn http_proxy(args: &[&str]) -> (Guard, std::net::SocketAddr) {
    let (guard, addr, rx) = http_proxy_with_stderr(args);
    std::thread::spawn(move || for _ in rx {});
    (guard, addr)
}

/// Stops a proxy with SIGTERM and waits for it (it flushes its log).
pub fn stop(mut p: Guard) -> std::process::ExitStatus {
    // SAFETY: kill(2) on a child the test started.
    unsafe {
        libc::kill(p.0.id() as i32, libc::SIGTERM);
    }
    wait_within(&mut p.0, std::time::Duration::from_secs(60))
}
