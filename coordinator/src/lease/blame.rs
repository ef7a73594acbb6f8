//! Who is at fault when an attempt fails. Two cases need more than "charge the attempt":
//!
//! - A worker that fails everything it touches (a bad GPU, a broken install, wrong weights)
//!   would spend every job's retries, one segment after another. After `quarantine_after`
//!   failures in a row, across jobs, it is offered no work for a while; the attempt that tipped
//!   it over says so in its reason, and `ListWorkers` shows the quarantine.
//! - A job that fails everywhere (parameters that cannot render, a style that crashes the
//!   decoder) would otherwise quarantine every honest worker it reaches. When a segment fails
//!   for the same reason on two different workers, [`follows_the_job`] says so: the job fails,
//!   saying why, and none of those failures counts against a worker.
//! - A worker that cannot load its start state may be the victim, not the culprit: the state in
//!   the store can be bad (bit rot, a lost file), or forged in a way no check caught. The
//!   coordinator checks its own copy as the loader does; whatever it finds, [`disown_start`]
//!   renders the producing segment again and the loader is not charged: the producer is the
//!   suspect.

use super::{current, retry_or_fail, Policy};
use crate::db::{AttemptId, AttemptState, JobId, WorkerId};
use crate::error::Result;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

/// Whether worker `seq` is quarantined at `now`.
pub(super) fn quarantined(tx: &Transaction, worker: WorkerId, now: i64) -> Result<bool> {
    let until: i64 = tx.query_row("SELECT quarantined_until_ms FROM workers WHERE seq = ?1", [worker], |r| r.get(0))?;
    Ok(until > now)
}

/// How many of `worker`'s attempts failed or ran out of lease since its last success (released
/// and cancelled attempts are nobody's fault and do not count either way). Looks at most `cap`
/// attempts back.
pub fn failures_in_a_row(conn: &Connection, worker: WorkerId, cap: u32) -> Result<u32> {
    let mut stmt = conn.prepare_cached(
        "SELECT state FROM attempts WHERE worker = ?1 AND state IN ('succeeded', 'failed', 'expired') AND charged = 1
         ORDER BY id DESC LIMIT ?2",
    )?;
    let states = stmt.query_map(params![worker, cap], |r| r.get::<_, AttemptState>(0))?;
    let mut n = 0;
    for state in states {
        if state? == AttemptState::Succeeded {
            break;
        }
        n += 1;
    }
    Ok(n)
}

/// After `attempt` of `worker` failed or expired: quarantines the worker when that makes
/// `quarantine_after` in a row, and notes it in the attempt's reason.
pub(super) fn after_failure(
    tx: &Transaction,
    attempt: AttemptId,
    worker: WorkerId,
    policy: Policy,
    now: i64,
) -> Result<()> {
    if policy.quarantine_after == 0 {
        return Ok(());
    }
    let until: Option<i64> =
        tx.query_row("SELECT quarantined_until_ms FROM workers WHERE seq = ?1", [worker], |r| r.get(0)).optional()?;
    if until.is_none_or(|u| u > now) {
        return Ok(());
    }
    let n = failures_in_a_row(tx, worker, policy.quarantine_after)?;
    if n < policy.quarantine_after {
        return Ok(());
    }
    let until = now + policy.quarantine_ms;
    tx.execute("UPDATE workers SET quarantined_until_ms = ?2 WHERE seq = ?1", params![worker, until])?;
    let note =
        format!("; {worker} quarantined for {:.0} s after {n} failures in a row", policy.quarantine_ms as f64 / 1000.0);
    tx.execute("UPDATE attempts SET reason = reason || ?2 WHERE id = ?1", params![attempt, note])?;
    tracing::warn!(%worker, failures = n, quarantine_s = policy.quarantine_ms / 1000, "worker quarantined");
    Ok(())
}

