//! `audit verify`, `audit append` (hidden), `export` and `import intercept`.

use super::{EXIT_FINDING, EXIT_INPUT, ExportArgs};
use crate::audit::export::ExportFormat;
use crate::audit::filter::RowFilter;
use crate::audit::journal::SyncMode;
use crate::audit::remote::{self, StoreDir, StoreOptions};
use crate::audit::{AuditRow, Recorder, RecorderConfig, export, import, read, ship, verify};
use clap::ValueEnum;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn input_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_INPUT)
}

pub fn verify(dir: &Path, store: &StoreOptions) -> ExitCode {
    let text = dir.to_string_lossy();
    let local = remote::file_url_path(&text);
    let result = if local.is_none() && remote::is_url(&text) {
        match StoreDir::parse(&text, store) {
            Ok(d) => verify::verify_store(&d),
            Err(e) => Err(e),
        }
    } else {
        verify::verify_dir(local.as_deref().unwrap_or(dir))
    };
    match result {
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
    let store = args.store.options();
    let range = crate::audit::layout::TimeRange {
        from_us: filter.from_us,
        to_us: filter.to_us,
    };
    let files = match read::resolve_inputs(&args.inputs, &store, range) {
        Ok(f) => f,
        Err(e) => return input_error(e),
    };
    let wanted = crate::progress::wanted(args.quiet);
    let total = wanted.then(|| read::row_count(&files));
    let mut progress = crate::progress::Progress::new("export", "rows", total, wanted);
    let out_text = args.output.to_string_lossy();
    if format == ExportFormat::OcsfParquet {
        return export_lake(args, files, &filter, &out_text, &mut progress);
    }
    let result = if remote::file_url_path(&out_text).is_none() && remote::is_url(&out_text) {
        StoreDir::parse(&out_text, &store)
            .and_then(|dest| export::export_to_store(files, &filter, format, &dest, &mut progress))
    } else {
        let out = remote::file_url_path(&out_text).unwrap_or_else(|| args.output.clone());
        export::export(files, &filter, format, &out, &mut progress)
    };
    match result {
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

/// `export --format ocsf-parquet -o DIR --region R --account-id A`.
fn export_lake(
    args: &ExportArgs,
    files: Vec<crate::audit::remote::DataFile>,
    filter: &RowFilter,
    out_text: &str,
    progress: &mut crate::progress::Progress,
) -> ExitCode {
    let (Some(region), Some(account)) = (&args.region, &args.account_id) else {
        return input_error(
            "--format ocsf-parquet needs --region and --account-id (the Security Lake partitions)",
        );
    };
    let target = match export::lake::LakeTarget::new(region, account) {
        Ok(t) => t,
        Err(e) => return input_error(e),
    };
    if remote::file_url_path(out_text).is_none() && remote::is_url(out_text) {
        let result = StoreDir::parse(out_text, &args.store.options())
            .and_then(|dest| export::export_lake_to_store(files, filter, target, &dest, progress));
        return match result {
            Ok((s, keys)) => {
                eprintln!(
                    "exported {} of {} rows to {} ({} ocsf-parquet files)",
                    s.rows_written,
                    s.rows_read,
                    out_text,
                    keys.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => input_error(e),
        };
    }
    let out = remote::file_url_path(out_text).unwrap_or_else(|| args.output.clone());
    match export::export_lake(files, filter, target, &out, progress) {
        Ok((s, written)) => {
            eprintln!(
                "exported {} of {} rows to {} ({} ocsf-parquet files)",
                s.rows_written,
                s.rows_read,
                args.output.display(),
                written.len()
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

/// The `--retain`/`--lock` pair, checked.
pub(crate) fn lock_arg(
    lock: &super::LockArgs,
) -> Result<Option<(ship::LockMode, std::time::Duration)>, ExitCode> {
    match (&lock.lock, &lock.retain) {
        (Some(mode), Some(retain)) => match crate::time::parse_duration_us(retain) {
            Ok(us) => Ok(Some((*mode, std::time::Duration::from_micros(us as u64)))),
            Err(e) => Err(input_error(format!("--retain {e}"))),
        },
        _ => Ok(None),
    }
}

/// `audit ship D URL`: ships what waits, now.
pub fn ship(dir: &Path, dest: &str, lock: &super::LockArgs, store: &StoreOptions) -> ExitCode {
    let lock = match lock_arg(lock) {
        Ok(l) => l,
        Err(code) => return code,
    };
    if !dir.is_dir() {
        return input_error(format!("{}: not an audit directory", dir.display()));
    }
    let dest = match StoreDir::parse(dest, store) {
        Ok(d) => d,
        Err(e) => return input_error(e),
    };
    let target = ship::ShipTarget { dest, lock };
    let run = ship::ship_waiting(dir, &target, None);
    for r in &run.shipped {
        println!("shipped {} -> {}", r.file, r.url);
    }
    match run.error {
        Some(e) => {
            eprintln!(
                "error: {e} ({} shipped, {} still waiting)",
                run.shipped.len(),
                run.waiting
            );
            ExitCode::from(EXIT_INPUT)
        }
        None => {
            eprintln!(
                "{} file(s) shipped to {}, none waiting",
                run.shipped.len(),
                target.dest.url()
            );
            ExitCode::SUCCESS
        }
    }
}

/// `audit status D`: sealed, shipped and waiting files.
pub fn status(dir: &Path, json: bool) -> ExitCode {
    if !dir.is_dir() {
        return input_error(format!("{}: not an audit directory", dir.display()));
    }
    let (files, receipts, waiting) = match (|| {
        Ok::<_, crate::audit::AuditError>((
            crate::audit::layout::data_files(dir)?,
            ship::receipts(dir)?,
            ship::waiting(dir, None)?,
        ))
    })() {
        Ok(v) => v,
        Err(e) => return input_error(e),
    };
    let state: Option<serde_json::Value> =
        std::fs::read_to_string(crate::audit::layout::state_dir(dir).join(ship::SHIP_STATE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
    let rel = |p: &PathBuf| {
        p.strip_prefix(dir)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let sealed_bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let mut destinations: Vec<String> = receipts
        .iter()
        .map(|r| {
            r.url
                .strip_suffix(&r.file)
                .unwrap_or(&r.url)
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    destinations.sort();
    destinations.dedup();
    if json {
        let v = serde_json::json!({
            "dir": dir.display().to_string(),
            "sealed": files.len(),
            "sealed_bytes": sealed_bytes,
            "shipped": receipts.len(),
            "waiting": waiting.iter().map(rel).collect::<Vec<_>>(),
            "destinations": destinations,
            "locked": receipts.iter().filter(|r| r.lock.is_some()).count(),
            "last_attempt": state,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return ExitCode::SUCCESS;
    }
    println!("{}", dir.display());
    println!("  sealed:  {} file(s), {} bytes", files.len(), sealed_bytes);
    let locked = receipts.iter().filter(|r| r.lock.is_some()).count();
    println!(
        "  shipped: {} file(s){}{}",
        receipts.len(),
        if destinations.is_empty() {
            String::new()
        } else {
            format!(" to {}", destinations.join(", "))
        },
        if locked > 0 {
            format!(", {locked} under a retention lock")
        } else {
            String::new()
        }
    );
    println!("  waiting: {} file(s)", waiting.len());
    for w in &waiting {
        println!("    {}", rel(w));
    }
    if let Some(s) = state {
        if let Some(err) = s["last_error"].as_str() {
            println!(
                "  last attempt {}: failed: {err}",
                s["last_attempt"].as_str().unwrap_or("?")
            );
        } else if let Some(at) = s["last_attempt"].as_str() {
            println!("  last attempt {at}: ok");
        }
    }
    ExitCode::SUCCESS
}
