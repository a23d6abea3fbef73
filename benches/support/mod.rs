//! What the proxy latency benches share: building the release binary with
//! the example server they call, where it lands, percentiles, and a
//! line-delimited JSON-RPC peer over a child's stdio.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

/// Where `cargo build --release` puts the binary and examples.
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release")
}

/// Builds `flightrec` and the example server `example` in release mode.
pub fn build_release(example: &str) {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--bin",
            "flightrec",
            "--example",
            example,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build");
    assert!(status.success(), "cargo build --release failed");
}

/// The `p` quantile (0.0–1.0) of already sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A child speaking newline-delimited JSON-RPC on stdio, initialized.
pub struct Peer {
    pub child: Child,
    pub stdin: ChildStdin,
    pub stdout: BufReader<ChildStdout>,
    pub line: String,
}

impl Peer {
    pub fn start(cmd: &mut Command) -> Peer {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut p = Peer {
            child,
            stdin,
            stdout,
            line: String::new(),
        };
        p.round_trip(r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#);
        p
    }

    /// One request and its answer; returns the round trip in µs.
    pub fn round_trip(&mut self, req: &str) -> f64 {
        self.line.clear();
        let t = Instant::now();
        self.stdin.write_all(req.as_bytes()).unwrap();
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
        self.stdout.read_line(&mut self.line).unwrap();
        t.elapsed().as_secs_f64() * 1e6
    }
}
