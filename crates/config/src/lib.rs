//! Configuration: built-in defaults, then an optional TOML file (`--config`), then
//! `BAKERY_*` environment variables, loaded once by `main` and passed down.
//!
//! Each key is declared once, as a field of [`Config`] or [`LbConfig`] with its type
//! and its default ([`Default`]); the layers are merged by `figment` and read by
//! serde. A key's environment name is `BAKERY_` and the field's name in capitals
//! (`lb.max_inflight` is `BAKERY_LB_MAX_INFLIGHT`); a file may use either spelling.
//! Roles never read the environment themselves: tests build a [`Config`] in code.
//! Every value is validated here, so a process with a bad value stops before it
//! starts anything, with one line naming the variable ([`ConfigError`]). Secrets
//! (passwords, tokens, URLs with credentials) never show in `Debug` output or logs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::Serialized;
use serde::Deserialize;

mod backend_url;
mod values;

pub use backend_url::{
    BrokerUrl, CacheUrl, DatabaseEngine, DatabaseUrl, Sentinels, SessionUrl, SmtpUrl, redact,
};
pub use secrecy::{ExposeSecret, SecretString};
use values::{flag, millis, percent, secs};

/// The one error of this crate: which variable, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    /// The environment variable's name (`BAKERY_DATABASE_URL`), also for file keys.
    pub variable: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(variable: &str, problem: impl Into<String>) -> Self {
        Self {
            variable: variable.to_string(),
            problem: problem.into(),
        }
    }
}

/// How the load balancer picks a backend inside a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Power of two choices over in-flight requests (the default).
    #[serde(alias = "p2c")]
    LeastRequest,
    RoundRobin,
}

/// Everything a bakery process may need, in sections: each store and each role
/// reads its own ([`DatabaseConfig`], [`SessionConfig`], [`CacheConfig`],
/// [`BrokerConfig`], [`HttpConfig`], [`WebConfig`], [`WorkerConfig`],
/// [`EmailConfig`], [`PushConfig`], [`LbConfig`]) and is handed only that. Still one file and one
/// set of `BAKERY_*` variables: [`key_path`] says which section a variable fills.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where embedded stores keep their files.
    pub data_dir: PathBuf,
    /// The password of user `admin` when first created; generated when absent.
    pub admin_password: Option<SecretString>,
    /// Threads of each process's async runtime; 0 = one per core. A process given
    /// a share of a core (a container's CPU limit, the bench's budgets) wastes it
    /// waking threads that cannot run: one thread per core it may use fits.
    #[serde(deserialize_with = "values::number")]
    pub runtime_threads: usize,
    /// A `tracing` filter, e.g. `info` or `bakery_lb=debug`.
    pub log: String,
    pub database: DatabaseConfig,
    pub sessions: SessionConfig,
    pub cache: CacheConfig,
    pub broker: BrokerConfig,
    pub http: HttpConfig,
    pub web: WebConfig,
    pub worker: WorkerConfig,
    pub email: EmailConfig,
    pub push: PushConfig,
    pub lb: LbConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./bakery-data"),
            admin_password: None,
            runtime_threads: 0,
            log: "info".to_string(),
            database: DatabaseConfig::default(),
            sessions: SessionConfig::default(),
            cache: CacheConfig::default(),
            broker: BrokerConfig::default(),
            http: HttpConfig::default(),
            web: WebConfig::default(),
            worker: WorkerConfig::default(),
            email: EmailConfig::default(),
            push: PushConfig::default(),
            lb: LbConfig::default(),
        }
    }
}

/// The primary and its replicas (`BAKERY_DATABASE_URL`, `BAKERY_REPLICA_URLS`, ...).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// The primary; by default a SQLite file in `data_dir`.
    pub url: DatabaseUrl,
    /// Streaming replicas for reads (comma-separated in the environment).
    #[serde(deserialize_with = "values::list")]
    pub replica_urls: Vec<DatabaseUrl>,
    /// A replica further behind the primary than this (in WAL bytes) serves no reads.
    #[serde(deserialize_with = "values::number")]
    pub replica_max_lag_bytes: u64,
    /// Connections each process keeps at most to the primary and to each replica.
    #[serde(deserialize_with = "values::number")]
    pub pool_size: u32,
    /// Where product reads come from (`BAKERY_READ_MODEL`).
    pub read_model: ReadModel,
    /// Not a setting: the worker role sets it, for PostgreSQL to plan each execution
    /// of its statements (`bakery_db::Planning`).
    #[serde(skip)]
    pub plan_each_execution: bool,
}

