//! The schema: the tables as first made, and every change since, applied in order on open.

use super::state;
use crate::error::Result;
use rusqlite::Connection;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    spec BLOB NOT NULL,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    frames INTEGER NOT NULL,
    style_sha256 TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    finished_ms INTEGER NOT NULL DEFAULT 0,
    output_size INTEGER NOT NULL DEFAULT 0,
    output_sha256 TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS segments (
    job INTEGER NOT NULL REFERENCES jobs(seq),
    idx INTEGER NOT NULL,
    start_frame INTEGER NOT NULL,
    end_frame INTEGER NOT NULL,
    state TEXT NOT NULL,
    ready_ms INTEGER NOT NULL DEFAULT 0,
    -- The worker that produced this segment's start state (affinity).
    preferred_worker TEXT,
    -- The attempt whose end state starts this segment, and the one that finished it.
    start_attempt INTEGER NOT NULL DEFAULT 0,
    done_attempt INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job, idx)
);
CREATE INDEX IF NOT EXISTS segments_by_state ON segments(state);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    worker TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    lease_until_ms INTEGER NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER NOT NULL DEFAULT 0,
    frames_done INTEGER NOT NULL DEFAULT 0,
    chunk_sha256 TEXT NOT NULL DEFAULT '',
    state_sha256 TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS attempts_by_segment ON attempts(job, idx);
CREATE INDEX IF NOT EXISTS attempts_by_state ON attempts(state);
CREATE TABLE IF NOT EXISTS workers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    device TEXT NOT NULL,
    registered_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
";

/// The counters for /metrics that survive restarts and deletes, kept by a trigger so that no
/// code path can miss one (made in migration 4, and again when 6 makes `attempts` anew).
const ATTEMPT_ENDED: &str = "CREATE TRIGGER attempt_ended AFTER UPDATE OF state ON attempts
     WHEN NEW.state != OLD.state AND NEW.state != 'running'
     BEGIN
         INSERT INTO counters (name, value) VALUES ('attempts_' || NEW.state, 1)
             ON CONFLICT(name) DO UPDATE SET value = value + 1;
         INSERT INTO counters (name, value) SELECT 'frames_rendered', NEW.frames_done WHERE NEW.state = 'succeeded'
             ON CONFLICT(name) DO UPDATE SET value = value + excluded.value;
     END;";

