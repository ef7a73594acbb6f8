//! What users and workers are shown of the durable state: a job with its segments and every
//! attempt, listings, a job's spec, owner and segment spans.

use super::{AttemptId, AttemptState, JobId, JobState, SegmentState, WorkerId};
use crate::error::{Error, Result};
use proto::v1;
use rusqlite::{params, Connection, OptionalExtension};

pub fn spec(conn: &Connection, seq: JobId) -> Result<v1::JobSpec> {
    use prost::Message;
    let blob: Vec<u8> = conn
        .query_row("SELECT spec FROM jobs WHERE seq = ?1", [seq], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::JobNotFound(seq.to_string()))?;
    v1::JobSpec::decode(blob.as_slice()).map_err(|e| Error::Db(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))
}

/// Segments a job view carries at most: a job may have 100,000, and GetJob's answer must stay
/// well under gRPC's 4 MiB (each segment with its attempts is a few hundred bytes).
pub const MAX_SEGMENT_PAGE: u32 = 1000;

/// Which of a job's segments a view carries: `limit` of them from index `from`.
#[derive(Debug, Clone, Copy)]
pub struct SegmentPage {
    pub from: u32,
    pub limit: u32,
}

impl SegmentPage {
    /// The first page.
    pub const FIRST: Self = Self { from: 0, limit: MAX_SEGMENT_PAGE };

    /// A page as a client asks for it: 0 for the default size, at most [`MAX_SEGMENT_PAGE`].
    pub fn asked(from: u32, limit: u32) -> Self {
        let limit = if limit == 0 { MAX_SEGMENT_PAGE } else { limit.min(MAX_SEGMENT_PAGE) };
        Self { from, limit }
    }
}

/// The job as users see it. `include_segments` adds the first page of its segments with their
/// attempts.
pub fn job(conn: &Connection, seq: JobId, include_segments: bool) -> Result<v1::Job> {
    job_page(conn, seq, include_segments.then_some(SegmentPage::FIRST))
}

