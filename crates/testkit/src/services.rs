//! The real servers the tests use (`scripts/test` starts them). A test that cannot
//! reach one fails, naming it and the variable that points elsewhere: never a skip.

use std::time::{Duration, Instant};

/// The PostgreSQL server the tests use (`scripts/test` makes sure it runs).
pub fn postgres_admin_url() -> String {
    std::env::var("BAKERY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The streaming replica of the test PostgreSQL (`scripts/services.sh` makes it).
pub fn replica_admin_url() -> String {
    std::env::var("BAKERY_TEST_REPLICA_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/postgres".into())
}

/// The replica's URL for the database at `primary_url` (same name, replica server).
pub fn replica_url_for(primary_url: &str) -> String {
    let name = primary_url.rsplit('/').next().unwrap_or_default();
    let base = replica_admin_url();
    let base = base
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(base);
    format!("{base}/{name}")
}

pub fn redis_url() -> String {
    std::env::var("BAKERY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh database (as [`fresh_postgres_database`]) once the replica has it too.
pub async fn fresh_replicated_database() -> String {
    use sqlx::Connection;
    let url = fresh_postgres_database().await;
    let replica = replica_url_for(&url);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match sqlx::PgConnection::connect(&replica).await {
            Ok(conn) => {
                let _ = conn.close().await;
                return url;
            }
            Err(e) if Instant::now() > deadline => {
                panic!(
                    "the PostgreSQL replica is needed at {replica} (set BAKERY_TEST_REPLICA_URL): {e}"
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A fresh, empty PostgreSQL database for one test; fails naming the server if it is down.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is needed at {admin} (set BAKERY_TEST_POSTGRES_URL): {e}")
        });
    let name = format!("bakery_test_{:016x}", rand::random::<u64>());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create database");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    format!("{base}/{name}")
}

/// The MariaDB primary the tests use (`scripts/services.sh` starts it, with a replica).
pub fn mariadb_admin_url() -> String {
    std::env::var("BAKERY_TEST_MARIADB_URL")
        .unwrap_or_else(|_| "mysql://bakery:bakery@127.0.0.1:3307/mysql".into())
}

/// The MariaDB replica of the tests' primary.
pub fn mariadb_replica_admin_url() -> String {
    std::env::var("BAKERY_TEST_MARIADB_REPLICA_URL")
        .unwrap_or_else(|_| "mysql://bakery:bakery@127.0.0.1:3308/mysql".into())
}

/// A fresh, empty MariaDB database for one test, there on the replica too; its
/// primary's URL. Fails naming the server if it is down.
pub async fn fresh_mariadb_database() -> String {
    use sqlx::Connection;
    let admin = mariadb_admin_url();
    let mut conn = sqlx::MySqlConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!("MariaDB is needed at {admin} (set BAKERY_TEST_MARIADB_URL): {e}")
        });
    let name = format!("bakery_test_{:016x}", rand::random::<u64>());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create database");
    let _ = conn.close().await;
    let url = format!("{}/{name}", base_of(&admin));
    let replica = mariadb_replica_url_for(&url);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match sqlx::MySqlConnection::connect(&replica).await {
            Ok(conn) => {
                let _ = conn.close().await;
                return url;
            }
            Err(e) if Instant::now() > deadline => panic!(
                "the MariaDB replica is needed at {replica} (set BAKERY_TEST_MARIADB_REPLICA_URL): {e}"
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The MariaDB replica's URL for the database at `primary_url`.
pub fn mariadb_replica_url_for(primary_url: &str) -> String {
    let name = primary_url.rsplit('/').next().unwrap_or_default();
    format!("{}/{name}", base_of(&mariadb_replica_admin_url()))
}

/// A URL without its database name.
fn base_of(url: &str) -> &str {
    url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url)
}

/// The two Memcached nodes `scripts/services.sh` starts.
pub fn memcached_nodes() -> Vec<String> {
    vec!["127.0.0.1:11211".to_string(), "127.0.0.1:11212".to_string()]
}

/// A RabbitMQ vhost of its own (so a test never shares the contract's queues with
/// another), and its `amqp://` URL. Made with `rabbitmqctl` on the local server.
pub fn fresh_rabbitmq_url() -> String {
    let vhost = format!("bakery-test-{:x}", rand::random::<u64>());
    for args in [
        vec!["add_vhost", vhost.as_str()],
        vec![
            "set_permissions",
            "-p",
            vhost.as_str(),
            "guest",
            ".*",
            ".*",
            ".*",
        ],
    ] {
        let status = std::process::Command::new("rabbitmqctl")
            .arg("-q")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run rabbitmqctl (RabbitMQ: scripts/services.sh starts it)");
        assert!(
            status.success(),
            "rabbitmqctl {args:?} failed: is RabbitMQ running on 127.0.0.1:5672?"
        );
    }
    format!("amqp://guest:guest@127.0.0.1:5672/{vhost}")
}

/// Where a test's messages travel: the two brokers, the embedded one on each of its
/// databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The embedded broker on the default SQLite database.
    Embedded,
    /// The embedded broker in PostgreSQL (`SKIP LOCKED`, `LISTEN/NOTIFY`), on a
    /// fresh database.
    EmbeddedPostgres,
    /// The embedded broker in MariaDB (`SKIP LOCKED`, polling), on a fresh database.
    EmbeddedMariaDb,
    /// RabbitMQ on a vhost of its own (the database stays the default SQLite).
    RabbitMq,
}

impl Engine {
    /// The environment that selects this engine for `bakery up` and the CLI.
    pub async fn env(self) -> Vec<(String, String)> {
        match self {
            Self::Embedded => Vec::new(),
            Self::EmbeddedPostgres => vec![(
                "BAKERY_DATABASE_URL".into(),
                fresh_postgres_database().await,
            )],
            Self::EmbeddedMariaDb => {
                vec![("BAKERY_DATABASE_URL".into(), fresh_mariadb_database().await)]
            }
            Self::RabbitMq => vec![("BAKERY_BROKER_URL".into(), fresh_rabbitmq_url())],
        }
    }
}
