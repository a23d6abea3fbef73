//! Scenario generation and fuzzing throughput (issue 6): events generated
//! per second (open loop and closed loop) and fuzz cases per second.
//!
//! Run: `cargo bench --bench scenario`.

use divan::{Bencher, counter::ItemsCount};
use flightrec::policy::{ApprovalMode, Policy};
use flightrec::scenario::Scenario;
use flightrec::scenario::fuzz::{FuzzOptions, FuzzResult, run};
use flightrec::scenario::invariants;
use flightrec::scenario::sim::{plan, simulate};
use std::path::Path;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The steady mix scaled to a day: 9 agents, ~24,000 planned calls.
fn day() -> Scenario {
    let text = std::fs::read_to_string(root().join("scenarios/steady-mix.yaml"))
        .unwrap()
        .replace("duration: 1h", "duration: 24h");
    Scenario::from_yaml(&text, "day.yaml").unwrap()
}

#[divan::bench(sample_count = 10)]
fn generate_open_loop(bencher: Bencher) {
    let s = day();
    let n = plan(&s).len();
    bencher.counter(ItemsCount::new(n)).bench(|| plan(&s).len());
}

#[divan::bench(sample_count = 10)]
fn generate_closed_loop_strict(bencher: Bencher) {
    let s = day();
    let policy = Policy::load(&root().join("policies/strict.yaml")).unwrap();
    let n = simulate(&s, Some(&policy), ApprovalMode::Deny).len();
    bencher
        .counter(ItemsCount::new(n))
        .bench(|| simulate(&s, Some(&policy), ApprovalMode::Deny).len());
}

/// 256 cases (the default) of up to 64 calls against a policy that holds.
#[divan::bench(sample_count = 5)]
fn fuzz_default_run(bencher: Bencher) {
    let (policy, _) = Policy::from_yaml(
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: per agent\n        rate_limit: {max: 3, window: 60s, per: agent}\n",
        "safe.yaml",
    )
    .unwrap();
    let invs = invariants::from_yaml(
        "invariants:\n  - name: copy budget per agent\n    max_allowed: {match: {tool: copy_image_set}, max: 3, window: 60s, per: agent}\n",
        "inv.yaml",
    )
    .unwrap();
    let opts = FuzzOptions::default();
    bencher
        .counter(ItemsCount::new(opts.cases as usize))
        .bench(|| {
            assert!(matches!(
                run(&policy, &invs, &opts),
                FuzzResult::Passed { .. }
            ));
        });
}
