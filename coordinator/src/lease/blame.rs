//! Who is at fault when an attempt fails. Two cases need more than "charge the attempt":
//!
//! - A worker that fails everything it touches (a bad GPU, a broken install, wrong weights)
//!   would spend every job's retries, one segment after another. After `quarantine_after`
//!   failures in a row, across jobs, it is offered no work for a while; the attempt that tipped
//!   it over says so in its reason, and `ListWorkers` shows the quarantine.
//! - A worker that cannot load its start state may be the victim, not the culprit: the state in
//!   the store can be bad (bit rot, a lost file). When the coordinator's own copy fails its check
//!   too, [`disown_start`] renders the producing segment again and the loader is not charged.

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
        "SELECT state FROM attempts WHERE worker = ?1 AND state IN ('succeeded', 'failed', 'expired')
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

/// The attempt whose end state was found unusable, now to be rendered again.
#[derive(Debug, Clone)]
pub struct Disowned {
    pub job: JobId,
    /// The segment that produced the state, and the attempt that did.
    pub idx: u32,
    pub attempt: AttemptId,
}

/// `attempt` could not load its start state, and the coordinator's copy is bad too (`why`): the
/// loader's attempt is cancelled at no cost, its segment waits again, and the producing segment
/// goes back to the queue as if its attempt had failed (so a producer that keeps making bad
/// states still runs out of retries and fails the job, rather than looping).
pub fn disown_start(
    conn: &mut Connection,
    attempt: AttemptId,
    loader_reason: &str,
    why: &str,
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
    let reason = format!("could not load its start state: {loader_reason}; the stored state is bad too, so segment {idx} is rendered again");
    tx.execute(
        "UPDATE attempts SET state = 'cancelled', reason = ?2, ended_ms = ?3 WHERE id = ?1",
        params![attempt, reason, now],
    )?;
    tx.execute(
        "UPDATE segments SET state = 'waiting', preferred_worker = NULL WHERE job = ?1 AND idx = ?2",
        params![cur.job, cur.idx],
    )?;
    let bad = format!("its end state is unusable: {why}");
    tx.execute("UPDATE attempts SET state = 'failed', reason = ?2 WHERE id = ?1", params![producer, bad])?;
    tx.execute(
        "UPDATE segments SET done_attempt = 0, preferred_worker = NULL WHERE job = ?1 AND idx = ?2",
        params![cur.job, idx],
    )?;
    retry_or_fail(&tx, cur.job, idx, producer_worker, &bad, policy, now)?;
    tx.commit()?;
    tracing::warn!(job = %cur.job, segment = idx, %producer, loader = %attempt, %why, "a stored state is bad: its segment is rendered again");
    Ok(Disowned { job: cur.job, idx, attempt: producer })
}
