//! The embedded engine: a SQLite file in the data directory. Every process on the
//! machine opens the same file, so a write by one clone is seen by the next read of
//! any other (a per-process memory cache would need cross-process invalidation).
//!
//! Having no server to bound it, the file is bounded here: every process sweeps it
//! every [`SWEEP_EVERY`], removing expired entries and, beyond `max_entries`, the
//! entries nearest to expiry (what Redis calls the volatile-ttl policy: query results
//! go before objects, version counters last).

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::CacheError;

#[derive(Clone)]
pub struct Embedded {
    pool: SqlitePool,
    max_entries: u64,
}

/// How often each process sweeps the file.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

fn unavailable(e: sqlx::Error) -> CacheError {
    CacheError::Unavailable(e.to_string())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn expiry(ttl: Duration) -> i64 {
    now() + ttl.as_millis() as i64
}

impl Embedded {
    pub async fn open(path: &Path, max_entries: u64) -> Result<Self, CacheError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // A cache may lose its last writes in a power cut; it is only a cache.
            .synchronous(SqliteSynchronous::Off)
            .busy_timeout(Duration::from_secs(2));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        sqlx::query("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at INTEGER NOT NULL)")
            .execute(&pool)
            .await
            .map_err(unavailable)?;
        sqlx::query("CREATE INDEX IF NOT EXISTS cache_expires_at ON cache (expires_at)")
            .execute(&pool)
            .await
            .map_err(unavailable)?;
        Ok(Self { pool, max_entries })
    }

    /// Sweeps every [`SWEEP_EVERY`] for as long as the process runs (each serving
    /// process does; a process that only opened the file does not).
    pub fn keep_swept(&self) {
        let sweeper = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                match sweeper.sweep().await {
                    Ok(0) => {}
                    Ok(removed) => tracing::debug!(removed, "embedded cache swept"),
                    Err(error) => tracing::warn!(%error, "embedded cache sweep failed"),
                }
            }
        });
    }

    /// Removes expired entries, then the entries nearest to expiry beyond the bound.
    /// Returns how many went.
    pub async fn sweep(&self) -> Result<u64, CacheError> {
        let expired = sqlx::query("DELETE FROM cache WHERE expires_at <= $1")
            .bind(now())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?
            .rows_affected();
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cache")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        let excess = (count as u64).saturating_sub(self.max_entries);
        if excess == 0 {
            return Ok(expired);
        }
        let evicted = sqlx::query(
            "DELETE FROM cache WHERE key IN (SELECT key FROM cache ORDER BY expires_at LIMIT $1)",
        )
        .bind(excess as i64)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?
        .rows_affected();
        Ok(expired + evicted)
    }

    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // One statement for all keys: one trip through the pool, however many keys.
        let placeholders: Vec<String> = (2..keys.len() + 2).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT key, value FROM cache WHERE expires_at > $1 AND key IN ({})",
            placeholders.join(", ")
        );
        let mut query =
            sqlx::query_as::<_, (String, Vec<u8>)>(sqlx::AssertSqlSafe(sql)).bind(now());
        for key in keys {
            query = query.bind(key);
        }
        let found = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        Ok(keys
            .iter()
            .map(|k| {
                found
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
            })
            .collect())
    }

    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        sqlx::query(
            "INSERT INTO cache (key, value, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
        )
        .bind(key)
        .bind(value)
        .bind(expiry(ttl))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    pub async fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, CacheError> {
        // An expired row counts as absent.
        let stored = sqlx::query(
            "INSERT INTO cache (key, value, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
             WHERE cache.expires_at <= $4",
        )
        .bind(key)
        .bind(value)
        .bind(expiry(ttl))
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(stored.rows_affected() > 0)
    }

    pub async fn delete(&self, key: &str) -> Result<(), CacheError> {
        sqlx::query("DELETE FROM cache WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub async fn incr(&self, key: &str, start: u64) -> Result<u64, CacheError> {
        let value: String = sqlx::query_scalar(
            "INSERT INTO cache (key, value, expires_at) VALUES ($1, CAST($2 AS TEXT), $3)
             ON CONFLICT (key) DO UPDATE SET
                 value = CAST(CAST(CAST(cache.value AS TEXT) AS INTEGER) + 1 AS TEXT),
                 expires_at = excluded.expires_at
             RETURNING CAST(value AS TEXT)",
        )
        .bind(key)
        .bind(start as i64)
        .bind(expiry(crate::COUNTER_TTL))
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        value
            .parse()
            .map_err(|_| CacheError::Unavailable(format!("counter {key} holds {value:?}")))
    }
}
