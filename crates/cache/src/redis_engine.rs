//! The Redis engine, over a `bakery_redis::Link` (redis-rs's `ConnectionManager`,
//! which reconnects by itself, following the primary under Sentinel).

use std::sync::Arc;
use std::time::Duration;

use bakery_redis::Link;
use redis::AsyncCommands;
use redis::aio::ConnectionManagerConfig;

use crate::CacheError;
use crate::near::Near;

#[derive(Clone)]
pub struct Redis {
    conn: Link,
    /// The near cache, when switched on ([`Redis::with_near`]).
    near: Option<Arc<Near>>,
}

fn unavailable(e: redis::RedisError) -> CacheError {
    CacheError::Unavailable(e.to_string())
}

impl Redis {
    /// Connects; a server that does not answer yet is not an error (a process may
    /// start before its cache): reads bypass it, and the connection is made on a
    /// later use once it answers.
    pub async fn connect(url: &str) -> Result<Self, CacheError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1);
        let (conn, pending) = Link::open(url, config).await.map_err(unavailable)?;
        // The link connects on a later use, once the server answers (redis-rs
        // reconnects on I/O errors); until then reads bypass the cache.
        if let Some(error) = pending {
            tracing::warn!(%error, "the cache does not answer yet; reads bypass it until it does");
        }
        Ok(Self { conn, near: None })
    }

    /// Keeps up to `max_entries` keys read through the near cache in this process,
    /// coherent by Redis's invalidation pushes (see `near`). 0: none.
    pub fn with_near(mut self, max_entries: usize) -> Self {
        // The near cache needs one fixed server (its invalidation pushes come over a
        // connection of its own): off under Sentinel, where the primary moves.
        self.near = match (max_entries, self.conn.fixed_client()) {
            (0, _) | (_, None) => None,
            (_, Some(client)) => Some(Arc::new(Near::new(&client, max_entries))),
        };
        self
    }

    pub fn near(&self) -> Option<&Near> {
        self.near.as_deref()
    }

    /// This process wrote `key`: its near copy goes now, not when the push comes.
    fn forget(&self, key: &str) {
        if let Some(near) = &self.near {
            near.forget(key);
        }
    }

    /// Whether the server answers (for `/healthz`).
    pub async fn ping(&self) -> Result<(), CacheError> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.conn.primary().map_err(unavailable)?)
            .await
            .map_err(unavailable)
    }

    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // MGET always answers a list, also for a single key.
        redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut self.conn.primary().map_err(unavailable)?)
            .await
            .map_err(unavailable)
    }

    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        let stored = self
            .conn
            .primary()
            .map_err(unavailable)?
            .pset_ex(key, value, ttl.as_millis().max(1) as u64)
            .await
            .map_err(unavailable);
        self.forget(key);
        stored
    }

    pub async fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, CacheError> {
        let stored: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut self.conn.primary().map_err(unavailable)?)
            .await
            .map_err(unavailable)?;
        Ok(stored.is_some())
    }

    pub async fn delete(&self, key: &str) -> Result<(), CacheError> {
        let deleted = self
            .conn
            .primary()
            .map_err(unavailable)?
            .del(key)
            .await
            .map_err(unavailable);
        self.forget(key);
        deleted
    }

    pub async fn incr(&self, key: &str, start: u64) -> Result<u64, CacheError> {
        let script = redis::Script::new(
            "if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
             else redis.call('INCR', KEYS[1]) redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
             return redis.call('GET', KEYS[1])",
        );
        let value: Result<String, CacheError> = script
            .key(key)
            .arg(start)
            .arg(crate::COUNTER_TTL.as_millis() as u64)
            .invoke_async(&mut self.conn.primary().map_err(unavailable)?)
            .await
            .map_err(unavailable);
        self.forget(key);
        let value = value?;
        value
            .parse()
            .map_err(|_| CacheError::Unavailable(format!("counter {key} holds {value:?}")))
    }
}
