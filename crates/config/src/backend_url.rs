//! Typed URLs for the stores, checked once when the configuration is loaded.
//! Their `Debug` hides passwords, so a printed configuration shows no secret.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

/// A database URL we know how to talk to: SQLite, PostgreSQL or MariaDB
/// (`mysql://`). Empty until settled means "a SQLite file in the data directory".
/// `rediss://` is refused at start rather than accepted and spoken in clear: this
/// build's Redis client has no TLS.
const NO_REDIS_TLS: &str = "rediss:// (Redis over TLS) is not supported by this build; \
    reach Redis through a TLS tunnel (stunnel, spiped) and give its redis:// address";

#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct DatabaseUrl {
    url: String,
    engine: DatabaseEngine,
    /// One URL per host when the URL names several (`postgres://u@h1:5432,h2:5432/db`
    /// names two, of which one is the primary at any time); empty for one host.
    hosts: Vec<String>,
}

/// The engine behind a database URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseEngine {
    Sqlite,
    Postgres,
    /// MariaDB (or MySQL), from a `mysql://` URL.
    MariaDb,
}

impl DatabaseEngine {
    /// Its name, as logs, `/ops` and the bench show it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::MariaDb => "mariadb",
        }
    }
}

/// `host:port` with a host and a numeric port.
fn is_host_port(node: &str) -> bool {
    node.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// A URL's scheme, its authority (`user:password@hosts`) and the rest (path, query).
fn authority_of(raw: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = raw.split_once("://")?;
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    Some((scheme, authority, tail))
}

/// `postgres://USER@H1:P1,H2:P2/DB?Q` as one URL per host, or `None` for one host.
fn split_hosts(raw: &str) -> Option<Vec<String>> {
    let (scheme, authority, tail) = authority_of(raw)?;
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), authority),
    };
    hosts.contains(',').then(|| {
        hosts
            .split(',')
            .map(|host| format!("{scheme}://{userinfo}{host}{tail}"))
            .collect()
    })
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if let Some(hosts) = split_hosts(raw) {
            let mut parsed = Vec::new();
            for host in &hosts {
                let one = Self::parse(host)?;
                if one.engine != DatabaseEngine::Postgres {
                    return Err(format!(
                        "several hosts are for postgres:// URLs: {}",
                        redact(raw)
                    ));
                }
                parsed.push(one.url);
            }
            return Ok(Self {
                url: raw.to_string(),
                engine: DatabaseEngine::Postgres,
                hosts: parsed,
            });
        }
        let parsed =
            url::Url::parse(raw).map_err(|e| format!("not a URL ({e}): {}", redact(raw)))?;
        match parsed.scheme() {
            "postgres" | "postgresql" => {
                if parsed.host_str().is_none_or(str::is_empty) && !raw.contains("host=") {
                    return Err(format!("no host in {}", redact(raw)));
                }
                Ok(Self {
                    url: raw.to_string(),
                    engine: DatabaseEngine::Postgres,
                    hosts: Vec::new(),
                })
            }
            "mysql" | "mariadb" => {
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err(format!("no host in {}", redact(raw)));
                }
                // sqlx knows the protocol by its first name.
                let url = raw.replacen("mariadb://", "mysql://", 1);
                Ok(Self {
                    url,
                    engine: DatabaseEngine::MariaDb,
                    hosts: Vec::new(),
                })
            }
            "sqlite" => {
                let mut url = raw.to_string();
                // Create the file on first use, as a fresh machine expects.
                if !url.contains("mode=") {
                    url.push(if url.contains('?') { '&' } else { '?' });
                    url.push_str("mode=rwc");
                }
                Ok(Self {
                    url,
                    engine: DatabaseEngine::Sqlite,
                    hosts: Vec::new(),
                })
            }
            other => Err(format!(
                "unsupported scheme {other:?}: expected sqlite://, postgres:// or mysql://"
            )),
        }
    }

    /// The embedded default, settled by [`Self::settle_in`].
    pub(crate) fn in_data_dir() -> Self {
        Self {
            url: String::new(),
            engine: DatabaseEngine::Sqlite,
            hosts: Vec::new(),
        }
    }

    pub(crate) fn settle_in(&mut self, data_dir: &Path) {
        if self.url.is_empty() {
            *self = Self::sqlite_in(data_dir);
        }
    }

    /// A SQLite file in the data directory.
    pub fn sqlite_in(data_dir: &Path) -> Self {
        Self {
            url: format!("sqlite://{}/bakery.db?mode=rwc", data_dir.display()),
            engine: DatabaseEngine::Sqlite,
            hosts: Vec::new(),
        }
    }

    /// The URL as given (several hosts, if it names several: see [`Self::hosts`]).
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// One URL for each host the URL names, in its order: where to look for the
    /// primary (the one not in recovery).
    pub fn hosts(&self) -> &[String] {
        if self.hosts.is_empty() {
            std::slice::from_ref(&self.url)
        } else {
            &self.hosts
        }
    }

    pub fn engine(&self) -> DatabaseEngine {
        self.engine
    }

    pub fn is_postgres(&self) -> bool {
        self.engine == DatabaseEngine::Postgres
    }

    /// The URL with any password replaced, fit for logs and error lines.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }
}