/// Changes to the schema since its first version, in order; `PRAGMA user_version` counts the
/// ones applied, so a database from an older coordinator is brought up to date on open.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: who submitted a job, which principal registered a worker, and the worker's session.
    "ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
     ALTER TABLE workers ADD COLUMN principal TEXT NOT NULL DEFAULT '';
     ALTER TABLE workers ADD COLUMN session_sha256 TEXT NOT NULL DEFAULT '';
     CREATE INDEX IF NOT EXISTS workers_by_session ON workers(session_sha256);",
    // 2: a retried job's segments count their attempts from the retry on.
    "ALTER TABLE segments ADD COLUMN attempts_after INTEGER NOT NULL DEFAULT 0;",
    // 3: workers with a run of failures are quarantined until then; the render fingerprint of
    // each stored state, which the states built on it must carry too.
    "ALTER TABLE workers ADD COLUMN quarantined_until_ms INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX IF NOT EXISTS attempts_by_worker ON attempts(worker, id);
     ALTER TABLE attempts ADD COLUMN fingerprint TEXT NOT NULL DEFAULT '';",
    // 4: the weights each worker renders each network with, and the weights a job's first
    // segment was rendered with (its later segments need the same); counters for /metrics that
    // survive restarts and deletes, kept by a trigger so that no code path can miss one.
    "CREATE TABLE worker_weights (
         worker INTEGER NOT NULL,
         network TEXT NOT NULL,
         digest TEXT NOT NULL,
         PRIMARY KEY (worker, network)
     );
     ALTER TABLE jobs ADD COLUMN network TEXT NOT NULL DEFAULT '';
     ALTER TABLE jobs ADD COLUMN weights_digest TEXT NOT NULL DEFAULT '';
     CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
     {ATTEMPT_ENDED}",
    // 5: the segment length a job uses, and whether it was sized from a measurement (jobs that
    // left it to the coordinator have spec.segment_frames = 0).
    "ALTER TABLE jobs ADD COLUMN segment_frames INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE jobs ADD COLUMN segment_frames_measured INTEGER NOT NULL DEFAULT 0;",
    // 6: states checked against the spellings in `state.rs` ({JOBS}, {SEGMENTS} and {ATTEMPTS}
    // are filled from there); workers referenced by their row, not by `worker-N` text. SQLite
    // cannot add a constraint to a table, so the three are made anew; the AUTOINCREMENT
    // counters are carried over, so that no job or attempt id is ever handed out twice.
    "CREATE TEMP TABLE saved_sequence AS SELECT name, seq FROM sqlite_sequence WHERE name IN ('jobs', 'attempts');
     CREATE TABLE jobs_new (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         spec BLOB NOT NULL,
         priority INTEGER NOT NULL,
         state TEXT NOT NULL CHECK ({JOBS}),
         error TEXT NOT NULL DEFAULT '',
         frames INTEGER NOT NULL,
         style_sha256 TEXT NOT NULL,
         created_ms INTEGER NOT NULL,
         finished_ms INTEGER NOT NULL DEFAULT 0,
         output_size INTEGER NOT NULL DEFAULT 0,
         output_sha256 TEXT NOT NULL DEFAULT '',
         owner TEXT NOT NULL DEFAULT '',
         network TEXT NOT NULL DEFAULT '',
         weights_digest TEXT NOT NULL DEFAULT '',
         segment_frames INTEGER NOT NULL DEFAULT 0,
         segment_frames_measured INTEGER NOT NULL DEFAULT 0
     );
     INSERT INTO jobs_new SELECT seq, spec, priority, state, error, frames, style_sha256, created_ms, finished_ms,
         output_size, output_sha256, owner, network, weights_digest, segment_frames, segment_frames_measured FROM jobs;
     DROP TABLE jobs;
     ALTER TABLE jobs_new RENAME TO jobs;
     CREATE TABLE segments_new (
         job INTEGER NOT NULL REFERENCES jobs(seq),
         idx INTEGER NOT NULL,
         start_frame INTEGER NOT NULL,
         end_frame INTEGER NOT NULL,
         state TEXT NOT NULL CHECK ({SEGMENTS}),
         ready_ms INTEGER NOT NULL DEFAULT 0,
         preferred_worker INTEGER REFERENCES workers(seq),
         start_attempt INTEGER NOT NULL DEFAULT 0,
         done_attempt INTEGER NOT NULL DEFAULT 0,
         attempts_after INTEGER NOT NULL DEFAULT 0,
         PRIMARY KEY (job, idx)
     );
     INSERT INTO segments_new SELECT job, idx, start_frame, end_frame, state, ready_ms,
         CAST(substr(preferred_worker, 8) AS INTEGER), start_attempt, done_attempt, attempts_after FROM segments;
     DROP TABLE segments;
     ALTER TABLE segments_new RENAME TO segments;
     CREATE INDEX segments_by_state ON segments(state);
     CREATE TABLE attempts_new (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         job INTEGER NOT NULL REFERENCES jobs(seq),
         idx INTEGER NOT NULL,
         worker INTEGER NOT NULL REFERENCES workers(seq),
         state TEXT NOT NULL CHECK ({ATTEMPTS}),
         reason TEXT NOT NULL DEFAULT '',
         lease_until_ms INTEGER NOT NULL,
         started_ms INTEGER NOT NULL,
         ended_ms INTEGER NOT NULL DEFAULT 0,
         frames_done INTEGER NOT NULL DEFAULT 0,
         chunk_sha256 TEXT NOT NULL DEFAULT '',
         state_sha256 TEXT NOT NULL DEFAULT '',
         fingerprint TEXT NOT NULL DEFAULT ''
     );
     INSERT INTO attempts_new SELECT id, job, idx, CAST(substr(worker, 8) AS INTEGER), state, reason, lease_until_ms,
         started_ms, ended_ms, frames_done, chunk_sha256, state_sha256, fingerprint FROM attempts;
     DROP TABLE attempts;
     ALTER TABLE attempts_new RENAME TO attempts;
     CREATE INDEX attempts_by_segment ON attempts(job, idx);
     CREATE INDEX attempts_by_state ON attempts(state);
     CREATE INDEX attempts_by_worker ON attempts(worker, id);
     {ATTEMPT_ENDED}
     DELETE FROM sqlite_sequence WHERE name IN ('jobs', 'attempts');
     INSERT INTO sqlite_sequence (name, seq) SELECT name, seq FROM saved_sequence;
     DROP TABLE saved_sequence;",
    // 7: whether an ended attempt counts against its worker (a failure that followed its job
    // across workers is the job's fault); the container and codec parameters of a job's first
    // chunk, which every later chunk must share to be joined; how often a job was split by
    // preemption (bounded); indexes that lead dispatch, the lease sweep and pruning; a worker's identity across
    // registrations (its principal and name), so a quarantine follows it.
    "ALTER TABLE attempts ADD COLUMN charged INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE jobs ADD COLUMN chunk_format TEXT NOT NULL DEFAULT '';
     ALTER TABLE jobs ADD COLUMN splits INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX workers_by_identity ON workers(principal, name);
     CREATE INDEX workers_by_last_seen ON workers(last_seen_ms);
     CREATE INDEX jobs_by_dispatch ON jobs(priority DESC, seq) WHERE state IN ('queued', 'running');
     CREATE INDEX segments_by_job_state ON segments(job, state);
     CREATE INDEX segments_by_preferred ON segments(preferred_worker) WHERE preferred_worker IS NOT NULL;
     CREATE INDEX attempts_by_lease ON attempts(state, lease_until_ms);",
    // 8: the styles of a job after its first (`style_sha256`), for movies that blend several:
    // their SHA-256s in order, comma-separated.
    "ALTER TABLE jobs ADD COLUMN more_styles TEXT NOT NULL DEFAULT '';",
    // 9: a job's soundtrack, by its SHA-256 ('' for none).
    "ALTER TABLE jobs ADD COLUMN audio_sha256 TEXT NOT NULL DEFAULT '';",
    // 10: a job's frame size in pixels and a worker's devices, so that large frames go first to
    // workers that spread a frame over several (earlier jobs count as small).
    "ALTER TABLE jobs ADD COLUMN pixels INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE workers ADD COLUMN devices INTEGER NOT NULL DEFAULT 1;",
];

pub(super) fn migrate(conn: &Connection) -> Result<()> {
    let applied: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for i in applied..MIGRATIONS.len() {
        apply_migration(conn, i)?;
    }
    Ok(())
}

/// Applies migration `i` (from 0) in one transaction, with the placeholders filled.
pub(super) fn apply_migration(conn: &Connection, i: usize) -> rusqlite::Result<()> {
    let sql = MIGRATIONS[i]
        .replace("{JOBS}", &state::job_check())
        .replace("{SEGMENTS}", &state::segment_check())
        .replace("{ATTEMPTS}", &state::attempt_check())
        .replace("{ATTEMPT_ENDED}", ATTEMPT_ENDED);
    conn.execute_batch(&format!("BEGIN; {sql} PRAGMA user_version = {}; COMMIT;", i + 1))
}
