//! One member of a pool: where it is, how busy it is, and whether it is healthy.
//!
//! Health has two inputs: the active checker (hysteresis: up after N passes, down
//! after M failures, down at once when the member says it is draining) and passive
//! ejection (a connection that fails takes the member out until the checker sees it
//! pass again).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    /// `http://addr`, prebuilt for health checks.
    pub origin: String,
    /// `addr` as a `Host` header, for the rare request that came without one.
    pub host: http::HeaderValue,
    inflight: AtomicUsize,
    served: AtomicU64,
    /// Attempts in a row that failed after connecting (resets, no answer).
    consecutive_failures: AtomicU32,
    /// Read on every request, so kept apart from the checker's counters.
    healthy: AtomicBool,
    counters: Mutex<HealthCounters>,
    /// The checker found the member dead (it stopped answering, as opposed to
    /// draining): requests stranded on it stop waiting for an answer that will not
    /// come. Cleared when it is healthy again.
    dead: AtomicBool,
}

#[derive(Default)]
struct HealthCounters {
    passes: u32,
    failures: u32,
    draining: bool,
}

/// What one active health check saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Pass,
    Fail,
    /// The member answered that it is draining: stop sending at once.
    Draining,
}

impl Backend {
    /// A new member starts unhealthy: it takes traffic once the checker has seen it pass.
    pub fn new(id: String, addr: SocketAddr) -> Self {
        Self {
            origin: format!("http://{addr}"),
            host: http::HeaderValue::from_str(&addr.to_string())
                .expect("an IP:port is a valid header value"),
            id,
            addr,
            inflight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            healthy: AtomicBool::new(false),
            counters: Mutex::new(HealthCounters::default()),
            dead: AtomicBool::new(false),
        }
    }

    /// Whether the checker found this member dead (a draining member is not: its
    /// requests finish).
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.counters.lock().map(|c| c.draining).unwrap_or(false)
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn start_request(&self) -> InflightGuard<'_> {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(self)
    }

    /// An answered request: the failure streak is over.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A failed attempt; returns the length of the failure streak.
    pub fn record_failure(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Applies one active check with hysteresis; returns true if health changed.
    pub fn record_probe(&self, probe: Probe, healthy_after: u32, unhealthy_after: u32) -> bool {
        let Ok(mut c) = self.counters.lock() else {
            return false;
        };
        let was = self.is_healthy();
        let now = match probe {
            Probe::Pass => {
                c.failures = 0;
                c.draining = false;
                c.passes = c.passes.saturating_add(1);
                was || c.passes >= healthy_after
            }
            Probe::Fail => {
                c.passes = 0;
                c.failures = c.failures.saturating_add(1);
                was && c.failures < unhealthy_after
            }
            Probe::Draining => {
                c.passes = 0;
                c.draining = true;
                false
            }
        };
        self.healthy.store(now, Ordering::Relaxed);
        if now {
            self.dead.store(false, Ordering::Relaxed);
        } else if was && probe == Probe::Fail {
            self.dead.store(true, Ordering::Relaxed);
        }
        was != now
    }

    /// Passive ejection: out of rotation until the checker sees enough passes.
    pub fn eject(&self) -> bool {
        let Ok(mut c) = self.counters.lock() else {
            return false;
        };
        c.passes = 0;
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.healthy.swap(false, Ordering::Relaxed)
    }
}

/// Decrements the in-flight count (and counts the request served) on drop.
pub struct InflightGuard<'a>(&'a Backend);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
        self.0.served.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Backend {
        Backend::new("web-1".into(), "127.0.0.1:1".parse().unwrap())
    }

    #[test]
    fn a_member_comes_up_after_two_passes_and_goes_down_after_three_failures() {
        let b = backend();
        assert!(!b.is_healthy(), "new members wait for the checker");
        b.record_probe(Probe::Pass, 2, 3);
        assert!(!b.is_healthy());
        b.record_probe(Probe::Pass, 2, 3);
        assert!(b.is_healthy());
        b.record_probe(Probe::Fail, 2, 3);
        b.record_probe(Probe::Fail, 2, 3);
        assert!(b.is_healthy(), "two failures are not enough");
        b.record_probe(Probe::Pass, 2, 3);
        b.record_probe(Probe::Fail, 2, 3);
        b.record_probe(Probe::Fail, 2, 3);
        assert!(b.is_healthy(), "a pass in between resets the count");
        b.record_probe(Probe::Fail, 2, 3);
        assert!(!b.is_healthy());
    }

    #[test]
    fn a_member_is_found_dead_by_failed_checks_not_by_draining() {
        let b = backend();
        b.record_probe(Probe::Pass, 1, 2);
        b.record_probe(Probe::Draining, 1, 2);
        assert!(!b.is_dead(), "draining is not dead");
        b.record_probe(Probe::Pass, 1, 2);
        b.record_probe(Probe::Fail, 1, 2);
        assert!(!b.is_dead(), "one failure is not enough");
        b.record_probe(Probe::Fail, 1, 2);
        assert!(b.is_dead());
        b.record_probe(Probe::Pass, 1, 2);
        assert!(!b.is_dead(), "alive again");
    }

    #[test]
    fn draining_takes_a_member_out_at_once() {
        let b = backend();
        b.record_probe(Probe::Pass, 1, 3);
        assert!(b.is_healthy());
        b.record_probe(Probe::Draining, 1, 3);
        assert!(!b.is_healthy());
        assert!(b.is_draining());
    }

    #[test]
    fn an_ejected_member_needs_fresh_passes_to_return() {
        let b = backend();
        b.record_probe(Probe::Pass, 2, 3);
        b.record_probe(Probe::Pass, 2, 3);
        assert!(b.eject());
        assert!(!b.is_healthy());
        b.record_probe(Probe::Pass, 2, 3);
        assert!(!b.is_healthy());
        b.record_probe(Probe::Pass, 2, 3);
        assert!(b.is_healthy());
    }

    #[test]
    fn the_inflight_guard_counts_and_uncounts() {
        let b = backend();
        {
            let _g = b.start_request();
            assert_eq!(b.inflight(), 1);
        }
        assert_eq!(b.inflight(), 0);
        assert_eq!(b.served(), 1);
    }
}
