//! gramzoom's coordinator: splits zoom movies into sequential segments, leases them to workers,
//! keeps every job, segment and attempt in SQLite under `--data`, stores artifacts beside it,
//! and stitches the finished chunks into the output. It does not link libtorch.
//!
//! `run` (`serve.rs`) serves the gRPC job and worker APIs (plus grpc.health.v1 and reflection)
//! on a listener until `shutdown` resolves; tests and `gramzoom render` start it in-process on
//! port 0.

pub mod auth;
pub mod budget;
pub mod cli;
mod completion;
mod config;
pub mod data_lock;
pub mod db;
pub mod error;
mod http;
pub mod inspect;
pub mod lease;
mod listing;
pub mod metrics;
pub mod preview;
pub mod reserve;
mod serve;
mod service;
pub mod soundtrack;
mod spec;
pub mod stitch;
pub mod store;
pub mod streams;
pub mod watchdog;
mod watchers;
mod web;

pub use error::{Error, Result};
pub use serve::{run, run_with_http, run_with_incoming, InProcess};
pub use spec::{check_spec, stored_params};

use crate::db::{AttemptId, JobId};
use data_lock::DataLock;
use lease::Policy;
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::{ArtifactStore, FsStore};
use tokio::sync::{watch, Notify};
use watchers::Watchers;

pub use config::{Config, ServerTls, DEFAULT_SEGMENT_FRAMES, DEFAULT_SEGMENT_SECS, MAX_SEGMENTS};
pub use proto::limits::MAX_STYLE_BYTES;

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    proto::params::hex(&Sha256::digest(bytes))
}

/// What heartbeats say of a running job beyond the database: the first segment's warm-up and
/// the pace of its frames. Only in memory; gone after a restart (the next heartbeats refill it).
#[derive(Debug, Clone, Copy, Default)]
struct Live {
    warmup_done: u32,
    warmup_total: u32,
    pace: Pace,
}

/// Jobs whose `Live` is kept; past it the stalest is forgotten (a job that ends by failing or
/// being cancelled leaves its entry behind).
const MAX_LIVE_JOBS: usize = 4096;

/// Frames per second of a job's running attempt, from its heartbeats: measured from the first
/// frame the attempt reports (set-up and warm-up excluded) over a window of about half a minute.
#[derive(Debug, Clone, Copy, Default)]
struct Pace {
    attempt: AttemptId,
    frames: u32,
    /// When the window began, and the frames done then.
    since: Option<(i64, u32)>,
    last_ms: i64,
    fps: f64,
}

impl Pace {
    fn observe(&mut self, attempt: AttemptId, frames: u32, now: i64) {
        self.last_ms = now;
        if attempt != self.attempt || frames < self.frames {
            // A new segment: the clock starts at its first frame; the last pace stands until then.
            (self.attempt, self.frames, self.since) = (attempt, frames, None);
            return;
        }
        match self.since {
            None if frames > self.frames => self.since = Some((now, frames)),
            Some((t, f)) if frames > f && now - t >= 1000 => {
                self.fps = f64::from(frames - f) * 1000.0 / (now - t) as f64;
                if now - t > 30_000 {
                    self.since = Some((now, frames));
                }
            }
            _ => {}
        }
        self.frames = frames;
    }
}

/// A database that is missing or empty beside an artifact store that holds jobs' files was lost
/// (truncated, deleted, a volume mounted wrong). Starting on it would look like an empty farm,
/// reuse job ids, and let a delete of a new job remove an old job's files.
fn refuse_lost_database(db: &std::path::Path, artifacts: &std::path::Path) -> Result<()> {
    let empty = std::fs::metadata(db).map_or(true, |m| m.len() == 0);
    let holds = |dir: &str| std::fs::read_dir(artifacts.join(dir)).is_ok_and(|mut d| d.next().is_some());
    if empty && (holds("jobs") || holds("styles") || holds("audio")) {
        return Err(Error::Startup(format!(
            "{} is missing or empty, but {} holds earlier jobs' files: restore the database from a \
             backup of this directory, or move artifacts/ aside to start an empty farm",
            db.display(),
            artifacts.display()
        )));
    }
    Ok(())
}

