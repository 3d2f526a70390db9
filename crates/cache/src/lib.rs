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

use std::time::Duration;

use bakery_config::CacheUrl;
use bytes::Bytes;

mod embedded;
mod memcached;
pub mod objects;
pub mod queries;
mod redis_engine;
mod ring;
pub mod trace;

pub use trace::{CacheResult, trace_cache};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Down, slow or refusing: the caller reads from the database instead.
    #[error("the cache is unavailable: {0}")]
    Unavailable(String),
}

/// The engines. Values are bytes; the layers above decide what they mean.
#[derive(Clone)]
pub enum Cache {
    Embedded(embedded::Embedded, Duration),
    Redis(redis_engine::Redis, Duration),
    Memcached(memcached::Memcached, Duration),
    None,
}

/// Counters and versions never expire on their own (30 days is "never" for a cache).
const COUNTER_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

impl Cache {
    /// Connects to the engine; an unreachable server is an error here (at start-up),
    /// while later failures only bypass the cache.
    /// `embedded_max_entries` bounds the embedded file (servers bound themselves).
    pub async fn connect(url: &CacheUrl, timeout: Duration, embedded_max_entries: u64) -> Result<Self, CacheError> {
        Ok(match url {
            CacheUrl::Embedded(path) => Self::Embedded(embedded::Embedded::open(path, embedded_max_entries).await?, timeout),
            CacheUrl::Redis(url) => Self::Redis(redis_engine::Redis::connect(url).await?, timeout),
            CacheUrl::Memcached(nodes) => Self::Memcached(memcached::Memcached::connect(nodes).await?, timeout),
            CacheUrl::None => Self::None,
        })
    }

    pub fn engine(&self) -> &'static str {
        match self {
            Self::Embedded(..) => "embedded",
            Self::Redis(..) => "redis",
            Self::Memcached(..) => "memcached",
            Self::None => "none",
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Self::None)
    }

    /// Runs one engine call under the cache's time limit.
    async fn limited<T>(&self, call: impl Future<Output = Result<T, CacheError>>) -> Result<T, CacheError> {
        let limit = match self {
            Self::Embedded(_, t) | Self::Redis(_, t) | Self::Memcached(_, t) => *t,
            Self::None => return Err(CacheError::Unavailable("no cache configured".into())),
        };
        tokio::time::timeout(limit, call)
            .await
            .unwrap_or_else(|_| Err(CacheError::Unavailable(format!("no answer within {limit:?}"))))
    }

    /// The values of `keys`, in order (`None` where absent).
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, CacheError> {
        let values = self
            .limited(async {
                match self {
                    Self::Embedded(e, _) => e.get_many(keys).await,
                    Self::Redis(r, _) => r.get_many(keys).await,
                    Self::Memcached(m, _) => m.get_many(keys).await,
                    Self::None => unreachable!("limited() refuses Cache::None"),
                }
            })
            .await?;
        // `Bytes` takes over each buffer as it is: no copy, and slices of it are free.
        Ok(values.into_iter().map(|value| value.map(Bytes::from)).collect())
    }

    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        self.limited(async {
            match self {
                Self::Embedded(e, _) => e.set(key, value, ttl).await,
                Self::Redis(r, _) => r.set(key, value, ttl).await,
                Self::Memcached(m, _) => m.set(key, value, ttl).await,
                Self::None => unreachable!("limited() refuses Cache::None"),
            }
        })
        .await
    }

    /// Stores only if absent; true if this call stored it (a lock or lease).
    pub async fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, CacheError> {
        self.limited(async {
            match self {
                Self::Embedded(e, _) => e.add(key, value, ttl).await,
                Self::Redis(r, _) => r.add(key, value, ttl).await,
                Self::Memcached(m, _) => m.add(key, value, ttl).await,
                Self::None => unreachable!("limited() refuses Cache::None"),
            }
        })
        .await
    }

    pub async fn delete(&self, key: &str) -> Result<(), CacheError> {
        self.limited(async {
            match self {
                Self::Embedded(e, _) => e.delete(key).await,
                Self::Redis(r, _) => r.delete(key).await,
                Self::Memcached(m, _) => m.delete(key).await,
                Self::None => unreachable!("limited() refuses Cache::None"),
            }
        })
        .await
    }

    /// Sweeps the embedded file now (see [`embedded`]); servers expire and evict on
    /// their own, so elsewhere this does nothing. Returns how many entries went.
    pub async fn sweep(&self) -> Result<u64, CacheError> {
        match self {
            Self::Embedded(e, _) => e.sweep().await,
            _ => Ok(0),
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
        self.limited(async {
            match self {
                Self::Embedded(e, _) => e.incr(key, start).await,
                Self::Redis(r, _) => r.incr(key, start).await,
                Self::Memcached(m, _) => m.incr(key, start).await,
                Self::None => unreachable!("limited() refuses Cache::None"),
            }
        })
        .await
    }
}

/// Parses a counter stored as decimal text.
fn counter(bytes: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(bytes?).ok()?.trim().parse().ok()
}
