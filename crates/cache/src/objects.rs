//! Cached objects (the lesson's second pattern): a whole object, assembled from
//! several queries, stored under one key such as `Product:{id}`.
//!
//! Versioned, so that a fill that started before a write can never overwrite the
//! newer value (the delete-versus-set race): each key has a counter `ver:{key}`,
//! every write bumps it, and a value is stored with the version its builder saw
//! *before* reading the database ([`envelope`]). A read fetches both in one round trip
//! and only takes the value if its `v` is the current version. A late, stale fill
//! thus writes a value nobody will ever accept. A simple field write bumps the
//! version and stores the new object under it at once (updated in place); a
//! structural change only bumps it (invalidated).
//!
//! No stampede: concurrent misses in one process share one build, and across
//! processes a short lease (`lease:{key}`, taken with `add`) lets one process build
//! while the others wait briefly for its value before building themselves.
//! And a hot object does not expire under its readers: a hit in the last fifth of the
//! object's life rebuilds it in the background (refresh ahead, under the same lease).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::trace::{CacheResult, record, record_fill};
use crate::{Cache, counter};

/// A stored object: a format byte, its version and the moment it expires (8 bytes
/// each, big-endian, the moment in unix milliseconds), then its JSON. A fixed-size
/// header lets a hit check the version and hand out the JSON as it is, without
/// parsing it (the hot path of every cached read).
mod envelope {
    use bytes::Bytes;

    const FORMAT: u8 = 0xB2;
    const HEADER: usize = 17;

