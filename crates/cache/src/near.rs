//! The near cache: values read from Redis kept in the clone's own memory, and
//! dropped the moment Redis says they changed — Redis's server-assisted client-side
//! caching (RESP3 `CLIENT TRACKING`). A hit costs a map lookup instead of a round
//! trip, so a cached read costs little beyond HTTP.
//!
//! Coherence: the reads go over one connection of their own with tracking on; Redis
//! remembers the keys it answered on it and pushes an invalidation for each one that
//! later changes (a write, an expiry, an eviction), on that same connection. The
//! push is queued before Redis answers the write, so by the time a writer hears "done",
//! the invalidation is already on its way to every clone.
//!
//! The one race, an invalidation passing a read's answer (the answer was sent before
//! the write, the push after, and the push handled first), is closed the way the
//! Redis documentation recommends: before a read is sent, its keys are marked
//! "filling" with a token; an invalidation removes the mark; the answer is kept only
//! where its own mark is still there. A lost connection loses its pushes, so it
//! empties the whole table, and the next read opens a new tracked connection.
//!
//! What the near cache cannot promise is that a push in flight has arrived: another
//! clone may serve the old value for that long (usually well under a millisecond, but
//! a busy clone may handle a request before the push that came first), and never
//! longer than [`MAX_AGE`], after which a held value is read again. So it only serves
//! readers who cannot have written (no session) — visitors, who read from replicas
//! too, which are later than that; a reader with a session reads the server's
//! current value ([`crate::Freshness`]), and this process's own writes forget their
//! keys here at once. On by default (`cache_near_max_entries`, 10,000; 0 = off).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};

use crate::CacheError;

/// A Redis that refused a tracked connection is asked again after this long; reads
/// meanwhile go to the shared connection.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// A value held longer than this is read from Redis again: the bound on how late a
/// visitor may see another's write even were an invalidation push late (it comes
/// within a millisecond or so; a lost connection empties the table at once).
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// Values larger than this are read but not kept (they would crowd out the rest).
const MAX_VALUE_BYTES: usize = 256 * 1024;

pub struct Near {
    client: redis::Client,
    /// Reads answered from memory.
    hits: AtomicU64,
    /// The tracked connection in use, with its table; replaced when it dies.
    link: RwLock<Option<Arc<Link>>>,
    /// One connection attempt at a time, and not more often than [`RECONNECT_AFTER`].
    connecting: tokio::sync::Mutex<Option<Instant>>,
    max_entries: usize,
    max_bytes: usize,
}

struct Link {
    conn: MultiplexedConnection,
    table: Arc<Table>,
    /// Redis's id for the connection (`CLIENT ID`).
    id: u64,
}

/// What a near cache holds and has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NearStats {
    /// Keys held now.
    pub held: usize,
    /// Reads answered from memory so far.
    pub hits: u64,
    /// Redis's id of the tracked connection in use (`CLIENT ID`), if one is open.
    pub connection: Option<u64>,
}

/// What one tracked connection has read, as far as its pushes say it still holds.
struct Table {
    /// False once the connection is gone (its pushes are lost with it).
    alive: AtomicBool,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    slots: HashMap<Vec<u8>, Slot>,
    /// Bytes of the values held.
    bytes: usize,
    next_token: u64,
}

enum Slot {
    /// A read of this key is on its way; its answer is kept only if this mark is.
    Filling(u64),
    /// The value Redis gave (`None`: no such key) and when, valid until a push says
    /// otherwise or it is [`MAX_AGE`] old.
    Held(Option<Bytes>, Instant),
}

/// A near read: every value held, or the token a read from Redis fills under.
enum Lookup {
    Hit(Vec<Option<Bytes>>),
    Fill(u64),
}

impl Entries {
    fn remove(&mut self, key: &[u8]) {
        if let Some(Slot::Held(Some(value), _)) = self.slots.remove(key) {
            self.bytes -= value.len();
        }
    }

    fn clear(&mut self) {
        self.slots.clear();
        self.bytes = 0;
    }
}