/// How many submitted specs are checked at once: half the cores, at least one.
fn spec_checkers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The shared core behind both gRPC services.
pub struct Coordinator {
    config: Config,
    policy: Policy,
    /// Every database call, one at a time in arrival order (`db::Database`).
    database: db::Database,
    store: Arc<dyn ArtifactStore>,
    /// Woken whenever a segment may have become ready.
    ready: Notify,
    /// Bumped on changes that may touch any job (a segment done, failed or expired).
    changes: watch::Sender<u64>,
    /// Woken on changes to one job, for that job's watchers only.
    watchers: Watchers,
    /// True once shutdown began: watch streams end and long polls return, so the server's
    /// graceful shutdown does not wait on them.
    closing: watch::Sender<bool>,
    live: Mutex<HashMap<JobId, Live>>,
    watchdog: watchdog::Watchdog,
    reserve: reserve::Reserve,
    metrics: metrics::Metrics,
    /// Each job's latest frame as a small JPEG, for the dashboard (memory only, bounded).
    previews: preview::Previews,
    /// The dashboard's live pages open at once.
    live_pages: streams::StreamLimit,
    /// `WatchJob` streams open at once.
    watches: streams::StreamLimit,
    /// Bytes of style uploads held at once.
    uploads: budget::UploadBudget,
    /// Submitted specs being checked at once (see [`Coordinator::check_submitted`]).
    spec_checks: Arc<tokio::sync::Semaphore>,
    /// The jobs whose stitch loop runs, each with the signal that wakes it early.
    stitching: Mutex<HashMap<JobId, Arc<tokio::sync::Notify>>>,
    /// Held while this coordinator runs: no other may open the same `--data`. Last, so it is
    /// let go after the database has closed (fields drop in order).
    _lock: DataLock,
}

