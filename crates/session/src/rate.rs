//! Rate limits shared by every clone, kept where the sessions are (the embedded file
//! or Redis). GCRA, the generic cell rate algorithm: one number per key, the
//! "theoretical arrival time" (`tat`) of the next event; each counted event pushes it
//! `every` further; an event is refused while `tat` runs more than `burst - 1`
//! intervals ahead of now. So `burst` events pass at once, then one per `every`.

use std::time::Duration;

use redis::AsyncCommands;

use crate::{SessionError, SessionStore, now_millis};

/// A limit: `burst` events at once, then one per `every`.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub burst: u32,
    pub every: Duration,
}

impl Limit {
    fn every_ms(&self) -> i64 {
        self.every.as_millis().max(1) as i64
    }

    /// How long to wait before another event, given `tat`; `None`: go ahead.
    fn wait(&self, tat: i64, now: i64) -> Option<Duration> {
        let tolerance = self.every_ms() * i64::from(self.burst.max(1) - 1);
        let ahead = tat - now;
        (ahead > tolerance).then(|| Duration::from_millis((ahead - tolerance) as u64))
    }
}

impl SessionStore {
    fn rate_key(&self, key: &str) -> String {
        let (Self::Sqlite { namespace, .. } | Self::Redis { namespace, .. }) = self;
        format!("bakery:rate:{namespace}|{key}")
    }

    /// Whether an event for `key` would pass now: `None`, or how long to wait.
    pub async fn rate_check(
        &self,
        key: &str,
        limit: Limit,
    ) -> Result<Option<Duration>, SessionError> {
        let key = self.rate_key(key);
        let tat: Option<i64> = match self {
            Self::Sqlite { pool, .. } => {
                sqlx::query_scalar("SELECT tat FROM rate_limits WHERE key = $1")
                    .bind(&key)
                    .fetch_optional(pool)
                    .await?
            }
            Self::Redis { conn, .. } => conn.primary()?.get(&key).await?,
        };
        Ok(tat.and_then(|tat| limit.wait(tat, now_millis())))
    }

    /// Counts one event for `key` (atomically, whichever clone counts it).
    pub async fn rate_count(&self, key: &str, limit: Limit) -> Result<(), SessionError> {
        let key = self.rate_key(key);
        let now = now_millis();
        let every = limit.every_ms();
        match self {
            Self::Sqlite { pool, .. } => {
                sqlx::query(
                    "INSERT INTO rate_limits (key, tat) VALUES ($1, $2 + $3)
                     ON CONFLICT (key) DO UPDATE SET tat = MAX(tat, $2) + $3",
                )
                .bind(&key)
                .bind(now)
                .bind(every)
                .execute(pool)
                .await?;
                // Keys whose time has passed hold nothing: swept now and then.
                if rand::random::<u8>() < 4 {
                    sqlx::query("DELETE FROM rate_limits WHERE tat < $1")
                        .bind(now)
                        .execute(pool)
                        .await?;
                }
            }
            Self::Redis { conn, .. } => {
                // Read, push and expire in one step on the server.
                let script = redis::Script::new(
                    "local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(ARGV[1])) + tonumber(ARGV[2]) \
                     redis.call('SET', KEYS[1], tat, 'PX', math.max(1, tat - tonumber(ARGV[1]))) return tat",
                );
                let _: i64 = script
                    .key(&key)
                    .arg(now)
                    .arg(every)
                    .invoke_async(&mut conn.primary()?)
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_one_per_interval() {
        let limit = Limit {
            burst: 3,
            every: Duration::from_secs(2),
        };
        let now = 1_000_000;
        // Three events counted at `now`: tat = now + 3 intervals.
        assert_eq!(limit.wait(now + 2 * 2000, now), None, "the third may pass");
        assert_eq!(
            limit.wait(now + 3 * 2000, now),
            Some(Duration::from_secs(2)),
            "the fourth waits one interval"
        );
        assert_eq!(limit.wait(now + 3 * 2000, now + 2000), None);
        assert_eq!(limit.wait(0, now), None, "an old key holds nothing");
    }
}
