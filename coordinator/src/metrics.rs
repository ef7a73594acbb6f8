//! Prometheus metrics of the farm, served on `serve --http` at `/metrics`.
//!
//! Gauges (jobs, segments and workers by state) are read from the database at each scrape, so
//! they are right after a restart and cost nothing between scrapes. The counters of attempts
//! and frames are kept in the database by a trigger (`db` migration 4): every code path that
//! ends an attempt (a completion, a failure, a lease found expired during any call, the
//! sweeper, the watchdog) counts, and the counts survive restarts and deleted jobs. Only the
//! histograms live in memory, as Prometheus expects of them.

use crate::db;
use crate::error::Result;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use rusqlite::Connection;
use std::sync::atomic::Ordering;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: String,
}

pub const JOB_STATES: [&str; 6] = ["queued", "running", "stitching", "succeeded", "failed", "cancelled"];
pub const SEGMENT_STATES: [&str; 4] = ["waiting", "ready", "running", "done"];
pub const WORKER_STATES: [&str; 3] = ["idle", "busy", "quarantined"];
pub const ATTEMPT_OUTCOMES: [&str; 4] = ["succeeded", "failed", "expired", "cancelled"];
/// A worker not heard from for this long is not counted: it left or died.
const WORKER_SEEN_MS: i64 = 60_000;

type HistogramFamily = Family<DirectionLabel, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    jobs: Family<StateLabel, Gauge>,
    segments: Family<StateLabel, Gauge>,
    workers: Family<StateLabel, Gauge>,
    attempts: Family<OutcomeLabel, Counter>,
    frames: Counter,
    /// Wall time of a successful attempt, from its grant to its recorded completion.
    pub segment_seconds: Histogram,
    /// Wall time of moving a segment's results in (`upload`: the CompleteSegment call, checks
    /// and store included).
    pub handoff_seconds: HistogramFamily,
}

fn handoff_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14)) // 10 ms .. 82 s
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let jobs = Family::<StateLabel, Gauge>::default();
        let segments = Family::<StateLabel, Gauge>::default();
        let workers = Family::<StateLabel, Gauge>::default();
        let attempts = Family::<OutcomeLabel, Counter>::default();
        let frames = Counter::default();
        let segment_seconds = Histogram::new(exponential_buckets(1.0, 2.0, 14)); // 1 s .. 2.3 h
        let handoff_seconds: HistogramFamily = Family::new_with_constructor(handoff_histogram);
        registry.register("gramzoom_jobs", "Jobs by state", jobs.clone());
        registry.register(
            "gramzoom_segments",
            "Segments of unfinished jobs by state (ready is the queue)",
            segments.clone(),
        );
        registry.register("gramzoom_workers", "Workers heard from in the last minute, by state", workers.clone());
        registry.register("gramzoom_attempts", "Attempts ended, by outcome", attempts.clone());
        registry.register("gramzoom_frames_rendered", "Frames of successful attempts", frames.clone());
        registry.register_with_unit(
            "gramzoom_segment",
            "Wall time of successful attempts",
            Unit::Seconds,
            segment_seconds.clone(),
        );
        registry.register_with_unit(
            "gramzoom_handoff",
            "Wall time of segment uploads as the coordinator sees them",
            Unit::Seconds,
            handoff_seconds.clone(),
        );
        Self { registry, jobs, segments, workers, attempts, frames, segment_seconds, handoff_seconds }
    }
}

/// What a scrape reads from the database.
#[derive(Debug, Default)]
pub struct Snapshot {
    jobs: Vec<(String, i64)>,
    segments: Vec<(String, i64)>,
    workers: Vec<(String, i64)>,
    counters: Vec<(String, u64)>,
}

fn grouped(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Reads the gauges and counters; one read transaction, so they agree with each other.
pub fn snapshot(conn: &mut Connection, now: i64) -> Result<Snapshot> {
    let tx = conn.transaction()?;
    let s = Snapshot {
        jobs: grouped(&tx, "SELECT state, COUNT(*) FROM jobs GROUP BY state", [])?,
        segments: grouped(
            &tx,
            "SELECT s.state, COUNT(*) FROM segments s JOIN jobs j ON j.seq = s.job
             WHERE j.state IN ('queued', 'running', 'stitching') GROUP BY s.state",
            [],
        )?,
        workers: grouped(
            &tx,
            &format!(
                "SELECT CASE WHEN w.quarantined_until_ms > ?1 THEN 'quarantined'
                             WHEN EXISTS (SELECT 1 FROM attempts a WHERE a.worker = w.seq
                                            AND a.state = 'running') THEN 'busy'
                             ELSE 'idle' END AS st, COUNT(*)
                 FROM workers w WHERE w.last_seen_ms >= ?1 - {WORKER_SEEN_MS} GROUP BY st"
            ),
            [now],
        )?,
        counters: db::counters(&tx)?,
    };
    tx.commit()?;
    Ok(s)
}

impl Metrics {
    /// The OpenMetrics text of everything, with the gauges and counters set from `s`.
    pub fn encode(&self, s: &Snapshot) -> String {
        let set = |family: &Family<StateLabel, Gauge>, names: &[&str], values: &[(String, i64)]| {
            for name in names {
                let n = values.iter().find(|(k, _)| k == name).map_or(0, |(_, v)| *v);
                family.get_or_create(&StateLabel { state: name.to_string() }).set(n);
            }
        };
        set(&self.jobs, &JOB_STATES, &s.jobs);
        set(&self.segments, &SEGMENT_STATES, &s.segments);
        set(&self.workers, &WORKER_STATES, &s.workers);
        let counter = |name: &str| s.counters.iter().find(|(k, _)| k == name).map_or(0, |(_, v)| *v);
        for outcome in ATTEMPT_OUTCOMES {
            let c = self.attempts.get_or_create(&OutcomeLabel { outcome: outcome.to_string() });
            c.inner().store(counter(&format!("attempts_{outcome}")), Ordering::Relaxed);
        }
        self.frames.inner().store(counter("frames_rendered"), Ordering::Relaxed);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a string");
        out
    }

    pub fn observe_upload(&self, secs: f64) {
        self.handoff_seconds.get_or_create(&DirectionLabel { direction: "upload".into() }).observe(secs);
    }
}