impl TryFrom<String> for DatabaseUrl {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        Self::parse(raw.trim())
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        Self::parse(raw.trim())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// `redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`: Redis Sentinel's
/// sentinels, the name of the service they watch, and the database number on its
/// primary. The primary is whoever the sentinels say it is (asked again while
/// running, so a promoted replica is followed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sentinels {
    /// `host:port` of each sentinel.
    pub nodes: Vec<String>,
    pub service: String,
    pub db: i64,
}

impl Sentinels {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let expected = || {
            format!("expected redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB], got {raw:?}")
        };
        let rest = raw.strip_prefix(SENTINEL_SCHEME).ok_or_else(expected)?;
        let (nodes, path) = rest.split_once('/').ok_or_else(expected)?;
        let nodes: Vec<String> = nodes.split(',').map(str::to_string).collect();
        if !nodes.iter().all(|n| is_host_port(n)) {
            return Err(expected());
        }
        let mut parts = path.trim_end_matches('/').split('/');
        let service = parts
            .next()
            .filter(|s| !s.is_empty())
            .ok_or_else(expected)?;
        let db = match parts.next() {
            Some(db) => db.parse().map_err(|_| expected())?,
            None => 0,
        };
        if parts.next().is_some() {
            return Err(expected());
        }
        Ok(Self {
            nodes,
            service: service.to_string(),
            db,
        })
    }
}

/// Where sessions live.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SessionUrl {
    /// A SQLite file: shared by every process on this machine, durable across restarts.
    Sqlite(PathBuf),
    /// A Redis server, shared by every process that can reach it.
    Redis(String),
}

impl SessionUrl {
    /// The embedded default, settled by [`Self::settle_in`].
    pub(crate) fn in_data_dir() -> Self {
        Self::Sqlite(PathBuf::new())
    }

    pub(crate) fn settle_in(&mut self, data_dir: &Path) {
        if matches!(self, Self::Sqlite(path) if path.as_os_str().is_empty()) {
            *self = Self::Sqlite(data_dir.join("sessions.db"));
        }
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw == "embedded" {
            return Ok(Self::in_data_dir());
        }
        if raw.starts_with(SENTINEL_SCHEME) {
            Sentinels::parse(raw)?;
            return Ok(Self::Redis(raw.to_string()));
        }
        let parsed =
            url::Url::parse(raw).map_err(|e| format!("not a URL ({e}): {}", redact(raw)))?;
        match parsed.scheme() {
            "redis" => Ok(Self::Redis(raw.to_string())),
            "rediss" => Err(NO_REDIS_TLS.to_string()),
            "sqlite" => Ok(Self::Sqlite(PathBuf::from(
                raw.trim_start_matches("sqlite://"),
            ))),
            other => Err(format!(
                "unsupported scheme {other:?}: expected embedded, sqlite://, redis:// or redis+sentinel://"
            )),
        }
    }

    /// The engine's name, as logs and `/healthz` show it.
    pub fn engine(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "embedded",
            Self::Redis(_) => "redis",
        }
    }
}

impl TryFrom<String> for SessionUrl {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        Self::parse(raw.trim())
    }
}

impl fmt::Debug for SessionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "Sqlite({path:?})"),
            Self::Redis(url) => write!(f, "Redis({})", redact(url)),
        }
    }
}

/// Where cached values live.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum CacheUrl {
    /// A SQLite file in the data directory: shared, and so coherent, across every
    /// process on this machine.
    Embedded(PathBuf),
    Redis(String),
    /// Memcached nodes (`host:port`), keys spread over them by consistent hashing.
    Memcached(Vec<String>),
    /// No cache: every read goes to the database.
    None,
}

impl CacheUrl {
    /// The embedded default, settled by [`Self::settle_in`].
    pub(crate) fn in_data_dir() -> Self {
        Self::Embedded(PathBuf::new())
    }

