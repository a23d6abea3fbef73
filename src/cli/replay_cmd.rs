//! `flightrec replay` and `flightrec demo`.

use super::{EXIT_FINDING, EXIT_INPUT, ReplayArgs};
use crate::audit::filter::RowFilter;
use crate::replay::scenario::{ScenarioInput, replay_mixed};
use crate::replay::{Candidate, ReplayConfig, replay as run_replay};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn input_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_INPUT)
}

fn truncate_name(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}

/// Loads candidate policies, naming each by its file stem (made unique).
pub(crate) fn candidates(paths: &[PathBuf]) -> Result<Vec<Candidate>, ExitCode> {
    let mut out: Vec<Candidate> = Vec::new();
    for path in paths {
        let policy = super::policy_cmd::load_policy(path)?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "policy".into());
        let mut name = stem.clone();
        let mut n = 2;
        while out.iter().any(|c| c.name == name) {
            name = format!("{stem}#{n}");
            n += 1;
        }
        out.push(Candidate {
            name,
            file: path.display().to_string(),
            policy,
        });
    }
    Ok(out)
}

pub fn replay(args: &ReplayArgs) -> ExitCode {
    let approvals = args.approvals;
    let reorder_window_us = match crate::time::parse_duration_us(&args.reorder_window) {
        Ok(us) => us,
        Err(e) => return input_error(format!("--reorder-window {e}")),
    };
    let built = (|| -> Result<(Vec<Candidate>, RowFilter), ExitCode> {
        Ok((candidates(&args.policies)?, args.filter.parse()?))
    })();
    let (candidates, filter) = match built {
        Ok(b) => b,
        Err(code) => return code,
    };
    let is_scenario = |p: &PathBuf| p.extension().is_some_and(|x| x == "yaml" || x == "yml");
    let (scenario_paths, recorded): (Vec<PathBuf>, Vec<PathBuf>) =
        args.inputs.iter().cloned().partition(is_scenario);
    let range = crate::audit::layout::TimeRange {
        from_us: filter.from_us,
        to_us: filter.to_us,
    };
    let config = ReplayConfig {
        approvals,
        filter,
        reorder_window_us,
        decisions_out: args.decisions_out.clone(),
        store: args.store.options(),
        progress: crate::progress::wanted(args.quiet),
        progress_total: if crate::progress::wanted(args.quiet) {
            crate::audit::read::resolve_inputs(&recorded, &args.store.options(), range)
                .ok()
                .map(|files| crate::audit::read::row_count(&files))
        } else {
            None
        },
    };
    let mut violations = Vec::new();
    let report = if !scenario_paths.is_empty() {
        if args.decisions_out.is_some() {
            return input_error(
                "--decisions-out applies to runs of recorded logs only; use `flightrec generate --policy` for a scenario's decided calls",
            );
        }
        let mut scenarios = Vec::new();
        for path in &scenario_paths {
            match super::scenario_cmd::load_scenario(path) {
                Ok(scenario) => scenarios.push(ScenarioInput {
                    name: path.display().to_string(),
                    scenario,
                }),
                Err(c) => return c,
            }
        }
        let invariants = match &args.invariants {
            Some(p) => match super::scenario_cmd::load_invariants(p) {
                Ok(i) => i,
                Err(c) => return c,
            },
            None => Vec::new(),
        };
        let mixed = match replay_mixed(&scenarios, &recorded, &candidates, &config) {
            Ok(m) => m,
            Err(e) => return input_error(e),
        };
        for (c, ev) in candidates.iter().zip(&mixed.scenario_events) {
            if let Some(v) = crate::scenario::invariants::check(&invariants, ev) {
                violations.push(format!(
                    "{}: invariant \"{}\" broken at call {}: {}",
                    c.name,
                    v.invariant,
                    v.event + 1,
                    v.message
                ));
            }
        }
        mixed.report
    } else {
        if args.invariants.is_some() {
            return input_error("--invariants applies to scenario inputs");
        }
        match run_replay(&args.inputs, candidates, &config) {
            Ok(r) => r,
            Err(e) => return input_error(e),
        }
    };
    let text = report.render(args.format);
    match &args.output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, text) {
                return input_error(format!("cannot write {}: {e}", path.display()));
            }
            eprintln!("report written to {}", path.display());
        }
        None => print!("{text}"),
    }
    for v in &violations {
        eprintln!("VIOLATION {v}");
    }
    if !violations.is_empty() {
        return ExitCode::from(EXIT_FINDING);
    }
    if args.fail_on_change && report.has_changes() {
        eprintln!("replay: decisions differ from the recording (--fail-on-change)");
        return ExitCode::from(EXIT_FINDING);
    }
    ExitCode::SUCCESS
}

