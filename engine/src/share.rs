//! Sharing a machine's CPUs between renders.
//!
//! libtorch's CPU kernels run on OpenMP thread teams whose threads busy-wait at every barrier
//! for their team mates. Two renders that each start a team as wide as the machine spin against
//! each other: a thread waits for a team mate the scheduler has given to the other process, and
//! burns that core while it waits. Two 96x64 renders on 2 cores took 57-144 s together instead of
//! 2 x 12.5 s. The passive wait policy (`OMP_WAIT_POLICY=PASSIVE`) ends the spinning but costs a
//! lone small render about 45%, and libgomp reads it only when the process starts.
//!
//! So renders on one machine split its CPUs between them instead: each CPU render holds a
//! numbered lock file in a per-user directory while it renders (an advisory `flock`, which the
//! kernel drops when the process dies, however it dies), counts the locks held by others every
//! [`PROBE_EVERY`], and runs its next iterations on its share of the threads it would use alone.
//! A render alone keeps every thread; two on 2 cores run one thread each, and no team spins for
//! a thread that is not running. The count is only adapted when nobody chose it (`--threads`,
//! `GRAMZOOM_THREADS` or `OMP_NUM_THREADS` fix it), and a render with a fixed count still
//! holds its lock, so the others make room for it.
//!
//! CPU results depend on the thread count in their last bits (a parallel reduction adds in
//! another order), so an adapted render's frames can differ in their last bits from one rendered
//! alone; a fixed `--threads` makes a render's frames reproducible on a machine.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a rendering process counts the others.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// Lock files per directory: renders beyond this many at once are not counted (and do not count
/// the others), which on a machine that busy is no loss.
const MAX_RENDERS: usize = 1024;
const PREFIX: &str = "render-";
const SUFFIX: &str = ".lock";

/// The directory of one user's render locks: `GRAMZOOM_RUNTIME_DIR`, else
/// `$TMPDIR/gramzoom-<uid>`. Per user, because another user's locks in a shared directory could
/// make every render of ours run on one thread.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GRAMZOOM_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    std::env::temp_dir().join(format!("gramzoom-{}", uid()))
}

fn uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

/// The lock directory, created private to this user; one that another user owns, or that others
/// may write to, is refused.
pub fn open_dir(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o700).recursive(true).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!("{} is not a directory", dir.display())));
    }
    if meta.uid() != uid() || meta.permissions().mode() & 0o022 != 0 {
        return Err(std::io::Error::other(format!(
            "{} belongs to another user or others may write to it",
            dir.display()
        )));
    }
    Ok(dir.to_path_buf())
}

/// A render's place in the directory: its lock, held until dropped.
#[derive(Debug)]
pub struct Claim {
    dir: PathBuf,
    index: usize,
    _file: File,
}

/// How many renders hold a lock now, and how many of them hold a lower-numbered one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    pub renders: usize,
    pub rank: usize,
}

impl Claim {
    /// Takes the lowest free lock; `None` when all [`MAX_RENDERS`] are held.
    pub fn take(dir: &Path) -> std::io::Result<Option<Self>> {
        for index in 0..MAX_RENDERS {
            let file = open_lock(dir, index)?;
            match file.try_lock() {
                Ok(()) => return Ok(Some(Self { dir: dir.to_path_buf(), index, _file: file })),
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Counts the renders holding locks, this one included. A lock is held when it cannot be
    /// taken; one found free is let go at once (a render that starts at that instant may count
    /// this probe as a render for [`PROBE_EVERY`], which only makes it start narrower).
    pub fn census(&self) -> Census {
        let mut census = Census { renders: 1, rank: 0 };
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return census };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(index) =
                name.to_str().and_then(|n| n.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?.parse::<usize>().ok())
            else {
                continue;
            };
            if index == self.index {
                continue;
            }
            let Ok(file) = File::open(entry.path()) else { continue };
            if let Err(TryLockError::WouldBlock) = file.try_lock() {
                census.renders += 1;
                census.rank += usize::from(index < self.index);
            }
        }
        census
    }
}

fn open_lock(dir: &Path, index: usize) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(format!("{PREFIX}{index}{SUFFIX}")))
}

/// A render's threads when `census.renders` renders share the `alone` threads it would use by
/// itself: an equal split, the remainder to the lowest-numbered locks, at least one each.
pub fn share_of(alone: usize, census: Census) -> usize {
    let n = census.renders.max(1);
    (alone / n + usize::from(census.rank < alone % n)).max(1)
}

/// One engine's part in the sharing: its claim while it renders, and the thread count it set.
pub struct CpuShare {
    dir: PathBuf,
    /// Threads when alone: the process's choice (see `device::set_threads`).
    alone: usize,
    /// Whether this render adapts its count (nobody fixed it).
    adapt: bool,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    claim: Option<Claim>,
    depth: usize,
    probed: Option<Instant>,
    threads: usize,
}

