//! Progress on stderr for long runs (replay, export, fuzz): a line with
//! what is done, the rate and the time left, redrawn at most ten times a
//! second, shown only when stderr is a terminal, the run has taken more
//! than a second, and `--quiet` was not given. Silent otherwise: output
//! that goes to a file or a pipe never carries it.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Whether a command should show progress.
pub fn wanted(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

pub struct Progress {
    label: &'static str,
    unit: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last: Option<Instant>,
    enabled: bool,
    /// Units since the clock was last read (reading it costs more than a
    /// unit of work), and how many to wait for.
    pending: u64,
    stride: u64,
    /// How long a run goes before the line shows (1 s;
    /// `FLIGHTREC_PROGRESS_AFTER_MS` overrides it, for tests).
    show_after: Duration,
}

const SHOW_AFTER: Duration = Duration::from_secs(1);
const REDRAW: Duration = Duration::from_millis(100);

impl Progress {
    pub fn new(label: &'static str, unit: &'static str, total: Option<u64>, enabled: bool) -> Self {
        Progress {
            label,
            unit,
            total,
            done: 0,
            started: Instant::now(),
            last: None,
            enabled,
            pending: 0,
            stride: 4096,
            show_after: std::env::var("FLIGHTREC_PROGRESS_AFTER_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(SHOW_AFTER, Duration::from_millis),
        }
    }

    /// Reads the clock every `n` units (1 for coarse units such as fuzz
    /// cases; the default 4,096 suits rows and calls).
    pub fn with_stride(mut self, n: u64) -> Self {
        self.stride = n.max(1);
        self
    }

    /// `n` more units done.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        if !self.enabled {
            return;
        }
        self.pending += n;
        if self.pending < self.stride {
            return;
        }
        self.pending = 0;
        let now = Instant::now();
        if now.duration_since(self.started) < self.show_after
            || self.last.is_some_and(|l| now.duration_since(l) < REDRAW)
        {
            return;
        }
        self.last = Some(now);
        self.draw(now);
    }

    fn draw(&self, now: Instant) {
        let secs = now.duration_since(self.started).as_secs_f64().max(1e-9);
        let rate = self.done as f64 / secs;
        let mut line = format!("\r{}: {} {}", self.label, self.done, self.unit);
        if let Some(total) = self.total.filter(|t| *t > 0) {
            let pct = (self.done as f64 / total as f64 * 100.0).min(100.0);
            line.push_str(&format!(" of {total} ({pct:.0}%)"));
            if rate > 0.0 && self.done < total {
                let eta = (total - self.done) as f64 / rate;
                line.push_str(&format!(", {} left", human(eta)));
            }
        }
        line.push_str(&format!(", {}/s  ", compact(rate)));
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
    }

    /// Ends the line, if one was drawn.
    pub fn finish(&mut self) {
        if self.enabled && self.last.is_some() {
            self.draw(Instant::now());
            eprintln!();
        }
    }
}

fn human(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.0} s")
    } else if secs < 3600.0 {
        format!("{}m{:02}s", (secs / 60.0) as u64, (secs % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (secs / 3600.0) as u64,
            ((secs % 3600.0) / 60.0) as u64
        )
    }
}

fn compact(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.1} M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1} k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates_read_well() {
        assert_eq!(human(42.0), "42 s");
        assert_eq!(human(125.0), "2m05s");
        assert_eq!(human(7300.0), "2h01m");
        assert_eq!(compact(8_123_456.0), "8.1 M");
        assert_eq!(compact(2_500.0), "2.5 k");
    }

    #[test]
    fn a_disabled_bar_only_counts() {
        let mut p = Progress::new("replay", "calls", Some(10), false);
        p.inc(10_000);
        p.finish();
        assert_eq!(p.done, 10_000);
        assert!(p.last.is_none());
    }
}
