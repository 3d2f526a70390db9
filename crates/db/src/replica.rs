//! Read replicas: which ones may serve a read, and which server answered.
//!
//! A poller asks the primary for its WAL position and each replica for the position
//! it has replayed, every 100 ms. A replica serves a read only when it is reachable,
//! not lagging beyond the configured bound, and has replayed at least the reader's
//! own last write (`after`): the cached replay position only grows, so a replica that
//! qualifies on the cached value really has the write. Anything else goes to the
//! primary. When the primary is down, any reachable replica serves reads (stale
//! rather than nothing) and writes fail at once instead of waiting for a timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::AnyPool;

/// A position in the primary's log of writes: PostgreSQL's WAL position (`pg_lsn`,
/// in bytes), or MariaDB's GTID sequence number (in transactions, of replication
/// domain 0: one primary writes them all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    /// A position no replica has replayed: a read "after" it goes to the primary.
    /// Cache fills use it, so a stale replica can never seed the cache for everyone.
    pub const LATEST: Lsn = Lsn(u64::MAX);

    /// Parses PostgreSQL's text form, `16/B374D848`.
    pub fn parse(text: &str) -> Option<Self> {
        let (high, low) = text.trim().split_once('/')?;
        let high = u64::from_str_radix(high, 16).ok()?;
        let low = u64::from_str_radix(low, 16).ok()?;
        Some(Self((high << 32) | low))
    }

    /// Parses MariaDB's GTID position, `0-1-123` (domain-server-sequence; several
    /// domains comma-separated): the sequence number of domain 0. An empty position
    /// (no transaction logged yet) is 0.
    pub fn parse_gtid(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() {
            return Some(Self(0));
        }
        text.split(',').find_map(|gtid| {
            let mut parts = gtid.trim().splitn(3, '-');
            let (domain, _server, seq) = (parts.next()?, parts.next()?, parts.next()?);
            (domain == "0")
                .then(|| seq.parse().ok().map(Self))
                .flatten()
        })
    }
}

/// How an engine tells where its log is: the primary's position now, a replica's
/// position applied, and the text's form.
#[derive(Clone, Copy)]
pub(crate) struct Positions {
    pub(crate) primary: &'static str,
    replica: &'static str,
    pub(crate) parse: fn(&str) -> Option<Lsn>,
}

impl Positions {
    pub(crate) fn of(dialect: crate::Dialect) -> Self {
        match dialect {
            crate::Dialect::MariaDb => Self {
                primary: "SELECT CAST(@@gtid_binlog_pos AS CHAR)",
                replica: "SELECT CAST(@@gtid_slave_pos AS CHAR)",
                parse: Lsn::parse_gtid,
            },
            _ => Self {
                primary: "SELECT CAST(pg_current_wal_lsn() AS TEXT)",
                replica: "SELECT CAST(pg_last_wal_replay_lsn() AS TEXT)",
                parse: Lsn::parse,
            },
        }
    }
}

/// Which kind of server answered a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Replica => "replica",
        }
    }
}

pub(crate) struct Replica {
    pub(crate) pool: AnyPool,
    name: String,
    reachable: AtomicBool,
    replay: AtomicU64,
    /// Woken when the replica is found unreachable: a read waiting on it then gives
    /// up and asks the primary (a host cut away answers nothing, not even an error).
    lost: tokio::sync::Notify,
}

impl Replica {
    /// Runs `query` on this replica unless it is found unreachable first (`None`).
    pub(crate) async fn unless_lost<T>(&self, query: impl Future<Output = T>) -> Option<T> {
        let lost = self.lost.notified();
        tokio::pin!(lost);
        lost.as_mut().enable();
        if !self.reachable.load(Ordering::Relaxed) {
            return None;
        }
        tokio::select! {
            value = query => Some(value),
            () = lost => None,
        }
    }

    /// Sets what the last look saw; wakes the reads waiting on it when it went away.
    fn set_reachable(&self, now: bool) -> bool {
        let was = self.reachable.swap(now, Ordering::Relaxed);
        if was && !now {
            self.lost.notify_waiters();
        }
        was
    }
}

/// The replicas and what the poller last saw of them and of the primary.
pub(crate) struct Replicas {
    members: Vec<Replica>,
    primary_up: AtomicBool,
    primary_lsn: AtomicU64,
    max_lag_bytes: u64,
    next: AtomicUsize,
}