/// A reason with its numbers masked: the same failure on two machines differs in timings,
/// addresses and iteration counts, not in words.
fn shape_of(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    for c in reason.chars() {
        match c {
            '0'..='9' if out.ends_with('#') => {}
            '0'..='9' => out.push('#'),
            c => out.push(c),
        }
    }
    out
}

/// After `attempt` of `worker` failed with `reason`: if the same segment (since the job's last
/// retry) has already failed for the same reason on another worker, the failure follows the
/// job, not the machines. Those attempts stop counting against their workers (a quarantine
/// they tipped is lifted) and the job's failure message is returned, for the caller to fail
/// the job with.
pub(super) fn follows_the_job(
    tx: &Transaction,
    attempt: AttemptId,
    cur: &super::Current,
    reason: &str,
    policy: Policy,
) -> Result<Option<String>> {
    let shape = shape_of(reason);
    // An earlier reason may carry a note added since (the quarantine it tipped).
    let noted = format!("{shape}; ");
    let same_shape = |r: &str| {
        let r = shape_of(r);
        r == shape || r.starts_with(&noted)
    };
    let earlier: Vec<(AttemptId, WorkerId, String)> = tx
        .prepare_cached(
            "SELECT a.id, a.worker, a.reason FROM attempts a JOIN segments s ON s.job = a.job AND s.idx = a.idx
             WHERE a.job = ?1 AND a.idx = ?2 AND a.state = 'failed' AND a.id > s.attempts_after AND a.id != ?3",
        )?
        .query_map(params![cur.job, cur.idx, attempt], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let same: Vec<(AttemptId, WorkerId)> =
        earlier.into_iter().filter(|(_, _, r)| same_shape(r)).map(|(a, w, _)| (a, w)).collect();
    let Some(&(_, other)) = same.iter().find(|(_, w)| *w != cur.worker) else {
        return Ok(None);
    };
    let mut workers = vec![cur.worker];
    for &(a, w) in same.iter().chain([(attempt, cur.worker)].iter()) {
        tx.execute("UPDATE attempts SET charged = 0 WHERE id = ?1", [a])?;
        if !workers.contains(&w) {
            workers.push(w);
        }
    }
    // A quarantine these failures tipped no longer stands.
    for &w in &workers {
        if policy.quarantine_after > 0 && failures_in_a_row(tx, w, policy.quarantine_after)? < policy.quarantine_after {
            tx.execute("UPDATE workers SET quarantined_until_ms = 0 WHERE seq = ?1", [w])?;
        }
    }
    let idx = cur.idx;
    tracing::warn!(job = %cur.job, segment = idx, first = %other, then = %cur.worker, "a failure follows its job across workers: failing the job, charging no worker");
    Ok(Some(format!(
        "segment {idx} failed the same way on {other} and on {}, so the job cannot render as submitted (no worker is charged): {reason}",
        cur.worker
    )))
}

/// The attempt whose end state was found unusable, now to be rendered again.
#[derive(Debug, Clone)]
pub struct Disowned {
    pub job: JobId,
    /// The segment that produced the state, and the attempt that did.
    pub idx: u32,
    pub attempt: AttemptId,
}

/// The chunk of `job` that starts at `start_frame` could not be joined (`why`): the attempt
/// that made it failed after all (charged: its upload passed the checks and still broke the
/// stitch), the job runs again, and the segment goes back to the queue from its start state,
/// or fails the job when it has no retries left. The segments after it keep their chunks: the
/// one rendered anew ends in the same state on the same kind of worker. Returns the segment.
pub fn disown_chunk(
    conn: &mut Connection,
    job: JobId,
    start_frame: u32,
    why: &str,
    policy: Policy,
    now: i64,
) -> Result<Option<u32>> {
    let tx = conn.transaction()?;
    let found: Option<(u32, AttemptId, WorkerId)> = tx
        .query_row(
            "SELECT s.idx, s.done_attempt, a.worker FROM segments s JOIN attempts a ON a.id = s.done_attempt
             WHERE s.job = ?1 AND s.start_frame = ?2 AND s.state = 'done'",
            params![job, start_frame],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((idx, attempt, worker)) = found else {
        return Ok(None);
    };
    let reason = format!("its chunk could not be joined to the movie: {why}");
    tx.execute("UPDATE attempts SET state = 'failed', reason = ?2 WHERE id = ?1", params![attempt, reason])?;
    tx.execute(
        "UPDATE segments SET done_attempt = 0, preferred_worker = NULL WHERE job = ?1 AND idx = ?2",
        params![job, idx],
    )?;
    tx.execute("UPDATE jobs SET state = 'running' WHERE seq = ?1 AND state = 'stitching'", [job])?;
    super::retry_or_fail(&tx, job, idx, worker, &reason, policy, now)?;
    tx.commit()?;
    tracing::warn!(job = %job, segment = idx, %attempt, %why, "a chunk could not be joined: its segment is rendered again");
    Ok(Some(idx))
}

/// What the coordinator found when it checked its own copy of a state a worker could not load.
#[derive(Debug, Clone)]
pub enum Recheck {
    /// The copy is bad too (the reason): the producer is charged.
    Bad(String),
    /// The copy passes the loader's own checks: loader and coordinator disagree, and nobody can
    /// tell which worker lies, so neither is charged.
    Passes,
}

/// `attempt` could not load its start state: the loader's attempt is cancelled at no cost, its
/// segment waits again, and the producing segment goes back to the queue as if its attempt had
/// failed (so a producer that keeps making bad states still runs out of retries and fails the
/// job, rather than looping), to be rendered by another worker while there is one. The
/// producer is charged only when the coordinator's copy is bad too: a loader that merely
/// claims a good state is bad must not get honest producers quarantined.
pub fn disown_start(
    conn: &mut Connection,
    attempt: AttemptId,
    loader_reason: &str,
    recheck: &Recheck,
    policy: Policy,
    now: i64,
) -> Result<Disowned> {
    let tx = conn.transaction()?;
    let cur = match current(&tx, attempt, policy, now) {
        Ok(cur) => cur,
        Err(e) => {
            tx.commit()?;
            return Err(e);
        }
    };
    let producer = cur.start_attempt;
    let (idx, producer_worker): (u32, WorkerId) =
        tx.query_row("SELECT idx, worker FROM attempts WHERE id = ?1", [producer], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (found, why) = match recheck {
        Recheck::Bad(why) => ("the stored state is bad too", why.clone()),
        Recheck::Passes => (
            "the coordinator's check passes the stored state, so its producer is suspect",
            format!("{} could not load it, though it passes the coordinator's check", cur.worker),
        ),
    };
    let reason =
        format!("could not load its start state: {loader_reason}; {found}, so segment {idx} is rendered again");
    tx.execute(
        "UPDATE attempts SET state = 'cancelled', reason = ?2, ended_ms = ?3 WHERE id = ?1",
        params![attempt, reason, now],
    )?;
    tx.execute(
        "UPDATE segments SET state = 'waiting', preferred_worker = NULL WHERE job = ?1 AND idx = ?2",
        params![cur.job, cur.idx],
    )?;
    let bad = format!("its end state is unusable: {why}");
    let charged = matches!(recheck, Recheck::Bad(_));
    tx.execute(
        "UPDATE attempts SET state = 'failed', reason = ?2, charged = ?3 WHERE id = ?1",
        params![producer, bad, charged],
    )?;
    tx.execute(
        "UPDATE segments SET done_attempt = 0, preferred_worker = NULL WHERE job = ?1 AND idx = ?2",
        params![cur.job, idx],
    )?;
    retry_or_fail(&tx, cur.job, idx, producer_worker, &bad, policy, now)?;
    tx.commit()?;
    tracing::warn!(job = %cur.job, segment = idx, %producer, loader = %attempt, %why, "a stored state is bad: its segment is rendered again");
    Ok(Disowned { job: cur.job, idx, attempt: producer })
}
