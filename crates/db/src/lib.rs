//! The database: one pool on the primary (SQLite, PostgreSQL or MariaDB, chosen by
//! the URL), migrations, and the queries of each part of the domain (`accounts`, ...).
//!
//! One code path serves the three engines through sqlx's `Any` driver: queries are
//! written once with `$n` placeholders and portable SQL (`RETURNING` on inserts,
//! `ON CONFLICT`), which SQLite and PostgreSQL read as they are and [`sql`] rewrites
//! for MariaDB. Times are stored as unix milliseconds (`BIGINT`). This crate knows
//! nothing of HTTP; it answers with [`DbError`].

use std::sync::Arc;
use std::time::Duration;

use bakery_config::DatabaseUrl;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

pub mod accounts;
mod bootstrap;
mod cached_query;
pub mod calendar;
pub mod catalog;
pub mod dataset;
pub mod demo;
pub mod documents;
pub mod jobs;
pub mod journey;
pub mod messaging;
mod migrations;
pub mod pages;
mod primary;
pub mod processes;
pub mod queues;
pub mod replica;
pub mod sql;
pub mod verification;

pub use bakery_core::now_millis;
pub use bootstrap::{Bootstrapped, bootstrap};
pub use cached_query::CachedQuery;
use primary::Primary;
use replica::Replicas;
pub use replica::{Lsn, Role, Trace, trace};
pub use sql::Dialect;
/// sqlx's error, for callers that carry a [`DbError::Other`].
pub use sqlx::Error as SqlxError;

/// The dialect a database URL speaks.
fn dialect_of(url: &DatabaseUrl) -> Dialect {
    match url.engine() {
        bakery_config::DatabaseEngine::Sqlite => Dialect::Sqlite,
        bakery_config::DatabaseEngine::Postgres => Dialect::Postgres,
        bakery_config::DatabaseEngine::MariaDb => Dialect::MariaDb,
    }
}

/// Why a database call failed, by cause.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The server cannot be reached or the pool is exhausted: worth a 503.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A write could not reach the primary (reads may still work from replicas).
    #[error("the primary database is unavailable")]
    PrimaryUnavailable,
    /// A unique constraint refused the write; carries the constraint's name.
    #[error("conflict on {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Self::Conflict(db.constraint().unwrap_or("unique").to_string())
            }
            sqlx::Error::Database(db)
                if db.code().as_deref().is_some_and(is_server_unavailable) =>
            {
                Self::Unavailable(error)
            }
            _ if is_unreachable(&error) => Self::Unavailable(error),
            _ => Self::Other(error),
        }
    }
}

/// Notes which server answered (metrics and `x-db`), passing the value through.
fn answered<T>(role: Role, value: T) -> T {
    replica::record(role);
    value
}

/// The longest a statement may run on PostgreSQL (SQLite waits for its write lock
/// at most `busy_timeout`, 5 s).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLSTATEs of a server that cannot take the query now rather than a wrong query:
/// connection exceptions (08), insufficient resources such as too many clients (53),
/// a statement cancelled by [`STATEMENT_TIMEOUT`] (57014), and a server shutting down
/// or starting up (57P01–57P03).
fn is_server_unavailable(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "57014" | "57P01" | "57P02" | "57P03")
}

/// Errors that say the server could not be reached, rather than that the query was wrong.
fn is_unreachable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}

impl DbError {
    /// Worth trying again later (the same request may well succeed).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::PrimaryUnavailable)
    }
}

/// A handle on the database; cheap to clone, shared by all requests of a process.
#[derive(Clone)]
pub struct Database {
    /// Where writes go (and the URL `LISTEN` connections use).
    primary: Arc<Primary>,
    dialect: Dialect,
    replicas: Arc<Replicas>,
    /// Stops the replica poller when the last handle goes.
    _poller: Arc<AbortOnDrop>,
    /// Job ids taken from the sequence ahead of their rows (PostgreSQL).
    job_ids: Arc<jobs::Reserved>,
    /// PostgreSQL plans each execution of this process's prepared statements.
    plans_each_execution: bool,
}

/// How PostgreSQL plans a process's prepared statements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Planning {
    /// The server's own `plan_cache_mode`, by default PostgreSQL's way: a generic
    /// plan, made once, when it seems as good as the plans for each execution's values. What the serving roles want: an uncached
    /// product read planned each time ran at half the rate (`bench read-models`).
    #[default]
    Cached,
    /// Every execution planned for its values (`plan_cache_mode =
    /// force_custom_plan`), the statements still parsed once. The worker's: its
    /// statements are batches over `jobs`, a table that grows from nothing under
    /// load, where a generic plan made early scans the table whole later; prepared
    /// instead of sent unprepared, they save their parse at each claim and end.
    EachExecution,
}

