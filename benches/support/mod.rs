//! What the proxy latency benches share: building the release binary with
//! the example server they call, where it lands, and percentiles.

use std::path::{Path, PathBuf};
use std::process::Command;

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
