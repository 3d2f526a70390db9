//! A pool of interchangeable backends and how one is picked for a request.
//!
//! Members change at run time (the supervisor replaces a dead clone, an operator
//! adds a machine); a request works on a snapshot, so a member removed mid-request
//! finishes its request undisturbed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bakery_config::Selection;

use crate::backend::Backend;

/// Up to this many candidates, least-request looks at every one of them; beyond,
/// at two chosen at random (the power of two choices: near the best balance at a
/// constant cost).
const SCAN_ALL_MAX: usize = 8;

pub struct Pool {
    pub name: String,
    /// The `route` label of this pool's requests in `bakery_http_requests_total`.
    route_label: String,
    /// Those counters by status, looked up once: the registry lookup (hashing the
    /// labels) would otherwise be a good share of the proxy's own work.
    responses: RwLock<HashMap<u16, metrics::Counter>>,
    members: RwLock<Arc<Vec<Arc<Backend>>>>,
    selection: Selection,
    next: AtomicUsize,
    /// Most of the pool that passive ejection may take out, in percent.
    max_ejection_percent: u32,
    /// Below this share of healthy members, health is ignored (Envoy's panic mode):
    /// when most of a pool looks down, the checks are more likely wrong than the pool.
    panic_threshold_percent: u32,
    /// Its members are reached over HTTP/2, requests sharing connections
    /// ([`crate::multiplex`]).
    pub http2: bool,
}

impl Pool {
    pub fn new(
        name: &str,
        selection: Selection,
        max_ejection_percent: u32,
        panic_threshold_percent: u32,
        http2: bool,
    ) -> Self {
        Self {
            name: name.to_string(),
            route_label: format!("proxy:{name}"),
            responses: RwLock::new(HashMap::new()),
            members: RwLock::new(Arc::new(Vec::new())),
            selection,
            next: AtomicUsize::new(0),
            max_ejection_percent,
            panic_threshold_percent,
            http2,
        }
    }

    pub fn route_label(&self) -> &str {
        &self.route_label
    }

    /// Counts one backend response under `bakery_http_requests_total{route, status}`.
    pub fn count_response(&self, status: http::StatusCode) {
        let code = status.as_u16();
        // Counted under the read lock: no handle cloned per response.
        if let Ok(counters) = self.responses.read()
            && let Some(counter) = counters.get(&code)
        {
            counter.increment(1);
            return;
        }
        let counter = metrics::counter!(
            "bakery_http_requests_total",
            "route" => self.route_label.clone(),
            "status" => code.to_string()
        );
        counter.increment(1);
        if let Ok(mut map) = self.responses.write() {
            map.insert(code, counter);
        }
    }