/// Where product reads come from: the lesson's two database paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadModel {
    /// Path 1: the normalised tables, joined by SQL at each read (cached in front).
    #[default]
    Tables,
    /// Path 2: one de-normalised document per product, kept by a consumer of
    /// `product.changed` that does the joins in its own code; a read is one row.
    Documents,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: DatabaseUrl::in_data_dir(),
            replica_urls: Vec::new(),
            replica_max_lag_bytes: 16 << 20,
            pool_size: 16,
            read_model: ReadModel::Tables,
            plan_each_execution: false,
        }
    }
}

/// The shared session store (`BAKERY_SESSION_*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SessionConfig {
    pub url: SessionUrl,
    #[serde(rename = "idle_timeout_secs", deserialize_with = "secs")]
    pub idle_timeout: Duration,
    #[serde(rename = "absolute_timeout_secs", deserialize_with = "secs")]
    pub absolute_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            url: SessionUrl::in_data_dir(),
            idle_timeout: Duration::from_secs(2 * 3600),
            absolute_timeout: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The cache (`BAKERY_CACHE_*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CacheConfig {
    pub url: CacheUrl,
    /// How long a cached object (`Product:{id}`, `User:{id}`) lives.
    #[serde(rename = "object_ttl_secs", deserialize_with = "secs")]
    pub object_ttl: Duration,
    /// How long a cached query result lives.
    #[serde(rename = "query_ttl_secs", deserialize_with = "secs")]
    pub query_ttl: Duration,
    /// Longest a cache call may take before the request goes to the database.
    #[serde(rename = "timeout_ms", deserialize_with = "millis")]
    pub timeout: Duration,
    /// The embedded cache keeps at most this many entries (it has no server to bound it).
    #[serde(deserialize_with = "values::number")]
    pub embedded_max_entries: u64,
    /// Keys each clone keeps in its near cache in front of Redis (kept coherent by
    /// Redis's invalidation pushes, served only to readers without a session, at most
    /// 1 s behind); 0: off, so that every reader sees a write on the next request.
    #[serde(deserialize_with = "values::number")]
    pub near_max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            url: CacheUrl::in_data_dir(),
            object_ttl: Duration::from_secs(300),
            query_ttl: Duration::from_secs(60),
            timeout: Duration::from_millis(100),
            embedded_max_entries: 50_000,
            near_max_entries: 10_000,
        }
    }
}

/// The message broker and the outbox (`BAKERY_BROKER_*`, `BAKERY_OUTBOX_*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BrokerConfig {
    /// Embedded (tables in the database) by default.
    pub url: BrokerUrl,
    /// Unacknowledged messages a consumer holds at most.
    #[serde(deserialize_with = "values::number")]
    pub prefetch: u16,
    /// Deliveries of a message before it goes to its dead-letter queue.
    #[serde(deserialize_with = "values::number")]
    pub max_attempts: u32,
    /// The first retry's delay; each next one doubles, up to `retry_cap`.
    #[serde(rename = "retry_base_ms", deserialize_with = "millis")]
    pub retry_base: Duration,
    #[serde(rename = "retry_cap_ms", deserialize_with = "millis")]
    pub retry_cap: Duration,
    /// Embedded broker: a delivery not settled within this is given to another
    /// consumer (its consumer died). RabbitMQ sees the dead connection instead.
    #[serde(rename = "lease_secs", deserialize_with = "secs")]
    pub lease: Duration,
    /// Outbox rows still unsent this long after their commit are published by the
    /// sweeper (the process that wrote them died before publishing).
    #[serde(rename = "outbox_sweep_after_ms", deserialize_with = "millis")]
    pub outbox_sweep_after: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: BrokerUrl::Embedded,
            prefetch: 32,
            max_attempts: 5,
            retry_base: Duration::from_millis(1000),
            retry_cap: Duration::from_secs(60),
            lease: Duration::from_secs(30),
            outbox_sweep_after: Duration::from_millis(3000),
        }
    }
}

/// The HTTP shell every serving role stands on (`bakery_service`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// `x-served-by`, `x-cache`, `x-db` on answers.
    #[serde(deserialize_with = "flag")]
    pub debug_headers: bool,
    /// Longest a request may take before it is answered 503 `timeout`.
    #[serde(rename = "request_timeout_secs", deserialize_with = "secs")]
    pub request_timeout: Duration,
    /// How long a draining process keeps answering before it closes.
    #[serde(rename = "drain_grace_ms", deserialize_with = "millis")]
    pub drain_grace: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            debug_headers: true,
            request_timeout: Duration::from_secs(30),
            drain_grace: Duration::from_millis(2500),
        }
    }
}

