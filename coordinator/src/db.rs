//! The coordinator's durable state: jobs, their segments, every attempt at a segment, and the
//! registered workers, in SQLite (WAL mode) under `--data`. Every state change is one
//! transaction, so a coordinator killed at any point restarts into a consistent state.
//!
//! The states and every transition between them are defined once, in `state.rs`, and the
//! database refuses any other (CHECK constraints, triggers). Workers are rows, referenced by
//! `attempts.worker` and `segments.preferred_worker`; `worker-N` and `job-N` are only how the
//! API and people write them.

use crate::error::{Error, Result};
use proto::v1;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::path::Path;

mod ids;
mod queue;
mod schema;
mod state;
mod views;
pub use ids::*;
pub use queue::{Database, Lane};
use schema::{migrate, SCHEMA};
pub use state::*;
pub use views::*;

pub fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Deleted jobs give their pages back to the file (see `delete`). The mode takes effect when
    // the first table is made, or through VACUUM, which cannot change it in WAL mode: so before
    // WAL. A database made before this was the default is converted once.
    let auto_vacuum: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if auto_vacuum != 2 {
        conn.pragma_update(None, "journal_mode", "DELETE")?;
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.execute_batch("VACUUM")?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    // Off while migrating: rebuilding a referenced table drops it first. Checked after.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    migrate(&conn)?;
    let broken: Option<String> = conn.query_row("PRAGMA foreign_key_check", [], |r| r.get(0)).optional()?;
    if let Some(table) = broken {
        return Err(Error::Startup(format!("the database's table {table} refers to rows that do not exist")));
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.execute_batch(&state::transition_triggers())?;
    Ok(conn)
}

/// `job-7` -> 7; anything else is an unknown job.
pub fn job_seq(id: &str) -> Result<JobId> {
    JobId::parse(id).ok_or_else(|| Error::JobNotFound(crate::error::quoted_prefix(id)))
}

/// What a job was submitted with besides its spec: its styles' SHA-256s in order,
/// comma-separated (one for a movie of one style, as the fingerprint knows them), and its
/// soundtrack's ('' for none). A plain `&str` is the styles of a silent movie.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub styles: &'a str,
    pub audio: &'a str,
}

impl<'a> From<&'a str> for Inputs<'a> {
    fn from(styles: &'a str) -> Self {
        Self { styles, audio: "" }
    }
}

/// What deleting a job frees: each of its styles and its soundtrack, with whether another job
/// still uses it.
#[derive(Debug, PartialEq)]
pub struct Deleted {
    pub styles: Vec<(String, bool)>,
    pub audio: Option<(String, bool)>,
}

/// Inserts a job and its segments; the first segment is ready at once.
pub fn submit<'a>(
    conn: &mut Connection,
    spec: &v1::JobSpec,
    frames: u32,
    segment_frames: u32,
    inputs: impl Into<Inputs<'a>>,
    owner: &str,
    now: i64,
) -> Result<JobId> {
    let Inputs { styles, audio } = inputs.into();
    use prost::Message;
    let tx = conn.transaction()?;
    let network = spec.params.as_ref().map(|p| p.network.as_str()).unwrap_or_default();
    let pixels = spec.params.as_ref().map_or(0, |p| u64::from(p.width) * u64::from(p.height));
    let (first, more) = styles.split_once(',').unwrap_or((styles, ""));
    tx.execute(
        "INSERT INTO jobs (spec, priority, state, frames, style_sha256, more_styles, audio_sha256, created_ms, owner, network, segment_frames, pixels)
         VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![spec.encode_to_vec(), spec.priority, frames, first, more, audio, now, owner, network, segment_frames, pixels],
    )?;
    let seq = JobId(tx.last_insert_rowid());
    cut_segments(&tx, seq, 0, 0, frames, segment_frames, now)?;
    tx.commit()?;
    Ok(seq)
}

