//! What the load balancer fronts: named pools of backends, and the path prefixes
//! that route to each. The `web` pool takes every path no other prefix claims.

use std::net::{SocketAddr, ToSocketAddrs};

use bakery_config::ConfigError;

/// The pool that serves every path without a more specific route.
pub const DEFAULT_POOL: &str = "web";

/// One backend as given on the command line: `POOL=ID@HOST:PORT` (or `POOL=HOST:PORT`),
/// HOST an IP address or a name.
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
        let addr = resolve(addr).map_err(|why| bad(&why))?;
        Ok(Self {
            pool: pool.to_string(),
            id,
            addr,
        })
    }
}

/// `IP:PORT` as it is, or `HOST:PORT` looked up once, at start (as /etc/hosts or DNS
/// answer then): a member whose address changes needs the balancer restarted, or
/// the membership API.
fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = addr.parse() {
        return Ok(addr);
    }
    if addr
        .rsplit_once(':')
        .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    {
        return Err("not a HOST:PORT address".into());
    }
    let mut found = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr:?} ({e})"))?;
    found
        .next()
        .ok_or_else(|| format!("{addr:?} resolves to no address"))
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
        // A host's name, as a deployment across machines writes it.
        let b = BackendSpec::parse("web=web-a@localhost:8000", 0).unwrap();
        assert!(b.addr.ip().is_loopback() && b.addr.port() == 8000);
        let error = BackendSpec::parse("web=web-a@no-such-host.invalid:8000", 0).unwrap_err();
        assert!(error.to_string().contains("cannot resolve"), "{error}");
    }

    #[test]
    fn routes_need_a_leading_slash() {
        assert!(RouteSpec::parse("/api/notifications/=push").is_ok());
        assert!(RouteSpec::parse("api=push").is_err());
    }
}