impl Table {
    fn new() -> Self {
        Self {
            alive: AtomicBool::new(true),
            entries: Mutex::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs on the connection's own task, in the order Redis sent things.
    fn on_push(&self, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => {
                let mut entries = self.entries();
                match push.data.first() {
                    Some(Value::Array(keys)) => {
                        for key in keys {
                            if let Value::BulkString(key) = key {
                                entries.remove(key);
                            }
                        }
                        metrics::counter!("bakery_cache_near_invalidations_total")
                            .increment(keys.len() as u64);
                    }
                    // After FLUSHALL/FLUSHDB Redis names no keys: everything goes.
                    _ => entries.clear(),
                }
            }
            PushKind::Disconnection => {
                self.alive.store(false, Ordering::Release);
                self.entries().clear();
            }
            _ => {}
        }
    }

    /// Every value if all are held; otherwise marks the keys filling (making room
    /// first if the table is full) and returns the mark.
    fn lookup(&self, keys: &[String], max_entries: usize, max_bytes: usize) -> Lookup {
        let mut entries = self.entries();
        let held: Option<Vec<Option<Bytes>>> = keys
            .iter()
            .map(|key| match entries.slots.get(key.as_bytes()) {
                Some(Slot::Held(value, at)) if at.elapsed() < MAX_AGE => Some(value.clone()),
                _ => None,
            })
            .collect();
        if let Some(values) = held {
            return Lookup::Hit(values);
        }
        // Full: start over (coarse, but cheap and always correct: a read in flight
        // loses its mark and simply keeps nothing).
        if entries.slots.len() + keys.len() > max_entries || entries.bytes > max_bytes {
            entries.clear();
        }
        entries.next_token += 1;
        let token = entries.next_token;
        for key in keys {
            entries.remove(key.as_bytes());
            entries
                .slots
                .insert(key.as_bytes().to_vec(), Slot::Filling(token));
        }
        Lookup::Fill(token)
    }

    /// Keeps the answer of the read marked `token`, for the keys still so marked.
    fn fill(&self, keys: &[String], token: u64, values: &[Option<Bytes>]) {
        let mut entries = self.entries();
        for (key, value) in keys.iter().zip(values) {
            let Some(slot) = entries.slots.get_mut(key.as_bytes()) else {
                continue;
            };
            if !matches!(slot, Slot::Filling(t) if *t == token) {
                continue;
            }
            match value {
                Some(bytes) if bytes.len() > MAX_VALUE_BYTES => {
                    entries.slots.remove(key.as_bytes());
                }
                _ => {
                    *slot = Slot::Held(value.clone(), Instant::now());
                    entries.bytes += value.as_ref().map_or(0, Bytes::len);
                }
            }
        }
    }
}

impl Near {
    /// A near cache in front of the Redis at `client` (any protocol: its tracked
    /// connection speaks RESP3), holding at most `max_entries` keys.
    pub fn new(client: &redis::Client, max_entries: usize) -> Self {
        let info = client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(resp3))
            .expect("a client's own connection info opens a client");
        Self {
            client,
            hits: AtomicU64::new(0),
            link: RwLock::default(),
            connecting: tokio::sync::Mutex::default(),
            max_entries,
            // Room for the entries at a few kilobytes each, and never less than 8 MiB.
            max_bytes: (max_entries * 4096).max(8 << 20),
        }
    }