/// Inserts segments `from_idx..` of `job` covering frames `start..frames` in pieces of
/// `segment_frames`; the first is ready when it is segment 0, the others wait.
pub fn cut_segments(
    tx: &Transaction,
    job: JobId,
    from_idx: u32,
    mut start: u32,
    frames: u32,
    segment_frames: u32,
    now: i64,
) -> Result<()> {
    let mut idx = from_idx;
    while start < frames {
        let end = start.saturating_add(segment_frames.max(1)).min(frames);
        let state = if idx == 0 { SegmentState::Ready } else { SegmentState::Waiting };
        tx.execute(
            "INSERT INTO segments (job, idx, start_frame, end_frame, state, ready_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![job, idx, start, end, state, now],
        )?;
        start = end;
        idx += 1;
    }
    Ok(())
}

pub fn job_state(tx: &Transaction, seq: JobId) -> Result<JobState> {
    tx.query_row("SELECT state FROM jobs WHERE seq = ?1", [seq], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::JobNotFound(seq.to_string()))
}

/// Cancels a job that has not ended: its unfinished segments and running attempts too.
pub fn cancel(conn: &mut Connection, seq: JobId, now: i64) -> Result<()> {
    let tx = conn.transaction()?;
    let state = job_state(&tx, seq)?;
    if state.is_final() {
        return Err(Error::JobEnded { id: seq.to_string(), state: state.described() });
    }
    tx.execute(
        "UPDATE jobs SET state = 'cancelled', error = 'cancelled by request', finished_ms = ?2 WHERE seq = ?1",
        params![seq, now],
    )?;
    tx.execute("UPDATE segments SET state = 'cancelled' WHERE job = ?1 AND state != 'done'", [seq])?;
    tx.execute(
        "UPDATE attempts SET state = 'cancelled', reason = 'job cancelled', ended_ms = ?2 WHERE job = ?1 AND state = 'running'",
        params![seq, now],
    )?;
    tx.commit()?;
    Ok(())
}

/// Forgets an ended job: its attempts, segments and record. Returns its styles' hashes, each
/// with whether another job still uses that style (styles are stored once per content).
pub fn delete(conn: &mut Connection, seq: JobId) -> Result<Deleted> {
    let tx = conn.transaction()?;
    let state = job_state(&tx, seq)?;
    if !state.is_final() {
        return Err(Error::JobNotEnded { id: seq.to_string(), state: state.described() });
    }
    let styles = job_styles(&tx, seq)?;
    let audio = job_audio(&tx, seq)?;
    tx.execute("DELETE FROM attempts WHERE job = ?1", [seq])?;
    tx.execute("DELETE FROM segments WHERE job = ?1", [seq])?;
    tx.execute("DELETE FROM jobs WHERE seq = ?1", [seq])?;
    let unused = unused_styles(&tx, styles.clone())?;
    let mut out: Vec<(String, bool)> = Vec::new();
    for style in styles {
        if !out.iter().any(|(s, _)| *s == style) {
            let shared = !unused.contains(&style);
            out.push((style, shared));
        }
    }
    let audio = match audio.as_str() {
        "" => None,
        sha => Some((sha.to_string(), !unused_audio(&tx, sha)?)),
    };
    tx.commit()?;
    // Return the freed pages to the filesystem: without it the file only ever grew (17 MB
    // after a 100,000-segment job was deleted).
    // It frees one page per step: step it to the end.
    let mut vacuum = conn.prepare("PRAGMA incremental_vacuum")?;
    let mut rows = vacuum.query([])?;
    while rows.next()?.is_some() {}
    Ok(Deleted { styles: out, audio })
}

/// A job's soundtrack's SHA-256 ('' for none).
pub fn job_audio(conn: &Connection, job: JobId) -> Result<String> {
    Ok(conn.query_row("SELECT audio_sha256 FROM jobs WHERE seq = ?1", [job], |r| r.get(0))?)
}

/// Whether no job has the soundtrack `sha`.
pub fn unused_audio(conn: &Connection, sha: &str) -> Result<bool> {
    Ok(conn.query_row("SELECT 1 FROM jobs WHERE audio_sha256 = ?1 LIMIT 1", [sha], |_| Ok(())).optional()?.is_none())
}

