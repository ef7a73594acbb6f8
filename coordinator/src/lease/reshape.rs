//! Reshaping a job's segments once it runs: a preempted attempt's segment is cut where its
//! worker stopped (`split`), and the segments of a job that left its segment length to the
//! coordinator are cut anew from its first segment's measured pace (`resize`).

use super::{Current, Policy};
use crate::db::{self, JobId};
use crate::error::{Error, Result};
use proto::v1;
use rusqlite::{params, Transaction};

/// Longest segment a measurement may choose, in frames.
pub const MAX_MEASURED_SEGMENT_FRAMES: u32 = 100_000;

/// After a job's first segment: if the job left its segment length to the coordinator and the
/// rest has not started, cuts the rest anew into segments of about `segment_secs` of work at the
/// measured seconds per frame: a few minutes a segment bounds what a crash costs and keeps the
/// per-segment overhead (a hand-off, one key frame) small, at any size and on any device. The
/// worker's figure is capped by the attempt's own wall time, so it can only be optimistic about
/// the work a frame takes, never make it out slower than it was.
pub(super) fn resize(
    tx: &Transaction,
    cur: &Current,
    frames: u32,
    frame_seconds: f64,
    policy: Policy,
    now: i64,
) -> Result<()> {
    let (spec, total): (Vec<u8>, u32) =
        tx.query_row("SELECT spec, frames FROM jobs WHERE seq = ?1", [cur.job], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let spec =
        <v1::JobSpec as prost::Message>::decode(spec.as_slice()).map_err(|e| Error::invalid("spec", e.to_string()))?;
    let wall = (now - cur.started_ms).max(1) as f64 / 1000.0;
    let seconds = frame_seconds.min(wall);
    if spec.segment_frames != 0 || policy.segment_secs <= 0.0 || frames == 0 || !seconds.is_finite() || seconds <= 0.0 {
        return Ok(());
    }
    let started: u32 =
        tx.query_row("SELECT COUNT(*) FROM attempts WHERE job = ?1 AND idx > 0", [cur.job], |r| r.get(0))?;
    let (_, first_end) = db::segment_span(tx, cur.job, 0)?;
    if started > 0 || first_end >= total {
        return Ok(());
    }
    let per_frame = seconds / frames as f64;
    let min_len = (total - first_end).div_ceil(crate::MAX_SEGMENTS - 1).max(1);
    let len =
        ((policy.segment_secs / per_frame).round() as u32).clamp(min_len, MAX_MEASURED_SEGMENT_FRAMES.max(min_len));
    tx.execute("DELETE FROM segments WHERE job = ?1 AND idx > 0", [cur.job])?;
    db::cut_segments(tx, cur.job, 1, first_end, total, len, now)?;
    tx.execute(
        "UPDATE jobs SET segment_frames = ?2, segment_frames_measured = 1 WHERE seq = ?1",
        params![cur.job, len],
    )?;
    tracing::info!(job = %cur.job, s_per_frame = per_frame, segment_frames = len, "segment length sized from the first segment");
    Ok(())
}

/// The fewest frames a preempted worker's hand-over must hold to be split off: a worker that
/// handed over one frame at a time once cut a job into 2,304 one-frame segments in 30 s.
pub const MIN_SPLIT_FRAMES: u32 = 4;
/// Splits one job may have: each adds a segment, a hand-off and a key frame.
pub const MAX_SPLITS_PER_JOB: u32 = 64;

/// Why a preempted attempt of `job` that finished `done` frames may not be split off; `None`
/// when it may.
pub(super) fn split_refused(tx: &Transaction, job: JobId, done: u32) -> Result<Option<String>> {
    if done < MIN_SPLIT_FRAMES {
        return Ok(Some(format!("a hand-over needs at least {MIN_SPLIT_FRAMES} frames")));
    }
    let splits: u32 = tx.query_row("SELECT splits FROM jobs WHERE seq = ?1", [job], |r| r.get(0))?;
    if splits >= MAX_SPLITS_PER_JOB {
        return Ok(Some(format!("the job has been split {splits} times, the most allowed")));
    }
    let segments: u32 = tx.query_row("SELECT COUNT(*) FROM segments WHERE job = ?1", [job], |r| r.get(0))?;
    if segments >= crate::MAX_SEGMENTS {
        return Ok(Some(format!("the job has {segments} segments, the most allowed")));
    }
    Ok(None)
}

/// Cuts segment `idx` of `job` at frame `cut`: it keeps the frames before, a new waiting segment
/// `idx + 1` gets the rest, and every later segment (with its attempts) moves up one index,
/// through negative indexes so that no (job, idx) key collides on the way.
pub(super) fn split(tx: &Transaction, job: JobId, idx: u32, cut: u32) -> Result<()> {
    for table in ["segments", "attempts"] {
        tx.execute(&format!("UPDATE {table} SET idx = -idx - 1 WHERE job = ?1 AND idx > ?2"), params![job, idx])?;
        tx.execute(&format!("UPDATE {table} SET idx = -idx WHERE job = ?1 AND idx < 0"), [job])?;
    }
    let end: u32 =
        tx.query_row("SELECT end_frame FROM segments WHERE job = ?1 AND idx = ?2", params![job, idx], |r| r.get(0))?;
    tx.execute("UPDATE segments SET end_frame = ?3 WHERE job = ?1 AND idx = ?2", params![job, idx, cut])?;
    tx.execute(
        "INSERT INTO segments (job, idx, start_frame, end_frame, state, ready_ms) VALUES (?1, ?2, ?3, ?4, 'waiting', 0)",
        params![job, idx + 1, cut, end],
    )?;
    tx.execute("UPDATE jobs SET splits = splits + 1 WHERE seq = ?1", [job])?;
    Ok(())
}
