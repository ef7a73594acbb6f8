//! Bounds on the long-lived streams clients open (dashboard live pages, `WatchJob`): each holds a
//! task that re-reads the database on changes, so an unbounded number of them lets one viewer
//! take the coordinator's CPU and its database lock away from the workers' heartbeats.
//!
//! A permit is held by the stream's task for as long as the stream lives (not by the handler
//! that opened it, which returns at once), and is counted against the whole coordinator and
//! against the principal who opened it, so one tenant cannot take every slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The dashboard's live pages (Server-Sent Events) open at once, over all viewers.
pub const MAX_LIVE_PAGES: usize = 256;
/// The same for one signed-in user: a few browser tabs each.
pub const MAX_LIVE_PAGES_EACH: usize = 32;
/// `WatchJob` streams open at once (`gramzoom watch`, `submit --watch`, client libraries).
pub const MAX_WATCHES: usize = 2048;
/// The same for one user: a script watching all of its running jobs.
pub const MAX_WATCHES_EACH: usize = 256;

/// Why a stream was not opened.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Every slot of the coordinator is taken.
    #[error("the coordinator has {limit} streams of this kind open, its limit; try again later")]
    Full { limit: usize },
    /// This principal holds its share already.
    #[error("you have {limit} streams of this kind open, the limit per user; close some first")]
    Yours { limit: usize },
}

#[derive(Default)]
struct Open {
    total: usize,
    by: HashMap<String, usize>,
}

/// The streams of one kind open at once.
#[derive(Clone)]
pub struct StreamLimit {
    open: Arc<Mutex<Open>>,
    total: usize,
    each: usize,
}

impl StreamLimit {
    /// At most `total` streams, at most `each` per principal.
    pub fn new(total: usize, each: usize) -> Self {
        Self { open: Arc::default(), total, each }
    }

    /// A permit for one more stream of `who`, released when dropped. Without `--auth` every
    /// caller is the same nameless principal, so only the total applies to `who == ""`.
    pub fn try_open(&self, who: &str) -> Result<StreamPermit, Refused> {
        let mut open = self.lock();
        if open.total >= self.total {
            return Err(Refused::Full { limit: self.total });
        }
        let mine = open.by.get(who).copied().unwrap_or(0);
        if mine >= self.each && !who.is_empty() {
            return Err(Refused::Yours { limit: self.each });
        }
        open.total += 1;
        open.by.insert(who.to_string(), mine + 1);
        Ok(StreamPermit { limit: self.clone(), who: who.to_string() })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One open stream; dropping it frees its slot.
pub struct StreamPermit {
    limit: StreamLimit,
    who: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.limit.lock();
        open.total -= 1;
        if let Some(n) = open.by.get_mut(&self.who) {
            *n -= 1;
            if *n == 0 {
                open.by.remove(&self.who);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_overall_and_per_principal_and_freed_on_drop() {
        let limit = StreamLimit::new(3, 2);
        let a1 = limit.try_open("a").unwrap();
        let _a2 = limit.try_open("a").unwrap();
        assert_eq!(limit.try_open("a").err(), Some(Refused::Yours { limit: 2 }));
        let _b1 = limit.try_open("b").unwrap();
        assert_eq!(limit.try_open("c").err(), Some(Refused::Full { limit: 3 }));
        drop(a1);
        assert_eq!(limit.open(), 2);
        let _c1 = limit.try_open("c").unwrap();
        assert_eq!(limit.try_open("a").err(), Some(Refused::Full { limit: 3 }));

        let open = StreamLimit::new(3, 1);
        let _all: Vec<_> = (0..3).map(|_| open.try_open("").unwrap()).collect();
        assert_eq!(open.try_open("").err(), Some(Refused::Full { limit: 3 }));
    }
}