/// The web clone's own settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WebConfig {
    /// Sets `Secure` on the session cookie even when the clone sees plain HTTP
    /// (it does behind a TLS-terminating edge).
    #[serde(deserialize_with = "flag")]
    pub cookie_secure: bool,
}

/// The workers (`BAKERY_WORKER_CONCURRENCY`, `BAKERY_WORKER_CPU_CONCURRENCY`,
/// `BAKERY_JOB_LEASE_SECS`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WorkerConfig {
    /// Jobs of the light kinds (they mostly wait: on the database, the network, a
    /// timer) one worker process runs at once.
    #[serde(deserialize_with = "values::number")]
    pub concurrency: u32,
    /// Jobs of the CPU-bound kinds (photos, page renders) one worker process runs at
    /// once; 0 = one per core (more would only take turns on the cores).
    #[serde(deserialize_with = "values::number")]
    pub cpu_concurrency: u32,
    /// A worker's hold on a running job, renewed by heartbeats; a job whose worker
    /// died is taken over once it runs out.
    #[serde(rename = "job_lease_secs", deserialize_with = "secs")]
    pub job_lease: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            cpu_concurrency: 0,
            job_lease: Duration::from_secs(30),
        }
    }
}

impl WorkerConfig {
    /// Slots for CPU-bound jobs: `cpu_concurrency`, or the cores this process may use.
    pub fn cpu_slots(&self) -> usize {
        match self.cpu_concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        }
    }
}

/// The push service's notification streams (`BAKERY_PUSH_*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PushConfig {
    /// Open streams one user may hold on one push process; more are answered 429.
    #[serde(deserialize_with = "values::number")]
    pub max_streams_per_user: usize,
    /// A stream ends after this long (the browser reconnects with `Last-Event-ID`):
    /// no connection outlives every later check for ever.
    #[serde(rename = "max_stream_secs", deserialize_with = "secs")]
    pub max_stream: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            max_streams_per_user: 8,
            max_stream: Duration::from_secs(3600),
        }
    }
}

/// Whether addresses are verified before transactional mail goes to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    /// A verification mail at sign-up and at each new address; RSVP mail only to
    /// verified addresses.
    Required,
    /// No verification mail; transactional mail to any address (local
    /// development, and tests about delivery).
    Off,
}

/// The email service (`BAKERY_SMTP_URL`, `BAKERY_EMAIL_*`, `BAKERY_PUBLIC_URL`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct EmailConfig {
    /// Where mail is handed; without one it is written as `.eml` files under
    /// `data_dir/mail/`.
    pub smtp_url: Option<SmtpUrl>,
    pub verification: Verification,
    /// How long a verification link works.
    #[serde(rename = "verification_ttl_secs", deserialize_with = "secs")]
    pub verification_ttl: Duration,
    /// Transactional mails (RSVP confirmations and cancellations) one user gets in
    /// an hour at most; beyond, the RSVP still happens, without its mail.
    #[serde(deserialize_with = "values::number")]
    pub max_per_user_per_hour: u32,
    /// Where the site is, for links in mail (`https://bakery.example`); without it
    /// links are paths.
    pub public_url: Option<String>,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            smtp_url: None,
            verification: Verification::Required,
            verification_ttl: Duration::from_secs(24 * 3600),
            max_per_user_per_hour: 5,
            public_url: None,
        }
    }
}

