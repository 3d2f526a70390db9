//! The cache: one type over several engines, chosen by `BAKERY_CACHE_URL`
//! (`Cache::Embedded`, `Cache::Redis`, `Cache::Memcached`, `Cache::None`), and the two
//! patterns of the lesson built on it: cached objects ([`objects`], `Product:{id}`,
//! versioned so a slow fill can never bring back old data) and cached queries
//! ([`queries`], keyed by a hash of the query, its parameters and the generations of
//! the tables it reads, so a write invalidates them without finding their keys).
//!
//! A cache is an optimisation: every call has a short time limit, and a cache that is
//! down or slow turns into a read from the database (`x-cache: bypass`), never into
//! a failed request. Knows nothing of HTTP or SQL.

use std::sync::Arc;
use std::time::Duration;

use bakery_config::CacheUrl;
use bytes::Bytes;

mod embedded;
mod memcached;
mod near;
pub mod objects;
mod pending;
pub mod queries;
mod redis_engine;
mod ring;
pub mod trace;

pub use near::NearStats;
pub use trace::{CacheResult, trace_cache};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Down, slow or refusing: the caller reads from the database instead.
    #[error("the cache is unavailable: {0}")]
    Unavailable(String),
    /// Larger than the engine takes: served, not stored.
    #[error("a value of {bytes} bytes is over the engine's limit of {limit}")]
    TooLarge { bytes: usize, limit: usize },
}

/// The cache: an engine, the time limit of every call, and the namespace that keeps
/// this deployment's keys apart from any other's on the same server. Values are
/// bytes; the layers above decide what they mean.
#[derive(Clone)]
pub struct Cache {
    engine: Engine,
    timeout: Duration,
    /// Prefixed to every key (`{namespace}|{key}`): the database's instance id, so two
    /// deployments sharing a Redis, or a database recreated under the same URL, never
    /// read each other's `Product:1`.
    namespace: Arc<str>,
    /// Bumps owed by writes made while the cache was away (see `pending`).
    pending: Arc<pending::Pending>,
}

#[derive(Clone)]
enum Engine {
    Embedded(embedded::Embedded),
    Redis(redis_engine::Redis),
    Memcached(memcached::Memcached),
    None,
}

/// How current a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// The cache server's value now: it reflects every write acknowledged so far.
    /// For anyone who may have written (a reader with a session).
    Current,
    /// May come from this process's near copy (Redis only, when switched on, see
    /// `near`), which an invalidation for a write made elsewhere may still be on its
    /// way to for a moment. For readers who cannot have written (no session).
    Near,
}

/// Counters and versions never expire on their own (30 days is "never" for a cache).
const COUNTER_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

impl Cache {
    /// Connects to the engine. A server that does not answer yet is not an error (a
    /// process may start before its cache, after a reboot in any order): reads bypass
    /// it until it answers, as they do when it goes away later. `embedded_max_entries` bounds the
    /// embedded file (servers bound themselves); `namespace` keeps this deployment's
    /// keys apart (the database's instance id).
    pub async fn connect(
        url: &CacheUrl,
        timeout: Duration,
        embedded_max_entries: u64,
        namespace: &str,
    ) -> Result<Self, CacheError> {
        let engine = match url {
            CacheUrl::Embedded(path) => {
                Engine::Embedded(embedded::Embedded::open(path, embedded_max_entries).await?)
            }
            CacheUrl::Redis(url) => Engine::Redis(redis_engine::Redis::connect(url).await?),
            CacheUrl::Memcached(nodes) => {
                Engine::Memcached(memcached::Memcached::connect(nodes).await?)
            }
            CacheUrl::None => Engine::None,
        };
        Ok(Self {
            engine,
            timeout,
            namespace: Arc::from(namespace),
            pending: Arc::default(),
        })
    }

    /// Whether the cache answers now, within the cache's time limit (for `/healthz`:
    /// reported, never required — without it reads go to the database).
    pub async fn is_up(&self) -> bool {
        let ping = async {
            match &self.engine {
                Engine::Redis(redis) => redis.ping().await.is_ok(),
                Engine::Memcached(memcached) => memcached.ping().await.is_ok(),
                Engine::Embedded(..) | Engine::None => true,
            }
        };
        tokio::time::timeout(self.timeout.max(Duration::from_millis(500)), ping)
            .await
            .unwrap_or(false)
    }

