//! Configuration: built-in defaults, then an optional TOML file (`--config`), then
//! `BAKERY_*` environment variables, loaded once by `main` and passed down.
//!
//! Roles never read the environment themselves: tests build a [`Config`] in code.
//! Every value is validated here, so a process with a bad value stops before it
//! starts anything, with one line naming the variable ([`ConfigError`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod backend_url;

pub use backend_url::{CacheUrl, DatabaseUrl, SessionUrl};

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
        Self { variable: variable.to_string(), problem: problem.into() }
    }
}

/// How the load balancer picks a backend inside a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Power of two choices over in-flight requests (the default).
    LeastRequest,
    RoundRobin,
}

/// Everything a bakery process may need. Each role uses the part it needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub database_url: DatabaseUrl,
    pub replica_urls: Vec<DatabaseUrl>,
    /// A replica further behind the primary than this (in WAL bytes) serves no reads.
    pub replica_max_lag_bytes: u64,
    /// Connections each process keeps at most to the primary and to each replica.
    pub database_pool_size: u32,
    pub session_url: SessionUrl,
    pub cache_url: CacheUrl,
    /// How long a cached `Product:{id}` object lives.
    pub cache_object_ttl: Duration,
    /// How long a cached query result lives.
    pub cache_query_ttl: Duration,
    /// Longest a cache call may take before the request goes to the database.
    pub cache_timeout: Duration,
    /// The embedded cache keeps at most this many entries (it has no server to bound it).
    pub cache_embedded_max_entries: u64,
    /// Kept as given; the broker issue gives it a type.
    pub broker_url: String,
    pub smtp_url: Option<String>,
    pub admin_password: Option<String>,
    pub debug_headers: bool,
    /// Sets `Secure` on the session cookie even when the clone sees plain HTTP
    /// (it does behind a TLS-terminating edge).
    pub cookie_secure: bool,
    pub session_idle_timeout: Duration,
    pub session_absolute_timeout: Duration,
    /// Longest a web request may take before it is answered 503 `timeout`.
    pub request_timeout: Duration,
    /// How long a draining clone keeps answering before it closes.
    pub drain_grace: Duration,
    pub lb: LbConfig,
    /// A `tracing` filter, e.g. `info` or `bakery_lb=debug`.
    pub log: String,
}

/// Settings of the load balancer role.
#[derive(Debug, Clone)]
pub struct LbConfig {
    pub selection: Selection,
    /// Bearer token for `PUT`/`DELETE /lb/backends/...`; without one they are refused.
    pub admin_token: Option<String>,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    /// In-flight requests beyond which new ones wait (up to `queue_timeout`) for a slot.
    pub max_inflight: usize,
    pub queue_timeout: Duration,
    pub connect_timeout: Duration,
    /// Time to the upstream's response head.
    pub upstream_timeout: Duration,
    pub health_interval: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
    /// Most of a pool that passive ejection may take out, in percent.
    pub max_ejection_percent: u32,
    /// Below this share of healthy members the pool ignores health (Envoy's panic mode).
    pub panic_threshold_percent: u32,
    /// Retries allowed as a share of requests, in percent, plus `retry_min_per_sec`.
    pub retry_budget_percent: u32,
    pub retry_min_per_sec: u32,
}

/// The keys we know, in their environment spelling. A TOML file may use the same
/// names or the lower-case names without the prefix (`database_url`).
const KEYS: &[&str] = &[
    "BAKERY_DATA_DIR",
    "BAKERY_DATABASE_URL",
    "BAKERY_REPLICA_URLS",
    "BAKERY_REPLICA_MAX_LAG_BYTES",
    "BAKERY_SESSION_URL",
    "BAKERY_CACHE_URL",
    "BAKERY_CACHE_OBJECT_TTL_SECS",
    "BAKERY_CACHE_QUERY_TTL_SECS",
    "BAKERY_CACHE_TIMEOUT_MS",
    "BAKERY_DATABASE_POOL_SIZE",
    "BAKERY_CACHE_EMBEDDED_MAX_ENTRIES",
    "BAKERY_BROKER_URL",
    "BAKERY_SMTP_URL",
    "BAKERY_ADMIN_PASSWORD",
    "BAKERY_DEBUG_HEADERS",
    "BAKERY_COOKIE_SECURE",
    "BAKERY_SESSION_IDLE_TIMEOUT_SECS",
    "BAKERY_SESSION_ABSOLUTE_TIMEOUT_SECS",
    "BAKERY_REQUEST_TIMEOUT_SECS",
    "BAKERY_DRAIN_GRACE_MS",
    "BAKERY_LB_SELECTION",
    "BAKERY_LB_ADMIN_TOKEN",
    "BAKERY_LB_MAX_BODY_BYTES",
    "BAKERY_LB_MAX_HEADER_BYTES",
    "BAKERY_LB_MAX_INFLIGHT",
    "BAKERY_LB_QUEUE_TIMEOUT_MS",
    "BAKERY_LB_CONNECT_TIMEOUT_MS",
    "BAKERY_LB_UPSTREAM_TIMEOUT_SECS",
    "BAKERY_LB_HEALTH_INTERVAL_MS",
    "BAKERY_LB_HEALTHY_AFTER",
    "BAKERY_LB_UNHEALTHY_AFTER",
    "BAKERY_LB_MAX_EJECTION_PERCENT",
    "BAKERY_LB_PANIC_THRESHOLD_PERCENT",
    "BAKERY_LB_RETRY_BUDGET_PERCENT",
    "BAKERY_LB_RETRY_MIN_PER_SEC",
    "BAKERY_LOG",
];