/// Settings of the load balancer role (`BAKERY_LB_*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LbConfig {
    pub selection: Selection,
    /// The database as the edge reads it: on PostgreSQL, a login in the
    /// `bakery_edge` role (`bakery migrate` makes it; it may read only the edge's
    /// pages), so a balancer never holds the credentials that read users. Default:
    /// `BAKERY_DATABASE_URL`.
    pub database_url: Option<DatabaseUrl>,
    /// Bearer token for `PUT`/`DELETE /lb/backends/...`; without one they are refused.
    pub admin_token: Option<SecretString>,
    /// The body limit of upload routes (`/api/products/{id}/images`).
    #[serde(deserialize_with = "values::number")]
    pub max_body_bytes: usize,
    /// The body limit of every other route (JSON and forms).
    #[serde(deserialize_with = "values::number")]
    pub max_json_body_bytes: usize,
    /// Bytes of request bodies the balancer holds at once, over all clients (a
    /// body's declared length, or its route's limit, is reserved before it is read;
    /// beyond: 503 with `Retry-After`).
    #[serde(deserialize_with = "values::number")]
    pub max_buffered_bytes: usize,
    /// Time a client has to send its whole body (408 beyond); the body is read before
    /// the request takes an in-flight slot.
    #[serde(rename = "body_timeout_ms", deserialize_with = "millis")]
    pub body_timeout: Duration,
    /// Time a client has to send a request's head, counted from when the load
    /// balancer starts waiting for it; an idle kept-alive connection is closed after
    /// as long.
    #[serde(rename = "header_timeout_ms", deserialize_with = "millis")]
    pub header_timeout: Duration,
    /// Open connections one client address may hold; more are closed at once.
    #[serde(deserialize_with = "values::number")]
    pub max_connections_per_client: usize,
    /// Upstream proxies (TLS terminators, CDNs) whose `x-forwarded-for` and
    /// `x-forwarded-proto` are believed: addresses or CIDR ranges, comma-separated in
    /// the environment. From anyone else both are replaced.
    #[serde(deserialize_with = "values::list")]
    pub trusted_proxies: Vec<ProxyNet>,
    #[serde(deserialize_with = "values::number")]
    pub max_header_bytes: usize,
    /// In-flight requests beyond which new ones wait (up to `queue_timeout`) for a slot.
    #[serde(deserialize_with = "values::number")]
    pub max_inflight: usize,
    /// Worker threads (each accepts and proxies on a runtime of its own, as nginx's
    /// worker processes do); 0 = one per core.
    #[serde(deserialize_with = "values::number")]
    pub workers: usize,
    #[serde(rename = "queue_timeout_ms", deserialize_with = "millis")]
    pub queue_timeout: Duration,
    #[serde(rename = "connect_timeout_ms", deserialize_with = "millis")]
    pub connect_timeout: Duration,
    /// Time to the upstream's response head.
    #[serde(rename = "upstream_timeout_secs", deserialize_with = "secs")]
    pub upstream_timeout: Duration,
    #[serde(rename = "health_interval_ms", deserialize_with = "millis")]
    pub health_interval: Duration,
    #[serde(deserialize_with = "values::number")]
    pub healthy_after: u32,
    #[serde(deserialize_with = "values::number")]
    pub unhealthy_after: u32,
    /// Most of a pool that passive ejection may take out, in percent.
    #[serde(deserialize_with = "percent")]
    pub max_ejection_percent: u32,
    /// Below this share of healthy members the pool ignores health (Envoy's panic mode).
    #[serde(deserialize_with = "percent")]
    pub panic_threshold_percent: u32,
    /// Retries allowed as a share of requests, in percent, plus `retry_min_per_sec`.
    #[serde(deserialize_with = "percent")]
    pub retry_budget_percent: u32,
    #[serde(deserialize_with = "values::number")]
    pub retry_min_per_sec: u32,
    /// Pools whose members the balancer reaches over HTTP/2 (cleartext), requests
    /// sharing a few connections: the push service's, whose streams would each hold
    /// a connection (two descriptors at the balancer) over HTTP/1. Comma-separated in
    /// the environment.
    #[serde(deserialize_with = "values::list")]
    pub http2_pools: Vec<String>,
}

impl Default for LbConfig {
    fn default() -> Self {
        Self {
            selection: Selection::LeastRequest,
            database_url: None,
            admin_token: None,
            max_body_bytes: 11 << 20,
            max_json_body_bytes: 1 << 20,
            max_buffered_bytes: 128 << 20,
            body_timeout: Duration::from_millis(10_000),
            header_timeout: Duration::from_millis(10_000),
            max_connections_per_client: 1024,
            trusted_proxies: Vec::new(),
            max_header_bytes: 64 << 10,
            max_inflight: 4096,
            workers: 0,
            queue_timeout: Duration::from_millis(2000),
            connect_timeout: Duration::from_millis(1000),
            upstream_timeout: Duration::from_secs(60),
            health_interval: Duration::from_millis(1000),
            healthy_after: 2,
            unhealthy_after: 3,
            max_ejection_percent: 50,
            panic_threshold_percent: 25,
            retry_budget_percent: 20,
            retry_min_per_sec: 10,
            http2_pools: vec!["push".to_string()],
        }
    }
}

/// Keys whose variable is not `<section>_<field>`: (key, path in the tree).
const PLACED: &[(&str, &str)] = &[
    ("database_url", "database.url"),
    ("database_pool_size", "database.pool_size"),
    ("replica_urls", "database.replica_urls"),
    ("replica_max_lag_bytes", "database.replica_max_lag_bytes"),
    ("read_model", "database.read_model"),
    ("session_url", "sessions.url"),
    ("session_idle_timeout_secs", "sessions.idle_timeout_secs"),
    (
        "session_absolute_timeout_secs",
        "sessions.absolute_timeout_secs",
    ),
    ("outbox_sweep_after_ms", "broker.outbox_sweep_after_ms"),
    ("debug_headers", "http.debug_headers"),
    ("request_timeout_secs", "http.request_timeout_secs"),
    ("drain_grace_ms", "http.drain_grace_ms"),
    ("cookie_secure", "web.cookie_secure"),
    ("worker_concurrency", "worker.concurrency"),
    ("worker_cpu_concurrency", "worker.cpu_concurrency"),
    ("job_lease_secs", "worker.job_lease_secs"),
    ("smtp_url", "email.smtp_url"),
    ("public_url", "email.public_url"),
];

