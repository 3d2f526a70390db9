//! Slots: how many jobs of one class a worker runs at once. Light kinds (they mostly
//! wait on the database, the network, a timer) share one pool of
//! `worker_concurrency` slots; CPU-bound kinds (photos, renders) another of
//! `worker_cpu_concurrency` (one per core by default), so a burst of photos cannot
//! take the slots the light jobs need, and light jobs are not held to the core count.

use std::sync::Arc;

use tokio::sync::{Mutex, MutexGuard, OwnedSemaphorePermit, Semaphore};

pub(crate) struct Pool {
    slots: Arc<Semaphore>,
    size: usize,
    /// One message claims at a time: it takes every slot free, so slots freed
    /// together (a batch of ends) are claimed together, not one by each of the
    /// messages in hand.
    claiming: Mutex<()>,
}

impl Pool {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(size)),
            size,
            claiming: Mutex::new(()),
        }
    }

    /// Slots in all: what a consumer of this pool's queues may hold unacknowledged.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// This message's turn to claim.
    pub(crate) async fn turn(&self) -> MutexGuard<'_, ()> {
        self.claiming.lock().await
    }

    /// Waits for a free slot, then takes every other free one, up to `wanted` in all.
    pub(crate) async fn take(&self, wanted: usize) -> Vec<OwnedSemaphorePermit> {
        let Ok(first) = self.slots.clone().acquire_owned().await else {
            return Vec::new(); // closed: never, the pool lives as long as the worker
        };
        let mut slots = vec![first];
        while slots.len() < wanted {
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => slots.push(slot),
                Err(_) => break,
            }
        }
        slots
    }
}
