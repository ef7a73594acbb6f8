//! Leases and fencing. A worker holds a segment through an attempt whose id is the fencing
//! token: heartbeats extend its lease, an expired lease sends the segment back to the queue, and
//! anything later sent for a superseded attempt is rejected here, in the same transaction that
//! would have used it.

use crate::db::{self, AttemptId, AttemptState, JobId, WorkerId};
use crate::error::{Error, Result};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

/// What a worker is told to do.
#[derive(Debug, Clone)]
pub struct Grant {
    pub attempt: AttemptId,
    pub job: JobId,
    pub idx: u32,
    pub segment_count: u32,
    pub start_frame: u32,
    pub end_frame: u32,
    pub start_attempt: AttemptId,
    pub start_state_sha256: String,
    pub style_sha256: String,
    /// Every style of the job, in order (the first is `style_sha256`).
    pub style_sha256s: Vec<String>,
    /// The worker already held this attempt but had not received it.
    pub redelivered: bool,
    /// Where the next segment ends (0: this is the last).
    pub next_end_frame: u32,
}

/// The scheduling knobs that touch the database.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub lease_ms: i64,
    /// Attempts per segment before the job fails.
    pub max_attempts: u32,
    /// How long a ready segment waits for the worker that holds its start state.
    pub affinity_grace_ms: i64,
    /// Failures in a row (across jobs) that quarantine a worker, 0 for never; and for how long.
    pub quarantine_after: u32,
    pub quarantine_ms: i64,
    /// Seconds of work a segment should hold, for jobs that leave its length to the coordinator
    /// (0: keep the default length).
    pub segment_secs: f64,
}

/// Fails unless `worker` is registered.
fn known(conn: &Connection, worker: WorkerId) -> Result<()> {
    match conn.query_row("SELECT 1 FROM workers WHERE seq = ?1", [worker], |_| Ok(())).optional()? {
        Some(()) => Ok(()),
        None => Err(Error::WorkerNotFound(worker.to_string())),
    }
}

/// The segment an attempt works on, if the attempt is still current.
#[derive(Debug, Clone)]
pub struct Current {
    pub job: JobId,
    pub idx: u32,
    pub worker: WorkerId,
    /// The segment's frames `[start, end)`, as they stand in this transaction.
    pub span: (u32, u32),
    pub start_attempt: AttemptId,
    /// When the attempt was granted.
    pub started_ms: i64,
}

/// The fencing check. An attempt is current while it runs and its lease has not run out; a
/// lease found expired here is expired on the spot, so a late call can never win a race with
/// the sweeper.
pub fn current(tx: &Transaction, attempt: AttemptId, policy: Policy, now: i64) -> Result<Current> {
    let row = tx
        .query_row(
            "SELECT a.job, a.idx, a.worker, a.state, a.reason, a.lease_until_ms, s.start_attempt, a.started_ms,
                    s.start_frame, s.end_frame
             FROM attempts a JOIN segments s ON s.job = a.job AND s.idx = a.idx WHERE a.id = ?1",
            [attempt],
            |r| {
                Ok((
                    r.get::<_, JobId>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, WorkerId>(2)?,
                    r.get::<_, AttemptState>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, AttemptId>(6)?,
                    r.get::<_, i64>(7)?,
                    (r.get::<_, u32>(8)?, r.get::<_, u32>(9)?),
                ))
            },
        )
        .optional()?;
    let Some((job, idx, worker, state, reason, lease_until, start_attempt, started_ms, span)) = row else {
        return Err(Error::StaleAttempt { id: attempt, reason: "no such attempt".into() });
    };
    if state == AttemptState::Running && lease_until < now {
        expire_one(tx, attempt, job, idx, worker, policy, now)?;
        return Err(Error::StaleAttempt { id: attempt, reason: "its lease expired".into() });
    }
    let reason = match state {
        AttemptState::Running => return Ok(Current { job, idx, worker, span, start_attempt, started_ms }),
        AttemptState::Expired => "its lease expired".into(),
        AttemptState::Succeeded => "it already completed".into(),
        AttemptState::Cancelled => format!("it was cancelled ({reason})"),
        AttemptState::Failed => format!("it failed ({reason})"),
    };
    Err(Error::StaleAttempt { id: attempt, reason })
}

/// Extends the lease of a current attempt and records its progress.
/// Opens a transaction for a current attempt. A stale one is an error, committed first so that
/// an on-the-spot expiry is kept.
fn fenced(conn: &mut Connection, attempt: AttemptId, policy: Policy, now: i64) -> Result<(Transaction<'_>, Current)> {
    let tx = conn.transaction()?;
    match current(&tx, attempt, policy, now) {
        Ok(cur) => Ok((tx, cur)),
        Err(e) => {
            tx.commit()?;
            Err(e)
        }
    }
}