/// Sections whose variables are the section's name and the field's (`lb_selection`
/// is `lb.selection`).
const PREFIXED: &[&str] = &["lb", "cache", "broker", "push", "email"];

/// Where a key goes in the merged tree (`BAKERY_CACHE_URL` → `cache.url`,
/// `BAKERY_REPLICA_URLS` → `database.replica_urls`, `BAKERY_LOG` → `log`).
fn key_path(key: &str) -> String {
    let key = key.to_ascii_lowercase();
    let key = key.strip_prefix("bakery_").unwrap_or(&key);
    if let Some((_, path)) = PLACED.iter().find(|(name, _)| *name == key) {
        return path.to_string();
    }
    for section in PREFIXED {
        if let Some(field) = key
            .strip_prefix(section)
            .and_then(|rest| rest.strip_prefix('_'))
        {
            return format!("{section}.{field}");
        }
    }
    key.to_string()
}

/// The environment name of a key path (`lb.selection` is `BAKERY_LB_SELECTION`,
/// `database.url` is `BAKERY_DATABASE_URL`).
fn variable_of(path: &[String]) -> String {
    let dotted = path.join(".");
    let key = PLACED
        .iter()
        .find(|(_, placed)| *placed == dotted)
        .map(|(name, _)| name.to_string())
        .unwrap_or_else(|| path.join("_"));
    format!("BAKERY_{}", key.to_ascii_uppercase())
}