    pub fn members(&self) -> Arc<Vec<Arc<Backend>>> {
        self.members.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// Adds a member, or replaces the one with the same id (a restarted clone).
    pub fn upsert(&self, backend: Backend) {
        if let Ok(mut members) = self.members.write() {
            let mut next: Vec<Arc<Backend>> = members
                .iter()
                .filter(|b| b.id != backend.id)
                .cloned()
                .collect();
            next.push(Arc::new(backend));
            next.sort_by(|a, b| a.id.cmp(&b.id));
            *members = Arc::new(next);
        }
    }

    /// Removes a member; false if there was none with that id.
    pub fn remove(&self, id: &str) -> bool {
        let Ok(mut members) = self.members.write() else {
            return false;
        };
        let before = members.len();
        let next: Vec<Arc<Backend>> = members.iter().filter(|b| b.id != id).cloned().collect();
        let removed = next.len() != before;
        *members = Arc::new(next);
        removed
    }

    /// Picks a member for a request, skipping those already tried by it.
    pub fn pick(&self, tried: &[usize]) -> Option<(usize, Arc<Backend>)> {
        let members = self.members();
        let healthy = members.iter().filter(|b| b.is_healthy()).count();
        let panic =
            healthy * 100 < self.panic_threshold_percent as usize * members.len() || healthy == 0;
        let eligible = |i: &usize| {
            !tried.contains(i)
                && if panic {
                    !members[*i].is_draining()
                } else {
                    members[*i].is_healthy()
                }
        };
        // On the stack for pools of up to 64 members: this runs for every request.
        let mut buffer = [0usize; 64];
        let mut heap = Vec::new();
        let candidates: &[usize] = if members.len() <= buffer.len() {
            let mut n = 0;
            for i in (0..members.len()).filter(eligible) {
                buffer[n] = i;
                n += 1;
            }
            &buffer[..n]
        } else {
            heap.extend((0..members.len()).filter(eligible));
            &heap
        };
        let chosen = match (candidates.len(), self.selection) {
            (0, _) => return None,
            (1, _) => candidates[0],
            (n, Selection::RoundRobin) => candidates[self.next.fetch_add(1, Ordering::Relaxed) % n],
            (n, Selection::LeastRequest) if n <= SCAN_ALL_MAX => {
                // Few members: the least busy of all (as nginx's `least_conn`), the scan
                // starting one further each time so that ties take turns. Two random
                // choices would leave a member busier than it need be, and the tail
                // latency shows it.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| candidates[(start + k) % n])
                    .min_by_key(|&i| members[i].inflight())
                    .unwrap_or(candidates[0])
            }
            (n, Selection::LeastRequest) => {
                // Power of two choices: two distinct members at random, the less busy wins.
                let a = rand::random_range(0..n);
                let b = (a + 1 + rand::random_range(0..n - 1)) % n;
                let (a, b) = (candidates[a], candidates[b]);
                if members[b].inflight() < members[a].inflight() {
                    b
                } else {
                    a
                }
            }
        };
        Some((chosen, members[chosen].clone()))
    }

    /// Passive ejection after a failed connection, unless that would take out more
    /// of the pool than allowed. Returns whether the member was ejected.
    pub fn eject(&self, backend: &Backend) -> bool {
        let members = self.members();
        let out = members.iter().filter(|b| !b.is_healthy()).count();
        if (out + 1) * 100 > self.max_ejection_percent as usize * members.len() {
            return false;
        }
        backend.eject()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Probe;

    fn pool(selection: Selection, n: usize) -> Pool {
        let pool = Pool::new("web", selection, 50, 25, false);
        for i in 0..n {
            let b = Backend::new(
                format!("web-{i}"),
                format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
            );
            b.record_probe(Probe::Pass, 1, 3);
            pool.upsert(b);
        }
        pool
    }

    #[test]
    fn round_robin_visits_every_member_in_turn() {
        let pool = pool(Selection::RoundRobin, 3);
        let ids: Vec<String> = (0..6)
            .map(|_| pool.pick(&[]).unwrap().1.id.clone())
            .collect();
        assert_eq!(ids, ["web-0", "web-1", "web-2", "web-0", "web-1", "web-2"]);
    }

    #[test]
    fn least_request_avoids_the_busy_member() {
        let pool = pool(Selection::LeastRequest, 2);
        let members = pool.members();
        let _busy: Vec<_> = (0..5).map(|_| members[0].start_request()).collect();
        for _ in 0..50 {
            assert_eq!(pool.pick(&[]).unwrap().1.id, "web-1");
        }
    }

    #[test]
    fn least_request_takes_the_least_busy_of_a_few_and_ties_take_turns() {
        let pool = pool(Selection::LeastRequest, 3);
        let members = pool.members();
        let _busy = (members[0].start_request(), members[1].start_request());
        let _busier = members[1].start_request();
        for _ in 0..20 {
            assert_eq!(pool.pick(&[]).unwrap().1.id, "web-2");
        }
        let _held = members[2].start_request();
        // web-0 and web-2 now tie with one each; web-1 has two.
        let ids: std::collections::HashSet<String> = (0..4)
            .map(|_| pool.pick(&[]).unwrap().1.id.clone())
            .collect();
        assert_eq!(ids, ["web-0".to_string(), "web-2".to_string()].into());
    }

    #[test]
    fn least_request_spreads_over_idle_members() {
        let pool = pool(Selection::LeastRequest, 3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(pool.pick(&[]).unwrap().1.id.clone());
        }
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn unhealthy_and_already_tried_members_are_skipped() {
        let pool = pool(Selection::LeastRequest, 3);
        let members = pool.members();
        members[1].record_probe(Probe::Draining, 1, 3);
        for _ in 0..50 {
            let (index, b) = pool.pick(&[0]).unwrap();
            assert_eq!((index, b.id.as_str()), (2, "web-2"));
        }
        assert!(
            pool.pick(&[0, 2]).is_none(),
            "the draining member is never a retry target"
        );
    }

    #[test]
    fn passive_ejection_never_takes_out_more_than_the_cap() {
        let pool = pool(Selection::LeastRequest, 3);
        let members = pool.members();
        assert!(pool.eject(&members[0]), "one of three is within 50%");
        assert!(!pool.eject(&members[1]), "two of three is over 50%");
        assert!(members[1].is_healthy());
    }

    #[test]
    fn with_no_healthy_member_the_pool_panics_and_tries_everyone() {
        let pool = pool(Selection::RoundRobin, 2);
        for b in pool.members().iter() {
            for _ in 0..3 {
                b.record_probe(Probe::Fail, 1, 3);
            }
        }
        assert!(pool.pick(&[]).is_some());
    }

    #[test]
    fn membership_changes_at_run_time() {
        let pool = pool(Selection::RoundRobin, 2);
        pool.upsert(Backend::new(
            "web-1".into(),
            "127.0.0.1:9999".parse().unwrap(),
        ));
        assert_eq!(pool.members().len(), 2, "same id replaces");
        assert_eq!(pool.members()[1].addr.port(), 9999);
        assert!(pool.remove("web-0"));
        assert!(!pool.remove("web-0"));
        assert_eq!(pool.members().len(), 1);
    }
}
