//! Slots: how many jobs of one class a worker runs at once. Light kinds (they mostly
//! wait on the database, the network, a timer) share one pool of
//! `worker_concurrency` slots; CPU-bound kinds (photos, renders) another of
//! `worker_cpu_concurrency` (one per core by default), so a burst of photos cannot
//! take the slots the light jobs need, and light jobs are not held to the core count.

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

pub(crate) struct Pool {
    slots: Arc<Semaphore>,
    size: usize,
    /// One message takes slots at a time: it takes every slot free, so slots freed
    /// together (a batch of ends) go to one message's jobs, claimed in one statement,
    /// not one to each of the messages in hand. The claims themselves run side by
    /// side: a worker fed one job per message (as web requests enqueue them) would
    /// otherwise wait a database round trip per job.
    taking: Mutex<()>,
}

impl Pool {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(size)),
            size,
            taking: Mutex::new(()),
        }
    }

    /// Slots in all: what a consumer of this pool's queues may hold unacknowledged.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Waits for this message's turn and a free slot, then takes every other free
    /// one, up to `wanted` in all.
    pub(crate) async fn take(&self, wanted: usize) -> Vec<OwnedSemaphorePermit> {
        let _turn = self.taking.lock().await;
        let Ok(first) = self.slots.clone().acquire_owned().await else {
            return Vec::new(); // closed: never, the pool lives as long as the worker
        };
        let mut slots = vec![first];
        // The jobs whose ends freed this slot free theirs at the same moment, each
        // in its task: let them run before counting what is free, or a batch of
        // ends is claimed for again one slot at a time.
        if wanted > 1 {
            tokio::task::yield_now().await;
        }
        while slots.len() < wanted {
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => slots.push(slot),
                Err(_) => break,
            }
        }
        slots
    }
}