impl Coordinator {
    /// Opens (or creates) the database and store under `config.data` and picks up where a
    /// previous coordinator stopped: running leases get a fresh term, unfinished stitches rerun.
    pub fn open(config: Config) -> Result<Arc<Self>> {
        let data = || Error::io(format!("opening the data directory {}", config.data.display()));
        store::private_dir(&config.data).map_err(data())?;
        if let Ok(meta) = std::fs::metadata(&config.data) {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(data = %config.data.display(), mode = %format!("{mode:o}"), "the data directory is open to other users (its jobs, styles and outputs are tenants' data); chmod 700 it");
            }
        }
        // Before anything under `--data` is touched: a second coordinator would wipe scratch.
        let lock = DataLock::acquire(&config.data)?;
        let db_path = config.data.join("gramzoom.db");
        refuse_lost_database(&db_path, &config.data.join("artifacts"))?;
        let conn = db::open(&db_path)?;
        for file in ["gramzoom.db", "gramzoom.db-wal", "gramzoom.db-shm"] {
            let _ = store::make_private(&config.data.join(file));
        }
        let store: Arc<dyn ArtifactStore> = Arc::new(FsStore::open(&config.data).map_err(data())?);
        let policy = config.policy();
        let resumed = lease::resume(&conn, policy, now_ms())?;
        let stitching = db::jobs_in_state(&conn, db::JobState::Stitching)?;
        tracing::info!(data = %config.data.display(), resumed_attempts = resumed, stitching = stitching.len(), "coordinator state opened");
        let watchdog = watchdog::Watchdog::new(config.stall_floor, config.stall_factor);
        let reserve = reserve::Reserve::new(config.data.join("reserve"), config.reserve_bytes);
        if let Err(e) = reserve.ensure() {
            tracing::warn!(error = %e, "could not keep a disk reserve: on a full disk, cancel and delete may fail");
        }
        let uploads = budget::UploadBudget::new(config.upload_budget, budget::UPLOAD_WAIT);
        let this = Arc::new(Self {
            _lock: lock,
            config,
            policy,
            database: db::Database::start(conn).map_err(Error::io("starting the database thread"))?,
            store,
            ready: Notify::new(),
            changes: watch::channel(0).0,
            watchers: Watchers::default(),
            closing: watch::channel(false).0,
            live: Mutex::new(HashMap::new()),
            watchdog,
            reserve,
            metrics: metrics::Metrics::default(),
            previews: preview::Previews::default(),
            live_pages: streams::StreamLimit::new(streams::MAX_LIVE_PAGES, streams::MAX_LIVE_PAGES_EACH),
            watches: streams::StreamLimit::new(streams::MAX_WATCHES, streams::MAX_WATCHES_EACH),
            uploads,
            spec_checks: Arc::new(tokio::sync::Semaphore::new(spec_checkers())),
            stitching: Mutex::new(HashMap::new()),
        });
        for job in stitching {
            this.clone().stitch_now(job);
        }
        Ok(this)
    }

    /// Like `db`, for the calls that free space (cancel, delete): on a full disk the reserve is
    /// given up and the call tried once more, so a full farm can always be emptied.
    async fn db_freeing<T: Send + 'static>(
        &self,
        f: impl Fn(&mut Connection) -> Result<T> + Send + Sync + 'static,
    ) -> Result<T> {
        let f = Arc::new(f);
        let first = f.clone();
        match self.db(move |c| first(c)).await {
            Err(e) if e.is_disk_full() && self.reserve.release() => {
                tracing::warn!(error = %e, "disk full: gave up the reserve to free space");
                self.db(move |c| f(c)).await
            }
            result => result,
        }
    }

    /// Whether the disk reserve is in place, making it anew if there is room now. New work is
    /// taken only then: a job accepted without it could not be cancelled or deleted on the
    /// next full disk.
    pub(crate) async fn reserve_ready(self: &Arc<Self>) -> bool {
        if self.reserve.is_whole() {
            return true;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reserve.ensure().is_ok()).await.unwrap_or(false)
    }

    /// Makes the reserve anew, once there is room again (after a delete).
    fn restore_reserve(self: &Arc<Self>) {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = this.reserve.ensure() {
                tracing::warn!(error = %e, "the disk reserve is still missing");
            }
        });
    }

    /// Runs `f` on the artifact store off the async runtime: the store is the seam for object
    /// storage, where every call is a network round trip, and even on local disk a stat or an
    /// unlink can block on a busy device.
    async fn store_io<T: Send + 'static>(&self, f: impl FnOnce(&dyn ArtifactStore) -> T + Send + 'static) -> T {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref())).await.expect("store task panicked")
    }

    /// Removes stored files that are no longer used (best effort: a leftover is garbage, not
    /// an error), off the async runtime.
    async fn forget_files(&self, keys: Vec<String>) {
        self.store_io(move |store| {
            for key in keys {
                let _ = store.delete(&key);
            }
        })
        .await
    }

    /// Whether the finished movie of `job` has a poster frame.
    pub(crate) async fn has_poster(&self, job: JobId) -> bool {
        self.store_io(move |store| store.exists(&store::keys::poster(job))).await
    }

    /// Where the stored file `key` is, for streaming it out; `what` names it in errors.
    pub(crate) async fn stored_path(&self, key: String, what: &str) -> Result<std::path::PathBuf> {
        let op = format!("reading {what} {key}");
        self.store_io(move |store| store.local_path(&key)).await.map_err(Error::store(op))
    }

    /// Runs `check` (a submitted spec's check) off the runtime, at most [`spec_checkers`] at once
    /// and the rest waiting their turn in order: walking every frame of a long job's schedules
    /// takes up to a few seconds of CPU, and a burst of such submits must leave cores to the
    /// heartbeats and uploads of the farm.
    async fn check_submitted<T: Send + 'static>(&self, check: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let permit = self.spec_checks.clone().acquire_owned().await.expect("never closed");
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            check()
        })
        .await
        .map_err(|e| Error::Check(e.to_string()))
    }

    /// Runs `f` on the database's thread, after the calls queued before it.
    async fn db<T: Send + 'static>(&self, f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static) -> Result<T> {
        self.database.call(db::Lane::Normal, f).await
    }

    /// [`Coordinator::db`] for what people read (lists, pages): on the read-only connection.
    async fn db_read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.database.call(db::Lane::Read, f).await
    }

    /// [`Coordinator::db`] for what a heartbeat needs, which goes before other calls.
    async fn db_heartbeat<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.database.call(db::Lane::Heartbeat, f).await
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// Wakes the watchers of `job`, if it has any.
    fn job_changed(&self, job: JobId) {
        self.watchers.changed(job);
    }

    fn segments_may_be_ready(&self) {
        self.ready.notify_waiters();
        self.changed();
    }

    /// Expires overdue leases now and then, so a dead worker's segment is requeued even when no
    /// other call comes in.
    async fn sweep(self: Arc<Self>) {
        let period = (self.config.lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut pruned = std::time::Instant::now();
        loop {
            tokio::time::sleep(period).await;
            if pruned.elapsed() >= Duration::from_secs(60) {
                pruned = std::time::Instant::now();
                let now = now_ms();
                match self.db(move |c| db::prune_workers(c, now - db::PRUNE_WORKER_MS, now)).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(workers = n, "stale registrations pruned"),
                    Err(e) => tracing::error!(error = %e, "pruning registrations failed"),
                }
            }
            let policy = self.policy;
            match self.db(move |c| lease::expire(c, policy, now_ms())).await {
                Ok(0) => {}
                Ok(_) => self.segments_may_be_ready(),
                Err(e) => tracing::error!(error = %e, "lease sweep failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of submits is checked a few at a time (half the cores), the rest waiting in turn,
    /// and every one is checked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn submitted_specs_are_checked_a_few_at_a_time() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let dir = tempfile::tempdir().unwrap();
        let coordinator = Coordinator::open(Config::new(dir.path().to_path_buf())).unwrap();
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let checks: Vec<_> = (0..12)
            .map(|n| {
                let (coordinator, running, most) = (coordinator.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    coordinator
                        .check_submitted(move || {
                            most.fetch_max(running.fetch_add(1, SeqCst) + 1, SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                            running.fetch_sub(1, SeqCst);
                            n
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut done = Vec::new();
        for check in checks {
            done.push(check.await.unwrap());
        }
        assert_eq!(done, (0..12).collect::<Vec<_>>());
        let most = most.load(SeqCst);
        assert!((1..=spec_checkers()).contains(&most), "{most} checks at once, at most {}", spec_checkers());
    }

    #[tokio::test]
    async fn a_lost_database_beside_stored_files_is_refused_not_started_empty() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::new(dir.path().to_path_buf());
        drop(Coordinator::open(config.clone()).expect("a fresh directory starts"));
        std::fs::create_dir_all(dir.path().join("artifacts/styles")).unwrap();
        std::fs::write(dir.path().join("artifacts/styles/abc"), b"style").unwrap();
        drop(Coordinator::open(config.clone()).expect("a database with its store starts"));
        for lose in [
            |p: &std::path::Path| std::fs::write(p, b"").unwrap(),
            |p: &std::path::Path| std::fs::remove_file(p).unwrap(),
        ] {
            lose(&dir.path().join("gramzoom.db"));
            let err = Coordinator::open(config.clone()).err().expect("started on a lost database").to_string();
            assert!(err.contains("gramzoom.db is missing or empty, but"), "{err}");
            assert!(err.contains("restore the database"), "{err}");
        }
    }

    /// Everything under `--data` is tenants' data: the directory it creates is the user's
    /// alone, and so are the database and every stored artifact.
    #[tokio::test]
    async fn the_data_directory_and_its_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/data");
        let c = Coordinator::open(Config::new(data.clone())).unwrap();
        let scratch = c.store.scratch_dir().join("upload");
        std::fs::write(&scratch, b"chunk").unwrap();
        c.store.put_file("jobs/1/attempt-1.chunk", &scratch).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for (path, want) in [
            (data.clone(), 0o700),
            (data.join("artifacts"), 0o700),
            (data.join("artifacts/jobs/1"), 0o700),
            (data.join("gramzoom.db"), 0o600),
            (data.join("artifacts/jobs/1/attempt-1.chunk"), 0o600),
        ] {
            assert_eq!(mode(&path), want, "{}", path.display());
        }
    }
}
