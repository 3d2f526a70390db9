//! Copies of one message handled one at a time in a process. At-least-once delivery
//! can hand a consumer two copies of a message at once — a relay that published it
//! again after its publish timed out while the broker was away, a redelivery while
//! the first copy is still being handled. Each handler checks "done before?" first;
//! that check only works if the first copy has finished, so the second waits for it
//! here (and then finds it done) instead of racing it — a second mail, a second push.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use tokio::sync::OwnedMutexGuard;

type Key = (&'static str, String);

/// (queue, message id) → the lock its copies take in turn.
static IN_FLIGHT: LazyLock<Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Default::default);

/// Held while one copy of a message is handled; the next copy waits for its drop.
pub(crate) struct Turn {
    key: Key,
    guard: Option<OwnedMutexGuard<()>>,
}

/// Waits until no other copy of `message_id` from `queue` is being handled here.
pub(crate) async fn turn(queue: &'static str, message_id: &str) -> Turn {
    let key = (queue, message_id.to_string());
    let lock = table().entry(key.clone()).or_default().clone();
    Turn {
        key,
        guard: Some(lock.lock_owned().await),
    }
}

fn table() -> std::sync::MutexGuard<'static, HashMap<Key, Arc<tokio::sync::Mutex<()>>>> {
    IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut table = table();
        drop(self.guard.take());
        // Nobody else holds or waits for it (only the table's own reference is
        // left): the entry goes, so the table holds only messages in flight.
        if table
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            table.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Two copies of one message run one after the other; other messages (and the
    /// same id on another queue) run alongside; the table empties afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn copies_of_one_message_take_turns_and_others_do_not_wait() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let copies: Vec<_> = (0..4)
            .map(|_| {
                let (running, most) = (running.clone(), most.clone());
                tokio::spawn(async move {
                    let _turn = turn("q.test", "m-1").await;
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        // Held by one copy, m-1 does not hold up m-2 or m-1 on another queue.
        let held = turn("q.test", "m-1").await;
        let other = tokio::time::timeout(Duration::from_millis(500), async {
            let _a = turn("q.test", "m-2").await;
            let _b = turn("q.other", "m-1").await;
        })
        .await;
        assert!(other.is_ok(), "other messages waited for m-1");
        drop(held);
        for copy in copies {
            copy.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "two copies ran at once");
        assert!(
            !table()
                .keys()
                .any(|(q, _)| *q == "q.test" || *q == "q.other"),
            "the table keeps messages no longer in flight"
        );
    }
}