    pub(crate) fn settle_in(&mut self, data_dir: &Path) {
        if matches!(self, Self::Embedded(path) if path.as_os_str().is_empty()) {
            *self = Self::Embedded(data_dir.join("cache.db"));
        }
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "embedded" => return Ok(Self::in_data_dir()),
            "none" => return Ok(Self::None),
            _ => {}
        }
        if let Some(nodes) = raw.strip_prefix("memcached://") {
            let nodes: Vec<String> = nodes
                .split(',')
                .map(|n| n.trim().trim_end_matches('/').to_string())
                .filter(|n| !n.is_empty())
                .collect();
            let valid = !nodes.is_empty() && nodes.iter().all(|n| is_host_port(n));
            if !valid {
                return Err(format!(
                    "expected memcached://host:port[,host:port...], got {raw:?}"
                ));
            }
            return Ok(Self::Memcached(nodes));
        }
        if raw.starts_with(SENTINEL_SCHEME) {
            Sentinels::parse(raw)?;
            return Ok(Self::Redis(raw.to_string()));
        }
        let parsed =
            url::Url::parse(raw).map_err(|e| format!("not a URL ({e}): {}", redact(raw)))?;
        match parsed.scheme() {
            "redis" => Ok(Self::Redis(raw.to_string())),
            "rediss" => Err(NO_REDIS_TLS.to_string()),
            other => Err(format!(
                "unsupported scheme {other:?}: expected embedded, none, redis://, redis+sentinel:// or memcached://"
            )),
        }
    }

    /// The engine's name, as `x-cache`-adjacent logs and metrics show it.
    pub fn engine(&self) -> &'static str {
        match self {
            Self::Embedded(_) => "embedded",
            Self::Redis(_) => "redis",
            Self::Memcached(_) => "memcached",
            Self::None => "none",
        }
    }
}

impl TryFrom<String> for CacheUrl {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        Self::parse(raw.trim())
    }
}

impl fmt::Debug for CacheUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embedded(path) => write!(f, "Embedded({path:?})"),
            Self::Redis(url) => write!(f, "Redis({})", redact(url)),
            Self::Memcached(nodes) => write!(f, "Memcached({nodes:?})"),
            Self::None => f.write_str("None"),
        }
    }
}

/// Where messages go.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum BrokerUrl {
    /// Tables in the configured database (SQLite or PostgreSQL): durable, and shared
    /// by every process that shares the database.
    Embedded,
    /// A RabbitMQ server (`amqp://user:password@host:port/vhost`), or the nodes of
    /// one RabbitMQ cluster (several such URLs separated by commas).
    Amqp(Vec<String>),
}

impl BrokerUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw == "embedded" {
            return Ok(Self::Embedded);
        }
        let nodes = raw
            .split(',')
            .map(|node| {
                let node = node.trim();
                let parsed = url::Url::parse(node)
                    .map_err(|e| format!("not a URL ({e}): {}", redact(node)))?;
                match parsed.scheme() {
                    "amqp" if parsed.host_str().is_some() => Ok(node.to_string()),
                    "amqps" => {
                        Err("amqps:// is not supported: this build has no TLS for AMQP".to_string())
                    }
                    other => Err(format!(
                        "unsupported scheme {other:?}: expected embedded or amqp://host:port"
                    )),
                }
            })
            .collect::<Result<Vec<String>, String>>()?;
        Ok(Self::Amqp(nodes))
    }

    /// The URL with its passwords hidden, for logs and errors.
    pub fn redacted(&self) -> String {
        match self {
            Self::Embedded => "embedded".to_string(),
            Self::Amqp(nodes) => nodes
                .iter()
                .map(|n| redact(n))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// The engine's name, as logs and `/healthz` show it.
    pub fn engine(&self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Amqp(_) => "rabbitmq",
        }
    }
}

impl TryFrom<String> for BrokerUrl {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        Self::parse(raw.trim())
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embedded => f.write_str("Embedded"),
            Self::Amqp(_) => write!(f, "Amqp({})", self.redacted()),
        }
    }
}

/// An SMTP server mail is handed to (`smtp://host:port`, no TLS: a local relay).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct SmtpUrl {
    pub host: String,
    pub port: u16,
}

impl SmtpUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let parsed =
            url::Url::parse(raw).map_err(|e| format!("not a URL ({e}): {}", redact(raw)))?;
        if parsed.scheme() != "smtp" {
            return Err(format!(
                "unsupported scheme {:?}: expected smtp://host:port",
                parsed.scheme()
            ));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("no host in {}", redact(raw)))?;
        Ok(Self {
            host: host.trim_matches(['[', ']']).to_string(),
            port: parsed.port().unwrap_or(25),
        })
    }
}

impl TryFrom<String> for SmtpUrl {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        Self::parse(raw.trim())
    }
}

impl fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "smtp://{}:{}", self.host, self.port)
    }
}