    pub fn engine(&self) -> &'static str {
        match self.engine {
            Engine::Embedded(..) => "embedded",
            Engine::Redis(..) => "redis",
            Engine::Memcached(..) => "memcached",
            Engine::None => "none",
        }
    }

    /// The largest value the engine stores. Memcached refuses items over its item
    /// size (1 MiB by default, key and header included); Redis takes 512 MiB, far more
    /// than a cache entry should be (one such value blocks its server while it moves);
    /// the embedded file is kept to rows SQLite reads quickly. Larger values are served uncached (`bakery_cache_too_large_total`).
    pub fn max_value_bytes(&self) -> usize {
        match self.engine {
            Engine::Memcached(..) => 1024 * 1024 - 1024,
            Engine::Redis(..) | Engine::Embedded(..) => 8 * 1024 * 1024,
            Engine::None => 0,
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self.engine, Engine::None)
    }

    /// The key as stored: in this deployment's namespace.
    fn stored(&self, key: &str) -> String {
        format!("{}|{key}", self.namespace)
    }

    /// Runs one engine call under the cache's time limit.
    async fn limited<T>(
        &self,
        call: impl Future<Output = Result<T, CacheError>>,
    ) -> Result<T, CacheError> {
        if self.is_none() {
            return Err(CacheError::Unavailable("no cache configured".into()));
        }
        let limit = self.timeout;
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(CacheError::Unavailable(format!(
                "no answer within {limit:?}"
            )))
        })
    }

    /// Keeps up to `max_entries` keys in this process's near cache, in front of
    /// Redis (reads at [`Freshness::Near`]); other engines have none. 0: off.
    pub fn with_near_cache(mut self, max_entries: usize) -> Self {
        if let Engine::Redis(redis) = self.engine {
            self.engine = Engine::Redis(redis.with_near(max_entries));
        }
        self
    }

    /// What the near cache holds and has done; `None` without one.
    pub fn near_stats(&self) -> Option<NearStats> {
        match &self.engine {
            Engine::Redis(redis) => redis.near().map(near::Near::stats),
            _ => None,
        }
    }

    /// The values of `keys`, in order (`None` where absent).
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, CacheError> {
        self.get_many_at(keys, Freshness::Current).await
    }

    /// The values of `keys` as fresh as `freshness` asks.
    pub async fn get_many_at(
        &self,
        keys: &[String],
        freshness: Freshness,
    ) -> Result<Vec<Option<Bytes>>, CacheError> {
        let keys: Vec<String> = keys.iter().map(|k| self.stored(k)).collect();
        if let (Engine::Redis(redis), Freshness::Near) = (&self.engine, freshness)
            && let Some(near) = redis.near()
        {
            // A near cache that cannot be reached is skipped: the read goes on below.
            match self.limited(near.get_many(&keys)).await {
                Ok((values, held)) => {
                    metrics::counter!("bakery_cache_near_reads_total", "result" => if held { "hit" } else { "miss" })
                        .increment(1);
                    return Ok(values);
                }
                Err(error) => tracing::debug!(%error, "near cache skipped"),
            }
        }
        let values = self
            .limited(async {
                match &self.engine {
                    Engine::Embedded(e) => e.get_many(&keys).await,
                    Engine::Redis(r) => r.get_many(&keys).await,
                    Engine::Memcached(m) => m.get_many(&keys).await,
                    Engine::None => unreachable!("limited() refuses Engine::None"),
                }
            })
            .await?;
        // `Bytes` takes over each buffer as it is: no copy, and slices of it are free.
        Ok(values
            .into_iter()
            .map(|value| value.map(Bytes::from))
            .collect())
    }

    /// Stores `value` under `key` for `ttl`; a value over [`Self::max_value_bytes`] is
    /// refused here, without a round trip, and counted.
    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        let limit = self.max_value_bytes();
        if value.len() > limit && !self.is_none() {
            metrics::counter!("bakery_cache_too_large_total", "engine" => self.engine())
                .increment(1);
            tracing::warn!(
                key,
                bytes = value.len(),
                limit,
                "a value too large for the cache is served uncached"
            );
            return Err(CacheError::TooLarge {
                bytes: value.len(),
                limit,
            });
        }
        let key = self.stored(key);
        self.limited(async {
            match &self.engine {
                Engine::Embedded(e) => e.set(&key, value, ttl).await,
                Engine::Redis(r) => r.set(&key, value, ttl).await,
                Engine::Memcached(m) => m.set(&key, value, ttl).await,
                Engine::None => unreachable!("limited() refuses Engine::None"),
            }
        })
        .await
    }

    /// Stores only if absent; true if this call stored it (a lock or lease).
    pub async fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, CacheError> {
        let key = self.stored(key);
        self.limited(async {
            match &self.engine {
                Engine::Embedded(e) => e.add(&key, value, ttl).await,
                Engine::Redis(r) => r.add(&key, value, ttl).await,
                Engine::Memcached(m) => m.add(&key, value, ttl).await,
                Engine::None => unreachable!("limited() refuses Engine::None"),
            }
        })
        .await
    }

    pub async fn delete(&self, key: &str) -> Result<(), CacheError> {
        let key = self.stored(key);
        self.limited(async {
            match &self.engine {
                Engine::Embedded(e) => e.delete(&key).await,
                Engine::Redis(r) => r.delete(&key).await,
                Engine::Memcached(m) => m.delete(&key).await,
                Engine::None => unreachable!("limited() refuses Engine::None"),
            }
        })
        .await
    }

    /// Sweeps the embedded file now (see `embedded`); servers expire and evict on
    /// their own, so elsewhere this does nothing. Returns how many entries went.
    pub async fn sweep(&self) -> Result<u64, CacheError> {
        match &self.engine {
            Engine::Embedded(e) => e.sweep().await,
            _ => Ok(0),
        }
    }

    /// Keeps the embedded file swept from now on, in the background (see `sweep`).
    pub fn keep_swept(&self) {
        if let Engine::Embedded(e) = &self.engine {
            e.keep_swept();
        }
    }

    /// Adds one to a counter and returns the new value. A missing counter starts at
    /// the current time in milliseconds, so a counter that was evicted and comes back
    /// is still above every value it had before (no old version can match it again).
    pub async fn incr(&self, key: &str) -> Result<u64, CacheError> {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let key = self.stored(key);
        self.limited(async {
            match &self.engine {
                Engine::Embedded(e) => e.incr(&key, start).await,
                Engine::Redis(r) => r.incr(&key, start).await,
                Engine::Memcached(m) => m.incr(&key, start).await,
                Engine::None => unreachable!("limited() refuses Engine::None"),
            }
        })
        .await
    }
}

/// Parses a counter stored as decimal text.
fn counter(bytes: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(bytes?).ok()?.trim().parse().ok()
}