/// Extends the lease of a current attempt and records its progress. A worker's count is
/// believed only up to the segment's length (a forged count made a job show all its frames
/// done at billions of frames a second); the count kept is returned with the attempt.
pub fn heartbeat(
    conn: &mut Connection,
    attempt: AttemptId,
    frames_done: u32,
    policy: Policy,
    now: i64,
) -> Result<(Current, u32)> {
    let (tx, cur) = fenced(conn, attempt, policy, now)?;
    let (start, end) = cur.span;
    let frames_done = frames_done.min(end.saturating_sub(start));
    tx.execute(
        "UPDATE attempts SET lease_until_ms = ?2, frames_done = ?3 WHERE id = ?1",
        params![attempt, now + policy.lease_ms, frames_done],
    )?;
    tx.execute("UPDATE workers SET last_seen_ms = ?2 WHERE seq = ?1", params![cur.worker, now])?;
    tx.commit()?;
    Ok((cur, frames_done))
}

/// Checks that `attempt` may still read its inputs.
pub fn check(conn: &mut Connection, attempt: AttemptId, policy: Policy, now: i64) -> Result<Current> {
    let (tx, cur) = fenced(conn, attempt, policy, now)?;
    tx.commit()?;
    Ok(cur)
}

/// What a completion records: the stored chunk's and state's checksums, the state's render
/// fingerprint, and, for a preempted worker, how many frames it finished (`None` or the
/// segment's length: all of them).
#[derive(Debug, Clone, Copy)]
pub struct Upload<'a> {
    pub chunk_sha256: &'a str,
    pub state_sha256: &'a str,
    pub fingerprint: &'a str,
    /// The chunk's format (`inspect::chunk`): the job's first one is kept, for later chunks'
    /// checks.
    pub chunk_format: &'a str,
    pub frames: Option<u32>,
    /// Seconds the worker says it spent on the frames (0: not measured).
    pub frame_seconds: f64,
}

/// Records a finished segment (its chunk and end state are already in the store) and readies
/// the next one, preferring the same worker. Returns whether this was the job's last segment.
///
/// A preempted worker hands over the first `frames` frames only: the segment is cut there and
/// the rest becomes a new segment right after it, ready at once from this attempt's state (and
/// for anyone: its producer is going away). Later segments move up one index.
pub fn complete(
    conn: &mut Connection,
    attempt: AttemptId,
    up: &Upload,
    policy: Policy,
    now: i64,
) -> Result<(Current, Completed)> {
    let (tx, cur) = fenced(conn, attempt, policy, now)?;
    let (start, end) = cur.span;
    let mut frames = end - start;
    let mut reason = String::new();
    if let Some(done) = up.frames.filter(|&f| f < end - start) {
        if done == 0 {
            return Err(Error::invalid("frames_done", "a preempted attempt hands over at least one frame"));
        }
        if let Some(why) = reshape::split_refused(&tx, cur.job, done)? {
            // Released, as a worker that stops without handing over: nobody is charged, the
            // segment is rendered again whole.
            let reason = format!("preempted after {done} of {frames} frames, not split off: {why}");
            tx.execute(
                "UPDATE attempts SET state = 'cancelled', reason = ?2, ended_ms = ?3 WHERE id = ?1",
                params![attempt, reason, now],
            )?;
            retry_or_fail(&tx, cur.job, cur.idx, cur.worker, &reason, policy, now)?;
            tx.commit()?;
            return Ok((cur, Completed::Released(reason)));
        }
        reshape::split(&tx, cur.job, cur.idx, start + done)?;
        reason = format!(
            "preempted after {done} of {frames} frames: frames {}..{end} are segment {} now",
            start + done,
            cur.idx + 1
        );
        tracing::info!(%attempt, job = %cur.job, segment = cur.idx, done, of = frames, "segment split: a preempted worker handed over what it finished");
        frames = done;
    }
    tx.execute(
        "UPDATE attempts SET state = 'succeeded', ended_ms = ?2, frames_done = ?3, chunk_sha256 = ?4,
                             state_sha256 = ?5, fingerprint = ?6, reason = ?7 WHERE id = ?1",
        params![attempt, now, frames, up.chunk_sha256, up.state_sha256, up.fingerprint, reason],
    )?;
    tx.execute(
        "UPDATE segments SET state = 'done', done_attempt = ?3 WHERE job = ?1 AND idx = ?2",
        params![cur.job, cur.idx, attempt],
    )?;
    if cur.idx == 0 && reason.is_empty() {
        reshape::resize(&tx, &cur, frames, up.frame_seconds, policy, now)?;
    }
    let preferred = if reason.is_empty() { Some(cur.worker) } else { None };
    let next = tx.execute(
        "UPDATE segments SET state = 'ready', ready_ms = ?3, preferred_worker = ?4, start_attempt = ?5
         WHERE job = ?1 AND idx = ?2 AND state = 'waiting'",
        params![cur.job, cur.idx + 1, now, preferred, attempt],
    )?;
    tx.execute(
        "UPDATE jobs SET chunk_format = ?2 WHERE seq = ?1 AND chunk_format = ''",
        params![cur.job, up.chunk_format],
    )?;
    // The weights this segment was rendered with are the job's from now on: a state resumes only
    // on the same weights, so a worker with others is never offered the rest (nor charged).
    tx.execute(
        "UPDATE jobs SET weights_digest = COALESCE(
             (SELECT ww.digest FROM worker_weights ww WHERE ww.worker = ?2 AND ww.network = jobs.network), '')
         WHERE seq = ?1 AND weights_digest = ''",
        params![cur.job, cur.worker],
    )?;
    let last = next == 0;
    if last {
        tx.execute("UPDATE jobs SET state = 'stitching' WHERE seq = ?1 AND state = 'running'", [cur.job])?;
    }
    tx.commit()?;
    Ok((cur, if last { Completed::Last } else { Completed::More }))
}