    /// The values of `keys` (stored names), from memory when every one is held.
    /// Whether the answer came from memory is the second value.
    pub async fn get_many(
        &self,
        keys: &[String],
    ) -> Result<(Vec<Option<Bytes>>, bool), CacheError> {
        let link = self.link().await?;
        let token = match link.table.lookup(keys, self.max_entries, self.max_bytes) {
            Lookup::Hit(values) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok((values, true));
            }
            Lookup::Fill(token) => token,
        };
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut link.conn.clone())
            .await
            .map_err(|e| CacheError::Unavailable(e.to_string()))?;
        let values: Vec<Option<Bytes>> = values.into_iter().map(|v| v.map(Bytes::from)).collect();
        link.table.fill(keys, token, &values);
        Ok((values, false))
    }

    /// Drops `key` here now: this process wrote it (the push follows, but this
    /// process's next read must not wait for it).
    pub fn forget(&self, key: &str) {
        if let Some(link) = self.current() {
            link.table.entries().remove(key.as_bytes());
        }
    }

    fn current(&self) -> Option<Arc<Link>> {
        self.link
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|link| link.table.alive.load(Ordering::Acquire))
    }

    /// The live tracked connection, opened if there is none.
    async fn link(&self) -> Result<Arc<Link>, CacheError> {
        if let Some(link) = self.current() {
            return Ok(link);
        }
        let mut last_attempt = self.connecting.lock().await;
        if let Some(link) = self.current() {
            return Ok(link);
        }
        if last_attempt.is_some_and(|at| at.elapsed() < RECONNECT_AFTER) {
            return Err(CacheError::Unavailable(
                "the near cache's connection is down".into(),
            ));
        }
        *last_attempt = Some(Instant::now());
        let table = Arc::new(Table::new());
        let pushes = table.clone();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_push_sender(move |push: PushInfo| {
                pushes.on_push(push);
                Ok::<(), std::convert::Infallible>(())
            });
        let unavailable = |e: redis::RedisError| CacheError::Unavailable(e.to_string());
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(unavailable)?;
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .exec_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let id: u64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let link = Arc::new(Link { conn, table, id });
        *self.link.write().unwrap_or_else(|p| p.into_inner()) = Some(link.clone());
        tracing::debug!("near cache: tracked connection open");
        Ok(link)
    }

    pub fn stats(&self) -> NearStats {
        let link = self.current();
        NearStats {
            held: link.as_ref().map_or(0, |link| {
                link.table
                    .entries()
                    .slots
                    .values()
                    .filter(|slot| matches!(slot, Slot::Held(..)))
                    .count()
            }),
            hits: self.hits.load(Ordering::Relaxed),
            connection: link.map(|link| link.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn invalidate(table: &Table, key: &str) {
        table.on_push(PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Array(vec![Value::BulkString(
                key.as_bytes().to_vec(),
            )])],
        });
    }

    #[test]
    fn an_answer_passed_by_an_invalidation_is_not_kept() {
        let table = Table::new();
        let ks = keys(&["ver:a", "a"]);
        let Lookup::Fill(token) = table.lookup(&ks, 100, 1 << 20) else {
            panic!("an empty table holds nothing");
        };
        // The write's push is handled before the (older) answer arrives.
        invalidate(&table, "a");
        table.fill(
            &ks,
            token,
            &[Some(Bytes::from("1")), Some(Bytes::from("old"))],
        );
        assert!(matches!(table.lookup(&ks, 100, 1 << 20), Lookup::Fill(_)));
    }

    #[test]
    fn an_answer_is_held_until_its_key_is_invalidated() {
        let table = Table::new();
        let ks = keys(&["ver:a", "a"]);
        let Lookup::Fill(token) = table.lookup(&ks, 100, 1 << 20) else {
            panic!("an empty table holds nothing");
        };
        table.fill(&ks, token, &[Some(Bytes::from("1")), None]);
        let Lookup::Hit(values) = table.lookup(&ks, 100, 1 << 20) else {
            panic!("both keys were filled");
        };
        assert_eq!(values, vec![Some(Bytes::from("1")), None]);
        invalidate(&table, "ver:a");
        assert!(matches!(table.lookup(&ks, 100, 1 << 20), Lookup::Fill(_)));
    }

    #[test]
    fn a_newer_read_takes_over_the_mark_and_a_lost_connection_forgets_everything() {
        let table = Table::new();
        let ks = keys(&["a"]);
        let Lookup::Fill(first) = table.lookup(&ks, 100, 1 << 20) else {
            panic!()
        };
        let Lookup::Fill(second) = table.lookup(&ks, 100, 1 << 20) else {
            panic!()
        };
        table.fill(&ks, first, &[Some(Bytes::from("older"))]);
        assert!(matches!(table.lookup(&ks, 100, 1 << 20), Lookup::Fill(_)));
        let Lookup::Fill(third) = table.lookup(&ks, 100, 1 << 20) else {
            panic!()
        };
        assert!(third > second);
        table.fill(&ks, third, &[Some(Bytes::from("newest"))]);
        assert!(matches!(table.lookup(&ks, 100, 1 << 20), Lookup::Hit(_)));
        table.on_push(PushInfo {
            kind: PushKind::Disconnection,
            data: vec![],
        });
        assert!(!table.alive.load(Ordering::Acquire));
        assert_eq!(table.entries().slots.len(), 0);
    }

    #[test]
    fn a_full_table_starts_over_and_large_values_are_not_kept() {
        let table = Table::new();
        for i in 0..10 {
            let ks = keys(&[&format!("k{i}")]);
            let Lookup::Fill(token) = table.lookup(&ks, 4, 1 << 20) else {
                panic!()
            };
            table.fill(&ks, token, &[Some(Bytes::from("v"))]);
            assert!(table.entries().slots.len() <= 4);
        }
        let ks = keys(&["big"]);
        let Lookup::Fill(token) = table.lookup(&ks, 100, 1 << 30) else {
            panic!()
        };
        table.fill(
            &ks,
            token,
            &[Some(Bytes::from(vec![0; MAX_VALUE_BYTES + 1]))],
        );
        assert!(matches!(table.lookup(&ks, 100, 1 << 30), Lookup::Fill(_)));
        assert!(table.entries().bytes <= 10);
    }
}