impl Config {
    /// Defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_layers(file, std::env::vars())
    }

    /// Defaults, then `file`, then the given `(name, value)` pairs (the environment).
    /// Variables that are not keys (`BAKERY_SUPERVISOR_PID`) are left alone.
    pub fn from_layers(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            figment = figment.merge(Serialized::defaults(read_file(path)?));
        }
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with("BAKERY_"))
            .collect();
        for (name, value) in env {
            // Empty means unset, as a shell's `VAR=` does.
            if !value.trim().is_empty() {
                figment = figment.merge(Serialized::global(
                    &key_path(&name),
                    value.trim().to_string(),
                ));
            }
        }
        let config: Self = figment.extract().map_err(|e| {
            let variable = variable_of(&e.path);
            let problem = e.kind.to_string();
            ConfigError::new(&variable, problem)
        })?;
        config.finish()
    }

    /// Built-in defaults only: what `bakery up` uses on a fresh machine.
    pub fn defaults() -> Self {
        Self::default()
            .finish()
            .expect("the built-in defaults are valid")
    }

    /// Puts the embedded stores in `data_dir` and checks what no single key can.
    fn finish(mut self) -> Result<Self, ConfigError> {
        self.database.url.settle_in(&self.data_dir);
        self.sessions.url.settle_in(&self.data_dir);
        self.cache.url.settle_in(&self.data_dir);
        let engine = self.database.url.engine();
        if let Some(replica) = self
            .database
            .replica_urls
            .iter()
            .find(|url| url.engine() != engine)
        {
            let problem = format!(
                "replicas are of the primary's engine ({}), got {}",
                engine.name(),
                replica.redacted()
            );
            return Err(ConfigError::new("BAKERY_REPLICA_URLS", problem));
        }
        if !self.database.replica_urls.is_empty() && engine == DatabaseEngine::Sqlite {
            return Err(ConfigError::new(
                "BAKERY_REPLICA_URLS",
                "replicas need a postgres:// or mysql:// BAKERY_DATABASE_URL (SQLite has no streaming replicas)",
            ));
        }
        if self
            .admin_password
            .as_ref()
            .is_some_and(|p| p.expose_secret().chars().count() < 8)
        {
            return Err(ConfigError::new(
                "BAKERY_ADMIN_PASSWORD",
                "must be at least 8 characters",
            ));
        }
        if !(1..=1024).contains(&self.database.pool_size) {
            return Err(ConfigError::new(
                "BAKERY_DATABASE_POOL_SIZE",
                "expected 1 to 1024",
            ));
        }
        if self.cache.embedded_max_entries < 100 {
            return Err(ConfigError::new(
                "BAKERY_CACHE_EMBEDDED_MAX_ENTRIES",
                "expected at least 100",
            ));
        }
        if self.broker.prefetch == 0 {
            return Err(ConfigError::new(
                "BAKERY_BROKER_PREFETCH",
                "must be at least 1",
            ));
        }
        if !(1..=100).contains(&self.broker.max_attempts) {
            return Err(ConfigError::new(
                "BAKERY_BROKER_MAX_ATTEMPTS",
                "expected 1 to 100",
            ));
        }
        if self.broker.retry_base.is_zero() || self.broker.retry_cap < self.broker.retry_base {
            return Err(ConfigError::new(
                "BAKERY_BROKER_RETRY_BASE_MS",
                "must be more than 0 and at most BAKERY_BROKER_RETRY_CAP_MS",
            ));
        }
        if self
            .lb
            .admin_token
            .as_ref()
            .is_some_and(|t| t.expose_secret().chars().count() < 32)
        {
            return Err(ConfigError::new(
                "BAKERY_LB_ADMIN_TOKEN",
                "must be at least 32 characters",
            ));
        }
        if self
            .lb
            .database_url
            .as_ref()
            .is_some_and(|url| !url.is_postgres())
        {
            return Err(ConfigError::new(
                "BAKERY_LB_DATABASE_URL",
                "a load balancer's own database login is a postgres:// URL (SQLite has no roles)",
            ));
        }
        if self.lb.max_buffered_bytes < self.lb.max_body_bytes.max(self.lb.max_json_body_bytes) {
            return Err(ConfigError::new(
                "BAKERY_LB_MAX_BUFFERED_BYTES",
                "must be at least the largest body limit (BAKERY_LB_MAX_BODY_BYTES)",
            ));
        }
        if self.lb.max_connections_per_client == 0 {
            return Err(ConfigError::new(
                "BAKERY_LB_MAX_CONNECTIONS_PER_CLIENT",
                "must be at least 1",
            ));
        }
        if self.lb.body_timeout.is_zero() {
            return Err(ConfigError::new(
                "BAKERY_LB_BODY_TIMEOUT_MS",
                "must be more than 0",
            ));
        }
        if self.lb.header_timeout.is_zero() {
            return Err(ConfigError::new(
                "BAKERY_LB_HEADER_TIMEOUT_MS",
                "must be more than 0",
            ));
        }
        if self.push.max_streams_per_user == 0 {
            return Err(ConfigError::new(
                "BAKERY_PUSH_MAX_STREAMS_PER_USER",
                "must be at least 1",
            ));
        }
        if self.push.max_stream < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "BAKERY_PUSH_MAX_STREAM_SECS",
                "must be at least 1",
            ));
        }
        if !(1..=1024).contains(&self.worker.concurrency) {
            return Err(ConfigError::new(
                "BAKERY_WORKER_CONCURRENCY",
                "expected 1 to 1024",
            ));
        }
        if self.worker.cpu_concurrency > 1024 {
            return Err(ConfigError::new(
                "BAKERY_WORKER_CPU_CONCURRENCY",
                "expected 0 (one per core) to 1024",
            ));
        }
        if self.worker.job_lease < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "BAKERY_JOB_LEASE_SECS",
                "must be at least 1",
            ));
        }
        if self.broker.lease < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "BAKERY_BROKER_LEASE_SECS",
                "must be at least 1",
            ));
        }
        if self.lb.healthy_after == 0 || self.lb.unhealthy_after == 0 {
            return Err(ConfigError::new(
                "BAKERY_LB_HEALTHY_AFTER",
                "health thresholds must be at least 1",
            ));
        }
        if self.lb.health_interval.is_zero() {
            return Err(ConfigError::new(
                "BAKERY_LB_HEALTH_INTERVAL_MS",
                "must be more than 0",
            ));
        }
        Ok(self)
    }
}

/// Reads a TOML file of flat `key = value` pairs into the merged tree's shape,
/// refusing keys that are not ours.
fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
    })?;
    let flat: toml::Table = text.parse().map_err(|e| {
        ConfigError::new(
            "--config",
            format!("{} is not valid TOML: {e}", path.display()),
        )
    })?;
    let mut tree = toml::Table::new();
    for (key, value) in flat {
        let path_of = key_path(&key);
        match path_of.split_once('.') {
            Some((section, field)) => {
                let section = tree
                    .entry(section)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(table) = section {
                    table.insert(field.to_string(), value);
                }
            }
            None => {
                tree.insert(path_of, value);
            }
        }
    }
    // A key serde does not use is a key we do not know (a typo, most likely).
    let mut unknown = Vec::new();
    let _ = serde_ignored::deserialize(toml::Value::Table(tree.clone()), |ignored| {
        unknown.push(ignored.to_string())
    })
    .map(|_: Config| ());
    if let Some(key) = unknown.first() {
        return Err(ConfigError::new(
            "--config",
            format!(
                "unknown key {:?} in {}",
                variable_of(&key.split('.').map(String::from).collect::<Vec<_>>())
                    .trim_start_matches("BAKERY_")
                    .to_ascii_lowercase(),
                path.display()
            ),
        ));
    }
    Ok(tree)
}