/// What a completion recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completed {
    /// The segment is done and another follows.
    More,
    /// The segment is done and was the job's last: the job is stitching.
    Last,
    /// A preempted attempt's partial hand-over was not split off (too short, or the job has
    /// been split too often, the reason says): the attempt is released and nothing is kept.
    Released(String),
}

/// A worker gave up on its attempt (or sent a corrupt upload): retry, or fail the job. A
/// released attempt (worker shutting down) is cancelled instead and costs no retry.
pub fn fail(
    conn: &mut Connection,
    attempt: AttemptId,
    reason: &str,
    released: bool,
    policy: Policy,
    now: i64,
) -> Result<()> {
    let (tx, cur) = fenced(conn, attempt, policy, now)?;
    let state = if released { AttemptState::Cancelled } else { AttemptState::Failed };
    tx.execute(
        "UPDATE attempts SET state = ?4, reason = ?2, ended_ms = ?3 WHERE id = ?1",
        params![attempt, reason, now, state],
    )?;
    if released {
        retry_or_fail(&tx, cur.job, cur.idx, cur.worker, reason, policy, now)?;
    } else if let Some(message) = blame::follows_the_job(&tx, attempt, &cur, reason, policy)? {
        tx.execute("UPDATE segments SET state = 'failed' WHERE job = ?1 AND idx = ?2", params![cur.job, cur.idx])?;
        db::fail_job(&tx, cur.job, &message, now)?;
    } else {
        blame::after_failure(&tx, attempt, cur.worker, policy, now)?;
        retry_or_fail(&tx, cur.job, cur.idx, cur.worker, reason, policy, now)?;
    }
    tx.commit()?;
    Ok(())
}

/// Ends an attempt whose render stopped making progress while its worker still heartbeats (a
/// hung device call): expired like a lost lease, and the segment retried.
pub fn stall(conn: &mut Connection, attempt: AttemptId, reason: &str, policy: Policy, now: i64) -> Result<()> {
    let (tx, cur) = fenced(conn, attempt, policy, now)?;
    tracing::warn!(%attempt, job = %cur.job, segment = cur.idx, worker = %cur.worker, %reason, "render stalled");
    tx.execute(
        "UPDATE attempts SET state = 'expired', reason = ?2, ended_ms = ?3 WHERE id = ?1",
        params![attempt, reason, now],
    )?;
    blame::after_failure(&tx, attempt, cur.worker, policy, now)?;
    retry_or_fail(&tx, cur.job, cur.idx, cur.worker, reason, policy, now)?;
    tx.commit()?;
    Ok(())
}

