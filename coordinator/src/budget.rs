//! The bytes of uploads in flight. A style is held in memory from its first piece until it has
//! been checked and stored (decoding needs it whole), so twenty concurrent 63 MiB submits once
//! took the coordinator from 330 MiB to 1.6 GiB. Each upload reserves what it declares before
//! its bytes are accepted; when the budget is spent, the next waits a while for room and is
//! then refused with a message that says to try again.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of style uploads held at once by default.
pub const DEFAULT_UPLOAD_BUDGET: u64 = 256 << 20;
/// How long an upload waits for room before it is refused.
pub const UPLOAD_WAIT: Duration = Duration::from_secs(20);

/// Why an upload got no room.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoRoom {
    #[error("the upload declares {size} bytes, more than the {budget} bytes the coordinator holds for all uploads")]
    TooLarge { size: u64, budget: u64 },
    #[error("the coordinator is receiving {budget} bytes of other uploads; try again in a minute")]
    Busy { budget: u64 },
}

#[derive(Clone)]
pub struct UploadBudget {
    bytes: Arc<Semaphore>,
    budget: u64,
    wait: Duration,
}

/// Room for one upload's bytes, given back when dropped.
pub struct Room(#[allow(dead_code)] OwnedSemaphorePermit);

impl UploadBudget {
    pub fn new(budget: u64, wait: Duration) -> Self {
        // Counted in KiB: a semaphore takes at most u32 permits at once.
        let permits = kib(budget) as usize;
        Self { bytes: Arc::new(Semaphore::new(permits)), budget, wait }
    }

    /// Reserves `size` bytes, waiting up to the budget's wait for others to finish.
    pub async fn reserve(&self, size: u64) -> Result<Room, NoRoom> {
        if size > self.budget {
            return Err(NoRoom::TooLarge { size, budget: self.budget });
        }
        let acquire = self.bytes.clone().acquire_many_owned(kib(size).max(1));
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => Ok(Room(permit)),
            _ => Err(NoRoom::Busy { budget: self.budget }),
        }
    }

    /// Bytes free now (to the KiB).
    pub fn free(&self) -> u64 {
        self.bytes.available_permits() as u64 * 1024
    }
}

fn kib(bytes: u64) -> u32 {
    bytes.div_ceil(1024).min(u32::MAX as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn uploads_wait_for_room_and_are_refused_when_none_comes() {
        let budget = UploadBudget::new(3 << 20, Duration::from_millis(200));
        let a = budget.reserve(2 << 20).await.unwrap();
        assert_eq!(budget.free(), 1 << 20);
        assert_eq!(budget.reserve(2 << 20).await.err(), Some(NoRoom::Busy { budget: 3 << 20 }));
        assert_eq!(budget.reserve(4 << 20).await.err(), Some(NoRoom::TooLarge { size: 4 << 20, budget: 3 << 20 }));
        // Room that comes back while an upload waits lets it in.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(2 << 20).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(a);
        assert!(waiting.await.unwrap());
        assert_eq!(budget.free(), 3 << 20, "every reservation was given back");
    }
}
