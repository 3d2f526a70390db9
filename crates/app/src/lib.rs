//! The application layer: the domain's operations — accounts, catalog, calendar —
//! over the database and the cache, callable by any role (the web clone's JSON API
//! and HTML forms alike, and later workers) without HTTP.
//!
//! Each write is one unit ([`App::unit`]): the transaction, then the cache update or
//! invalidation it owes, in a task of its own, so it finishes whatever happens to the
//! caller after it started. It answers [`Written`]: the value and the primary's WAL
//! position after the write, which the caller remembers for the writer's next reads.
//! Each read says which position it must see (`reader`), and cached reads fill from
//! the primary, because a cached value is served to everyone.
//!
//! Knows nothing of HTTP, sessions or cookies; sees no SQL (queries are named in `db`).

use std::sync::Arc;
use std::time::Duration;

use bakery_broker::{Broker, Relay};
use bakery_cache::Cache;
use bakery_cache::objects::InFlight;
use bakery_config::{Config, ConfigError};
use bakery_db::processes::Announced;
use bakery_db::{CachedQuery, Database, Lsn};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

pub mod accounts;
pub mod calendar;
pub mod catalog;
pub mod documents;
mod enqueuer;
mod error;
pub mod jobs;
pub mod mail;
pub mod media;
pub mod notifications;
pub mod ops;
pub mod pages;
mod work;

pub use bakery_cache::Freshness;
pub use error::Error;

/// A committed write: its value and the primary's WAL position after it (`None`
/// without replicas, where every read sees every write).
#[derive(Debug)]
pub struct Written<T> {
    pub value: T,
    pub lsn: Option<Lsn>,
}

impl<T> Written<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Written<U> {
        Written {
            value: f(self.value),
            lsn: self.lsn,
        }
    }
}

/// The application: cheap to clone, shared by every request of a process.
#[derive(Clone)]
pub struct App(Arc<Inner>);

struct Inner {
    db: Database,
    cache: Cache,
    /// Cache builds in flight in this process (one build serves concurrent misses).
    inflight: InFlight,
    object_ttl: Duration,
    query_ttl: Duration,
    /// Where product reads come from: the tables, or their documents.
    read_model: bakery_config::ReadModel,
    /// The database's instance id: the namespace of this deployment's keys in the
    /// shared stores.
    namespace: String,
    broker: Broker,
    /// Where uploads and processed images live (`$BAKERY_DATA_DIR/media`).
    media_dir: std::path::PathBuf,
    /// Publishes what this process's writes put in the outbox.
    relay: Relay,
    /// Writes the jobs concurrent requests ask for in shared transactions.
    enqueuer: enqueuer::Enqueuer,
    /// Renders queued lately for pages the edge missed.
    missed: pages::Missed,
    /// Stops the relay when the last handle goes.
    _relay_guard: tokio_util::sync::DropGuard,
}

impl App {
    /// Connects to the database, the cache and the broker named in `config`, and
    /// starts the outbox relay. A store that cannot be used is a [`ConfigError`]
    /// naming its variable (the process exits 2).
    pub async fn connect(config: &Config) -> Result<Self, ConfigError> {
        Self::connect_with_cache(config, &config.cache.url).await
    }

    /// As [`App::connect`], for a role that never reads through the cache (the
    /// email service): it does not open the cache, so it starts while the cache is
    /// away, and it never writes an object other roles serve.
    pub async fn connect_uncached(config: &Config) -> Result<Self, ConfigError> {
        Self::connect_with_cache(config, &bakery_config::CacheUrl::None).await
    }

    async fn connect_with_cache(
        config: &Config,
        cache_url: &bakery_config::CacheUrl,
    ) -> Result<Self, ConfigError> {
        let (db, namespace) = Database::open(config).await?;
        let cache = Cache::connect(
            cache_url,
            config.cache.timeout,
            config.cache.embedded_max_entries,
            &namespace,
        )
        .await
        .map_err(|e| ConfigError::new("BAKERY_CACHE_URL", format!("cannot use the cache: {e}")))?
        .with_near_cache(config.cache.near_max_entries);
        let broker = Broker::connect(&config.broker, &db).await?;
        Ok(Self::new(db, cache, broker, config, namespace))
    }

