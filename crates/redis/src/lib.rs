//! A Redis connection that follows the primary, for the session store and the cache.
//!
//! `redis://` is one server, through redis-rs's `ConnectionManager` (it reconnects by
//! itself). `redis+sentinel://S1:P1,S2:P2/SERVICE[/DB]` names Redis Sentinel's
//! sentinels: the primary is the address they give for SERVICE, asked again every
//! second by a watcher task, and when it changes (a failover) a connection to the new
//! primary replaces the old one — callers holding the old one see an error or a
//! time-out for that moment (a cache bypass, a 503), never another server's answer
//! under the new one's name.
//!
//! A server that does not answer yet is not an error: processes start in any order,
//! and the connection is made on a later use.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bakery_config::Sentinels;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError};

/// How often the sentinels are asked who the primary is.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long one sentinel may take to answer.
const SENTINEL_LIMIT: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    /// The primary as last known (none yet: no sentinel has answered).
    current: RwLock<Option<Current>>,
    /// A plain URL's client (the near cache opens connections of its own with it).
    fixed: Option<redis::Client>,
}

struct Current {
    addr: String,
    conn: ConnectionManager,
}

impl Link {
    /// Opens `url` (`redis://` or `redis+sentinel://`). The error beside the link
    /// says the server (or every sentinel) does not answer yet; the link still
    /// works once it does. `Err` is a URL that cannot be used at all.
    pub async fn open(
        url: &str,
        config: ConnectionManagerConfig,
    ) -> Result<(Self, Option<RedisError>), RedisError> {
        if url.starts_with("redis+sentinel://") {
            let sentinels = Sentinels::parse(url)
                .map_err(|e| RedisError::from((ErrorKind::InvalidClientConfig, "bad URL", e)))?;
            let link = Self {
                inner: Arc::new(Inner {
                    current: RwLock::new(None),
                    fixed: None,
                }),
            };
            let pending = follow(&link.inner, &sentinels, &config).await.err();
            tokio::spawn(watch(
                Arc::downgrade(&link.inner),
                sentinels,
                config.clone(),
            ));
            return Ok((link, pending));
        }
        let client = redis::Client::open(url)?;
        let (conn, pending) = connect(&client, config).await?;
        let link = Self {
            inner: Arc::new(Inner {
                current: RwLock::new(Some(Current {
                    addr: url.to_string(),
                    conn,
                })),
                fixed: Some(client),
            }),
        };
        Ok((link, pending))
    }

    /// A handle on the primary's connection (cheap: a clone of a shared one).
    pub fn primary(&self) -> Result<ConnectionManager, RedisError> {
        let current = self.inner.current.read().unwrap_or_else(|p| p.into_inner());
        current.as_ref().map(|c| c.conn.clone()).ok_or_else(|| {
            RedisError::from((
                ErrorKind::Io,
                "no Redis primary known yet",
                "no sentinel has named one".to_string(),
            ))
        })
    }

    /// The client of a plain `redis://` URL; `None` under Sentinel, where the
    /// server changes (what needs a fixed server — the near cache's pushes — is off).
    pub fn fixed_client(&self) -> Option<redis::Client> {
        self.inner.fixed.clone()
    }
}

/// A connection to `client`'s server, checked with a PING; a lazy one (made on a
/// later use) with the reason when the server does not answer yet.
async fn connect(
    client: &redis::Client,
    config: ConnectionManagerConfig,
) -> Result<(ConnectionManager, Option<RedisError>), RedisError> {
    let now = async {
        let mut conn = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
        let _: () = redis::cmd("PING").query_async(&mut conn).await?;
        Ok::<_, RedisError>(conn)
    };
    match now.await {
        Ok(conn) => Ok((conn, None)),
        Err(error) => Ok((
            ConnectionManager::new_lazy_with_config(client.clone(), config)?,
            Some(error),
        )),
    }
}

/// Asks the sentinels for the primary and, when it is not the one in use, connects
/// there and makes it the one.
async fn follow(
    inner: &Inner,
    sentinels: &Sentinels,
    config: &ConnectionManagerConfig,
) -> Result<(), RedisError> {
    let addr = primary_of(sentinels).await?;
    let known = inner
        .current
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|c| c.addr.clone());
    if known.as_deref() == Some(addr.as_str()) {
        return Ok(());
    }
    let client = redis::Client::open(format!("redis://{addr}/{}", sentinels.db))?;
    let (conn, _) = connect(&client, config.clone()).await?;
    if let Some(old) = &known {
        tracing::warn!(from = %old, to = %addr, service = %sentinels.service, "the Redis primary moved; following it");
        metrics::counter!("bakery_redis_primary_moves_total").increment(1);
    }
    *inner.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Current { addr, conn });
    Ok(())
}

/// `host:port` of the primary, as the first sentinel that answers names it.
async fn primary_of(sentinels: &Sentinels) -> Result<String, RedisError> {
    let mut last = None;
    for node in &sentinels.nodes {
        let asked = async {
            let client = redis::Client::open(format!("redis://{node}"))?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&sentinels.service)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await
        };
        match tokio::time::timeout(SENTINEL_LIMIT, asked).await {
            Ok(Ok(Some((host, port)))) => return Ok(format!("{host}:{port}")),
            Ok(Ok(None)) => last = Some(format!("{node} knows no service {:?}", sentinels.service)),
            Ok(Err(error)) => last = Some(format!("{node}: {error}")),
            Err(_) => last = Some(format!("{node}: no answer within 500 ms")),
        }
    }
    Err(RedisError::from((
        ErrorKind::Io,
        "no sentinel named the primary",
        last.unwrap_or_default(),
    )))
}

/// Asks the sentinels every [`LOOK_EVERY`] until the link is dropped.
async fn watch(inner: Weak<Inner>, sentinels: Sentinels, config: ConnectionManagerConfig) {
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(error) = follow(&inner, &sentinels, &config).await {
            tracing::debug!(%error, "cannot ask the sentinels now");
        }
    }
}
