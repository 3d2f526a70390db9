//! The primary: the host of the database URL that takes writes. A PostgreSQL URL may
//! name several (`postgres://u@db-1:5432,db-2:5432/bakery`); the primary is the one
//! not in recovery, looked for again whenever it stops answering, so that once an
//! operator promotes a replica (`pg_ctl promote`) every process follows it without
//! a restart. The current primary is kept while it answers: an old primary that
//! comes back is not taken again while the new one works.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::AnyPool;

struct Host {
    url: String,
    /// For logs: the URL without its password.
    name: String,
    pool: AnyPool,
}

pub(crate) struct Primary {
    hosts: Vec<Host>,
    current: AtomicUsize,
}

impl Primary {
    /// The hosts as (URL, name for logs, pool), in the URL's order; the first is
    /// taken as the primary until [`Self::find`] says otherwise.
    pub(crate) fn new(hosts: Vec<(String, String, AnyPool)>) -> Self {
        Self {
            hosts: hosts
                .into_iter()
                .map(|(url, name, pool)| Host { url, name, pool })
                .collect(),
            current: AtomicUsize::new(0),
        }
    }

    fn current(&self) -> &Host {
        &self.hosts[self.current.load(Ordering::Relaxed)]
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.current().pool
    }

    pub(crate) fn url(&self) -> &str {
        &self.current().url
    }

    /// Whether the URL named other hosts the primary could move to.
    pub(crate) fn has_alternatives(&self) -> bool {
        self.hosts.len() > 1
    }

    /// Looks for the host that takes writes, the current one first, and moves
    /// there; false when none does (each is down or in recovery).
    pub(crate) async fn find(&self) -> bool {
        let start = self.current.load(Ordering::Relaxed);
        for step in 0..self.hosts.len() {
            let i = (start + step) % self.hosts.len();
            if takes_writes(&self.hosts[i].pool).await {
                if i != start {
                    self.current.store(i, Ordering::Relaxed);
                    tracing::warn!(primary = %self.hosts[i].name, "the primary moved; writes go there now");
                    metrics::counter!("bakery_db_primary_moves_total").increment(1);
                }
                return true;
            }
        }
        false
    }

    pub(crate) async fn close(&self) {
        for host in &self.hosts {
            host.pool.close().await;
        }
    }
}

/// Whether the server answers and is not a standby (a promoted one is not).
async fn takes_writes(pool: &AnyPool) -> bool {
    let query = crate::sql::query_scalar::<bool>("SELECT NOT pg_is_in_recovery()").fetch_one(pool);
    matches!(
        tokio::time::timeout(Duration::from_millis(500), query).await,
        Ok(Ok(true))
    )
}