/// The job as users see it, with a page of its segments and their attempts. The job row is
/// read once.
pub fn job_page(conn: &Connection, seq: JobId, page: Option<SegmentPage>) -> Result<v1::Job> {
    use prost::Message;
    type Row = (Vec<u8>, JobState, String, u32, i64, i64, i64, String, String, u32, bool);
    let row: Option<Row> = conn
        .query_row(
            "SELECT spec, state, error, frames, created_ms, finished_ms, output_size, output_sha256, owner,
                    segment_frames, segment_frames_measured
             FROM jobs WHERE seq = ?1",
            [seq],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                ))
            },
        )
        .optional()?;
    let (spec, state, error, frames, created, finished, size, sha, owner, segment_frames, measured) =
        row.ok_or_else(|| Error::JobNotFound(seq.to_string()))?;
    let spec = v1::JobSpec::decode(spec.as_slice())
        .map_err(|e| Error::Db(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
    let (done_frames, segments_done, segments_total, running): (u32, u32, u32, u32) = conn.query_row(
        "SELECT COALESCE(SUM(CASE WHEN state = 'done' THEN end_frame - start_frame ELSE 0 END), 0),
                COALESCE(SUM(state = 'done'), 0), COUNT(*),
                (SELECT COALESCE(SUM(frames_done), 0) FROM attempts WHERE job = ?1 AND state = 'running')
         FROM segments WHERE job = ?1",
        [seq],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let mut job = v1::Job {
        id: seq.to_string(),
        spec: Some(spec),
        state: state.to_wire() as i32,
        error,
        frames_done: (done_frames + running).min(frames),
        frames_total: frames,
        segments_done,
        segments_total,
        created_unix_ms: created,
        finished_unix_ms: finished,
        output_size: size as u64,
        output_sha256: sha,
        owner,
        segment_frames,
        segment_frames_measured: measured,
        ..Default::default()
    };
    if let Some(page) = page {
        job.segments = segments(conn, seq, page)?;
    }
    Ok(job)
}

fn segments(conn: &Connection, seq: JobId, page: SegmentPage) -> Result<Vec<v1::Segment>> {
    let end = page.from.saturating_add(page.limit);
    let mut stmt = conn.prepare_cached(
        "SELECT idx, start_frame, end_frame, state FROM segments WHERE job = ?1 AND idx >= ?2 AND idx < ?3 ORDER BY idx",
    )?;
    let mut out: Vec<v1::Segment> = stmt
        .query_map(params![seq, page.from, end], |r| {
            Ok(v1::Segment {
                index: r.get(0)?,
                start_frame: r.get(1)?,
                end_frame: r.get(2)?,
                state: r.get::<_, SegmentState>(3)?.to_wire() as i32,
                attempts: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT idx, id, worker, state, reason, started_ms, ended_ms, frames_done FROM attempts
         WHERE job = ?1 AND idx >= ?2 AND idx < ?3 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![seq, page.from, end], |r| {
        Ok((
            r.get::<_, u32>(0)?,
            v1::Attempt {
                id: r.get::<_, AttemptId>(1)?.0,
                worker_id: r.get::<_, WorkerId>(2)?.to_string(),
                state: r.get::<_, AttemptState>(3)?.to_wire() as i32,
                reason: r.get(4)?,
                started_unix_ms: r.get(5)?,
                ended_unix_ms: r.get(6)?,
                frames_done: r.get(7)?,
            },
        ))
    })?;
    for row in rows {
        let (idx, attempt) = row?;
        if let Some(s) = out.get_mut((idx - page.from) as usize) {
            s.attempts.push(attempt);
        }
    }
    Ok(out)
}

/// The frames `[start, end)` of segment `idx` of `job`.
pub fn segment_span(conn: &Connection, job: JobId, idx: u32) -> Result<(u32, u32)> {
    Ok(conn.query_row(
        "SELECT start_frame, end_frame FROM segments WHERE job = ?1 AND idx = ?2",
        params![job, idx],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

/// Every job, or only `owner`'s.
pub fn list(conn: &Connection, owner: Option<&str>) -> Result<Vec<v1::Job>> {
    let mut stmt = conn.prepare("SELECT seq FROM jobs WHERE ?1 IS NULL OR owner = ?1 ORDER BY seq")?;
    let seqs: Vec<JobId> = stmt.query_map([owner], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    seqs.into_iter().map(|s| job(conn, s, false)).collect()
}

/// Filters of [`recent`]: a job state, or `active` (queued, running or stitching).
pub const STATE_FILTERS: [&str; 6] = ["active", "queued", "running", "succeeded", "failed", "cancelled"];

/// The newest `limit` jobs, newest first: all, or only `owner`'s, and only those matching
/// `state` (one of [`STATE_FILTERS`]) when given.
pub fn recent(conn: &Connection, owner: Option<&str>, state: Option<&str>, limit: u32) -> Result<Vec<v1::Job>> {
    let mut stmt = conn.prepare(
        "SELECT seq FROM jobs WHERE (?1 IS NULL OR owner = ?1)
           AND (?2 IS NULL OR state = ?2 OR (?2 = 'active' AND state IN ('queued', 'running', 'stitching')))
         ORDER BY seq DESC LIMIT ?3",
    )?;
    let seqs: Vec<JobId> =
        stmt.query_map(params![owner, state, limit], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    seqs.into_iter().map(|s| job(conn, s, false)).collect()
}

/// Who submitted a job; an unknown job is not found.
pub fn owner(conn: &Connection, seq: JobId) -> Result<String> {
    conn.query_row("SELECT owner FROM jobs WHERE seq = ?1", [seq], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::JobNotFound(seq.to_string()))
}

/// Workers listed at most: every restart of a worker registers it anew, so a long-lived farm
/// with autoscaling collects many records.
pub const MAX_LISTED_WORKERS: u32 = 1000;
/// Workers not seen for this long are left out of the list unless quarantined.
pub const LISTED_WORKER_AGE_MS: i64 = 24 * 3600 * 1000;

/// The workers seen lately (or still quarantined), newest first.
pub fn workers(conn: &Connection, quarantine_after: u32, now: i64) -> Result<Vec<v1::Worker>> {
    let mut stmt = conn.prepare(
        "SELECT w.seq, w.name, w.device, w.principal, w.registered_ms, w.last_seen_ms, w.quarantined_until_ms,
                (SELECT COUNT(*) FROM attempts a WHERE a.worker = w.seq AND a.state = 'succeeded'),
                r.id, r.job
         FROM workers w
         LEFT JOIN attempts r ON r.worker = w.seq AND r.state = 'running'
         WHERE w.last_seen_ms >= ?1 OR w.quarantined_until_ms > ?2
         GROUP BY w.seq
         ORDER BY w.seq DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![now - LISTED_WORKER_AGE_MS, now, MAX_LISTED_WORKERS], |r| {
        let id: WorkerId = r.get(0)?;
        Ok((
            id,
            v1::Worker {
                worker_id: id.to_string(),
                name: r.get(1)?,
                device: r.get(2)?,
                principal: r.get(3)?,
                registered_unix_ms: r.get(4)?,
                last_seen_unix_ms: r.get(5)?,
                quarantined_until_unix_ms: r.get::<_, i64>(6)?.max(0),
                segments_done: r.get(7)?,
                running_attempt_id: r.get::<_, Option<i64>>(8)?.unwrap_or(0) as u64,
                running_job_id: r.get::<_, Option<i64>>(9)?.map(|j| JobId(j).to_string()).unwrap_or_default(),
                failures_in_a_row: 0,
                weights: Vec::new(),
            },
        ))
    })?;
    let mut workers = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    let cap = quarantine_after.max(10);
    for (id, w) in &mut workers {
        w.failures_in_a_row = crate::lease::blame::failures_in_a_row(conn, *id, cap)?;
        w.weights = super::worker_weights(conn, *id)?;
        if w.quarantined_until_unix_ms <= now {
            w.quarantined_until_unix_ms = 0;
        }
    }
    Ok(workers.into_iter().map(|(_, w)| w).collect())
}
