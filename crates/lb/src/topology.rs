//! What the load balancer fronts: named pools of backends, and the path prefixes
//! that route to each. The `web` pool takes every path no other prefix claims.

use std::net::SocketAddr;

use bakery_config::ConfigError;

/// The pool that serves every path without a more specific route.
pub const DEFAULT_POOL: &str = "web";

/// One backend as given on the command line: `POOL=ID@HOST:PORT` (or `POOL=HOST:PORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub pool: String,
    pub id: String,
    pub addr: SocketAddr,
}

impl BackendSpec {
    pub fn parse(raw: &str, ordinal: usize) -> Result<Self, ConfigError> {
        let bad = |why: &str| {
            ConfigError::new(
                "--backend",
                format!("{why} in {raw:?}: expected POOL=ID@HOST:PORT"),
            )
        };
        let (pool, rest) = raw.split_once('=').ok_or_else(|| bad("no pool"))?;
        let (id, addr) = match rest.split_once('@') {
            Some((id, addr)) => (id.to_string(), addr),
            None => (format!("{pool}-{ordinal}"), rest),
        };
        if pool.is_empty() || id.is_empty() {
            return Err(bad("empty pool or id"));
        }
        let addr = addr.parse().map_err(|_| bad("not an IP:port address"))?;
        Ok(Self {
            pool: pool.to_string(),
            id,
            addr,
        })
    }
}

/// A path prefix and the pool that serves it: `--route /api/notifications/=push`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub prefix: String,
    pub pool: String,
}

impl RouteSpec {
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        match raw.split_once('=') {
            Some((prefix, pool)) if prefix.starts_with('/') && !pool.is_empty() => Ok(Self {
                prefix: prefix.to_string(),
                pool: pool.to_string(),
            }),
            _ => Err(ConfigError::new(
                "--route",
                format!("expected /PREFIX=POOL, got {raw:?}"),
            )),
        }
    }
}

/// Pools and routes together.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub backends: Vec<BackendSpec>,
    pub routes: Vec<RouteSpec>,
}

impl Topology {
    /// The pool names in use: the default one, every routed one, every one with members.
    pub fn pool_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::iter::once(DEFAULT_POOL.to_string())
            .chain(self.routes.iter().map(|r| r.pool.clone()))
            .chain(self.backends.iter().map(|b| b.pool.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_with_and_without_ids() {
        let b = BackendSpec::parse("web=web-2@127.0.0.1:9002", 0).unwrap();
        assert_eq!(
            (b.pool.as_str(), b.id.as_str(), b.addr.port()),
            ("web", "web-2", 9002)
        );
        let b = BackendSpec::parse("push=127.0.0.1:7000", 3).unwrap();
        assert_eq!(b.id, "push-3");
        assert!(BackendSpec::parse("127.0.0.1:9002", 0).is_err());
        assert!(BackendSpec::parse("web=x@localhost", 0).is_err());
    }

    #[test]
    fn routes_need_a_leading_slash() {
        assert!(RouteSpec::parse("/api/notifications/=push").is_ok());
        assert!(RouteSpec::parse("api=push").is_err());
    }
}
