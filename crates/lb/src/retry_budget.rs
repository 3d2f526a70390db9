//! A retry budget (as Linkerd and Envoy have): retries may add at most a share of
//! the traffic, plus a small floor per second, so retries cannot turn a struggling
//! pool into an overloaded one.

use std::sync::atomic::{AtomicI64, Ordering};

/// Tokens are kept in thousandths: a request deposits `percent * 10`, a retry
/// withdraws 1000.
pub struct RetryBudget {
    milli_tokens: AtomicI64,
    deposit: i64,
    floor_per_sec: i64,
    cap: i64,
}

impl RetryBudget {
    pub fn new(percent: u32, min_per_sec: u32) -> Self {
        let floor_per_sec = min_per_sec as i64 * 1000;
        Self {
            milli_tokens: AtomicI64::new(floor_per_sec),
            deposit: percent as i64 * 10,
            floor_per_sec,
            // Unused budget does not pile up beyond ten seconds of the floor or 100 retries.
            cap: (floor_per_sec * 10).max(100_000),
        }
    }

    /// Every request earns the budget a little.
    pub fn deposit(&self) {
        self.add(self.deposit);
    }

    /// Called once a second: the floor that lets a quiet pool still retry.
    pub fn refill(&self) {
        self.add(self.floor_per_sec);
    }

    fn add(&self, amount: i64) {
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + amount).min(self.cap))
            });
    }

    /// Takes one retry from the budget if there is one.
    pub fn try_withdraw(&self) -> bool {
        self.milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= 1000).then_some(t - 1000)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_a_share_of_requests() {
        let budget = RetryBudget::new(20, 0);
        for _ in 0..100 {
            budget.deposit();
        }
        let allowed = (0..100).filter(|_| budget.try_withdraw()).count();
        assert_eq!(allowed, 20);
    }

    #[test]
    fn the_floor_allows_a_few_retries_when_traffic_is_low() {
        let budget = RetryBudget::new(20, 3);
        assert_eq!((0..10).filter(|_| budget.try_withdraw()).count(), 3);
        budget.refill();
        assert_eq!((0..10).filter(|_| budget.try_withdraw()).count(), 3);
    }
}
