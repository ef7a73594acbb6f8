//! The database's connections, each owned by one thread that runs calls in the order they arrive.
//!
//! Before this, every call was a `spawn_blocking` task that took a `Mutex<Connection>`. Under a
//! farm of 1,000 workers that held the lock about half the time, yet a call waited up to half a
//! second for it (`bench --farm 1000`: lock waits p99 300-530 ms against holds of 2-6 ms): a
//! futex mutex is not fair, so hundreds of parked threads lose the race to whichever thread
//! arrives next, and each wake-up is a context switch on a busy machine. One thread and a queue
//! make the wait the work ahead of a call, no more, and cost no thread per waiting call. What
//! would still hold every call up is kept off that thread: pages for people read on a second,
//! read-only connection, and the write-ahead log is checkpointed by a third.

use rusqlite::{Connection, OpenFlags};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

type Call = Box<dyn FnOnce(&mut Connection) + Send>;

/// Which queue a call waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Heartbeats keep leases alive: a burst of completions and acquires (a thousand workers
    /// finishing equal segments at once) must not make them wait past a lease, so they go
    /// first. They are small and at most one per running attempt every couple of seconds, so
    /// the normal lane is never starved.
    Heartbeat,
    Normal,
    /// Reads for people (lists, job pages, workers): on the read-only connection when the
    /// database is a file, where a page of 200 jobs (20-30 ms) holds up no worker's call, and
    /// which refuses a write. They see every change committed before they start.
    Read,
}

/// Set when the checkpoints' thread is to end, and the wake-up that tells it so.
type Stop = (Mutex<bool>, Condvar);

/// How often WAL frames are copied back into the database file. SQLite's default copies them
/// in whichever commit crosses 1,000 pages, fsyncs included, and every call queued behind that
/// commit waits for it (holds of 20-30 ms against a median of 0.3 ms under `bench --farm`).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Lanes {
    first: VecDeque<Call>,
    then: VecDeque<Call>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    lanes: Mutex<Lanes>,
    wake: Condvar,
}

/// One connection and the thread that runs its calls: `first` before `then`, each in order.
struct Runner {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Runner {
    fn start(name: &str, mut conn: Connection) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let queue = shared.clone();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || loop {
            let call = {
                let mut lanes = queue.lanes.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(call) = lanes.first.pop_front().or_else(|| lanes.then.pop_front()) {
                        break call;
                    }
                    if lanes.closed {
                        return;
                    }
                    lanes = queue.wake.wait(lanes).unwrap_or_else(|e| e.into_inner());
                }
            };
            // A call that panics drops its reply (the caller sees the panic); the thread and the
            // connection carry on, any open transaction rolled back by its drop.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| call(&mut conn)));
        })?;
        Ok(Self { shared, thread: Some(thread) })
    }

    fn send(&self, first: bool, call: Call) {
        let mut lanes = self.shared.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if first {
            lanes.first.push_back(call);
        } else {
            lanes.then.push_back(call);
        }
        self.shared.wake.notify_one();
    }
}

impl Drop for Runner {
    /// Runs what is queued, then closes the connection.
    fn drop(&mut self) {
        self.shared.lanes.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.shared.wake.notify_one();
        join(self.thread.take());
    }
}

/// Waits for `thread`, unless this is it (a call that held the last handle of its database
/// drops it there: the thread then ends by itself once that call returns).
fn join(thread: Option<JoinHandle<()>>) {
    if let Some(thread) = thread {
        if thread.thread().id() != std::thread::current().id() {
            let _ = thread.join();
        }
    }
}

/// Runs closures on the database, one at a time per connection, first come first served within
/// each [`Lane`]. Dropping it waits for the calls queued so far and closes the connections, so
/// whoever opens the database next (a restarted coordinator, a test) finds it closed.
pub struct Database {
    reader: Option<Runner>,
    checkpoints: Option<(Arc<Stop>, JoinHandle<()>)>,
    // Last: its connection, the one that writes, closes after the others.
    writer: Runner,
}

impl Database {
    /// Hands `conn` to a thread of its own. A database in a file also gets a read-only
    /// connection for [`Lane::Read`] and a thread that checkpoints its log, each falling back to
    /// the writer (with a warning) if its connection cannot be opened.
    pub fn start(conn: Connection) -> std::io::Result<Self> {
        let path = conn.path().filter(|p| !p.is_empty()).map(std::path::PathBuf::from);
        let (mut reader, mut checkpoints) = (None, None);
        if let Some(path) = path {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            match Connection::open_with_flags(&path, flags) {
                Ok(read) => {
                    let _ = read.busy_timeout(Duration::from_secs(5));
                    reader = Some(Runner::start("gramzoom-db-read", read)?);
                }
                Err(e) => tracing::warn!(error = %e, "no read connection: pages are read on the writer's"),
            }
            match Connection::open(&path) {
                Ok(own) if conn.pragma_update(None, "wal_autocheckpoint", 0).is_ok() => {
                    let stop: Arc<Stop> = Arc::new((Mutex::new(false), Condvar::new()));
                    let until = stop.clone();
                    let thread = std::thread::Builder::new()
                        .name("gramzoom-db-checkpoint".into())
                        .spawn(move || checkpoint_until(&own, &until))?;
                    checkpoints = Some((stop, thread));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "no checkpoint thread: commits checkpoint the log themselves"),
            }
        }
        Ok(Self { reader, checkpoints, writer: Runner::start("gramzoom-db", conn)? })
    }

