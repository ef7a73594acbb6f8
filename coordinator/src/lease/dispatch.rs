//! Dispatch: which ready segment a worker that asks for work gets, and the grant it receives.

use super::{blame, expire_in, known, Grant, Policy};
use crate::db::{AttemptId, JobId, WorkerId};
use crate::error::Result;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

/// A worker waiting for work asks again every 250 ms inside its long poll (see the worker
/// service), so one that asked within this long is idle and alive.
pub const AVAILABLE_MS: i64 = 2_000;

/// Hands the best ready segment to `worker`: highest priority first, then the segment whose
/// start state this worker produced, then the oldest job. A segment whose start state another
/// worker holds is left to that worker for `affinity_grace_ms`, unless that worker is busy with
/// another segment: then waiting would only idle the asker.
///
/// A segment is not offered again to a worker that failed it (or let its lease run out) while
/// another worker that has not is available: idle, and asking for work within the last
/// [`AVAILABLE_MS`]. A worker with a bad GPU or a broken install would otherwise get the same
/// segment back at once and spend the job's retries; alone, it still gets its retry.
///
/// A quarantined worker (see [`blame`]) is offered nothing, and does not count as available.
/// Once a job's first segment is done, only workers with the same weights for its network get
/// the rest (see `complete`).
///
/// A worker renders one segment at a time and asks for work only when idle, so a worker that
/// asks while an attempt of its own still runs never received that grant (its long poll was cut
/// after the choice was committed). It gets the same attempt again, with a fresh lease, instead
/// of the segment waiting out a lease nobody holds.
pub fn acquire(conn: &mut Connection, worker: WorkerId, policy: Policy, now: i64) -> Result<Option<Grant>> {
    let tx = conn.transaction()?;
    known(&tx, worker)?;
    tx.execute("UPDATE workers SET last_seen_ms = ?2 WHERE seq = ?1", params![worker, now])?;
    expire_in(&tx, policy, now)?;
    let held = tx
        .query_row(
            "SELECT id, job, idx FROM attempts WHERE worker = ?1 AND state = 'running' ORDER BY id LIMIT 1",
            [worker],
            |r| Ok((r.get::<_, AttemptId>(0)?, r.get::<_, JobId>(1)?, r.get::<_, u32>(2)?)),
        )
        .optional()?;
    if let Some((attempt, job, idx)) = held {
        tx.execute("UPDATE attempts SET lease_until_ms = ?2 WHERE id = ?1", params![attempt, now + policy.lease_ms])?;
        let grant = grant(&tx, attempt, job, idx, true)?;
        tx.commit()?;
        return Ok(Some(grant));
    }
    if blame::quarantined(&tx, worker, now)? {
        tx.commit()?;
        return Ok(None);
    }
    // The best segment reserved for this worker, and the best of all; the reserved one wins at
    // equal priority. Two queries, each led by an index (the general one walks the dispatchable
    // jobs in priority order and stops at the first fit), where one query ordered by both once
    // sorted every ready segment of the queue on every call: at 10,000 queued jobs that was
    // the coordinator's main cost.
    let params = params![worker, now - policy.affinity_grace_ms, now - AVAILABLE_MS, now, LARGE_FRAME_PIXELS];
    let pick = |r: &rusqlite::Row| Ok((r.get::<_, i64>(0)?, r.get::<_, JobId>(1)?, r.get::<_, u32>(2)?));
    let reserved = tx
        .query_row(
            &format!(
                "SELECT j.priority, s.job, s.idx FROM segments s JOIN jobs j ON j.seq = s.job
                 WHERE s.preferred_worker = ?1 AND {CANDIDATE} ORDER BY j.priority DESC, j.seq ASC LIMIT 1"
            ),
            params,
            pick,
        )
        .optional()?;
    let best = tx
        .query_row(
            &format!(
                "SELECT j.priority, s.job, s.idx FROM jobs j CROSS JOIN segments s ON s.job = j.seq
                 WHERE {CANDIDATE} ORDER BY j.priority DESC, j.seq ASC LIMIT 1"
            ),
            params,
            pick,
        )
        .optional()?;
    let row = match (reserved, best) {
        (Some(r), Some(b)) if b.0 > r.0 => Some(b),
        (Some(r), _) => Some(r),
        (None, b) => b,
    };
    let Some((_, job, idx)) = row else {
        tx.commit()?;
        return Ok(None);
    };
    tx.execute(
        "INSERT INTO attempts (job, idx, worker, state, lease_until_ms, started_ms) VALUES (?1, ?2, ?3, 'running', ?4, ?5)",
        params![job, idx, worker, now + policy.lease_ms, now],
    )?;
    let attempt = AttemptId(tx.last_insert_rowid() as u64);
    tx.execute("UPDATE segments SET state = 'running' WHERE job = ?1 AND idx = ?2", params![job, idx])?;
    tx.execute("UPDATE jobs SET state = 'running' WHERE seq = ?1 AND state = 'queued'", [job])?;
    let grant = grant(&tx, attempt, job, idx, false)?;
    tx.commit()?;
    Ok(Some(grant))
}

