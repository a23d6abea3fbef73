//! `flightrec generate` and `flightrec fuzz`.

use super::{EXIT_FINDING, EXIT_INPUT, FuzzArgs, GenerateArgs};
use crate::audit::file_writer::AuditFileWriter;
use crate::policy::{ApprovalMode, PolicyError};
use crate::scenario::fuzz::{FuzzOptions, FuzzResult};
use crate::scenario::sim::{simulate, to_rows};
use crate::scenario::{Scenario, invariants};
use std::path::Path;
use std::process::ExitCode;

fn input_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_INPUT)
}

pub(crate) fn load_scenario(path: &Path) -> Result<Scenario, ExitCode> {
    Scenario::load(path).map_err(|e| {
        super::policy_cmd::report_policy_error(&e);
        ExitCode::from(EXIT_INPUT)
    })
}

pub(crate) fn load_invariants(path: &Path) -> Result<Vec<invariants::Invariant>, ExitCode> {
    invariants::load(path).map_err(|e: PolicyError| {
        super::policy_cmd::report_policy_error(&e);
        ExitCode::from(EXIT_INPUT)
    })
}

pub fn generate(args: &GenerateArgs) -> ExitCode {
    let scenario = match load_scenario(&args.scenario) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let policy = match &args.policy {
        Some(p) => match super::policy_cmd::load_policy(p) {
            Ok(p) => Some(p),
            Err(c) => return c,
        },
        None => None,
    };
    let events = simulate(&scenario, policy.as_ref(), ApprovalMode::Deny);
    let rows = to_rows(&scenario, &events, policy.as_ref());
    let mut progress = crate::progress::Progress::new(
        "generate",
        "rows",
        Some(rows.len() as u64),
        crate::progress::wanted(args.quiet),
    );
    let written = AuditFileWriter::create(&args.output).and_then(|mut w| {
        for r in rows {
            w.push(r)?;
            progress.inc(1);
        }
        w.finish()
    });
    progress.finish();
    match written {
        Ok(n) => {
            eprintln!(
                "generated {n} call(s) from {} into {}{}",
                args.scenario.display(),
                args.output.display(),
                if policy.is_some() {
                    " (closed loop: decisions recorded)"
                } else {
                    " (decisions unrecorded)"
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => input_error(e),
    }
}

pub fn fuzz(args: &FuzzArgs) -> ExitCode {
    let policy = match super::policy_cmd::load_policy(&args.policy) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let invs = match load_invariants(&args.invariants) {
        Ok(i) => i,
        Err(c) => return c,
    };
    let opts = FuzzOptions {
        cases: args.cases,
        seed: args.seed,
        max_events: args.max_events,
        progress: crate::progress::wanted(args.quiet),
    };
    match crate::scenario::fuzz::run(&policy, &invs, &opts) {
        FuzzResult::Passed {
            cases,
            events,
            seconds,
        } => {
            println!(
                "no violation: {cases} cases, {events} calls decided in {seconds:.2} s ({:.0} cases/s); {} invariant(s) held",
                cases as f64 / seconds.max(1e-9),
                invs.len()
            );
            ExitCode::SUCCESS
        }
        FuzzResult::Failed {
            scenario,
            violation,
            yaml,
            cases_run,
        } => {
            eprintln!(
                "VIOLATION of \"{}\" after {cases_run} case(s), shrunk to {} call(s): {}",
                violation.invariant,
                scenario.calls.len(),
                violation.message
            );
            print!("{yaml}");
            if let Some(out) = &args.output {
                if let Err(e) = std::fs::write(out, &yaml) {
                    return input_error(format!("cannot write {}: {e}", out.display()));
                }
                eprintln!("counterexample written to {}", out.display());
            }
            ExitCode::from(EXIT_FINDING)
        }
    }
}
