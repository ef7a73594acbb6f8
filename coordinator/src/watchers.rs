//! Who is watching which job. `WatchJob` streams re-read their job when it changes; heartbeats
//! arrive from every worker every few seconds, and waking every watcher for each one made 200
//! watchers of idle jobs cost 80-85% of a core at 50 heartbeats a second, against 6-7% with a
//! channel per watched job (`gramzoom bench --cluster`).

use crate::db::JobId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

type Senders = Arc<Mutex<HashMap<JobId, watch::Sender<u64>>>>;

/// A change channel per watched job; a job nobody watches has none. Plus one channel that any
/// job's change bumps, for views of many jobs (the dashboard's lists).
pub struct Watchers(Senders, watch::Sender<u64>);

impl Default for Watchers {
    fn default() -> Self {
        Self(Senders::default(), watch::channel(0).0)
    }
}

impl Watchers {
    /// Wakes the watchers of `job`, if it has any, and those of every job.
    pub fn changed(&self, job: JobId) {
        if let Some(tx) = lock(&self.0).get(&job) {
            tx.send_modify(|v| *v += 1);
        }
        self.1.send_modify(|v| *v += 1);
    }

    /// A subscription woken by every later change of any job.
    pub fn subscribe_any(&self) -> watch::Receiver<u64> {
        self.1.subscribe()
    }

    /// A subscription woken by every later [`Self::changed`] for `job`.
    pub fn subscribe(&self, job: JobId) -> JobWatch {
        let rx = lock(&self.0).entry(job).or_insert_with(|| watch::channel(0).0).subscribe();
        JobWatch { senders: self.0.clone(), job, rx: Some(rx) }
    }

    /// Jobs with at least one watcher.
    #[cfg(test)]
    pub fn watched(&self) -> usize {
        lock(&self.0).len()
    }
}

fn lock(senders: &Senders) -> std::sync::MutexGuard<'_, HashMap<JobId, watch::Sender<u64>>> {
    senders.lock().unwrap_or_else(|e| e.into_inner())
}

/// One watcher's subscription to one job; the last one to go removes the job's channel.
pub struct JobWatch {
    senders: Senders,
    job: JobId,
    rx: Option<watch::Receiver<u64>>,
}

impl JobWatch {
    /// Resolves at the job's next change.
    pub async fn changed(&mut self) {
        // The sender stays in the map while this receiver lives; never spin regardless.
        let Some(rx) = self.rx.as_mut() else { return std::future::pending().await };
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        let mut senders = lock(&self.senders);
        drop(self.rx.take());
        if senders.get(&self.job).is_some_and(|tx| tx.receiver_count() == 0) {
            senders.remove(&self.job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn woken(w: &mut JobWatch) -> bool {
        tokio::time::timeout(Duration::from_millis(50), w.changed()).await.is_ok()
    }

    #[tokio::test]
    async fn only_the_changed_jobs_watchers_wake_and_the_last_one_out_cleans_up() {
        let watchers = Watchers::default();
        let (mut a1, mut a2, mut b) =
            (watchers.subscribe(JobId(1)), watchers.subscribe(JobId(1)), watchers.subscribe(JobId(2)));
        watchers.changed(JobId(1));
        watchers.changed(JobId(3)); // nobody watches job 3: nothing to wake, nothing created
        assert!(woken(&mut a1).await && woken(&mut a2).await);
        assert!(!woken(&mut b).await, "job 2's watcher woke for job 1");
        assert!(!woken(&mut a1).await, "a change wakes once");
        assert_eq!(watchers.watched(), 2);
        drop(a1);
        assert_eq!(watchers.watched(), 2, "job 1 still has a watcher");
        drop(a2);
        drop(b);
        assert_eq!(watchers.watched(), 0);
    }
}
