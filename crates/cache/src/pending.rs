//! Version and generation bumps that writes owed while the cache could not take
//! them. A value cached before such a write must not be served once the cache is
//! back (it would otherwise live until its TTL), so the bump is made as soon as the
//! cache answers again — once per key, however many writes failed on it (any bump
//! ends every value stored under the old version), by one task for all keys, and
//! within bounds: at most [`MAX_PENDING`] keys, each for at most [`GIVE_UP_AFTER`]
//! (by then every value cached before the write has expired).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::Cache;

/// Keys owed a bump, at most: beyond it a failed write's bump is dropped (counted in
/// `bakery_cache_bumps_dropped_total`) and its stale values live until their TTL.
pub const MAX_PENDING: usize = 10_000;

/// Longer than any value's TTL in practice: past it, nothing cached before the
/// write is left to end.
const GIVE_UP_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Default)]
pub(crate) struct Pending {
    /// Key → (first failure, how many failures): the count tells the retrier whether
    /// a write failed again after the bump it just made.
    keys: Mutex<HashMap<String, (Instant, u64)>>,
    retrying: AtomicBool,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, u64)>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Cache {
    /// A write happened while the cache could not be told: bump `counter_key` as
    /// soon as it answers again.
    pub(crate) fn bump_later(&self, counter_key: String) {
        {
            let mut keys = self.pending.lock();
            let len = keys.len();
            match keys.get_mut(&counter_key) {
                Some((_, failures)) => *failures += 1,
                None if len >= MAX_PENDING => {
                    metrics::counter!("bakery_cache_bumps_dropped_total").increment(1);
                    tracing::error!(
                        key = counter_key,
                        "too many invalidations waiting for the cache; this one is dropped (its stale values live until their TTL)"
                    );
                    return;
                }
                None => {
                    keys.insert(counter_key, (Instant::now(), 1));
                }
            }
            metrics::gauge!("bakery_cache_pending_bumps").set(keys.len() as f64);
        }
        if !self.pending.retrying.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().retry_pending());
        }
    }

    /// How many keys are owed a bump now.
    pub fn pending_bumps(&self) -> usize {
        self.pending.lock().len()
    }

    /// The one retrier: every 100 ms at first, then less often, until nothing is owed.
    async fn retry_pending(self) {
        let mut pause = Duration::from_millis(100);
        loop {
            tokio::time::sleep(pause).await;
            let owed: Vec<(String, Instant, u64)> = self
                .pending
                .lock()
                .iter()
                .map(|(key, (since, failures))| (key.clone(), *since, *failures))
                .collect();
            for (key, since, failures) in owed {
                if since.elapsed() > GIVE_UP_AFTER {
                    self.pending.lock().remove(&key);
                    metrics::counter!("bakery_cache_bumps_dropped_total").increment(1);
                    continue;
                }
                if self.incr(&key).await.is_err() {
                    break; // still away: the rest waits for the next round
                }
                tracing::info!(key, "late version bump applied");
                let mut keys = self.pending.lock();
                // A write that failed again meanwhile may have come after this bump.
                if keys.get(&key).is_some_and(|(_, now)| *now == failures) {
                    keys.remove(&key);
                }
            }
            let left = self.pending.lock().len();
            metrics::gauge!("bakery_cache_pending_bumps").set(left as f64);
            if left == 0 {
                self.pending.retrying.store(false, Ordering::Release);
                // A key owed between the count and the flag found the flag still set.
                if self.pending.lock().is_empty()
                    || self.pending.retrying.swap(true, Ordering::AcqRel)
                {
                    return;
                }
                pause = Duration::from_millis(100);
            } else {
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}
