//! One render shared by every live stream that shows the same thing. Fifty viewers of the jobs
//! list once each re-read 200 jobs (about 600 queries) every second, all through the database
//! lock the workers' heartbeats need: at 1,000 workers that put heartbeats at 0.8 s (p50). Now
//! a stream woken by a change takes the latest render if it began after that change, and
//! renders (once, for everyone waiting) only when none did.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// The latest render of one thing: when it began, and what it gave.
type Slot<T> = Arc<tokio::sync::Mutex<Option<(Instant, T)>>>;

/// Renders by key (`jobs/alice/running`, `job/7`, `workers`).
pub(crate) struct Shared<T> {
    slots: Mutex<HashMap<String, Slot<T>>>,
}

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Self { slots: Mutex::default() }
    }
}

/// Keys kept at most; past it the map is emptied (each key costs one render to remake).
const MAX_KEYS: usize = 4096;

impl<T: Clone> Shared<T> {
    /// What `render` gives for `key`, from a render that began at or after `changed` (the
    /// change the caller was woken for), rendering anew only when there is none. Callers that
    /// arrive while a render runs wait for it.
    pub(crate) async fn get<E, F, Fut>(&self, key: &str, changed: Instant, render: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if slots.len() >= MAX_KEYS && !slots.contains_key(key) {
                slots.clear();
            }
            slots.entry(key.to_string()).or_default().clone()
        };
        let mut latest = slot.lock().await;
        if let Some((began, value)) = latest.as_ref() {
            if *began >= changed {
                return Ok(value.clone());
            }
        }
        let began = Instant::now();
        let value = render().await?;
        *latest = Some((began, value.clone()));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn streams_woken_by_the_same_change_share_one_render() {
        let shared: Arc<Shared<u32>> = Arc::default();
        let renders = Arc::new(AtomicU32::new(0));
        let render = |renders: Arc<AtomicU32>| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, ()>(renders.fetch_add(1, Ordering::SeqCst) + 1)
        };
        let changed = Instant::now();
        let streams: Vec<_> = (0..50)
            .map(|_| {
                let (shared, renders) = (shared.clone(), renders.clone());
                tokio::spawn(async move { shared.get("jobs", changed, || render(renders)).await.unwrap() })
            })
            .collect();
        for s in streams {
            assert_eq!(s.await.unwrap(), 1, "every stream got the one render");
        }
        assert_eq!(renders.load(Ordering::SeqCst), 1);
        // A later change needs a render that began after it; another key renders on its own.
        let later = Instant::now();
        assert_eq!(shared.get("jobs", later, || render(renders.clone())).await, Ok(2));
        assert_eq!(shared.get("jobs", later, || render(renders.clone())).await, Ok(2));
        assert_eq!(shared.get("workers", later, || render(renders.clone())).await, Ok(3));
    }
}