impl Config {
    /// Defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::from_layers(file, env)
    }

    /// Defaults, then `file`, then the given `(name, value)` pairs (the environment).
    pub fn from_layers(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut values: BTreeMap<&'static str, String> = BTreeMap::new();
        if let Some(path) = file {
            for (key, value) in read_file(path)? {
                values.insert(key, value);
            }
        }
        for (name, value) in env {
            if let Some(key) = KEYS.iter().find(|k| **k == name) {
                values.insert(key, value);
            }
        }
        Self::from_values(&values)
    }

    /// Built-in defaults only: what `bakery up` uses on a fresh machine.
    pub fn defaults() -> Self {
        Self::from_values(&BTreeMap::new()).expect("the built-in defaults are valid")
    }

    fn from_values(values: &BTreeMap<&'static str, String>) -> Result<Self, ConfigError> {
        let get = |key: &str| values.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
        let data_dir = PathBuf::from(get("BAKERY_DATA_DIR").unwrap_or("./bakery-data"));
        let database_url = match get("BAKERY_DATABASE_URL") {
            Some(url) => DatabaseUrl::parse("BAKERY_DATABASE_URL", url)?,
            None => DatabaseUrl::sqlite_in(&data_dir),
        };
        let replica_urls = match get("BAKERY_REPLICA_URLS") {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|url| {
                    let parsed = DatabaseUrl::parse("BAKERY_REPLICA_URLS", url)?;
                    if !parsed.is_postgres() {
                        return Err(ConfigError::new(
                            "BAKERY_REPLICA_URLS",
                            format!("replicas must be postgres:// URLs, got {}", parsed.redacted()),
                        ));
                    }
                    Ok(parsed)
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        if !replica_urls.is_empty() && !database_url.is_postgres() {
            return Err(ConfigError::new(
                "BAKERY_REPLICA_URLS",
                "replicas need a postgres:// BAKERY_DATABASE_URL (SQLite has no streaming replicas)",
            ));
        }
        let session_url = match get("BAKERY_SESSION_URL") {
            Some(url) => SessionUrl::parse("BAKERY_SESSION_URL", url, &data_dir)?,
            None => SessionUrl::embedded_in(&data_dir),
        };
        let cache_url = CacheUrl::parse("BAKERY_CACHE_URL", get("BAKERY_CACHE_URL").unwrap_or("embedded"), &data_dir)?;
        let broker_url = get("BAKERY_BROKER_URL").unwrap_or("embedded").to_string();
        let smtp_url = get("BAKERY_SMTP_URL").map(str::to_string);
        if let Some(smtp) = &smtp_url {
            let parsed = url::Url::parse(smtp)
                .map_err(|e| ConfigError::new("BAKERY_SMTP_URL", format!("not a URL ({e})")))?;
            if parsed.scheme() != "smtp" {
                return Err(ConfigError::new("BAKERY_SMTP_URL", "expected smtp://host:port"));
            }
        }
        let admin_password = get("BAKERY_ADMIN_PASSWORD").map(str::to_string);
        if admin_password.as_ref().is_some_and(|p| p.chars().count() < 8) {
            return Err(ConfigError::new("BAKERY_ADMIN_PASSWORD", "must be at least 8 characters"));
        }

        let secs = |key, default| number(get(key), key, default).map(Duration::from_secs);
        let millis = |key, default| number(get(key), key, default).map(Duration::from_millis);
        let lb = LbConfig {
            selection: match get("BAKERY_LB_SELECTION").unwrap_or("least_request") {
                "least_request" | "p2c" => Selection::LeastRequest,
                "round_robin" => Selection::RoundRobin,
                other => {
                    return Err(ConfigError::new(
                        "BAKERY_LB_SELECTION",
                        format!("expected least_request or round_robin, got {other:?}"),
                    ));
                }
            },
            admin_token: get("BAKERY_LB_ADMIN_TOKEN").map(str::to_string),
            max_body_bytes: number(get("BAKERY_LB_MAX_BODY_BYTES"), "BAKERY_LB_MAX_BODY_BYTES", 16 << 20)?
                as usize,
            max_header_bytes: number(get("BAKERY_LB_MAX_HEADER_BYTES"), "BAKERY_LB_MAX_HEADER_BYTES", 64 << 10)?
                as usize,
            max_inflight: number(get("BAKERY_LB_MAX_INFLIGHT"), "BAKERY_LB_MAX_INFLIGHT", 4096)? as usize,
            queue_timeout: millis("BAKERY_LB_QUEUE_TIMEOUT_MS", 2000)?,
            connect_timeout: millis("BAKERY_LB_CONNECT_TIMEOUT_MS", 1000)?,
            upstream_timeout: secs("BAKERY_LB_UPSTREAM_TIMEOUT_SECS", 60)?,
            health_interval: millis("BAKERY_LB_HEALTH_INTERVAL_MS", 1000)?,
            healthy_after: number(get("BAKERY_LB_HEALTHY_AFTER"), "BAKERY_LB_HEALTHY_AFTER", 2)? as u32,
            unhealthy_after: number(get("BAKERY_LB_UNHEALTHY_AFTER"), "BAKERY_LB_UNHEALTHY_AFTER", 3)? as u32,
            max_ejection_percent: percent(get("BAKERY_LB_MAX_EJECTION_PERCENT"), "BAKERY_LB_MAX_EJECTION_PERCENT", 50)?,
            panic_threshold_percent: percent(
                get("BAKERY_LB_PANIC_THRESHOLD_PERCENT"),
                "BAKERY_LB_PANIC_THRESHOLD_PERCENT",
                25,
            )?,
            retry_budget_percent: percent(get("BAKERY_LB_RETRY_BUDGET_PERCENT"), "BAKERY_LB_RETRY_BUDGET_PERCENT", 20)?,
            retry_min_per_sec: number(get("BAKERY_LB_RETRY_MIN_PER_SEC"), "BAKERY_LB_RETRY_MIN_PER_SEC", 10)? as u32,
        };
        if lb.healthy_after == 0 || lb.unhealthy_after == 0 {
            return Err(ConfigError::new("BAKERY_LB_HEALTHY_AFTER", "health thresholds must be at least 1"));
        }
        if lb.health_interval.is_zero() {
            return Err(ConfigError::new("BAKERY_LB_HEALTH_INTERVAL_MS", "must be more than 0"));
        }

        Ok(Self {
            data_dir,
            database_url,
            replica_urls,
            replica_max_lag_bytes: number(get("BAKERY_REPLICA_MAX_LAG_BYTES"), "BAKERY_REPLICA_MAX_LAG_BYTES", 16 << 20)?,
            database_pool_size: at_least(get("BAKERY_DATABASE_POOL_SIZE"), "BAKERY_DATABASE_POOL_SIZE", 16, 1)?.min(1024) as u32,
            session_url,
            cache_url,
            cache_object_ttl: secs("BAKERY_CACHE_OBJECT_TTL_SECS", 300)?,
            cache_query_ttl: secs("BAKERY_CACHE_QUERY_TTL_SECS", 60)?,
            cache_timeout: millis("BAKERY_CACHE_TIMEOUT_MS", 100)?,
            cache_embedded_max_entries: at_least(get("BAKERY_CACHE_EMBEDDED_MAX_ENTRIES"), "BAKERY_CACHE_EMBEDDED_MAX_ENTRIES", 50_000, 100)?,
            broker_url,
            smtp_url,
            admin_password,
            debug_headers: boolean(get("BAKERY_DEBUG_HEADERS"), "BAKERY_DEBUG_HEADERS", true)?,
            cookie_secure: boolean(get("BAKERY_COOKIE_SECURE"), "BAKERY_COOKIE_SECURE", false)?,
            session_idle_timeout: secs("BAKERY_SESSION_IDLE_TIMEOUT_SECS", 2 * 3600)?,
            session_absolute_timeout: secs("BAKERY_SESSION_ABSOLUTE_TIMEOUT_SECS", 7 * 24 * 3600)?,
            request_timeout: secs("BAKERY_REQUEST_TIMEOUT_SECS", 30)?,
            drain_grace: millis("BAKERY_DRAIN_GRACE_MS", 2500)?,
            lb,
            log: get("BAKERY_LOG").unwrap_or("info").to_string(),
        })
    }
}

/// Reads a TOML file of flat `key = value` pairs into environment-spelled keys.
fn read_file(path: &Path) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("--config", format!("cannot read {}: {e}", path.display())))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| ConfigError::new("--config", format!("{} is not valid TOML: {e}", path.display())))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let upper = key.to_ascii_uppercase();
        let spelled = if upper.starts_with("BAKERY_") { upper } else { format!("BAKERY_{upper}") };
        let Some(known) = KEYS.iter().find(|k| **k == spelled) else {
            return Err(ConfigError::new("--config", format!("unknown key {key:?} in {}", path.display())));
        };
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => if b { "1" } else { "0" }.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                .collect::<Vec<_>>()
                .join(","),
            other => {
                return Err(ConfigError::new(known, format!("unsupported value {other} in {}", path.display())));
            }
        };
        out.push((*known, value));
    }
    Ok(out)
}