impl CpuShare {
    /// The share of a CPU render in this process, with the thread policy `device::set_threads`
    /// chose; `None` when the lock directory cannot be used (the render then runs as if alone).
    pub fn for_process() -> Option<Self> {
        let (alone, adapt) = crate::device::thread_policy();
        let dir = default_dir();
        match open_dir(&dir) {
            Ok(dir) => Some(Self::new(dir, alone, adapt)),
            Err(e) => {
                // Once per process, not once per engine (a worker makes one per job).
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(dir = %dir.display(), error = %e, "cpu renders on this machine will not share its threads");
                });
                None
            }
        }
    }

    pub fn new(dir: PathBuf, alone: usize, adapt: bool) -> Self {
        Self { dir, alone: alone.max(1), adapt, inner: Mutex::new(Inner::default()) }
    }

    /// Marks the calling render as rendering until the returned turn is dropped, and sets its
    /// threads to its share now. Call on the thread that runs the tensors.
    pub fn enter(&self) -> Turn<'_> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.depth == 0 {
            match Claim::take(&self.dir) {
                Ok(claim) => inner.claim = claim,
                Err(e) => tracing::warn!(dir = %self.dir.display(), error = %e, "could not take a render lock"),
            }
            inner.probed = None;
            // Set only when the share differs from the count in use.
            inner.threads = usize::try_from(tch::get_num_threads()).unwrap_or(0);
        }
        inner.depth += 1;
        drop(inner);
        self.adjust();
        Turn(self)
    }

    /// Re-counts the renders when [`PROBE_EVERY`] has passed and sets this thread's libtorch
    /// thread count to the share; returns the count in use.
    pub fn adjust(&self) -> usize {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !self.adapt || inner.probed.is_some_and(|t| t.elapsed() < PROBE_EVERY) {
            return inner.threads;
        }
        inner.probed = Some(Instant::now());
        let census = inner.claim.as_ref().map_or(Census { renders: 1, rank: 0 }, Claim::census);
        let threads = share_of(self.alone, census);
        if threads != inner.threads {
            tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
            tracing::debug!(threads, renders = census.renders, alone = self.alone, "cpu share");
            inner.threads = threads;
        }
        threads
    }
}

/// A render in progress (see [`CpuShare::enter`]); dropping it lets the lock go and gives the
/// thread its whole count back.
pub struct Turn<'a>(&'a CpuShare);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.depth -= 1;
        if inner.depth == 0 {
            inner.claim = None;
            if self.0.adapt && inner.threads != self.0.alone {
                tch::set_num_threads(i32::try_from(self.0.alone).unwrap_or(i32::MAX));
                inner.threads = self.0.alone;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_the_threads_a_render_would_use_alone() {
        // (threads alone, renders, rank) -> threads
        let cases = [
            ((2, 1, 0), 2),
            ((2, 2, 0), 1),
            ((2, 2, 1), 1),
            ((2, 3, 2), 1), // more renders than cores: one thread each, none spins
            ((8, 3, 0), 3),
            ((8, 3, 1), 3),
            ((8, 3, 2), 2),
            ((16, 2, 1), 8),
            ((1, 4, 3), 1),
        ];
        for ((alone, renders, rank), want) in cases {
            assert_eq!(share_of(alone, Census { renders, rank }), want, "{alone} {renders} {rank}");
        }
    }

    #[test]
    fn renders_count_each_other_until_they_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let dir = open_dir(&dir.path().join("locks")).unwrap();
        let a = Claim::take(&dir).unwrap().unwrap();
        assert_eq!(a.census(), Census { renders: 1, rank: 0 });
        let b = Claim::take(&dir).unwrap().unwrap();
        let c = Claim::take(&dir).unwrap().unwrap();
        assert_eq!((a.index, b.index, c.index), (0, 1, 2));
        assert_eq!(c.census(), Census { renders: 3, rank: 2 });
        drop(b);
        assert_eq!(a.census(), Census { renders: 2, rank: 0 });
        assert_eq!(c.census(), Census { renders: 2, rank: 1 });
        // The freed place is taken again, and a census leaves the free ones free.
        let d = Claim::take(&dir).unwrap().unwrap();
        assert_eq!(d.index, 1);
        drop((a, c, d));
        let e = Claim::take(&dir).unwrap().unwrap();
        assert_eq!((e.index, e.census()), (0, Census { renders: 1, rank: 0 }));
    }

    #[test]
    fn a_lock_directory_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = open_dir(&shared).unwrap_err().to_string();
        assert!(err.contains("others may write to it"), "{err}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(open_dir(&file).is_err());
    }

    #[test]
    fn a_render_runs_on_its_share_and_gets_its_threads_back() {
        let dir = tempfile::tempdir().unwrap();
        let dir = open_dir(dir.path()).unwrap();
        std::thread::spawn(move || {
            tch::set_num_threads(4);
            let share = CpuShare::new(dir.clone(), 4, true);
            let other = Claim::take(&dir).unwrap().unwrap();
            {
                let _turn = share.enter();
                assert_eq!(tch::get_num_threads(), 2);
                drop(other);
                // Not re-counted before PROBE_EVERY has passed.
                assert_eq!(share.adjust(), 2);
                std::thread::sleep(PROBE_EVERY);
                assert_eq!(share.adjust(), 4);
                assert_eq!(tch::get_num_threads(), 4);
                let _other = Claim::take(&dir).unwrap().unwrap();
                std::thread::sleep(PROBE_EVERY);
                assert_eq!(share.adjust(), 2);
            }
            assert_eq!(tch::get_num_threads(), 4);
            // A fixed count is never changed, but its lock is held while it renders.
            let fixed = CpuShare::new(dir.clone(), 4, false);
            let _turn = fixed.enter();
            assert_eq!(tch::get_num_threads(), 4);
            let probe = Claim::take(&dir).unwrap().unwrap();
            assert_eq!(probe.census().renders, 2);
        })
        .join()
        .unwrap();
    }
}
