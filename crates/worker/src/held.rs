//! The jobs a worker holds: what its heartbeat renews, and how a job that is no
//! longer its attempt's is told to stop.

use std::collections::HashMap;
use std::sync::Mutex;

use bakery_db::jobs::Claimed;
use tokio_util::sync::CancellationToken;

use crate::job::Progress;

/// One held job.
#[derive(Clone)]
pub(crate) struct HeldJob {
    pub id: i64,
    /// The fencing token the claim gave.
    pub attempt: i64,
    pub progress: Progress,
    /// Cancelled when the job is no longer this attempt's.
    pub lost: CancellationToken,
}

#[derive(Default)]
pub(crate) struct Held(Mutex<HashMap<i64, HeldJob>>);

impl Held {
    /// Holds `claimed` until [`Held::release`]; the token tells when it is lost.
    pub fn hold(&self, claimed: &Claimed, progress: Progress) -> CancellationToken {
        let lost = CancellationToken::new();
        let job = HeldJob {
            id: claimed.id,
            attempt: claimed.attempt,
            progress,
            lost: lost.clone(),
        };
        self.lock().insert(claimed.id, job);
        lost
    }

    pub fn release(&self, id: i64) {
        self.lock().remove(&id);
    }

    pub fn snapshot(&self) -> Vec<HeldJob> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, HeldJob>> {
        // A panic elsewhere while holding the lock leaves the map itself sound.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