    pub fn new(
        db: Database,
        cache: Cache,
        broker: Broker,
        config: &Config,
        namespace: String,
    ) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let relay = Relay::start(
            db.clone(),
            broker.clone(),
            config.broker.outbox_sweep_after,
            stop.clone(),
        );
        let enqueuer = enqueuer::Enqueuer::start(db.clone(), relay.clone());
        Self(Arc::new(Inner {
            db,
            cache,
            inflight: InFlight::default(),
            object_ttl: config.cache.object_ttl,
            query_ttl: config.cache.query_ttl,
            read_model: config.database.read_model,
            namespace,
            broker,
            media_dir: config.data_dir.join("media"),
            relay,
            enqueuer,
            missed: pages::Missed::default(),
            _relay_guard: stop.drop_guard(),
        }))
    }

    pub fn broker(&self) -> &Broker {
        &self.0.broker
    }

    /// Registers this process (its role and where its `/metrics` answers) in the
    /// process registry the operations view reads, and starts its journal.
    pub fn announce(&self, role: &str, metrics_addr: std::net::SocketAddr) -> Announced {
        bakery_db::processes::announce(self.0.db.clone(), role, metrics_addr, true)
    }

    /// Whether the cache answers (for `/healthz`: reported, not required).
    pub async fn cache_up(&self) -> bool {
        self.0.cache.is_up().await
    }

    /// Whether the database answers (for `/healthz`).
    pub async fn database_up(&self) -> bool {
        self.0.db.ping().await.is_ok()
    }

    /// Closes the broker's connection and the database's pools, once serving ended.
    pub async fn close(&self) {
        self.0.broker.close().await;
        self.0.db.close().await;
    }

    /// The database: the operations of this crate's modules only. Other crates ask
    /// the application for what they need by name (no back door to the tables).
    fn db(&self) -> &Database {
        &self.0.db
    }

    pub fn cache_engine(&self) -> &'static str {
        self.0.cache.engine()
    }

    /// Keeps the embedded cache file swept from now on (serving processes do this;
    /// see `bakery_cache::Cache::keep_swept`).
    pub fn keep_cache_swept(&self) {
        self.0.cache.keep_swept();
    }

    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    /// Runs a write and the cache work it owes as one unit, in a task of its own:
    /// once started it runs to its end even if the caller is dropped (a client that
    /// hangs up, a request timeout), so a commit is never left without its
    /// invalidation. Whatever the write staged in the outbox, the unit kicks the
    /// relay for, after the commit: no write path places a kick by hand.
    async fn unit<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        // The task carries the request's correlation id (staged events keep it) and
        // its log span.
        let correlation = bakery_telemetry::correlation_id();
        let work = bakery_telemetry::with_correlation(correlation, work)
            .instrument(tracing::Span::current());
        let (result, trace) = tokio::spawn(bakery_db::trace(work))
            .await
            .map_err(|e| Error::Internal(format!("a write's task failed: {e}")))?;
        // What the write staged in the outbox is published now, not at the next sweep.
        if trace.staged {
            self.0.relay.kick();
        }
        // The request's `x-db` names the server that took the write.
        if let Some(role) = trace.role {
            bakery_db::replica::note(role);
        }
        result
    }

    /// Where a fill reads: the primary when its result is shared through the cache;
    /// with no cache, wherever the reader's own position allows.
    fn fill_position(&self, reader: Option<Lsn>) -> Option<Lsn> {
        if self.0.cache.is_none() {
            reader
        } else {
            Some(Lsn::LATEST)
        }
    }

    /// The result of a declared query with `params`: from the cache, or run by `run`.
    async fn cached_query<T, P>(
        &self,
        query: &'static CachedQuery,
        params: &P,
        run: impl Future<Output = Result<T, bakery_db::DbError>>,
    ) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
        P: Serialize,
    {
        let (value, _) = self
            .0
            .cache
            .query(query.id(), query.tables(), params, self.0.query_ttl, run)
            .await?;
        Ok(value)
    }

    /// A write changed these tables: every cached query reading them is stale.
    async fn tables_changed(&self, tables: &[&str]) {
        self.0.cache.invalidate_tables(tables).await;
    }
}

impl App {
    /// Refuses anyone but an admin. `is_admin` is read from the primary, never from
    /// the cached `User:{id}` the request came with: whoever can write to the cache
    /// cannot make themselves an admin.
    pub async fn require_admin(&self, actor: &bakery_core::User) -> Result<(), Error> {
        if self.is_admin(actor).await? {
            Ok(())
        } else {
            Err(Error::Forbidden("only an admin may do that"))
        }
    }

    /// Whether `actor` is an admin now, as the primary says (the one rule for every
    /// admin decision; see [`App::require_admin`]).
    pub async fn is_admin(&self, actor: &bakery_core::User) -> Result<bool, Error> {
        let current = self.db().user_by_id(actor.id, Some(Lsn::LATEST)).await?;
        Ok(current.is_some_and(|user| user.is_admin))
    }
}