/// Those of `styles` that no job uses.
pub fn unused_styles(conn: &Connection, styles: Vec<String>) -> Result<Vec<String>> {
    let mut unused = Vec::new();
    for style in styles {
        let used = conn
            .query_row(
                "SELECT 1 FROM jobs WHERE style_sha256 = ?1 OR instr(more_styles, ?1) > 0 LIMIT 1",
                [&style],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !used && !unused.contains(&style) {
            unused.push(style);
        }
    }
    Ok(unused)
}

/// Every style of a job, in order (one for a movie of one style).
pub fn job_styles(conn: &Connection, job: JobId) -> Result<Vec<String>> {
    let (first, more): (String, String) =
        conn.query_row("SELECT style_sha256, more_styles FROM jobs WHERE seq = ?1", [job], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    Ok(std::iter::once(first).chain(more.split(',').filter(|s| !s.is_empty()).map(String::from)).collect())
}

/// Resumes a failed job from its last done segment (see RetryJob). Returns whether every
/// segment is done, so that only stitching is left.
pub fn retry(conn: &mut Connection, seq: JobId, now: i64) -> Result<bool> {
    let tx = conn.transaction()?;
    let state = job_state(&tx, seq)?;
    if state != JobState::Failed {
        return Err(Error::JobNotFailed { id: seq.to_string(), state: state.described() });
    }
    let last_attempt: i64 = tx.query_row("SELECT COALESCE(MAX(id), 0) FROM attempts", [], |r| r.get(0))?;
    tx.execute(
        "UPDATE segments SET state = 'waiting', attempts_after = ?2, preferred_worker = NULL
         WHERE job = ?1 AND state != 'done'",
        params![seq, last_attempt],
    )?;
    // The first segment not done starts from the last done one's end state (kept while the job
    // was failed), or from noise.
    tx.execute(
        "UPDATE segments SET state = 'ready', ready_ms = ?2
         WHERE job = ?1 AND idx = (SELECT MIN(idx) FROM segments WHERE job = ?1 AND state = 'waiting')",
        params![seq, now],
    )?;
    let (left, done): (u32, u32) = tx.query_row(
        "SELECT COALESCE(SUM(state != 'done'), 0), COALESCE(SUM(state = 'done'), 0) FROM segments WHERE job = ?1",
        [seq],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let next = match (left, done) {
        (0, _) => JobState::Stitching,
        (_, 0) => JobState::Queued,
        _ => JobState::Running,
    };
    tx.execute("UPDATE jobs SET state = ?2, error = '', finished_ms = 0 WHERE seq = ?1", params![seq, next])?;
    tx.commit()?;
    Ok(left == 0)
}

/// Marks a job failed (stitching errors and the like) unless it already ended.
pub fn fail_job(tx: &Transaction, seq: JobId, reason: &str, now: i64) -> Result<()> {
    tx.execute(
        "UPDATE jobs SET state = 'failed', error = ?2, finished_ms = ?3 WHERE seq = ?1 AND state NOT IN ('succeeded', 'failed', 'cancelled')",
        params![seq, reason, now],
    )?;
    tx.execute("UPDATE segments SET state = 'cancelled' WHERE job = ?1 AND state IN ('waiting', 'ready')", [seq])?;
    tx.execute(
        "UPDATE attempts SET state = 'cancelled', reason = 'job failed', ended_ms = ?2 WHERE job = ?1 AND state = 'running'",
        params![seq, now],
    )?;
    Ok(())
}

pub fn finish_stitch(conn: &mut Connection, seq: JobId, size: u64, sha256: &str, now: i64) -> Result<bool> {
    let n = conn.execute(
        "UPDATE jobs SET state = 'succeeded', output_size = ?2, output_sha256 = ?3, finished_ms = ?4 WHERE seq = ?1 AND state = 'stitching'",
        params![seq, size as i64, sha256, now],
    )?;
    Ok(n == 1)
}

pub fn jobs_in_state(conn: &Connection, state: JobState) -> Result<Vec<JobId>> {
    let mut stmt = conn.prepare("SELECT seq FROM jobs WHERE state = ?1 ORDER BY seq")?;
    let rows = stmt.query_map([state], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// What the stitcher needs: each done segment's chunk attempt and frame range, in order.
pub fn done_chunks(conn: &Connection, seq: JobId) -> Result<Vec<(AttemptId, u32, u32)>> {
    let mut stmt = conn.prepare(
        "SELECT done_attempt, start_frame, end_frame FROM segments WHERE job = ?1 AND state = 'done' ORDER BY idx",
    )?;
    let rows = stmt.query_map([seq], |r| Ok((r.get::<_, AttemptId>(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Attempts of a job whose chunk and end state are in the store.
pub fn stored_attempts(conn: &Connection, seq: JobId) -> Result<Vec<AttemptId>> {
    let mut stmt = conn.prepare("SELECT id FROM attempts WHERE job = ?1 AND state = 'succeeded'")?;
    let rows = stmt.query_map([seq], |r| r.get::<_, AttemptId>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// What a worker registers with.
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    pub name: &'a str,
    pub device: &'a str,
    pub principal: &'a str,
    pub session_sha256: &'a str,
    pub weights: &'a [v1::NetworkWeights],
    /// How many devices it spreads a frame over (0 counts as 1).
    pub devices: u32,
}

/// Registers a worker for `principal`; its session is known here only by its SHA-256.
pub fn register_worker(conn: &Connection, w: &Registration<'_>, now: i64) -> Result<WorkerId> {
    let Registration { name, device, principal, session_sha256, weights, devices } = *w;
    let tx = conn.unchecked_transaction()?;
    // A quarantine follows the worker's identity (its principal and name), not its row: a
    // worker that registers again is still quarantined.
    tx.execute(
        "INSERT INTO workers (name, device, registered_ms, last_seen_ms, principal, session_sha256, quarantined_until_ms, devices)
         VALUES (?1, ?2, ?3, ?3, ?4, ?5,
                 (SELECT COALESCE(MAX(quarantined_until_ms), 0) FROM workers WHERE principal = ?4 AND name = ?1), ?6)",
        params![name, device, now, principal, session_sha256, devices.max(1)],
    )?;
    let seq = tx.last_insert_rowid();
    for w in weights {
        tx.execute(
            "INSERT OR REPLACE INTO worker_weights (worker, network, digest) VALUES (?1, ?2, ?3)",
            params![seq, w.network, w.digest],
        )?;
    }
    tx.commit()?;
    Ok(WorkerId(seq))
}

/// A registration not heard from for this long no longer counts against its principal's limit.
pub const LIVE_WORKER_MS: i64 = 60_000;
/// Registrations not heard from for this long, that never took work, are deleted.
pub const PRUNE_WORKER_MS: i64 = 3_600_000;

/// Refuses a new registration for `principal` when it already has `limit` live ones (heard
/// from within [`LIVE_WORKER_MS`]): 10,000 registrations in six seconds once filled the
/// farm's listings and metrics with idle workers nobody ran.
pub fn admit_worker(conn: &Connection, principal: &str, limit: u32, now: i64) -> Result<()> {
    let live: u32 = conn.query_row(
        "SELECT COUNT(*) FROM workers WHERE principal = ?1 AND last_seen_ms >= ?2",
        params![principal, now - LIVE_WORKER_MS],
        |r| r.get(0),
    )?;
    if live >= limit {
        return Err(Error::TooManyWorkers { principal: principal.to_string(), live, limit });
    }
    Ok(())
}

/// Deletes registrations not heard from since `before` that hold no history (no attempt, no
/// reservation) and no quarantine; returns how many. Workers that rendered stay: their
/// attempts name them.
pub fn prune_workers(conn: &Connection, before: i64, now: i64) -> Result<usize> {
    let stale = "SELECT seq FROM workers w WHERE w.last_seen_ms < ?1 AND w.quarantined_until_ms <= ?2
                   AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.worker = w.seq)
                   AND NOT EXISTS (SELECT 1 FROM segments s WHERE s.preferred_worker = w.seq)";
    let tx = conn.unchecked_transaction()?;
    tx.execute(&format!("DELETE FROM worker_weights WHERE worker IN ({stale})"), params![before, now])?;
    let n = tx.execute(&format!("DELETE FROM workers WHERE seq IN ({stale})"), params![before, now])?;
    tx.commit()?;
    Ok(n)
}

/// The weights a worker renders each network with, as it registered them.
pub fn worker_weights(conn: &Connection, worker: WorkerId) -> Result<Vec<v1::NetworkWeights>> {
    let mut stmt =
        conn.prepare_cached("SELECT network, digest FROM worker_weights WHERE worker = ?1 ORDER BY network")?;
    let rows = stmt.query_map([worker], |r| Ok(v1::NetworkWeights { network: r.get(0)?, digest: r.get(1)? }))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The persistent counters the `attempt_ended` trigger keeps (`attempts_<state>`,
/// `frames_rendered`).
pub fn counters(conn: &Connection) -> Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached("SELECT name, value FROM counters ORDER BY name")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The worker whose session hashes to `session_sha256`.
pub fn session_worker(conn: &Connection, session_sha256: &str) -> Result<Option<WorkerId>> {
    Ok(conn
        .query_row("SELECT seq FROM workers WHERE session_sha256 = ?1", [session_sha256], |r| r.get(0))
        .optional()?)
}

/// The worker an attempt was granted to, if the attempt exists.
pub fn attempt_worker(conn: &Connection, attempt: AttemptId) -> Result<Option<WorkerId>> {
    Ok(conn.query_row("SELECT worker FROM attempts WHERE id = ?1", [attempt], |r| r.get(0)).optional()?)
}

#[cfg(test)]
mod tests;

/// What the coordinator recorded of a stored state: the segment that made it, the state's
/// SHA-256 and its render fingerprint (empty for states from before fingerprints were kept).
#[derive(Debug, Clone)]
pub struct StoredState {
    pub idx: u32,
    pub sha256: String,
    pub fingerprint: String,
}

/// What a job's render fingerprint is made of besides its parameters: the style's SHA-256 and
/// the weights `network` is rendered with, as `worker` registered them (or, without a worker,
/// the weights the job's first segment was rendered with). `None` for the weights when they are
/// not known: a worker that registered none for this network.
pub fn fingerprint_inputs(
    conn: &Connection,
    job: JobId,
    worker: Option<WorkerId>,
    network: &str,
) -> Result<(String, Option<String>)> {
    let job_weights: String = conn.query_row("SELECT weights_digest FROM jobs WHERE seq = ?1", [job], |r| r.get(0))?;
    let style = job_styles(conn, job)?.join(",");
    let weights = match worker {
        Some(w) => conn
            .query_row(
                "SELECT digest FROM worker_weights WHERE worker = ?1 AND network = ?2",
                params![w, network],
                |r| r.get(0),
            )
            .optional()?,
        None => Some(job_weights).filter(|d| !d.is_empty()),
    };
    Ok((style, weights))
}

/// The format of the job's first stored chunk (`inspect::chunk`), empty before there is one.
pub fn chunk_format(conn: &Connection, job: JobId) -> Result<String> {
    Ok(conn.query_row("SELECT chunk_format FROM jobs WHERE seq = ?1", [job], |r| r.get(0))?)
}

pub fn stored_state(conn: &Connection, attempt: AttemptId) -> Result<Option<StoredState>> {
    Ok(conn
        .query_row("SELECT idx, state_sha256, fingerprint FROM attempts WHERE id = ?1", [attempt], |r| {
            Ok(StoredState { idx: r.get(0)?, sha256: r.get(1)?, fingerprint: r.get(2)? })
        })
        .optional()?)
}