impl Planning {
    /// What a new connection sets: nothing for `Cached`, so the server's own
    /// `plan_cache_mode` (an operator's choice) holds.
    fn setting(self) -> &'static str {
        match self {
            Self::Cached => "",
            Self::EachExecution => ", set_config('plan_cache_mode', 'force_custom_plan', false)",
        }
    }
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// The name this process gives its PostgreSQL connections (`application_name`, as
/// `pg_stat_activity` shows it): its role id, e.g. `web-2`.
static APPLICATION_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this process's PostgreSQL connections from now on (first call wins).
pub fn name_connections(name: &str) {
    let _ = APPLICATION_NAME.set(name.to_string());
}

/// `url` with this process's `application_name`, unless it names one itself.
fn named(url: &str) -> String {
    match APPLICATION_NAME.get() {
        Some(name) if !url.contains("application_name=") => {
            let separator = if url.contains('?') { '&' } else { '?' };
            format!("{url}{separator}application_name={name}")
        }
        _ => url.to_string(),
    }
}

/// SQLite pools stay small: one writer at a time, and readers are cheap.
pub const SQLITE_POOL_SIZE: u32 = 8;

async fn open_pool(
    url: &str,
    dialect: Dialect,
    max_connections: u32,
    planning: Planning,
) -> Result<AnyPool, sqlx::Error> {
    pool_options(dialect, max_connections, planning)
        .connect(&if dialect == Dialect::Postgres {
            named(url)
        } else {
            url.to_string()
        })
        .await
}

fn pool_options(dialect: Dialect, max_connections: u32, planning: Planning) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                match dialect {
                    Dialect::Postgres => {
                        // No statement may hold a connection (and the locks it waits
                        // on) longer than a request may take: a stuck one is
                        // cancelled (503).
                        conn.execute(sqlx::AssertSqlSafe(format!(
                            "SELECT set_config('statement_timeout', '{}', false){}",
                            STATEMENT_TIMEOUT.as_millis(),
                            planning.setting(),
                        )))
                        .await?;
                    }
                    Dialect::MariaDb => {
                        // The texts' `||` concatenates and `"` quotes names, as in
                        // standard SQL; strict, so a bad value is an error rather than
                        // a warning; reads see what committed before each statement,
                        // as on PostgreSQL; and no statement runs longer than a request.
                        conn.execute(sqlx::AssertSqlSafe(format!(
                            "SET SESSION sql_mode = 'PIPES_AS_CONCAT,ANSI_QUOTES,STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION',
                                 SESSION max_statement_time = {}",
                            STATEMENT_TIMEOUT.as_secs()
                        )))
                        .await?;
                        conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                            .await?;
                    }
                    Dialect::Sqlite => {
                        // Several processes share the file: wait for the write lock
                        // rather than fail, and enforce the foreign keys the schema
                        // declares.
                        conn.execute("PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")
                            .await?;
                    }
                }
                Ok(())
            })
        })
}

impl Database {
    /// Opens the primary and the replicas, and starts watching the replicas' progress.
    /// `pool_size` connections at most to the primary and to each replica (SQLite: at
    /// most [`SQLITE_POOL_SIZE`], it has one writer anyway).
    pub async fn connect_with_replicas(
        url: &DatabaseUrl,
        replica_urls: &[DatabaseUrl],
        max_lag_bytes: u64,
        pool_size: u32,
        planning: Planning,
    ) -> Result<Self, DbError> {
        install_default_drivers();
        let dialect = dialect_of(url);
        let primary = if url.hosts().len() > 1 {
            // Several hosts: connected on use (any of them may be down), and the
            // primary is whichever answers as one.
            let mut hosts = Vec::new();
            for host in url.hosts() {
                let pool = pool_options(dialect, pool_size, planning).connect_lazy(&named(host))?;
                hosts.push((host.clone(), bakery_config::redact(host), pool));
            }
            let primary = Primary::new(hosts);
            if !primary.find().await {
                return Err(DbError::Other(sqlx::Error::Configuration(
                    "none of its hosts answers as a primary (each is down or in recovery)".into(),
                )));
            }
            primary
        } else {
            let pool = open_pool(
                url.as_str(),
                dialect,
                if dialect == Dialect::Sqlite {
                    pool_size.min(SQLITE_POOL_SIZE)
                } else {
                    pool_size
                },
                planning,
            )
            .await?;
            Primary::new(vec![(url.as_str().to_string(), url.redacted(), pool)])
        };
        if dialect == Dialect::Sqlite {
            // WAL lets readers in other processes go on while one process writes;
            // the mode is stored in the file, so once is enough.
            crate::sql::query("PRAGMA journal_mode = WAL")
                .execute(primary.pool())
                .await?;
        }
        let mut members = Vec::new();
        for replica in replica_urls {
            members.push((
                replica.redacted(),
                open_pool(replica.as_str(), dialect, pool_size, planning).await?,
            ));
        }
        let replicas = Arc::new(Replicas::new(members, max_lag_bytes));
        let primary = Arc::new(primary);
        let poller = (!replicas.is_empty() || primary.has_alternatives()).then(|| {
            replicas
                .clone()
                .spawn_poller(primary.clone(), replica::Positions::of(dialect))
        });
        Ok(Self {
            primary,
            dialect,
            replicas,
            _poller: Arc::new(AbortOnDrop(poller)),
            job_ids: Arc::default(),
            plans_each_execution: dialect == Dialect::Postgres
                && planning == Planning::EachExecution,
        })
    }

