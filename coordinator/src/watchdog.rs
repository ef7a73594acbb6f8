//! The progress watchdog. Heartbeats come from a worker's async runtime, so a worker whose
//! device call never returns (a hung GPU) keeps heartbeating and would hold its segment for
//! ever. Its heartbeats also carry the count of optimiser iterations, which only the render
//! thread advances: when that count stops moving for longer than `factor` times the longest gap
//! seen so far in the same attempt (and at least `floor`), the attempt is expired and the
//! segment retried elsewhere.
//!
//! A count of zero (set-up: building the engine, fetching the start state; or a worker too old
//! to count) is not watched: the lease covers a worker that is gone, and set-up has no
//! iterations to measure a pace by. State lives in memory; after a restart it starts afresh.

use crate::db::AttemptId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

struct Seen {
    iterations: u64,
    changed_ms: i64,
    longest_gap_ms: i64,
}

pub struct Watchdog {
    floor_ms: i64,
    factor: f64,
    seen: Mutex<HashMap<AttemptId, Seen>>,
}

impl Watchdog {
    pub fn new(floor: Duration, factor: f64) -> Self {
        Self { floor_ms: floor.as_millis() as i64, factor, seen: Mutex::default() }
    }

    /// Records a heartbeat's iteration count; returns why the attempt counts as stalled, if it
    /// does.
    pub fn observe(&self, attempt: AttemptId, iterations: u64, now: i64) -> Option<String> {
        if iterations == 0 {
            return None;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let s = seen.entry(attempt).or_insert(Seen { iterations, changed_ms: now, longest_gap_ms: 0 });
        if iterations != s.iterations {
            s.longest_gap_ms = s.longest_gap_ms.max(now - s.changed_ms);
            s.iterations = iterations;
            s.changed_ms = now;
            return None;
        }
        let quiet = now - s.changed_ms;
        let limit = self.floor_ms.max((self.factor * s.longest_gap_ms as f64) as i64);
        if quiet <= limit {
            return None;
        }
        let reason = format!(
            "no progress for {:.1} s after {iterations} iterations (allowed {:.1} s): the render seems hung",
            quiet as f64 / 1000.0,
            limit as f64 / 1000.0
        );
        seen.remove(&attempt);
        Some(reason)
    }

    /// The attempt ended; stop watching it.
    /// Attempts watched now.
    pub fn watched(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn forget(&self, attempt: AttemptId) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).remove(&attempt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_that_stops_moving_is_stalled_after_the_larger_of_floor_and_factor_times_pace() {
        let w = Watchdog::new(Duration::from_millis(1000), 10.0);
        assert_eq!(w.observe(AttemptId(1), 0, 0), None, "set-up is not watched");
        assert_eq!(w.observe(AttemptId(1), 0, 1_000_000), None);
        // Iterations every 50 ms: ten times that is under the floor (1 s), which rules.
        for (i, t) in [(1, 0), (2, 50), (3, 100)] {
            assert_eq!(w.observe(AttemptId(1), i, t), None);
        }
        assert_eq!(w.observe(AttemptId(1), 3, 1100), None, "quiet for exactly the floor");
        let why = w.observe(AttemptId(1), 3, 1101).expect("stalled");
        assert!(why.starts_with("no progress for 1.0 s after 3 iterations (allowed 1.0 s)"), "{why}");
        // A slow render (an iteration every 500 ms, so 5 s allowed) is not mistaken for a hung one.
        for (i, t) in [(1, 0), (2, 500), (3, 1000)] {
            assert_eq!(w.observe(AttemptId(2), i, t), None);
        }
        assert_eq!(w.observe(AttemptId(2), 3, 6000), None);
        assert!(w.observe(AttemptId(2), 3, 6001).is_some());
        // A finished attempt is forgotten: a later count starts afresh.
        w.observe(AttemptId(3), 5, 0);
        w.forget(AttemptId(3));
        assert_eq!(w.observe(AttemptId(3), 5, 10_000), None);
    }
}