/// Hides the password part of `scheme://user:password@host`.
pub fn redact(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(_) => raw.to_string(),
        // Not one URL (several hosts, or malformed): hide what sits between the
        // user's name and the `@`, whatever the rest is.
        Err(_) => match authority_of(raw) {
            Some((scheme, authority, tail)) => match authority.rsplit_once('@') {
                Some((userinfo, hosts)) if userinfo.contains(':') => {
                    let user = userinfo.split(':').next().unwrap_or_default();
                    format!("{scheme}://{user}:***@{hosts}{tail}")
                }
                _ => raw.to_string(),
            },
            None => raw.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        let url = DatabaseUrl::parse("postgres://bob:secret@db:5432/bakery").unwrap();
        assert!(!url.redacted().contains("secret"));
        assert!(!format!("{url:?}").contains("secret"));
        assert!(url.is_postgres());
    }

    #[test]
    fn mysql_and_mariadb_urls_are_mariadb() {
        let url = DatabaseUrl::parse("mysql://bob:secret@db:3306/bakery").unwrap();
        assert_eq!(url.engine(), DatabaseEngine::MariaDb);
        assert!(!url.is_postgres());
        assert_eq!(url.redacted(), "mysql://bob:***@db:3306/bakery");
        let url = DatabaseUrl::parse("mariadb://bob@db/bakery").unwrap();
        assert_eq!(
            (url.engine(), url.as_str()),
            (DatabaseEngine::MariaDb, "mysql://bob@db/bakery")
        );
        assert!(DatabaseUrl::parse("mysql:///bakery").is_err(), "no host");
        assert!(DatabaseUrl::parse("mysql://u@h1:3306,h2:3306/bakery").is_err());
    }

    #[test]
    fn a_postgres_url_may_name_several_hosts() {
        let url =
            DatabaseUrl::parse("postgres://bob:secret@db-1:5432,db-2:5433/bakery?sslmode=disable")
                .unwrap();
        assert_eq!(
            url.hosts(),
            [
                "postgres://bob:secret@db-1:5432/bakery?sslmode=disable",
                "postgres://bob:secret@db-2:5433/bakery?sslmode=disable"
            ]
        );
        assert!(!url.redacted().contains("secret"));
        let one = DatabaseUrl::parse("postgres://db-1/bakery").unwrap();
        assert_eq!(one.hosts(), ["postgres://db-1/bakery"]);
        assert!(DatabaseUrl::parse("postgres://u@db-1:5432,:x/bakery").is_err());
    }

    #[test]
    fn sentinel_urls_name_the_sentinels_the_service_and_the_database() {
        let parsed = Sentinels::parse("redis+sentinel://s1:26379,s2:26380/bakery/2").unwrap();
        assert_eq!(parsed.nodes, ["s1:26379", "s2:26380"]);
        assert_eq!((parsed.service.as_str(), parsed.db), ("bakery", 2));
        assert_eq!(
            Sentinels::parse("redis+sentinel://s1:26379/bakery")
                .unwrap()
                .db,
            0
        );
        for bad in [
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1/bakery",
            "redis+sentinel://s1:26379/",
            "redis+sentinel://s1:26379/bakery/x",
        ] {
            assert!(Sentinels::parse(bad).is_err(), "{bad}");
            assert!(SessionUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            CacheUrl::parse("redis+sentinel://s1:26379/bakery/1").unwrap(),
            CacheUrl::Redis(_)
        ));
    }

    #[test]
    fn sqlite_urls_create_their_file() {
        let url = DatabaseUrl::parse("sqlite:///tmp/x.db").unwrap();
        assert_eq!(url.as_str(), "sqlite:///tmp/x.db?mode=rwc");
    }

    #[test]
    fn broker_and_smtp_urls_are_checked_and_redacted() {
        let rabbit = BrokerUrl::parse("amqp://guest:secret@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(rabbit.engine(), "rabbitmq");
        assert!(!format!("{rabbit:?}").contains("secret"));
        assert_eq!(BrokerUrl::parse("embedded").unwrap(), BrokerUrl::Embedded);
        assert!(BrokerUrl::parse("amqps://h/").unwrap_err().contains("TLS"));
        assert!(BrokerUrl::parse("kafka://h:1").is_err());
        let cluster =
            BrokerUrl::parse("amqp://g:secret@10.0.0.1:5672/v, amqp://g:secret@10.0.0.2:5672/v")
                .unwrap();
        assert_eq!(
            cluster,
            BrokerUrl::Amqp(vec![
                "amqp://g:secret@10.0.0.1:5672/v".into(),
                "amqp://g:secret@10.0.0.2:5672/v".into()
            ])
        );
        assert!(!cluster.redacted().contains("secret"));
        assert!(BrokerUrl::parse("amqp://h:1/v,kafka://h:2").is_err());
        let smtp = SmtpUrl::parse("smtp://mail.example:2525").unwrap();
        assert_eq!((smtp.host.as_str(), smtp.port), ("mail.example", 2525));
        assert_eq!(SmtpUrl::parse("smtp://mail.example").unwrap().port, 25);
        assert!(SmtpUrl::parse("http://mail.example").is_err());
    }
}
