//! The shared session store: what makes web clones stateless. Every clone reads and
//! writes sessions here, so any clone can serve any user.
//!
//! Two engines behind one type, chosen by `BAKERY_SESSION_URL`:
//! [`SessionStore::Sqlite`] (the embedded default: a file in the data directory, shared
//! by every process on the machine and durable across restarts) and
//! [`SessionStore::Redis`]. Only a SHA-256 of the session id is stored, so whoever
//! reads the store cannot take over a session. Knows nothing of HTTP or cookies.

use std::sync::Arc;
use std::time::Duration;

use bakery_config::SessionUrl;
use bakery_core::now_millis;

pub mod cookie;
mod rate;
use base64::Engine;
pub use rate::Limit;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the session store is unavailable: {0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for SessionError {
    fn from(e: sqlx::Error) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<redis::RedisError> for SessionError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// How long a session lives.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Ends a session nobody used for this long.
    pub idle: Duration,
    /// Ends every session this long after login, used or not.
    pub absolute: Duration,
}

/// What the store keeps for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub user_id: i64,
    /// Unix milliseconds of login.
    pub created_at: i64,
    /// Unix milliseconds of the last recorded use (recorded at most once a minute).
    pub last_seen: i64,
    /// The primary's WAL position after this user's latest write (0: none yet).
    /// Reads for this user go only to replicas that have replayed this far.
    pub write_lsn: u64,
}

/// A session id as the client holds it: 256 random bits, base64url.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Accepts what a cookie carried, if it has the shape of one of ours.
    pub fn from_cookie(value: &str) -> Option<Self> {
        let ok = value.len() == 43
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key under which the store keeps it.
    fn digest(&self) -> String {
        let hash = Sha256::digest(self.0.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash)
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId(***)")
    }
}

/// Uses are recorded at most this often, so reads do not turn into writes.
const TOUCH_EVERY_MS: i64 = 60_000;
const REDIS_PREFIX: &str = "bakery:session:";

/// The store, one variant per engine.
#[derive(Clone)]
pub enum SessionStore {
    Sqlite {
        pool: SqlitePool,
        lifetimes: Lifetimes,
        namespace: Arc<str>,
    },
    Redis {
        conn: bakery_redis::Link,
        lifetimes: Lifetimes,
        namespace: Arc<str>,
    },
}

impl SessionStore {
    /// Opens the session store `config` names, with its lifetimes; an error naming
    /// `BAKERY_SESSION_URL` when it cannot be used (the process exits 2).
    pub async fn open(
        config: &bakery_config::SessionConfig,
        namespace: &str,
    ) -> Result<Self, bakery_config::ConfigError> {
        let lifetimes = Lifetimes {
            idle: config.idle_timeout,
            absolute: config.absolute_timeout,
        };
        Self::connect(&config.url, lifetimes, namespace)
            .await
            .map_err(|e| {
                bakery_config::ConfigError::new(
                    "BAKERY_SESSION_URL",
                    format!("cannot use the session store: {e}"),
                )
            })
    }

