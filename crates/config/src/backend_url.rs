//! Typed URLs for the stores, checked once when the configuration is loaded.

use std::path::{Path, PathBuf};

use crate::ConfigError;

/// A database URL we know how to talk to: SQLite or PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    url: String,
    postgres: bool,
}

impl DatabaseUrl {
    pub fn parse(variable: &str, raw: &str) -> Result<Self, ConfigError> {
        let parsed = url::Url::parse(raw)
            .map_err(|e| ConfigError::new(variable, format!("not a URL ({e}): {}", redact(raw))))?;
        match parsed.scheme() {
            "postgres" | "postgresql" => {
                if parsed.host_str().is_none_or(str::is_empty) && !raw.contains("host=") {
                    return Err(ConfigError::new(variable, format!("no host in {}", redact(raw))));
                }
                Ok(Self { url: raw.to_string(), postgres: true })
            }
            "sqlite" => {
                let mut url = raw.to_string();
                // Create the file on first use, as a fresh machine expects.
                if !url.contains("mode=") {
                    url.push(if url.contains('?') { '&' } else { '?' });
                    url.push_str("mode=rwc");
                }
                Ok(Self { url, postgres: false })
            }
            other => Err(ConfigError::new(
                variable,
                format!("unsupported scheme {other:?}: expected sqlite:// or postgres://"),
            )),
        }
    }

    /// The embedded default: a SQLite file in the data directory.
    pub fn sqlite_in(data_dir: &Path) -> Self {
        Self { url: format!("sqlite://{}/bakery.db?mode=rwc", data_dir.display()), postgres: false }
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// The URL with any password replaced, fit for logs and error lines.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }
}

/// Where sessions live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionUrl {
    /// A SQLite file: shared by every process on this machine, durable across restarts.
    Sqlite(PathBuf),
    /// A Redis server, shared by every process that can reach it.
    Redis(String),
}

impl SessionUrl {
    pub fn embedded_in(data_dir: &Path) -> Self {
        Self::Sqlite(data_dir.join("sessions.db"))
    }

    pub fn parse(variable: &str, raw: &str, data_dir: &Path) -> Result<Self, ConfigError> {
        if raw == "embedded" {
            return Ok(Self::embedded_in(data_dir));
        }
        let parsed = url::Url::parse(raw)
            .map_err(|e| ConfigError::new(variable, format!("not a URL ({e}): {}", redact(raw))))?;
        match parsed.scheme() {
            "redis" | "rediss" => Ok(Self::Redis(raw.to_string())),
            "sqlite" => Ok(Self::Sqlite(PathBuf::from(raw.trim_start_matches("sqlite://")))),
            other => Err(ConfigError::new(
                variable,
                format!("unsupported scheme {other:?}: expected embedded, sqlite:// or redis://"),
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

/// Where cached values live.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub fn embedded_in(data_dir: &Path) -> Self {
        Self::Embedded(data_dir.join("cache.db"))
    }

    pub fn parse(variable: &str, raw: &str, data_dir: &Path) -> Result<Self, ConfigError> {
        match raw {
            "embedded" => return Ok(Self::embedded_in(data_dir)),
            "none" => return Ok(Self::None),
            _ => {}
        }
        if let Some(nodes) = raw.strip_prefix("memcached://") {
            let nodes: Vec<String> = nodes.split(',').map(|n| n.trim().trim_end_matches('/').to_string()).filter(|n| !n.is_empty()).collect();
            let valid = !nodes.is_empty()
                && nodes.iter().all(|n| n.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()));
            if !valid {
                return Err(ConfigError::new(variable, format!("expected memcached://host:port[,host:port...], got {raw:?}")));
            }
            return Ok(Self::Memcached(nodes));
        }
        let parsed = url::Url::parse(raw).map_err(|e| ConfigError::new(variable, format!("not a URL ({e}): {}", redact(raw))))?;
        match parsed.scheme() {
            "redis" | "rediss" => Ok(Self::Redis(raw.to_string())),
            other => Err(ConfigError::new(
                variable,
                format!("unsupported scheme {other:?}: expected embedded, none, redis:// or memcached://"),
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

/// Hides the password part of `scheme://user:password@host`.
pub fn redact(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        let url = DatabaseUrl::parse("X", "postgres://bob:secret@db:5432/bakery").unwrap();
        assert!(!url.redacted().contains("secret"));
        assert!(url.is_postgres());
    }

    #[test]
    fn sqlite_urls_create_their_file() {
        let url = DatabaseUrl::parse("X", "sqlite:///tmp/x.db").unwrap();
        assert_eq!(url.as_str(), "sqlite:///tmp/x.db?mode=rwc");
    }
}