impl Replicas {
    pub(crate) fn new(members: Vec<(String, AnyPool)>, max_lag_bytes: u64) -> Self {
        Self {
            members: members
                .into_iter()
                .map(|(name, pool)| Replica {
                    pool,
                    name,
                    reachable: AtomicBool::new(false),
                    replay: AtomicU64::new(0),
                    lost: tokio::sync::Notify::new(),
                })
                .collect(),
            primary_up: AtomicBool::new(true),
            primary_lsn: AtomicU64::new(0),
            max_lag_bytes,
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub(crate) fn primary_up(&self) -> bool {
        self.primary_up.load(Ordering::Relaxed)
    }

    /// A replica fit to answer a reader whose last write is at `after`, if any;
    /// each pick starts from the next member (round robin).
    pub(crate) fn pick(&self, after: Option<Lsn>) -> Option<&Replica> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.members[(start + i) % n])
            .find(|r| self.fits(r, after))
    }

    /// Whether a replica could answer a reader with no write of their own: the
    /// rotation is left where it is.
    pub(crate) fn any_fit(&self) -> bool {
        self.members.iter().any(|r| self.fits(r, None))
    }

    fn fits(&self, r: &Replica, after: Option<Lsn>) -> bool {
        if !r.reachable.load(Ordering::Relaxed) {
            return false;
        }
        if !self.primary_up() {
            return true;
        }
        let replay = r.replay.load(Ordering::Relaxed);
        let primary_lsn = self.primary_lsn.load(Ordering::Relaxed);
        let caught_up = after.is_none_or(|lsn| replay >= lsn.0);
        let lag_ok = primary_lsn.saturating_sub(replay) <= self.max_lag_bytes;
        caught_up && lag_ok
    }

    /// Any reachable replica, however far behind: for when the primary is gone.
    pub(crate) fn pick_any(&self) -> Option<&Replica> {
        self.members
            .iter()
            .find(|r| r.reachable.load(Ordering::Relaxed))
    }

    /// A query on this replica failed to reach it: out of rotation until the poller sees it again.
    pub(crate) fn mark_unreachable(&self, replica: &Replica) {
        if replica.set_reachable(false) {
            tracing::warn!(replica = %replica.name, "replica unreachable; reads go elsewhere");
        }
    }

    /// Polls every 100 ms until the returned task is aborted.
    /// The primary is looked at too: when it stops answering as one and the database
    /// URL named other hosts, the one that answers as a primary is taken instead.
    pub(crate) fn spawn_poller(
        self: Arc<Self>,
        primary: Arc<crate::Primary>,
        positions: Positions,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut history = History::default();
            let mut primary_looks = Looks::up();
            let mut replica_looks: Vec<Looks> =
                self.members.iter().map(|_| Looks::down()).collect();
            loop {
                tick.tick().await;
                let mut primary_lsn = position(primary.pool(), positions.primary, positions).await;
                if primary_lsn.is_none() && primary.has_alternatives() && primary.find().await {
                    primary_lsn = position(primary.pool(), positions.primary, positions).await;
                }
                let up = primary_looks.saw(primary_lsn.is_some());
                let was_up = self.primary_up.swap(up, Ordering::Relaxed);
                if was_up != up {
                    tracing::warn!(up, "primary availability changed");
                }
                if let Some(lsn) = primary_lsn {
                    self.primary_lsn.fetch_max(lsn.0, Ordering::Relaxed);
                    history.saw(lsn.0);
                }
                let primary_at = self.primary_lsn.load(Ordering::Relaxed);
                for (replica, looks) in self.members.iter().zip(&mut replica_looks) {
                    let replay = position(&replica.pool, positions.replica, positions).await;
                    if let Some(lsn) = replay {
                        replica.replay.fetch_max(lsn.0, Ordering::Relaxed);
                    }
                    let replayed = replica.replay.load(Ordering::Relaxed);
                    let name = replica.name.clone();
                    metrics::gauge!("bakery_db_replica_up", "replica" => name.clone())
                        .set(if replay.is_some() { 1.0 } else { 0.0 });
                    metrics::gauge!("bakery_db_replica_lag_bytes", "replica" => name.clone())
                        .set(primary_at.saturating_sub(replayed) as f64);
                    metrics::gauge!("bakery_db_replica_lag_seconds", "replica" => name)
                        .set(history.behind(replayed).as_secs_f64());
                    let reachable = looks.saw(replay.is_some());
                    let was = replica.set_reachable(reachable);
                    if was != reachable {
                        tracing::info!(replica = %replica.name, reachable, "replica availability changed");
                    }
                }
            }
        })
    }
}

/// What the last looks at a server saw: it is taken as away after
/// [`Looks::MISSES`] looks in a row without an answer (not one: a look that misses its
/// 500 ms on a starved machine is not a server gone), and as back at the first answer.
struct Looks {
    misses: u32,
}

impl Looks {
    const MISSES: u32 = 2;

    fn up() -> Self {
        Self { misses: 0 }
    }

    /// Away until it answers a first time.
    fn down() -> Self {
        Self {
            misses: Self::MISSES,
        }
    }