/// A worker stopping for good releases whatever the coordinator still counts as its own: at most
/// an attempt whose grant crossed the worker's shutdown. Released attempts cost no retry.
pub fn leave(conn: &mut Connection, worker: WorkerId, policy: Policy, now: i64) -> Result<Vec<AttemptId>> {
    known(conn, worker)?;
    let held: Vec<AttemptId> = conn
        .prepare("SELECT id FROM attempts WHERE worker = ?1 AND state = 'running' ORDER BY id")?
        .query_map([worker], |r| r.get::<_, i64>(0))?
        .map(|id| id.map(|id| AttemptId(id as u64)))
        .collect::<rusqlite::Result<_>>()?;
    let mut released = Vec::new();
    for attempt in held {
        match fail(conn, attempt, "worker shut down", true, policy, now) {
            Ok(()) => released.push(attempt),
            Err(Error::StaleAttempt { .. }) => {} // its lease ran out meanwhile: already requeued
            Err(e) => return Err(e),
        }
    }
    Ok(released)
}

/// Expires every lease that has run out. Returns how many.
pub fn expire(conn: &mut Connection, policy: Policy, now: i64) -> Result<usize> {
    let tx = conn.transaction()?;
    let n = expire_in(&tx, policy, now)?;
    tx.commit()?;
    Ok(n)
}

fn expire_in(tx: &Transaction, policy: Policy, now: i64) -> Result<usize> {
    let expired: Vec<(AttemptId, JobId, u32, WorkerId)> = {
        let mut stmt =
            tx.prepare("SELECT id, job, idx, worker FROM attempts WHERE state = 'running' AND lease_until_ms < ?1")?;
        let rows = stmt.query_map([now], |r| Ok((r.get::<_, AttemptId>(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (attempt, job, idx, worker) in &expired {
        expire_one(tx, *attempt, *job, *idx, *worker, policy, now)?;
    }
    Ok(expired.len())
}

fn expire_one(
    tx: &Transaction,
    attempt: AttemptId,
    job: JobId,
    idx: u32,
    worker: WorkerId,
    policy: Policy,
    now: i64,
) -> Result<()> {
    let reason = format!("lease expired: no heartbeat from {worker} for {:.1} s", policy.lease_ms as f64 / 1000.0);
    tracing::warn!(%attempt, job = %job, segment = idx, %worker, "lease expired");
    tx.execute(
        "UPDATE attempts SET state = 'expired', reason = ?2, ended_ms = ?3 WHERE id = ?1",
        params![attempt, reason, now],
    )?;
    blame::after_failure(tx, attempt, worker, policy, now)?;
    retry_or_fail(tx, job, idx, worker, &reason, policy, now)
}

/// Puts a segment whose attempt by `worker` ended unsuccessfully back in the queue, or fails its
/// job when it has no retries left. The segment is running, or done when its end state turned out
/// unusable (see [`blame::disown_start`]). A reservation for `worker` (it produced the segment's start
/// state) ends with it: a worker that just failed must not keep others waiting.
fn retry_or_fail(
    tx: &Transaction,
    job: JobId,
    idx: u32,
    worker: WorkerId,
    reason: &str,
    policy: Policy,
    now: i64,
) -> Result<()> {
    // Since the job's last retry, if any (RetryJob gives a segment a fresh allowance).
    let attempts: u32 = tx.query_row(
        "SELECT COUNT(*) FROM attempts a JOIN segments s ON s.job = a.job AND s.idx = a.idx
         WHERE a.job = ?1 AND a.idx = ?2 AND a.state != 'cancelled' AND a.id > s.attempts_after",
        params![job, idx],
        |r| r.get(0),
    )?;
    if attempts < policy.max_attempts {
        tx.execute(
            "UPDATE segments SET state = 'ready', ready_ms = ?3,
                    preferred_worker = CASE WHEN preferred_worker = ?4 THEN NULL ELSE preferred_worker END
             WHERE job = ?1 AND idx = ?2 AND state IN ('running', 'done')",
            params![job, idx, now, worker],
        )?;
        return Ok(());
    }
    tx.execute("UPDATE segments SET state = 'failed' WHERE job = ?1 AND idx = ?2", params![job, idx])?;
    let message = format!("segment {idx} failed {attempts} attempts; last: {reason}");
    tracing::error!(job = %job, segment = idx, %message, "job failed");
    db::fail_job(tx, job, &message, now)
}

/// After a restart, running attempts get one full lease from now: their workers could not
/// heartbeat while the coordinator was down.
pub fn resume(conn: &Connection, policy: Policy, now: i64) -> Result<usize> {
    Ok(conn.execute(
        "UPDATE attempts SET lease_until_ms = MAX(lease_until_ms, ?1) WHERE state = 'running'",
        [now + policy.lease_ms],
    )?)
}

pub mod blame;
mod dispatch;
mod reshape;

pub use dispatch::{acquire, AVAILABLE_MS};
#[cfg(test)]
mod tests;