/// The bundled data: the repository root when run from a checkout, else the
/// directory of the executable's grand-parent (target/release/..).
fn bundle_root() -> Option<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    if here.join("recordings").is_dir() {
        return Some(here.to_path_buf());
    }
    let cwd = std::env::current_dir().ok()?;
    cwd.join("recordings").is_dir().then_some(cwd)
}

pub fn demo() -> ExitCode {
    let Some(root) = bundle_root() else {
        return input_error(
            "the bundled recordings/ and policies/ were not found; run `flightrec demo` from the flightrec checkout",
        );
    };
    let mut policies: Vec<PathBuf> = match std::fs::read_dir(root.join("policies")) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect(),
        Err(e) => {
            return input_error(format!(
                "cannot read {}: {e}",
                root.join("policies").display()
            ));
        }
    };
    policies.sort();
    // Today's policy first: it recorded the sample, so its diff is the baseline.
    policies.sort_by_key(|p| !p.ends_with("lenient.yaml"));
    let candidates = match candidates(&policies) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let inputs = vec![root.join("recordings")];
    println!(
        "flightrec demo: replaying {} against {} candidate policies\n",
        inputs[0].display(),
        candidates.len()
    );
    let report = match run_replay(&inputs, candidates, &ReplayConfig::default()) {
        Ok(r) => r,
        Err(e) => return input_error(e),
    };
    print!("{}", report.to_table());

    // Generated runaway scenarios, closed loop against each policy.
    let mut scenarios: Vec<PathBuf> = std::fs::read_dir(root.join("scenarios"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "yaml") && !p.ends_with("invariants.yaml")
                })
                .collect()
        })
        .unwrap_or_default();
    scenarios.sort();
    let invariants =
        match super::scenario_cmd::load_invariants(&root.join("scenarios/invariants.yaml")) {
            Ok(i) => i,
            Err(c) => return c,
        };
    if !scenarios.is_empty() {
        println!("\n== scenarios (simulated closed loop: agents react to each policy's refusals)");
        println!(
            "{:<34} {:<18} {:>8} {:>8} {:>8}  invariants (scenarios/invariants.yaml)",
            "scenario", "policy", "calls", "through", "retries"
        );
    }
    let scenario_candidates = match self::candidates(&policies) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for path in &scenarios {
        let scenario = match super::scenario_cmd::load_scenario(path) {
            Ok(s) => s,
            Err(c) => return c,
        };
        let input = ScenarioInput {
            name: path.display().to_string(),
            scenario,
        };
        let mixed = match replay_mixed(
            std::slice::from_ref(&input),
            &[],
            &scenario_candidates,
            &ReplayConfig::default(),
        ) {
            Ok(m) => m,
            Err(e) => return input_error(e),
        };
        let scenario = input.scenario;
        for (c, ev) in mixed.report.candidates.iter().zip(&mixed.scenario_events) {
            let calls: u64 = c.agents_made.iter().map(|a| a.calls).sum();
            let through: u64 = c.agents_made.iter().map(|a| a.allowed).sum();
            let retries: u64 = c.agents_made.iter().map(|a| a.retries).sum();
            let verdict = match crate::scenario::invariants::check(&invariants, ev) {
                None => "hold".to_string(),
                Some(v) => format!("BROKEN: {} ({})", v.invariant, v.message),
            };
            println!(
                "{:<34} {:<18} {:>8} {:>8} {:>8}  {}",
                truncate_name(&scenario.name, 34),
                truncate_name(&c.policy, 18),
                calls,
                through,
                retries,
                verdict
            );
        }
    }
    println!(
        "\nNext: `flightrec replay recordings --policy policies/strict.yaml --format html -o report.html` for a page with a timeline."
    );
    ExitCode::SUCCESS
}