    /// What the header says.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Header {
        pub version: u64,
        pub expires_at_ms: u64,
    }

    pub fn encode(header: Header, json: &[u8]) -> Bytes {
        let mut bytes = Vec::with_capacity(HEADER + json.len());
        bytes.push(FORMAT);
        bytes.extend_from_slice(&header.version.to_be_bytes());
        bytes.extend_from_slice(&header.expires_at_ms.to_be_bytes());
        bytes.extend_from_slice(json);
        Bytes::from(bytes)
    }

    /// The header and the JSON; `None` for anything not written by [`encode`].
    pub fn decode(bytes: &Bytes) -> Option<(Header, Bytes)> {
        if bytes.len() < HEADER || bytes[0] != FORMAT {
            return None;
        }
        let version = u64::from_be_bytes(bytes[1..9].try_into().ok()?);
        let expires_at_ms = u64::from_be_bytes(bytes[9..HEADER].try_into().ok()?);
        Some((
            Header {
                version,
                expires_at_ms,
            },
            bytes.slice(HEADER..),
        ))
    }

    #[cfg(test)]
    mod tests {
        use super::Header;

        #[test]
        fn round_trips_and_refuses_foreign_values() {
            let header = Header {
                version: 1_700_000_000_123,
                expires_at_ms: 1_700_000_300_000,
            };
            let stored = super::encode(header, br#"{"id":1}"#);
            let (read, json) = super::decode(&stored).unwrap();
            assert_eq!((read, &json[..]), (header, &br#"{"id":1}"#[..]));
            assert!(super::decode(&bytes::Bytes::from_static(br#"{"v":1,"d":{}}"#)).is_none());
            assert!(super::decode(&bytes::Bytes::from_static(b"\xB2short")).is_none());
        }
    }
}

/// From `[ver:{key}, {key}, ..]` as read: the stored envelope if its version is current.
fn current_value(values: &mut [Option<Bytes>]) -> Option<Bytes> {
    let version = counter(values[0].as_deref())?;
    let bytes = values[1].take()?;
    let (stored, _) = envelope::decode(&bytes)?;
    (stored.version == version).then_some(bytes)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The JSON of `value` stored under `version`, living `ttl` from now.
fn seal<T: Serialize>(version: u64, ttl: Duration, value: &T) -> Result<Bytes, String> {
    let header = envelope::Header {
        version,
        expires_at_ms: now_ms() + ttl.as_millis() as u64,
    };
    serde_json::to_vec(value)
        .map(|json| envelope::encode(header, &json))
        .map_err(|e| e.to_string())
}

/// A hit in the last part of its life (this share of the TTL) refreshes the object in
/// the background, so a hot key is rebuilt before it expires instead of missing.
const REFRESH_AHEAD_DIVISOR: u32 = 5;

/// How long a builder may hold the lease before others stop waiting for it.
const LEASE: Duration = Duration::from_secs(2);
/// How long a process without the lease waits for the holder's value: as long as
/// the lease lasts, after which the holder is presumed gone.
const LEASE_WAIT: Duration = LEASE;

/// A failed build's error, shared by everyone who awaited it. Type-erased so one map
/// holds builds of any caller; each waiter gets its own clone of the original error
/// back, so a database that is down still reads as "down" (a 503), not as text.
type BuildError = Arc<dyn std::any::Any + Send + Sync>;
type Build = Shared<BoxFuture<'static, Result<Option<Bytes>, BuildError>>>;

/// Work in flight in this process, by key: one build serves every concurrent miss,
/// and at most one background refresh runs per key.
#[derive(Clone, Default)]
pub struct InFlight {
    builds: Arc<Mutex<HashMap<String, Build>>>,
    refreshing: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl Cache {
    /// The object at `key`: from the cache when its version is current, otherwise
    /// built by `build` (from the database), stored, and returned. Errors of `build`
    /// come back as they are; cache trouble only means `x-cache: bypass`.
    pub async fn object<T, E, F>(
        &self,
        inflight: &InFlight,
        key: &str,
        ttl: Duration,
        build: F,
    ) -> Result<(Option<T>, CacheResult), E>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: std::fmt::Display + From<String> + Clone + Send + Sync + 'static,
        F: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        // A value that no longer decodes (stored by a release with another shape of
        // `T`) is not a hit: it is rebuilt, and replaced for everyone.
        self.lookup(inflight, key, ttl, build, |json| {
            serde_json::from_slice::<T>(json).ok()
        })
        .await
    }

    /// The same object as JSON bytes, exactly as stored: a hit is served without
    /// decoding and re-encoding it (the hot path of a cached read).
    pub async fn object_json<T, E, F>(
        &self,
        inflight: &InFlight,
        key: &str,
        ttl: Duration,
        build: F,
    ) -> Result<(Option<Bytes>, CacheResult), E>
    where
        T: Serialize + Send + 'static,
        E: std::fmt::Display + From<String> + Clone + Send + Sync + 'static,
        F: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        self.lookup(inflight, key, ttl, build, |json| Some(json.clone()))
            .await
    }

    /// A hit if the current value decodes with `decode`, else one build for every
    /// concurrent miss in this process (and one across processes, by lease), decoded
    /// the same way.
    async fn lookup<T, E, F, V>(
        &self,
        inflight: &InFlight,
        key: &str,
        ttl: Duration,
        build: F,
        decode: impl Fn(&Bytes) -> Option<V>,
    ) -> Result<(Option<V>, CacheResult), E>
    where
        T: Serialize + Send + 'static,
        E: std::fmt::Display + From<String> + Clone + Send + Sync + 'static,
        F: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        let version_key = format!("ver:{key}");
        let cached = self.get_many(&[version_key.clone(), key.to_string()]).await;
        // `Some(version)`: the cache answered but had no current value (a miss);
        // `None`: the cache is down or slow (a bypass). Either way, build once.
        let seen = match &cached {
            Ok(values) => {
                let version = counter(values[0].as_deref());
                match (version, values[1].as_ref().and_then(envelope::decode)) {
                    (Some(current), Some((stored, json))) if stored.version == current => {
                        if let Some(value) = decode(&json) {
                            record("object", CacheResult::Hit);
                            if stored.expires_at_ms.saturating_sub(now_ms())
                                < (ttl / REFRESH_AHEAD_DIVISOR).as_millis() as u64
                            {
                                self.refresh_ahead(inflight, key, current, ttl, build);
                            }
                            return Ok((Some(value), CacheResult::Hit));
                        }
                        tracing::warn!(
                            key,
                            "a cached value no longer decodes (stored by another release?); rebuilding it"
                        );
                        // A new version, so that no process accepts the old value again.
                        self.incr(&version_key).await.ok().map(Some)
                    }
                    _ => Some(version),
                }
            }
            Err(error) => {
                tracing::debug!(%error, key, "cache bypassed");
                None
            }
        };
        let outcome = if seen.is_some() {
            CacheResult::Miss
        } else {
            CacheResult::Bypass
        };
        record("object", outcome);

        // One build per key in this process; concurrent misses (and bypasses: a slow
        // cache must not turn a hot key into a stampede on the database) await it.
        let shared = {
            let mut builds = inflight.builds.lock().unwrap_or_else(|p| p.into_inner());
            builds
                .entry(key.to_string())
                .or_insert_with(|| {
                    let (cache, key, version_key) =
                        (self.clone(), key.to_string(), version_key.clone());
                    async move {
                        let built = match seen {
                            Some(version) => {
                                cache
                                    .build_and_store(&key, &version_key, version, ttl, build)
                                    .await
                            }
                            None => {
                                record_fill("object");
                                match build.await {
                                    Ok(value) => value
                                        .map(|value| seal(0, ttl, &value).map_err(E::from))
                                        .transpose(),
                                    Err(e) => Err(e),
                                }
                            }
                        };
                        built.map_err(|e| Arc::new(e) as BuildError)
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        let built = shared.await;
        inflight
            .builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        match built {
            Ok(Some(bytes)) => {
                let value = envelope::decode(&bytes)
                    .and_then(|(_, json)| decode(&json))
                    .ok_or_else(|| E::from(format!("the value built for {key} does not decode")))?;
                Ok((Some(value), outcome))
            }
            Ok(None) => Ok((None, outcome)),
            Err(error) => Err(error
                .downcast_ref::<E>()
                .cloned()
                .unwrap_or_else(|| E::from("the build failed".to_string()))),
        }
    }

    /// Rebuilds a hot object near the end of its life, in the background, under the
    /// version that is current now (a write meanwhile makes the result count for
    /// nothing, as with any fill). One refresh per key in this process, and across
    /// processes only the one that takes the lease builds; the others keep serving
    /// the current value.
    fn refresh_ahead<T, E, F>(
        &self,
        inflight: &InFlight,
        key: &str,
        version: u64,
        ttl: Duration,
        build: F,
    ) where
        T: Serialize + Send + 'static,
        E: Send + 'static,
        F: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        if !inflight
            .refreshing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string())
        {
            return;
        }
        let (cache, key, refreshing) = (self.clone(), key.to_string(), inflight.refreshing.clone());
        tokio::spawn(async move {
            let lease_key = format!("lease:{key}");
            if cache.add(&lease_key, b"1", LEASE).await.unwrap_or(false) {
                record_fill("object");
                if let Ok(Some(value)) = build.await
                    && let Ok(bytes) = seal(version, ttl, &value)
                {
                    let _ = cache.set(&key, &bytes, ttl).await;
                }
                let _ = cache.delete(&lease_key).await;
            }
            refreshing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        });
    }

    /// Takes the lease (or waits briefly for whoever holds it), builds, stores under
    /// the version seen before building. Returns the stored envelope's bytes.
    async fn build_and_store<T, E, F>(
        &self,
        key: &str,
        version_key: &str,
        seen: Option<u64>,
        ttl: Duration,
        build: F,
    ) -> Result<Option<Bytes>, E>
    where
        T: Serialize,
        E: From<String>,
        F: Future<Output = Result<Option<T>, E>>,
    {
        // Someone may have stored it since we looked (a build that just finished).
        if let Some(bytes) = self.current(key, version_key).await {
            return Ok(Some(bytes));
        }
        let lease_key = format!("lease:{key}");
        let leased = self.add(&lease_key, b"1", LEASE).await.unwrap_or(true);
        if !leased {
            // Another process is building: its value will carry the current version.
            // Wait for it while the lease stands; a holder that could not store its value
            // (too large, the cache slow) releases the lease, and then we build.
            let keys = [version_key.to_string(), key.to_string(), lease_key.clone()];
            let deadline = tokio::time::Instant::now() + LEASE_WAIT;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let Ok(mut values) = self.get_many(&keys).await else {
                    continue;
                };
                if let Some(bytes) = current_value(&mut values) {
                    return Ok(Some(bytes));
                }
                if values[2].is_none() {
                    break;
                }
            }
        }
        // The version must be known before reading the database: a write after this
        // point bumps it, and what we store then no longer counts.
        let version = match seen {
            Some(v) => Some(v),
            None => self.incr(version_key).await.ok(),
        };
        record_fill("object");
        let value = build.await?;
        let Some(value) = value else {
            if leased {
                let _ = self.delete(&lease_key).await;
            }
            return Ok(None);
        };
        let bytes = seal(version.unwrap_or(0), ttl, &value).map_err(E::from)?;
        if version.is_some() {
            let _ = self.set(key, &bytes, ttl).await;
        }
        if leased {
            let _ = self.delete(&lease_key).await;
        }
        Ok(Some(bytes))
    }

    /// A write happened while the cache could not be told: bump `counter_key` as soon
    /// as it answers again, so a value cached before the write is not served once the
    /// cache is back (it would otherwise live until its TTL). Retries every 100 ms at
    /// first, then less often, for as long as any cached value could still live.
    pub(crate) fn bump_later(&self, counter_key: String) {
        let cache = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15 * 60);
            let mut pause = Duration::from_millis(100);
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(pause).await;
                if cache.incr(&counter_key).await.is_ok() {
                    tracing::info!(key = counter_key, "late version bump applied");
                    return;
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        });
    }

    /// The stored envelope of `key` if its version is the current one.
    async fn current(&self, key: &str, version_key: &str) -> Option<Bytes> {
        let mut values = self
            .get_many(&[version_key.to_string(), key.to_string()])
            .await
            .ok()?;
        current_value(&mut values)
    }

    /// A structural change: the cached object is no longer valid (and any fill
    /// already under way will store a value nobody accepts).
    pub async fn invalidate_object(&self, key: &str) {
        if self.is_none() {
            return;
        }
        if let Err(error) = self.incr(&format!("ver:{key}")).await {
            tracing::warn!(%error, key, "could not bump a version; retrying until the cache is back");
            self.bump_later(format!("ver:{key}"));
        }
    }

    /// A simple field write: a new version, and the new object stored under it.
    pub async fn update_object<T: Serialize>(&self, key: &str, value: &T, ttl: Duration) {
        if self.is_none() {
            return;
        }
        match self.incr(&format!("ver:{key}")).await {
            Ok(version) => {
                if let Ok(bytes) = seal(version, ttl, value) {
                    let _ = self.set(key, &bytes, ttl).await;
                }
            }
            Err(error) => {
                tracing::warn!(%error, key, "could not bump a version; retrying until the cache is back");
                self.bump_later(format!("ver:{key}"));
            }
        }
    }
}