    /// Runs `f` on the connection of `lane` after the calls queued before it there (and, on the
    /// writer, every queued heartbeat), without blocking the caller's runtime thread.
    pub async fn call<T: Send + 'static>(
        &self,
        lane: Lane,
        f: impl FnOnce(&mut Connection) -> T + Send + 'static,
    ) -> T {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(
            lane,
            Box::new(move |c| {
                let _ = reply.send(f(c));
            }),
        );
        answer.await.expect("database call panicked")
    }

    /// [`Database::call`] in the normal lane for code that is already off the async runtime (a
    /// blocking task, a test); never from inside a call, which would wait for itself.
    pub fn call_blocking<T: Send + 'static>(&self, f: impl FnOnce(&mut Connection) -> T + Send + 'static) -> T {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(
            Lane::Normal,
            Box::new(move |c| {
                let _ = reply.send(f(c));
            }),
        );
        answer.recv().expect("database call panicked")
    }

    fn send(&self, lane: Lane, call: Call) {
        match (lane, &self.reader) {
            (Lane::Read, Some(reader)) => reader.send(false, call),
            (Lane::Heartbeat, _) => self.writer.send(true, call),
            _ => self.writer.send(false, call),
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        drop(self.reader.take());
        if let Some((stop, thread)) = self.checkpoints.take() {
            *stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
            stop.1.notify_one();
            join(Some(thread));
        }
    }
}

/// Checkpoints the log every [`CHECKPOINT_EVERY`] until `stop` (the last connection to close
/// checkpoints it once more).
fn checkpoint_until(conn: &Connection, stop: &Stop) {
    let mut stopped = stop.0.lock().unwrap_or_else(|e| e.into_inner());
    while !*stopped {
        stopped = stop.1.wait_timeout(stopped, CHECKPOINT_EVERY).unwrap_or_else(|e| e.into_inner()).0;
        // PASSIVE: copies what it can without taking any lock a call needs.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "checkpointing the database failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_run_in_order_heartbeats_first_and_a_panic_ends_only_its_own_call() {
        let db = Arc::new(Database::start(Connection::open_in_memory().unwrap()).unwrap());
        db.call(Lane::Normal, |c| c.execute_batch("CREATE TABLE t (n INTEGER)").unwrap()).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        // The thread is held by a first call while the others queue up.
        let (release, held) = mpsc::channel::<()>();
        let first = {
            let db = db.clone();
            tokio::spawn(async move { db.call(Lane::Normal, move |_| held.recv().unwrap()).await })
        };
        tokio::task::yield_now().await;
        let mut later = Vec::new();
        for n in 0..60 {
            let (db, order) = (db.clone(), order.clone());
            // Every tenth a heartbeat, queued behind nine normal calls.
            let lane = if n % 10 == 9 { Lane::Heartbeat } else { Lane::Normal };
            later.push(tokio::spawn(async move {
                db.call(lane, move |c| {
                    c.execute("INSERT INTO t VALUES (?1)", [n]).unwrap();
                    order.lock().unwrap().push(n);
                })
                .await
            }));
            // The runtime runs each task up to its send before the loop goes on.
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        first.await.unwrap();
        for t in later {
            t.await.unwrap();
        }
        let heartbeats: Vec<i32> = (0..60).filter(|n| n % 10 == 9).collect();
        let normal: Vec<i32> = (0..60).filter(|n| n % 10 != 9).collect();
        assert_eq!(*order.lock().unwrap(), [heartbeats, normal].concat());

        let panicked = {
            let db = db.clone();
            tokio::spawn(async move {
                db.call(Lane::Normal, |c| {
                    let tx = c.transaction().unwrap();
                    tx.execute("INSERT INTO t VALUES (99)", []).unwrap();
                    panic!("a bug in one call");
                })
                .await
            })
            .await
        };
        assert!(panicked.is_err(), "the caller sees its call's panic");
        let count = |c: &mut Connection| -> i64 { c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap() };
        assert_eq!(db.call(Lane::Normal, count).await, 60, "the panicking call was rolled back, the thread goes on");
        let again = db.clone();
        let blocking = tokio::task::spawn_blocking(move || again.call_blocking(count)).await.unwrap();
        assert_eq!(blocking, 60);
    }

    /// A database in a file reads pages on a connection of its own that sees every committed
    /// write and refuses to write, and is checkpointed by its own thread: what is committed is in
    /// the file once the database has closed.
    #[tokio::test]
    async fn a_file_database_reads_apart_and_refuses_writes_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        let db = Database::start(conn).unwrap();
        db.call(Lane::Normal, |c| c.execute_batch("CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (1)").unwrap())
            .await;
        let count =
            |c: &mut Connection| -> rusqlite::Result<i64> { c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)) };
        assert_eq!(db.call(Lane::Read, count).await.unwrap(), 1);
        let write = db.call(Lane::Read, |c| c.execute("INSERT INTO t VALUES (2)", [])).await;
        assert!(write.unwrap_err().to_string().contains("readonly"), "a read call cannot write");
        for n in 2..100 {
            db.call(Lane::Heartbeat, move |c| c.execute("INSERT INTO t VALUES (?1)", [n]).unwrap()).await;
        }
        assert_eq!(db.call(Lane::Read, count).await.unwrap(), 99, "reads see what was committed before them");
        drop(db);
        assert!(!dir.path().join("db-wal").exists(), "closing checkpointed the log into the file");
        assert_eq!(count(&mut Connection::open(&path).unwrap()).unwrap(), 99);
    }
}
