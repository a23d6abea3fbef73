//! `audit verify`, `audit append` (hidden), `export` and `import intercept`.

use super::{EXIT_FINDING, EXIT_INPUT, ExportArgs};
use crate::audit::export::ExportFormat;
use crate::audit::filter::RowFilter;
use crate::audit::journal::SyncMode;
use crate::audit::{AuditRow, Recorder, RecorderConfig, export, import, read, verify};
use clap::ValueEnum;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn input_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_INPUT)
}

pub fn verify(dir: &Path) -> ExitCode {
    match verify::verify_dir(dir) {
        Err(e) => input_error(e),
        Ok(Err(finding)) => {
            eprintln!("FAILED: {finding}");
            ExitCode::from(EXIT_FINDING)
        }
        Ok(Ok(v)) => {
            match v.chains.as_slice() {
                [one] => println!(
                    "ok: {} — {} rows in {} files, chain intact, last hash {}",
                    dir.display(),
                    v.rows,
                    v.files,
                    one.last_hash
                ),
                chains => {
                    println!(
                        "ok: {} — {} rows in {} files, {} chains intact",
                        dir.display(),
                        v.rows,
                        v.files,
                        chains.len()
                    );
                    for c in chains {
                        let name = if c.writer.is_empty() {
                            "(original)"
                        } else {
                            &c.writer
                        };
                        println!(
                            "  writer {name}: {} rows in {} files, last hash {}",
                            c.rows, c.files, c.last_hash
                        );
                    }
                }
            }
            ExitCode::SUCCESS
        }
    }
}

/// Reports what opening an audit directory recovered, on stderr.
pub fn report_recovery(rec: &Recorder) {
    for line in rec.recovery().report(rec.dir()) {
        eprintln!("flightrec: {line}");
    }
}

#[derive(serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum AppendOp {
    Record {
        row: AuditRow,
    },
    Begin {
        row: AuditRow,
    },
    Complete {
        event_id: String,
        outcome: crate::policy::Outcome,
    },
}

pub fn append(dir: &Path, rotate_bytes: Option<u64>, sync: SyncMode) -> ExitCode {
    let mut config = RecorderConfig {
        sync,
        ..RecorderConfig::default()
    };
    if let Some(b) = rotate_bytes {
        config.rotate_bytes = b;
    }
    let mut rec = match Recorder::open(dir, config) {
        Ok(r) => r,
        Err(e) => return input_error(e),
    };
    report_recovery(&rec);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => return input_error(format!("<stdin>: {e}")),
        };
        if line.trim().is_empty() {
            continue;
        }
        let op: AppendOp = match serde_json::from_str(&line) {
            Ok(op) => op,
            Err(e) => return input_error(format!("<stdin>:{}: {e}", i + 1)),
        };
        let (result, id) = match op {
            AppendOp::Record { row } => {
                let id = row.event_id.clone();
                (rec.record(row), id)
            }
            AppendOp::Begin { row } => {
                let id = row.event_id.clone();
                (rec.begin(row), id)
            }
            AppendOp::Complete { event_id, outcome } => {
                (rec.complete(&event_id, |r| r.outcome = outcome), event_id)
            }
        };
        if let Err(e) = result {
            return input_error(e);
        }
        if writeln!(out, "ack {id}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    match rec.close() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => input_error(e),
    }
}

pub fn export(args: &ExportArgs) -> ExitCode {
    let format: ExportFormat = args.format;
    let filter = match args.filter.parse() {
        Ok(f) => RowFilter {
            decision: args.decision,
            ..f
        },
        Err(code) => return code,
    };
    let files = match read::resolve_inputs(&args.inputs) {
        Ok(f) => f,
        Err(e) => return input_error(e),
    };
    let wanted = crate::progress::wanted(args.quiet);
    let total = wanted.then(|| read::row_count(&files));
    let mut progress = crate::progress::Progress::new("export", "rows", total, wanted);
    match export::export(files, &filter, format, &args.output, &mut progress) {
        Ok(s) => {
            eprintln!(
                "exported {} of {} rows to {} ({})",
                s.rows_written,
                s.rows_read,
                args.output.display(),
                format
                    .to_possible_value()
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => input_error(e),
    }
}

pub fn import_intercept(events: &[PathBuf], output: &Path, quiet: bool) -> ExitCode {
    // Progress in bytes of the input files.
    let wanted = crate::progress::wanted(quiet);
    let total = wanted.then(|| {
        events
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    });
    let mut progress = crate::progress::Progress::new("import", "bytes", total, wanted);
    match import::import_intercept(events, output, &mut progress) {
        Ok(s) => {
            for bad in &s.bad_lines {
                eprintln!("error: {bad}");
            }
            let skipped: Vec<String> = s.skipped.iter().map(|(k, n)| format!("{n} {k}")).collect();
            eprintln!(
                "imported {} tool call(s) into {}{}",
                s.rows,
                output.display(),
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!("; skipped other events: {}", skipped.join(", "))
                }
            );
            if s.bad_lines.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("{} bad line(s) skipped", s.bad_lines.len());
                ExitCode::from(EXIT_INPUT)
            }
        }
        Err(e) => input_error(e),
    }
}