fn number(value: Option<&str>, key: &str, default: u64) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| ConfigError::new(key, format!("expected a whole number, got {v:?}"))),
    }
}

fn at_least(value: Option<&str>, key: &str, default: u64, min: u64) -> Result<u64, ConfigError> {
    let n = number(value, key, default)?;
    if n < min {
        return Err(ConfigError::new(key, format!("expected at least {min}, got {n}")));
    }
    Ok(n)
}

fn percent(value: Option<&str>, key: &str, default: u32) -> Result<u32, ConfigError> {
    let n = number(value, key, default as u64)?;
    if n > 100 {
        return Err(ConfigError::new(key, format!("expected a percentage from 0 to 100, got {n}")));
    }
    Ok(n as u32)
}

fn boolean(value: Option<&str>, key: &str, default: bool) -> Result<bool, ConfigError> {
    match value.map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::new(key, format!("expected 1 or 0, got {v:?}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_embedded_and_under_the_data_dir() {
        let config = Config::defaults();
        assert_eq!(config.database_url.as_str(), "sqlite://./bakery-data/bakery.db?mode=rwc");
        assert!(matches!(config.session_url, SessionUrl::Sqlite(_)));
        assert!(config.debug_headers);
        assert_eq!(config.lb.selection, Selection::LeastRequest);
    }

    #[test]
    fn environment_overrides_file_and_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("bakery-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bakery.toml");
        std::fs::write(&file, "data_dir = \"/tmp/from-file\"\nBAKERY_DEBUG_HEADERS = false\nlb_selection = \"round_robin\"\n")
            .unwrap();
        let config =
            Config::from_layers(Some(&file), env(&[("BAKERY_DATA_DIR", "/tmp/from-env")])).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/tmp/from-env"));
        assert!(!config.debug_headers);
        assert_eq!(config.lb.selection, Selection::RoundRobin);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let err = Config::from_layers(None, env(&[("BAKERY_DATABASE_URL", "mysql://x")])).unwrap_err();
        assert_eq!(err.variable, "BAKERY_DATABASE_URL");
        let err = Config::from_layers(None, env(&[("BAKERY_DEBUG_HEADERS", "maybe")])).unwrap_err();
        assert_eq!(err.variable, "BAKERY_DEBUG_HEADERS");
        let err = Config::from_layers(None, env(&[("BAKERY_SESSION_URL", "memcached://x")])).unwrap_err();
        assert_eq!(err.variable, "BAKERY_SESSION_URL");
        let err = Config::from_layers(None, env(&[("BAKERY_REPLICA_URLS", "postgres://r/db")])).unwrap_err();
        assert_eq!(err.variable, "BAKERY_REPLICA_URLS", "replicas without a postgres primary");
    }

    #[test]
    fn the_documented_defaults_file_matches_the_built_in_defaults() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.default.toml");
        let from_file = Config::from_layers(Some(&file), Vec::new()).expect("config.default.toml loads");
        assert_eq!(format!("{from_file:?}"), format!("{:?}", Config::defaults()));
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("bakery-config-unknown-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bakery.toml");
        std::fs::write(&file, "databse_url = \"sqlite://x\"\n").unwrap();
        let err = Config::from_layers(Some(&file), Vec::new()).unwrap_err();
        assert!(err.problem.contains("databse_url"), "{err}");
    }
}
