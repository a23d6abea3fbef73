//! Warm start: the counter state a policy would have now, rebuilt from the
//! audit log. The proxy starts with it, so a restart (a deploy, a crash)
//! gives no agent a fresh budget.
//!
//! Only the rows of the policy's longest window before now matter: they are
//! read (only the partitions and row groups that can hold them, only the
//! columns replay needs) and decided by the same core on their recorded
//! time, exactly as replay does: allowed calls count, a JSON-RPC error gives
//! its counts back when its answer arrived, `interrupted` calls count
//! (conservative), and a call the recording refused but this policy allows
//! counts as if it ran.

use crate::audit::AuditError;
use crate::audit::filter::RowFilter;
use crate::audit::layout;
use crate::policy::{ApprovalMode, Policy, PolicyState};
use crate::replay::engine::{RecordedDecider, ReplayConfig, stream_files};
use crate::replay::report::Accumulator;
use crate::replay::source::SourceStats;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What warming up found.
pub struct Warm {
    pub state: PolicyState,
    /// Calls replayed into the counters.
    pub calls: u64,
    /// The start of the window read (µs since the epoch).
    pub since_us: i64,
}

/// The state `policy`'s counters would be in at `now_us`, from the audit
/// log in `dir`.
pub fn warm_state(policy: &Policy, dir: &Path, now_us: i64) -> Result<Warm, AuditError> {
    let mut state = PolicyState::new(policy);
    let Some(horizon) = policy.counters().iter().map(|c| c.window.len_us).max() else {
        return Ok(Warm {
            state,
            calls: 0,
            since_us: now_us,
        });
    };
    let since_us = now_us.saturating_sub(horizon);
    let files: Vec<crate::audit::remote::DataFile> = layout::data_files_from(dir, since_us)?
        .into_iter()
        .map(crate::audit::remote::DataFile::Local)
        .collect();
    let config = ReplayConfig {
        filter: RowFilter {
            from_us: Some(since_us),
            to_us: Some(now_us),
            ..RowFilter::default()
        },
        progress: false,
        ..ReplayConfig::default()
    };
    let stats = Arc::new(Mutex::new(SourceStats::default()));
    let events = stream_files(vec![files], &config, policy.reads(), stats)?;
    let mut decider = RecordedDecider::default();
    let mut acc = Accumulator::new("warm start", "", &policy.sha256);
    let mut calls = 0u64;
    for event in crate::replay::source::events_of(events) {
        let (batch, row) = event?;
        decider.decide(
            policy,
            &mut state,
            &batch.event(row),
            ApprovalMode::Deny,
            &mut acc,
            |_| (),
        );
        calls += 1;
    }
    decider.finish(&mut state);
    Ok(Warm {
        state,
        calls,
        since_us,
    })
}