    /// Opens the deployment's database for a serving role: connects, checks the
    /// schema is migrated, and reads the instance id (the namespace of this
    /// deployment's keys in the shared stores). A failure names the variable.
    pub async fn open(
        config: &bakery_config::Config,
    ) -> Result<(Self, String), bakery_config::ConfigError> {
        let db = Self::connect_configured(config).await?;
        let unusable = |e: String| bakery_config::ConfigError::new("BAKERY_DATABASE_URL", e);
        db.check_schema().await.map_err(unusable)?;
        let namespace = db
            .instance_id()
            .await
            .map_err(|e| unusable(e.to_string()))?;
        Ok((db, namespace))
    }

    /// Connects to the primary named by `config`, creating the data directory first;
    /// a failure is a [`ConfigError`] naming the variable, so the process exits 2.
    pub async fn connect_configured(
        config: &bakery_config::Config,
    ) -> Result<Self, bakery_config::ConfigError> {
        use bakery_config::ConfigError;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            ConfigError::new(
                "BAKERY_DATA_DIR",
                format!("cannot create {}: {e}", config.data_dir.display()),
            )
        })?;
        // The data directory is the service's alone (a directory made before the
        // service's umask, or by hand, is tightened too).
        {
            use std::os::unix::fs::PermissionsExt;
            if let Err(error) =
                std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
            {
                tracing::warn!(%error, dir = %config.data_dir.display(), "cannot make the data directory private");
            }
        }
        let pool_size = config.database.pool_size;
        let planning = if config.database.plan_each_execution {
            Planning::EachExecution
        } else {
            Planning::Cached
        };
        let db = Self::connect_with_replicas(&config.database.url, &[], 0, pool_size, planning)
            .await
            .map_err(|e| {
                ConfigError::new(
                    "BAKERY_DATABASE_URL",
                    format!("cannot use {}: {e}", config.database.url.redacted()),
                )
            })?;
        if config.database.replica_urls.is_empty() {
            return Ok(db);
        }
        db.close().await;
        Self::connect_with_replicas(
            &config.database.url,
            &config.database.replica_urls,
            config.database.replica_max_lag_bytes,
            pool_size,
            planning,
        )
        .await
        .map_err(|e| ConfigError::new("BAKERY_REPLICA_URLS", format!("cannot use a replica: {e}")))
    }

    /// Applies the migrations of this engine. Safe to run from several processes:
    /// sqlx takes a lock (an advisory lock on PostgreSQL, `GET_LOCK` on MariaDB, the
    /// file lock on SQLite).
    pub async fn migrate(&self) -> Result<(), DbError> {
        let migrator = self.migrator();
        migrator
            .run(self.primary.pool())
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(inner) => DbError::from(inner),
                other => DbError::Other(sqlx::Error::Migrate(Box::new(other))),
            })
    }

    /// Fails with a sentence for operators when migrations are missing, so a role
    /// started before `bakery migrate` says so instead of failing request by request.
    pub async fn check_schema(&self) -> Result<(), String> {
        let migrator = self.migrator();
        let applied: Result<(i64,), _> =
            crate::sql::query_as("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(self.primary.pool())
                .await;
        let expected = migrator
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .count() as i64;
        match applied {
            Ok((n,)) if n >= expected => Ok(()),
            Ok((n,)) => Err(format!(
                "the schema has {n} of {expected} migrations: run `bakery migrate`"
            )),
            Err(_) => Err("the database has no schema yet: run `bakery migrate`".to_string()),
        }
    }

    /// This database's instance id (made by the migrations): the namespace of its keys
    /// in the cache and the session store.
    pub async fn instance_id(&self) -> Result<String, DbError> {
        Ok(crate::sql::query_scalar("SELECT id FROM bakery_instance")
            .fetch_one(self.primary.pool())
            .await?)
    }

    /// A cheap query, for health checks: the primary answers, or (with the primary
    /// down) a replica does, since reads still work then. Both are asked at once and
    /// the first success counts: a primary whose host answers nothing must not hold
    /// the check past the balancer's probe timeout (then every clone would look dead
    /// while they all still serve reads).
    pub async fn ping(&self) -> Result<(), DbError> {
        let limit = Duration::from_secs(1);
        let primary = async {
            match tokio::time::timeout(limit, self.primary.pool().execute("SELECT 1")).await {
                Ok(result) => result.map(|_| ()).map_err(DbError::from),
                Err(_) => Err(DbError::PrimaryUnavailable),
            }
        };
        let replica = async {
            let replica = self
                .replicas
                .pick(None)
                .ok_or(DbError::PrimaryUnavailable)?;
            match tokio::time::timeout(limit, replica.pool.execute("SELECT 1")).await {
                Ok(Ok(_)) => Ok(()),
                _ => Err(DbError::PrimaryUnavailable),
            }
        };
        if self.replicas.is_empty() {
            return primary.await;
        }
        // The first success; a branch that fails drops out of the race.
        tokio::pin!(primary, replica);
        tokio::select! {
            Ok(()) = &mut primary => Ok(()),
            Ok(()) = &mut replica => Ok(()),
            else => Err(DbError::PrimaryUnavailable),
        }
    }

    fn migrator(&self) -> &'static Migrator {
        migrations::migrator(self.dialect)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn is_postgres(&self) -> bool {
        self.dialect == Dialect::Postgres
    }

    /// Follows a PostgreSQL `NOTIFY` channel: `on` gets each payload, and `None` when
    /// the connection was lost and made again (notifications may have been missed).
    /// Reconnects by itself. SQLite has no such channel: an error.
    pub async fn listen(
        &self,
        channel: &'static str,
        on: impl Fn(Option<&str>) + Send + 'static,
    ) -> Result<(), DbError> {
        if !self.is_postgres() {
            return Err(DbError::Other(sqlx::Error::Configuration(
                "only PostgreSQL has LISTEN".into(),
            )));
        }
        let connect = async |url: &str| -> Result<sqlx::postgres::PgListener, sqlx::Error> {
            let mut listener = sqlx::postgres::PgListener::connect(&named(url)).await?;
            listener.listen(channel).await?;
            Ok(listener)
        };
        let mut listener = connect(self.primary.url()).await?;
        let primary = self.primary.clone();
        tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => on(Some(notification.payload())),
                    Ok(None) => on(None),
                    Err(error) => {
                        tracing::warn!(%error, channel, "lost a notification channel; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        // On the primary as it is now (it may have moved).
                        if let Ok(fresh) = connect(primary.url()).await {
                            listener = fresh;
                            on(None);
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// The pool for writes and for reads that must see them; counts the query.
    fn primary(&self) -> &AnyPool {
        replica::record(Role::Primary);
        self.primary.pool()
    }

    /// Runs a write on the primary (fails at once when the poller saw it down), and
    /// returns the primary's WAL position after it when there are replicas: the
    /// writer's reads must not go to a replica that has not replayed that far.
    pub async fn write<T, F, Fut>(&self, query: F) -> Result<(T, Option<Lsn>), DbError>
    where
        F: FnOnce(AnyPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        if !self.replicas.primary_up() {
            return Err(DbError::PrimaryUnavailable);
        }
        let on_primary = |e: sqlx::Error| match DbError::from(e) {
            DbError::Unavailable(_) => DbError::PrimaryUnavailable,
            other => other,
        };
        let value = answered(
            Role::Primary,
            query(self.primary.pool().clone())
                .await
                .map_err(on_primary)?,
        );
        if self.replicas.is_empty() {
            return Ok((value, None));
        }
        let positions = replica::Positions::of(self.dialect);
        let position: String = crate::sql::query_scalar(positions.primary)
            .fetch_one(self.primary())
            .await
            .map_err(on_primary)?;
        Ok((value, (positions.parse)(&position)))
    }

    /// Runs a read on a replica that has replayed `after` (the reader's own last
    /// write), or on the primary when none has; a replica that cannot be reached is
    /// skipped for the primary, so a dead replica costs no failed read.
    /// (The query is a closure taking the pool by value, cheap to clone, so that its
    /// future is `Send` without higher-ranked lifetimes.)
    pub async fn read<T, F, Fut>(&self, after: Option<Lsn>, query: F) -> Result<T, DbError>
    where
        F: Fn(AnyPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        if let Some(replica) = self.replicas.pick(after) {
            match replica.unless_lost(query(replica.pool.clone())).await {
                Some(Ok(value)) => return Ok(answered(Role::Replica, value)),
                Some(Err(error)) if is_unreachable(&error) => {
                    self.replicas.mark_unreachable(replica)
                }
                Some(Err(error)) => return Err(error.into()),
                // Found unreachable while this read waited on it: the primary answers.
                None => metrics::counter!("bakery_db_replica_reads_abandoned_total").increment(1),
            }
        } else if after.is_some() && self.replicas.any_fit() {
            // A replica could answer, but none has replayed the reader's own last
            // write yet: read-your-writes sends this read to the primary.
            metrics::counter!("bakery_db_fresh_reads_total").increment(1);
        }
        match query(self.primary.pool().clone()).await {
            Ok(value) => Ok(answered(Role::Primary, value)),
            // The primary went away before the poller noticed: a replica that may be
            // slightly behind is better than no answer.
            Err(error) if is_unreachable(&error) => match self.replicas.pick_any() {
                Some(replica) => match replica.unless_lost(query(replica.pool.clone())).await {
                    Some(value) => Ok(answered(Role::Replica, value?)),
                    None => Err(error.into()),
                },
                None => Err(error.into()),
            },
            Err(error) => Err(error.into()),
        }
    }

    pub async fn close(&self) {
        self.primary.close().await;
    }

    /// Whether replicas are configured (reads may then be answered by them).
    pub fn has_replicas(&self) -> bool {
        !self.replicas.is_empty()
    }
}

/// What a database failure means to the one who asked.
impl bakery_core::problem::IntoProblem for &DbError {
    fn into_problem(self) -> bakery_core::problem::Problem {
        use bakery_core::problem::{Kind, Problem};
        match self {
            DbError::Unavailable(cause) => Problem::new(
                Kind::Unavailable,
                "database_unavailable",
                "the database is unavailable; try again shortly",
            )
            .because(cause),
            DbError::PrimaryUnavailable => Problem::new(
                Kind::Unavailable,
                "primary_unavailable",
                "the primary database is unavailable, so changes cannot be saved now; reading still works",
            ),
            DbError::Conflict(constraint) => Problem::new(
                Kind::Conflict,
                "conflict",
                format!("that conflicts with {constraint}"),
            ),
            DbError::Other(cause) => Problem::internal(cause),
        }
    }
}

impl bakery_core::problem::IntoProblem for DbError {
    fn into_problem(self) -> bakery_core::problem::Problem {
        (&self).into_problem()
    }
}

/// A migrated SQLite database in a fresh directory, for this crate's tests: the
/// database and the directory (removed by the test when it is done).
#[cfg(test)]
pub(crate) async fn test_database(name: &str) -> (Database, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("bakery-{name}-{:x}", rand::random::<u64>()));
    let config = bakery_config::Config::from_layers(
        None,
        [("BAKERY_DATA_DIR".to_string(), dir.display().to_string())],
    )
    .expect("a data directory is a valid configuration");
    bootstrap(&config, false)
        .await
        .expect("the schema migrates");
    let (db, _) = Database::open(&config).await.expect("the database opens");
    (db, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that asks for it (the worker) has PostgreSQL plan each execution of
    /// its prepared statements; the others keep PostgreSQL's plan cache.
    #[tokio::test]
    async fn postgres_plans_each_execution_for_the_processes_that_ask() {
        let url = std::env::var("BAKERY_TEST_POSTGRES_URL")
            .expect("BAKERY_TEST_POSTGRES_URL names the PostgreSQL server this test needs");
        let url: DatabaseUrl = url.parse().expect("a PostgreSQL URL");
        for (planning, expected) in [
            (Planning::EachExecution, "force_custom_plan"),
            (Planning::Cached, "auto"),
        ] {
            let db = Database::connect_with_replicas(&url, &[], 0, 2, planning)
                .await
                .expect("PostgreSQL answers");
            let mode: String = sql::query_scalar("SHOW plan_cache_mode")
                .fetch_one(db.primary())
                .await
                .expect("shows");
            assert_eq!(mode, expected, "{planning:?}");
            assert_eq!(db.plans_each_execution, planning == Planning::EachExecution);
            db.close().await;
        }
    }
}