    /// Counts one look (`answered` or not); whether the server is taken as there.
    fn saw(&mut self, answered: bool) -> bool {
        self.misses = if answered { 0 } else { self.misses + 1 };
        self.misses < Self::MISSES
    }
}

/// When the primary's WAL reached each position lately: a replica's lag in time is
/// how long ago the primary was where the replica is now (as PostgreSQL's own
/// `replay_lag`, with no privilege needed and at the poller's resolution).
#[derive(Default)]
struct History {
    /// (first seen at, position), oldest first, positions increasing.
    seen: std::collections::VecDeque<(std::time::Instant, u64)>,
}

impl History {
    /// Kept for this long: a replica further behind shows at least this.
    const WINDOW: Duration = Duration::from_secs(60);

    fn saw(&mut self, lsn: u64) {
        let now = std::time::Instant::now();
        if self.seen.back().is_none_or(|&(_, last)| lsn > last) {
            self.seen.push_back((now, lsn));
        }
        while self
            .seen
            .front()
            .is_some_and(|&(at, _)| now.duration_since(at) > Self::WINDOW)
            && self.seen.len() > 1
        {
            self.seen.pop_front();
        }
    }

    /// How long ago the primary first went past `replayed`; zero when it has not.
    fn behind(&self, replayed: u64) -> Duration {
        self.seen
            .iter()
            .find(|&&(_, lsn)| lsn > replayed)
            .map_or(Duration::ZERO, |&(at, _)| at.elapsed())
    }
}

/// One position query with a short limit; `None` when the server does not answer.
async fn position(pool: &AnyPool, sql: &'static str, positions: Positions) -> Option<Lsn> {
    let query = crate::sql::query_scalar::<String>(sql).fetch_one(pool);
    match tokio::time::timeout(Duration::from_millis(500), query).await {
        Ok(Ok(text)) => (positions.parse)(&text),
        _ => None,
    }
}

tokio::task_local! {
    /// What the current unit of work did: the roles of the servers that answered
    /// its queries, and whether it staged events in the outbox.
    static SEEN: std::cell::Cell<u8>;
}

const SEEN_PRIMARY: u8 = 1;
const SEEN_REPLICA: u8 = 2;
const SEEN_STAGED: u8 = 4;

/// What a traced piece of work did (see [`trace`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trace {
    /// The primary if any query went there, else a replica, else none (no query).
    pub role: Option<Role>,
    /// Whether it staged events in the outbox: whoever committed them then kicks
    /// its relay, so they are published now rather than at the next sweep.
    pub staged: bool,
}

/// Runs `work` and tells which server answered its queries and whether it staged
/// events.
pub async fn trace<F: Future>(work: F) -> (F::Output, Trace) {
    SEEN.scope(std::cell::Cell::new(0), async move {
        let output = work.await;
        let seen = SEEN.with(|cell| cell.get());
        let role = if seen & SEEN_PRIMARY != 0 {
            Some(Role::Primary)
        } else if seen & SEEN_REPLICA != 0 {
            Some(Role::Replica)
        } else {
            None
        };
        let staged = seen & SEEN_STAGED != 0;
        (output, Trace { role, staged })
    })
    .await
}

fn seen(bit: u8) {
    let _ = SEEN.try_with(|cell| cell.set(cell.get() | bit));
}

/// Notes that the current unit of work staged an event (see [`Trace::staged`]).
pub(crate) fn note_staged() {
    seen(SEEN_STAGED);
}

/// Counts a query by role, and notes the role for [`trace`].
pub(crate) fn record(role: Role) {
    metrics::counter!("bakery_db_queries_total", "role" => role.as_str()).increment(1);
    note(role);
}

/// Notes, for the current request, a server that answered work done for it in
/// another task (already counted there).
pub fn note(role: Role) {
    seen(match role {
        Role::Primary => SEEN_PRIMARY,
        Role::Replica => SEEN_REPLICA,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_and_order_like_postgres() {
        assert_eq!(Lsn::parse("0/4000000"), Some(Lsn(0x4000000)));
        assert!(Lsn::parse("1/0").unwrap() > Lsn::parse("0/FFFFFFFF").unwrap());
        assert_eq!(Lsn::parse("nonsense"), None);
    }

    #[test]
    fn gtid_positions_parse_as_domain_zero_sequence_numbers() {
        assert_eq!(Lsn::parse_gtid("0-1-123"), Some(Lsn(123)));
        assert_eq!(Lsn::parse_gtid("1-2-9,0-1-77"), Some(Lsn(77)));
        assert_eq!(Lsn::parse_gtid(""), Some(Lsn(0)), "nothing logged yet");
        assert_eq!(Lsn::parse_gtid("0-1-x"), None);
        assert!(Lsn::parse_gtid("0-1-10").unwrap() > Lsn::parse_gtid("0-2-9").unwrap());
    }
}
