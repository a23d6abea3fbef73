//! `flightrec policy check` and `flightrec policy eval`.

use super::EXIT_INPUT;
use crate::eval::{self, EvalError};
use crate::policy::{Policy, PolicyError};
use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;
use std::process::ExitCode;

/// Validates each file; every problem goes to stderr as `file:line:col: …`.
pub fn check(files: &[std::path::PathBuf], quiet: bool) -> ExitCode {
    let mut failed = 0usize;
    for file in files {
        match Policy::load_with_warnings(file) {
            Ok((policy, warnings)) => {
                for w in &warnings {
                    eprintln!("warning: {w}");
                }
                if !quiet {
                    println!(
                        "ok: {} ({} tool keys, {} rules, {} counters, default {})",
                        file.display(),
                        policy.tool_key_count(),
                        policy.rule_count(),
                        policy.counters().len(),
                        if policy.default_deny { "deny" } else { "allow" }
                    );
                }
            }
            Err(e) => {
                failed += 1;
                report_policy_error(&e);
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} policy file(s) invalid", files.len());
        ExitCode::from(EXIT_INPUT)
    } else {
        ExitCode::SUCCESS
    }
}

pub(crate) fn report_policy_error(e: &PolicyError) {
    match e {
        PolicyError::Invalid(problems) => {
            for p in problems {
                eprintln!("error: {p}");
            }
        }
        PolicyError::Io { .. } => eprintln!("error: {e}"),
    }
}

/// Loads a policy or reports why not.
pub(crate) fn load_policy(path: &Path) -> Result<Policy, ExitCode> {
    Policy::load(path).map_err(|e| {
        report_policy_error(&e);
        ExitCode::from(EXIT_INPUT)
    })
}

pub fn eval(policy_path: &Path, calls: Option<&Path>, keep_going: bool) -> ExitCode {
    let policy = match load_policy(policy_path) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let stdout = io::stdout().lock();
    let out = io::BufWriter::new(stdout);
    let (result, source) = match calls {
        Some(path) => match File::open(path) {
            Ok(f) => (
                eval::run(&policy, BufReader::new(f), out, keep_going),
                path.display().to_string(),
            ),
            Err(e) => {
                eprintln!("error: cannot read calls file {}: {e}", path.display());
                return ExitCode::from(EXIT_INPUT);
            }
        },
        None => (
            eval::run(&policy, io::stdin().lock(), out, keep_going),
            "<stdin>".to_string(),
        ),
    };
    match result {
        Ok(summary) => {
            if summary.bad_lines > 0 {
                eprintln!("{source}: {} bad line(s) skipped", summary.bad_lines);
                return ExitCode::from(EXIT_INPUT);
            }
            ExitCode::SUCCESS
        }
        Err(EvalError::BadLine { line, message }) => {
            eprintln!("error: {source}:{line}: {message}");
            eprintln!(
                "  hint: each line is a JSON call record {{\"ts\", \"session\", \"agent\", \"server\", \"tool\", \"args\"}}; pass --keep-going to skip bad lines"
            );
            ExitCode::from(EXIT_INPUT)
        }
        Err(e) => {
            eprintln!("error: {source}: {e}");
            ExitCode::from(EXIT_INPUT)
        }
    }
}