/// Frames of at least this many pixels (QHD, 2560x1440) go first to the workers that spread a
/// frame over the most devices.
const LARGE_FRAME_PIXELS: i64 = 2560 * 1440;

/// Whether segment `s` of job `j` may go to worker `?1` now (`?2`: when a reservation lapses,
/// `?3`: since when a worker counts as available, `?4`: now, `?5`: `LARGE_FRAME_PIXELS`): ready, in a job that is not
/// over, rendered with weights the worker has, not reserved for another worker that is still
/// free to take it, not one this worker failed while another that did not is available, and not
/// a large frame while a free worker with more devices (and the job's weights) is available.
const CANDIDATE: &str = "s.state = 'ready' AND j.state IN ('queued', 'running')
    AND NOT (j.pixels >= ?5
             AND EXISTS (SELECT 1 FROM workers o
                         WHERE o.devices > (SELECT devices FROM workers WHERE seq = ?1)
                           AND o.last_seen_ms >= ?3 AND o.quarantined_until_ms <= ?4
                           AND (j.weights_digest = ''
                                OR EXISTS (SELECT 1 FROM worker_weights ow WHERE ow.worker = o.seq
                                             AND ow.network = j.network AND ow.digest = j.weights_digest))
                           AND NOT EXISTS (SELECT 1 FROM attempts r
                                           WHERE r.worker = o.seq AND r.state = 'running')))
    AND (j.weights_digest = ''
         OR EXISTS (SELECT 1 FROM worker_weights ww WHERE ww.worker = ?1 AND ww.network = j.network
                      AND ww.digest = j.weights_digest))
    AND (s.preferred_worker IS NULL OR s.preferred_worker = ?1 OR s.ready_ms <= ?2
         OR EXISTS (SELECT 1 FROM attempts b WHERE b.worker = s.preferred_worker AND b.state = 'running'))
    AND NOT (EXISTS (SELECT 1 FROM attempts f WHERE f.job = s.job AND f.idx = s.idx AND f.worker = ?1
                       AND f.state IN ('failed', 'expired'))
             AND EXISTS (SELECT 1 FROM workers o
                         WHERE o.seq != ?1 AND o.last_seen_ms >= ?3
                           AND o.quarantined_until_ms <= ?4
                           AND NOT EXISTS (SELECT 1 FROM attempts r
                                           WHERE r.worker = o.seq AND r.state = 'running')
                           AND NOT EXISTS (SELECT 1 FROM attempts g
                                           WHERE g.job = s.job AND g.idx = s.idx
                                             AND g.worker = o.seq
                                             AND g.state IN ('failed', 'expired'))))";

/// What a worker needs to know to run `attempt` on segment `idx` of `job`.
fn grant(tx: &Transaction, attempt: AttemptId, job: JobId, idx: u32, redelivered: bool) -> Result<Grant> {
    let (start_frame, end_frame, start_attempt, style_sha256) = tx.query_row(
        "SELECT s.start_frame, s.end_frame, s.start_attempt, j.style_sha256
         FROM segments s JOIN jobs j ON j.seq = s.job WHERE s.job = ?1 AND s.idx = ?2",
        params![job, idx],
        |r| Ok((r.get::<_, u32>(0)?, r.get::<_, u32>(1)?, r.get::<_, AttemptId>(2)?, r.get::<_, String>(3)?)),
    )?;
    let segment_count: u32 = tx.query_row("SELECT COUNT(*) FROM segments WHERE job = ?1", [job], |r| r.get(0))?;
    let next_end_frame: u32 = tx
        .query_row("SELECT end_frame FROM segments WHERE job = ?1 AND idx = ?2", params![job, idx + 1], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let start_state_sha256: String = tx
        .query_row("SELECT state_sha256 FROM attempts WHERE id = ?1", [start_attempt], |r| r.get(0))
        .optional()?
        .unwrap_or_default();
    Ok(Grant {
        attempt,
        job,
        idx,
        segment_count,
        start_frame,
        end_frame,
        start_attempt,
        start_state_sha256,
        style_sha256s: crate::db::job_styles(tx, job)?,
        style_sha256,
        redelivered,
        next_end_frame,
    })
}