    /// Connects (and for SQLite creates the file and table). A Redis that does not
    /// answer yet is not an error: the store connects once it answers.
    /// `namespace` (the database's instance id) is part of every stored key, so a
    /// session made against one database is unknown to any other sharing the store.
    pub async fn connect(
        url: &SessionUrl,
        lifetimes: Lifetimes,
        namespace: &str,
    ) -> Result<Self, SessionError> {
        let namespace = Arc::from(namespace);
        match url {
            SessionUrl::Sqlite(path) => {
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5));
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await?;
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS sessions (
                         id_digest  TEXT PRIMARY KEY,
                         user_id    INTEGER NOT NULL,
                         created_at INTEGER NOT NULL,
                         last_seen  INTEGER NOT NULL,
                         write_lsn  INTEGER NOT NULL DEFAULT 0
                     )",
                )
                .execute(&pool)
                .await?;
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS rate_limits (key TEXT PRIMARY KEY, tat INTEGER NOT NULL)",
                )
                .execute(&pool)
                .await?;
                // Files made before sessions recorded write positions gain the column.
                let _ = sqlx::query(
                    "ALTER TABLE sessions ADD COLUMN write_lsn INTEGER NOT NULL DEFAULT 0",
                )
                .execute(&pool)
                .await;
                Ok(Self::Sqlite {
                    pool,
                    lifetimes,
                    namespace,
                })
            }
            SessionUrl::Redis(url) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(Duration::from_secs(1)))
                    .set_number_of_retries(2);
                let (conn, pending) = bakery_redis::Link::open(url, config).await?;
                // Started before its session store (after a reboot, in any order):
                // public pages are served, what needs a session answers 503
                // `session_store_unavailable`, and the link connects on a later use
                // once the server answers.
                if let Some(error) = pending {
                    tracing::warn!(%error, "the session store does not answer yet; serving what needs no session until it does");
                }
                Ok(Self::Redis {
                    conn,
                    lifetimes,
                    namespace,
                })
            }
        }
    }

    pub fn engine(&self) -> &'static str {
        match self {
            Self::Sqlite { .. } => "embedded",
            Self::Redis { .. } => "redis",
        }
    }

    fn lifetimes(&self) -> Lifetimes {
        match self {
            Self::Sqlite { lifetimes, .. } | Self::Redis { lifetimes, .. } => *lifetimes,
        }
    }

    /// What the store keeps for `id`: its SHA-256, in this deployment's namespace.
    fn stored_digest(&self, id: &SessionId) -> String {
        let (Self::Sqlite { namespace, .. } | Self::Redis { namespace, .. }) = self;
        format!("{namespace}|{}", id.digest())
    }

    /// Starts a session for `user_id` under a fresh id.
    pub async fn create(&self, user_id: i64) -> Result<SessionId, SessionError> {
        let id = SessionId::generate();
        let now = now_millis();
        let session = Session {
            user_id,
            created_at: now,
            last_seen: now,
            write_lsn: 0,
        };
        let digest = self.stored_digest(&id);
        self.save(&digest, &session).await?;
        if let Self::Redis {
            conn, lifetimes, ..
        } = self
        {
            // The user's sessions, so that a password change can end them all.
            let key = self.user_sessions_key(user_id);
            let _: () = redis::pipe()
                .atomic()
                .sadd(&key, &digest)
                .ignore()
                .pexpire(&key, lifetimes.absolute.as_millis() as i64)
                .ignore()
                .query_async(&mut conn.primary()?)
                .await?;
        }
        if let Self::Sqlite { pool, .. } = self {
            // Expired rows are swept now and then by whoever logs in.
            if rand::random::<u8>() < 8 {
                let lifetimes = self.lifetimes();
                sqlx::query("DELETE FROM sessions WHERE last_seen < $1 OR created_at < $2")
                    .bind(now - lifetimes.idle.as_millis() as i64)
                    .bind(now - lifetimes.absolute.as_millis() as i64)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(id)
    }

    /// The live session behind `id`, or `None` when unknown, ended or expired.
    pub async fn load(&self, id: &SessionId) -> Result<Option<Session>, SessionError> {
        let digest = self.stored_digest(id);
        let Some(mut session) = self.read(&digest).await? else {
            return Ok(None);
        };
        let now = now_millis();
        if self.expired(&session, now) {
            self.destroy(id).await?;
            return Ok(None);
        }
        if now - session.last_seen > TOUCH_EVERY_MS {
            session.last_seen = now;
            self.save(&digest, &session).await?;
        }
        Ok(Some(session))
    }

    /// Whether the session behind `id` is still live, without counting this as its
    /// use (an open event stream asks this every second; it must not keep an idle
    /// session alive).
    pub async fn is_live(&self, id: &SessionId) -> Result<bool, SessionError> {
        let session = self.read(&self.stored_digest(id)).await?;
        Ok(session.is_some_and(|session| !self.expired(&session, now_millis())))
    }

    fn expired(&self, session: &Session, now: i64) -> bool {
        let lifetimes = self.lifetimes();
        now - session.last_seen >= lifetimes.idle.as_millis() as i64
            || now - session.created_at >= lifetimes.absolute.as_millis() as i64
    }

    /// The stored session under `digest`, expired or not.
    async fn read(&self, digest: &str) -> Result<Option<Session>, SessionError> {
        let found = match self {
            Self::Sqlite { pool, .. } => {
                sqlx::query_as::<_, (i64, i64, i64, i64)>(
                    "SELECT user_id, created_at, last_seen, write_lsn FROM sessions WHERE id_digest = $1",
                )
                .bind(digest)
                .fetch_optional(pool)
                .await?
                .map(|(user_id, created_at, last_seen, write_lsn)| Session {
                    user_id,
                    created_at,
                    last_seen,
                    write_lsn: write_lsn as u64,
                })
            }
            Self::Redis { conn, .. } => {
                let fields: std::collections::HashMap<String, String> =
                    conn.primary()?.hgetall(format!("{REDIS_PREFIX}{digest}")).await?;
                let field = |name: &str| fields.get(name).and_then(|v| v.parse::<i64>().ok());
                match (field("user_id"), field("created_at"), field("last_seen")) {
                    (Some(user_id), Some(created_at), Some(last_seen)) => Some(Session {
                        user_id,
                        created_at,
                        last_seen,
                        write_lsn: fields.get("write_lsn").and_then(|v| v.parse().ok()).unwrap_or(0),
                    }),
                    _ => None,
                }
            }
        };
        Ok(found)
    }

    /// Records that this session's user wrote up to `lsn` (keeps the maximum, also
    /// when two writes of the same user race).
    pub async fn record_write(&self, id: &SessionId, lsn: u64) -> Result<(), SessionError> {
        let digest = self.stored_digest(id);
        match self {
            Self::Sqlite { pool, .. } => {
                sqlx::query(
                    "UPDATE sessions SET write_lsn = MAX(write_lsn, $2) WHERE id_digest = $1",
                )
                .bind(&digest)
                .bind(lsn as i64)
                .execute(pool)
                .await?;
            }
            Self::Redis { conn, .. } => {
                // Compare-and-raise in one step on the server; positions fit a Lua
                // number exactly (they are far below 2^53).
                let script = redis::Script::new(
                    "if redis.call('EXISTS', KEYS[1]) == 1 and tonumber(redis.call('HGET', KEYS[1], 'write_lsn') or '0') < tonumber(ARGV[1]) then \
                       redis.call('HSET', KEYS[1], 'write_lsn', ARGV[1]) end return 1",
                );
                let _: i64 = script
                    .key(format!("{REDIS_PREFIX}{digest}"))
                    .arg(lsn.to_string())
                    .invoke_async(&mut conn.primary()?)
                    .await?;
            }
        }
        Ok(())
    }

    /// Ends a session on the server: its id is refused from now on.
    pub async fn destroy(&self, id: &SessionId) -> Result<(), SessionError> {
        let digest = self.stored_digest(id);
        match self {
            Self::Sqlite { pool, .. } => {
                sqlx::query("DELETE FROM sessions WHERE id_digest = $1")
                    .bind(&digest)
                    .execute(pool)
                    .await?;
            }
            Self::Redis { conn, .. } => {
                let _: () = conn
                    .primary()?
                    .del(format!("{REDIS_PREFIX}{digest}"))
                    .await?;
            }
        }
        Ok(())
    }

    /// Ends every session of `user_id` (a password change: whoever held one is out).
    pub async fn destroy_user(&self, user_id: i64) -> Result<(), SessionError> {
        match self {
            Self::Sqlite {
                pool, namespace, ..
            } => {
                sqlx::query(
                    "DELETE FROM sessions WHERE user_id = $1 AND substr(id_digest, 1, $2) = $3",
                )
                .bind(user_id)
                .bind(namespace.len() as i64 + 1)
                .bind(format!("{namespace}|"))
                .execute(pool)
                .await?;
            }
            Self::Redis { conn, .. } => {
                let key = self.user_sessions_key(user_id);
                let digests: Vec<String> = conn.primary()?.smembers(&key).await?;
                let mut pipe = redis::pipe();
                pipe.atomic();
                for digest in &digests {
                    pipe.del(format!("{REDIS_PREFIX}{digest}")).ignore();
                }
                pipe.del(&key).ignore();
                let _: () = pipe.query_async(&mut conn.primary()?).await?;
            }
        }
        Ok(())
    }

    /// The Redis set of a user's session digests.
    fn user_sessions_key(&self, user_id: i64) -> String {
        let (Self::Sqlite { namespace, .. } | Self::Redis { namespace, .. }) = self;
        format!("bakery:user-sessions:{namespace}|{user_id}")
    }

    /// Checks the store answers, for `/healthz`.
    pub async fn ping(&self) -> Result<(), SessionError> {
        match self {
            Self::Sqlite { pool, .. } => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
            Self::Redis { conn, .. } => {
                let _: () = redis::cmd("PING").query_async(&mut conn.primary()?).await?;
            }
        }
        Ok(())
    }

    async fn save(&self, digest: &str, session: &Session) -> Result<(), SessionError> {
        match self {
            Self::Sqlite { pool, .. } => {
                sqlx::query(
                    "INSERT INTO sessions (id_digest, user_id, created_at, last_seen) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (id_digest) DO UPDATE SET last_seen = excluded.last_seen",
                )
                .bind(digest)
                .bind(session.user_id)
                .bind(session.created_at)
                .bind(session.last_seen)
                .execute(pool)
                .await?;
            }
            Self::Redis {
                conn, lifetimes, ..
            } => {
                // Redis forgets the key when the session would expire anyway.
                let absolute_left =
                    session.created_at + lifetimes.absolute.as_millis() as i64 - now_millis();
                let ttl = (lifetimes.idle.as_millis() as i64)
                    .min(absolute_left)
                    .max(1) as u64;
                let key = format!("{REDIS_PREFIX}{digest}");
                // A hash, so the write position can be raised on the server by itself.
                let _: () = redis::pipe()
                    .atomic()
                    .hset_multiple(
                        &key,
                        &[
                            ("user_id", session.user_id.to_string()),
                            ("created_at", session.created_at.to_string()),
                            ("last_seen", session.last_seen.to_string()),
                        ],
                    )
                    .ignore()
                    .pexpire(&key, ttl as i64)
                    .ignore()
                    .query_async(&mut conn.primary()?)
                    .await?;
            }
        }
        Ok(())
    }
}

/// What a session store failure means to the one who asked: try again shortly.
impl bakery_core::problem::IntoProblem for SessionError {
    fn into_problem(self) -> bakery_core::problem::Problem {
        use bakery_core::problem::{Kind, Problem};
        Problem::new(
            Kind::Unavailable,
            "session_store_unavailable",
            "the session store is unavailable; try again shortly",
        )
        .because(self)
    }
}
