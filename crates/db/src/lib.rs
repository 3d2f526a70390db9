//! The database: one pool on the primary (SQLite or PostgreSQL, chosen by the URL),
//! migrations, and the queries of each part of the domain (`accounts`, ...).
//!
//! One code path serves both engines through sqlx's `Any` driver: queries use `$n`
//! placeholders, which SQLite and PostgreSQL both accept, and portable SQL
//! (`RETURNING`, `ON CONFLICT`). Times are stored as unix milliseconds (`BIGINT`).
//! This crate knows nothing of HTTP; it answers with [`DbError`].

use std::time::Duration;

use bakery_config::DatabaseUrl;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

pub mod accounts;

pub use bakery_core::now_millis;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Why a database call failed, by cause.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The server cannot be reached or the pool is exhausted: worth a 503.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
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
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(error),
            _ => Self::Other(error),
        }
    }
}

impl DbError {
    /// Worth trying again later (the same request may well succeed).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// A handle on the database; cheap to clone, shared by all requests of a process.
#[derive(Clone, Debug)]
pub struct Database {
    primary: AnyPool,
    postgres: bool,
}

impl Database {
    /// Opens the pool and checks the server answers.
    pub async fn connect(url: &DatabaseUrl) -> Result<Self, DbError> {
        install_default_drivers();
        let postgres = url.is_postgres();
        let pool = AnyPoolOptions::new()
            .max_connections(if postgres { 16 } else { 8 })
            .acquire_timeout(Duration::from_secs(3))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if !postgres {
                        // Several processes share the file: wait for the write lock rather
                        // than fail, and enforce the foreign keys the schema declares.
                        conn.execute("PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url.as_str())
            .await?;
        if !postgres {
            // WAL lets readers in other processes go on while one process writes;
            // the mode is stored in the file, so once is enough.
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
        }
        Ok(Self { primary: pool, postgres })
    }

    /// Applies the migrations of this engine. Safe to run from several processes:
    /// sqlx takes a lock (an advisory lock on PostgreSQL, the file lock on SQLite).
    pub async fn migrate(&self) -> Result<(), DbError> {
        let migrator = if self.postgres { &POSTGRES_MIGRATIONS } else { &SQLITE_MIGRATIONS };
        migrator.run(&self.primary).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(inner) => DbError::from(inner),
            other => DbError::Other(sqlx::Error::Migrate(Box::new(other))),
        })
    }

    /// Fails with a sentence for operators when migrations are missing, so a role
    /// started before `bakery migrate` says so instead of failing request by request.
    pub async fn check_schema(&self) -> Result<(), String> {
        let migrator = if self.postgres { &POSTGRES_MIGRATIONS } else { &SQLITE_MIGRATIONS };
        let applied: Result<(i64,), _> = sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.primary)
            .await;
        let expected = migrator.iter().filter(|m| m.migration_type.is_up_migration()).count() as i64;
        match applied {
            Ok((n,)) if n >= expected => Ok(()),
            Ok((n,)) => Err(format!("the schema has {n} of {expected} migrations: run `bakery migrate`")),
            Err(_) => Err("the database has no schema yet: run `bakery migrate`".to_string()),
        }
    }

    /// A cheap query on the primary, for health checks.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.primary().execute("SELECT 1").await?;
        Ok(())
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// The pool for writes and for reads that must see them; counts the query.
    fn primary(&self) -> &AnyPool {
        metrics::counter!("bakery_db_queries_total", "role" => "primary").increment(1);
        &self.primary
    }

    pub async fn close(&self) {
        self.primary.close().await;
    }
}