/// A trusted upstream proxy: one address, or a CIDR range of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyNet(ipnet::IpNet);

impl ProxyNet {
    pub fn contains(&self, ip: &std::net::IpAddr) -> bool {
        self.0.contains(ip)
    }
}

impl std::str::FromStr for ProxyNet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(Self)
            .map_err(|_| format!("not an address or a CIDR range: {text:?}"))
    }
}

impl<'de> Deserialize<'de> for ProxyNet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_embedded_and_under_the_data_dir() {
        let config = Config::defaults();
        assert_eq!(
            config.database.url.as_str(),
            "sqlite://./bakery-data/bakery.db?mode=rwc"
        );
        assert!(matches!(config.sessions.url, SessionUrl::Sqlite(_)));
        assert!(config.http.debug_headers);
        assert_eq!(config.lb.selection, Selection::LeastRequest);
    }

    #[test]
    fn environment_overrides_file_and_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("bakery-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bakery.toml");
        std::fs::write(
            &file,
            "data_dir = \"/tmp/from-file\"\nBAKERY_DEBUG_HEADERS = false\nlb_selection = \"round_robin\"\nlb_max_inflight = 7\n",
        )
        .unwrap();
        let config = Config::from_layers(
            Some(&file),
            env(&[
                ("BAKERY_DATA_DIR", "/tmp/from-env"),
                ("BAKERY_LB_QUEUE_TIMEOUT_MS", "250"),
                ("BAKERY_SUPERVISOR_PID", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/tmp/from-env"));
        assert_eq!(
            config.database.url.as_str(),
            "sqlite:///tmp/from-env/bakery.db?mode=rwc",
            "follows the data dir"
        );
        assert!(!config.http.debug_headers);
        assert_eq!(config.lb.selection, Selection::RoundRobin);
        assert_eq!(config.lb.max_inflight, 7);
        assert_eq!(config.lb.queue_timeout, Duration::from_millis(250));
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (variable, value) in [
            ("BAKERY_DATABASE_URL", "oracle://x"),
            ("BAKERY_DEBUG_HEADERS", "maybe"),
            ("BAKERY_SESSION_URL", "memcached://x"),
            ("BAKERY_REPLICA_URLS", "postgres://r/db"),
            ("BAKERY_LB_MAX_INFLIGHT", "many"),
            ("BAKERY_CACHE_TIMEOUT_MS", "-1"),
            ("BAKERY_LB_RETRY_BUDGET_PERCENT", "120"),
            ("BAKERY_LB_SELECTION", "random"),
            ("BAKERY_READ_MODEL", "mongo"),
            ("BAKERY_WORKER_CPU_CONCURRENCY", "2000"),
        ] {
            let err = Config::from_layers(None, env(&[(variable, value)])).unwrap_err();
            assert_eq!(err.variable, variable, "{variable}={value}: {err}");
        }
    }

    #[test]
    fn each_variable_fills_its_section_and_errors_name_the_variable() {
        let config = Config::from_layers(
            None,
            env(&[
                ("BAKERY_REPLICA_URLS", "postgres://r1/db,postgres://r2/db"),
                ("BAKERY_DATABASE_URL", "postgres://p/db"),
                ("BAKERY_WORKER_CONCURRENCY", "64"),
                ("BAKERY_READ_MODEL", "documents"),
                ("BAKERY_JOB_LEASE_SECS", "7"),
                ("BAKERY_OUTBOX_SWEEP_AFTER_MS", "900"),
                ("BAKERY_BROKER_PREFETCH", "3"),
                ("BAKERY_CACHE_URL", "none"),
                ("BAKERY_SESSION_IDLE_TIMEOUT_SECS", "60"),
                ("BAKERY_REQUEST_TIMEOUT_SECS", "9"),
                ("BAKERY_COOKIE_SECURE", "1"),
                ("BAKERY_SMTP_URL", "smtp://127.0.0.1:2525"),
            ]),
        )
        .unwrap();
        assert_eq!(config.database.replica_urls.len(), 2);
        assert_eq!(config.worker.concurrency, 64);
        assert_eq!(config.database.read_model, ReadModel::Documents);
        assert_eq!(config.worker.job_lease, Duration::from_secs(7));
        assert_eq!(config.broker.outbox_sweep_after, Duration::from_millis(900));
        assert_eq!(config.broker.prefetch, 3);
        assert!(matches!(config.cache.url, CacheUrl::None));
        assert_eq!(config.sessions.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.http.request_timeout, Duration::from_secs(9));
        assert!(config.web.cookie_secure);
        assert!(config.email.smtp_url.is_some());
        // Replicas are of the primary's engine.
        let mixed = Config::from_layers(
            None,
            env(&[
                ("BAKERY_DATABASE_URL", "mysql://p/db"),
                ("BAKERY_REPLICA_URLS", "postgres://r/db"),
            ]),
        )
        .unwrap_err();
        assert_eq!(mixed.variable, "BAKERY_REPLICA_URLS");
        let mariadb = Config::from_layers(
            None,
            env(&[
                ("BAKERY_DATABASE_URL", "mysql://p/db"),
                ("BAKERY_REPLICA_URLS", "mysql://r1/db,mysql://r2/db"),
            ]),
        )
        .unwrap();
        assert_eq!(mariadb.database.replica_urls.len(), 2);
        for variable in [
            "BAKERY_WORKER_CONCURRENCY",
            "BAKERY_JOB_LEASE_SECS",
            "BAKERY_SESSION_IDLE_TIMEOUT_SECS",
            "BAKERY_OUTBOX_SWEEP_AFTER_MS",
            "BAKERY_CACHE_TIMEOUT_MS",
            "BAKERY_DRAIN_GRACE_MS",
        ] {
            let err = Config::from_layers(None, env(&[(variable, "soon")])).unwrap_err();
            assert_eq!(err.variable, variable, "{err}");
        }
        // A file's keys are the variables' names, in any case, without the prefix.
        let dir =
            std::env::temp_dir().join(format!("bakery-config-sections-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bakery.toml");
        std::fs::write(&file, "worker_concurrency = 9\nBAKERY_SESSION_URL = \"redis://s:6379\"\nwroker_concurrency = 1\n").unwrap();
        let err = Config::from_layers(Some(&file), Vec::new()).unwrap_err();
        assert!(err.problem.contains("wroker_concurrency"), "{err}");
        std::fs::write(
            &file,
            "worker_concurrency = 9\nBAKERY_SESSION_URL = \"redis://s:6379\"\n",
        )
        .unwrap();
        let config = Config::from_layers(Some(&file), Vec::new()).unwrap();
        assert_eq!(config.worker.concurrency, 9);
        assert!(matches!(config.sessions.url, SessionUrl::Redis(_)));
    }

    #[test]
    fn the_documented_defaults_file_matches_the_built_in_defaults() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.default.toml");
        let from_file =
            Config::from_layers(Some(&file), Vec::new()).expect("config.default.toml loads");
        assert_eq!(
            format!("{from_file:?}"),
            format!("{:?}", Config::defaults())
        );
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir =
            std::env::temp_dir().join(format!("bakery-config-unknown-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bakery.toml");
        std::fs::write(&file, "databse_url = \"sqlite://x\"\n").unwrap();
        let err = Config::from_layers(Some(&file), Vec::new()).unwrap_err();
        assert!(err.problem.contains("databse_url"), "{err}");
    }

    #[test]
    fn no_secret_shows_in_debug_output() {
        let config = Config::from_layers(
            None,
            env(&[
                (
                    "BAKERY_DATABASE_URL",
                    "postgres://bob:db-secret@db:5432/bakery",
                ),
                (
                    "BAKERY_REPLICA_URLS",
                    "postgres://bob:replica-secret@r1:5432/bakery",
                ),
                ("BAKERY_SESSION_URL", "redis://:session-secret@cache:6379"),
                ("BAKERY_CACHE_URL", "redis://:cache-secret@cache:6379"),
                ("BAKERY_ADMIN_PASSWORD", "admin-secret"),
                (
                    "BAKERY_LB_ADMIN_TOKEN",
                    "token-secret-token-secret-token-secret",
                ),
            ]),
        )
        .unwrap();
        let printed = format!("{config:?} {config:#?}");
        for secret in [
            "db-secret",
            "replica-secret",
            "session-secret",
            "cache-secret",
            "admin-secret",
            "token-secret",
        ] {
            assert!(!printed.contains(secret), "{secret} shows in {printed}");
        }
        assert!(
            printed.contains("db:5432"),
            "the rest of a URL still shows: {printed}"
        );
    }
}
