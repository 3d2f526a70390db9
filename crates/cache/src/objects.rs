//! Cached objects (the lesson's second pattern): a whole object, assembled from
//! several queries, stored under one key such as `Product:{id}`.
//!
//! Versioned, so that a fill that started before a write can never overwrite the
//! newer value (the delete-versus-set race): each key has a counter `ver:{key}`,
//! every write bumps it, and a value is stored with the version its builder saw
//! *before* reading the database ([`envelope`]). A read fetches both in one round trip
//! and only takes the value if its `v` is the current version. A late, stale fill
//! thus writes a value nobody will ever accept. A simple field write bumps the
//! version, then reads the new object and stores it under that version (updated in
//! place); a
//! structural change only bumps it (invalidated).
//!
//! No stampede: concurrent misses in one process share one build, and across
//! processes a short lease (`lease:{key}`, taken with `add`) lets one process build
//! while the others wait briefly for its value before building themselves.
//! And a hot object does not expire under its readers: a hit in the last fifth of the
//! object's life rebuilds it in the background (refresh ahead, under the same lease).
//!
//! Absence is cached too, briefly ([`NOT_FOUND_TTL`]): an unknown id asked for again
//! and again is answered by the cache, not the database. A key with no counter gets
//! none for a "not found" (version 0 stands for "no counter", and any write mints
//! one, which ends the entry), so made-up ids leave nothing behind but entries that
//! expire in seconds.
//!
//! A build outlives the requests that wait for it: if every waiter goes away (its
//! request timed out, its client hung up), the build is driven to its end in a task
//! of its own, so it releases its database connections and its lease and stores
//! what it built, instead of sitting half-done in the in-flight map.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::trace::{CacheResult, record, record_fill};
use crate::{Cache, Freshness, counter};

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
    let version = counter(values[0].as_deref()).unwrap_or(NO_COUNTER);
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

/// The version an entry carries when its key had no counter: only "not found"
/// entries are stored under it (real counters start at the time in milliseconds).
const NO_COUNTER: u64 = 0;

/// How long "no such object" is believed. Short: a product created meanwhile ends
/// it at once (its write mints or bumps the counter), so this only bounds how long
/// an entry for a made-up id takes room in the cache.
pub const NOT_FOUND_TTL: Duration = Duration::from_secs(10);

/// The JSON of a "not found" entry.
const NOT_FOUND: &[u8] = b"null";

/// An envelope saying "not found" under `version`.
fn seal_not_found(version: u64) -> Bytes {
    let header = envelope::Header {
        version,
        expires_at_ms: now_ms() + NOT_FOUND_TTL.as_millis() as u64,
    };
    envelope::encode(header, NOT_FOUND)
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

/// Awaits a shared build; dropped before the build ended (its request gave up),
/// hands the build to a task of its own, so that it still runs to its end: its
/// database connections and its lease are released and its value is stored.
struct Finish(Option<Build>);

impl Future for Finish {
    type Output = Result<Option<Bytes>, BuildError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(build) = self.0.as_mut() else {
            return std::task::Poll::Ready(Err(Arc::new("polled after its end".to_string())));
        };
        let polled = build.poll_unpin(cx);
        if polled.is_ready() {
            self.0 = None;
        }
        polled
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(build) = self.0.take()
            && build.peek().is_none()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = build.await;
            });
        }
    }
}

/// Work in flight in this process, by key: one build serves every concurrent miss,
/// and at most one background refresh runs per key.
#[derive(Clone, Default)]
pub struct InFlight {
    builds: Arc<Mutex<HashMap<String, Build>>>,
    refreshing: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl Cache {
    /// The object at `key`: from the cache when its version is current, otherwise
    /// built by `build` (from the database), stored, and returned. `build` makes one
    /// build each time it is called (a key without a counter that turns out to exist
    /// is built again under its new counter). Errors of `build` come back as they
    /// are; cache trouble only means `x-cache: bypass`.
    pub async fn object<T, E, B, F>(
        &self,
        inflight: &InFlight,
        key: &str,
        ttl: Duration,
        freshness: Freshness,
        build: B,
    ) -> Result<(Option<T>, CacheResult), E>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: std::fmt::Display + From<String> + Clone + Send + Sync + 'static,
        B: Fn() -> F + Send + Sync + 'static,
        F: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        // A value that no longer decodes (stored by a release with another shape of
        // `T`) is not a hit: it is rebuilt, and replaced for everyone.
        self.lookup(inflight, key, ttl, freshness, build, |json| {
            serde_json::from_slice::<T>(json).ok()
        })
        .await
    }

    /// The same object as JSON bytes, exactly as stored: a hit is served without
    /// decoding and re-encoding it (the hot path of a cached read).
    pub async fn object_json<T, E, B, F>(
        &self,
        inflight: &InFlight,
        key: &str,
        ttl: Duration,
        freshness: Freshness,
        build: B,
    ) -> Result<(Option<Bytes>, CacheResult), E>
    where
        T: Serialize + Send + 'static,
        E: std::fmt::Display + From<String> + Clone + Send + Sync + 'static,
        B: Fn() -> F + Send + Sync + 'static,
        F: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        self.lookup(inflight, key, ttl, freshness, build, |json| {
            Some(json.clone())
        })
        .await
    }

    /// A hit if the current value decodes with `decode` (or says "not found"), else
    /// one build for every concurrent miss in this process (and one across
    /// processes, by lease), decoded the same way.
    async fn lookup<T, E, B, F, V>(
        &self,
        inflight: &InFlight,
        key: &str,
        ttl: Duration,
        freshness: Freshness,
        build: B,
        decode: impl Fn(&Bytes) -> Option<V>,
    ) -> Result<(Option<V>, CacheResult), E>
    where
        T: Serialize + Send + 'static,
        E: std::fmt::Display + From<String> + Clone + Send + Sync + 'static,
        B: Fn() -> F + Send + Sync + 'static,
        F: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        let version_key = format!("ver:{key}");
        let cached = self
            .get_many_at(&[version_key.clone(), key.to_string()], freshness)
            .await;
        let now = now_ms();
        // `Some(counter)`: the cache answered but had no current value (a miss; the
        // counter is `None` when the key has none yet); `None`: the cache is down or
        // slow (a bypass). Either way, build once.
        let seen = match &cached {
            Ok(values) => {
                let version = counter(values[0].as_deref());
                let current = version.unwrap_or(NO_COUNTER);
                match values[1].as_ref().and_then(envelope::decode) {
                    // Past its moment it is a miss, even if the engine (or a near
                    // copy whose expiry push is late) still has it.
                    Some((stored, json))
                        if stored.version == current && stored.expires_at_ms > now =>
                    {
                        if json[..] == *NOT_FOUND {
                            record("object", CacheResult::Hit);
                            return Ok((None, CacheResult::Hit));
                        }
                        if let Some(value) = decode(&json) {
                            record("object", CacheResult::Hit);
                            if stored.expires_at_ms.saturating_sub(now)
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
        // The build takes itself out of the map when it ends.
        let shared = {
            let mut builds = inflight.builds.lock().unwrap_or_else(|p| p.into_inner());
            builds
                .entry(key.to_string())
                .or_insert_with(|| {
                    let (cache, key, version_key, builds) = (
                        self.clone(),
                        key.to_string(),
                        version_key.clone(),
                        inflight.builds.clone(),
                    );
                    async move {
                        let built = match seen {
                            Some(version) => {
                                cache
                                    .build_and_store(&key, &version_key, version, ttl, &build)
                                    .await
                            }
                            None => {
                                record_fill("object");
                                match build().await {
                                    Ok(value) => value
                                        .map(|value| seal(NO_COUNTER, ttl, &value).map_err(E::from))
                                        .transpose(),
                                    Err(e) => Err(e),
                                }
                            }
                        };
                        builds
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&key);
                        built.map_err(|e| Arc::new(e) as BuildError)
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        match Finish(Some(shared)).await {
            Ok(Some(bytes)) => {
                let undecodable = || E::from(format!("the value built for {key} does not decode"));
                let (_, json) = envelope::decode(&bytes).ok_or_else(undecodable)?;
                if json[..] == *NOT_FOUND {
                    return Ok((None, outcome));
                }
                Ok((Some(decode(&json).ok_or_else(undecodable)?), outcome))
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
    fn refresh_ahead<T, E, B, F>(
        &self,
        inflight: &InFlight,
        key: &str,
        version: u64,
        ttl: Duration,
        build: B,
    ) where
        T: Serialize + Send + 'static,
        E: Send + 'static,
        B: Fn() -> F + Send + Sync + 'static,
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
                if let Ok(Some(value)) = build().await
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
    /// the version seen before building. Returns the stored envelope's bytes (`None`:
    /// no such object).
    async fn build_and_store<T, E, B, F>(
        &self,
        key: &str,
        version_key: &str,
        seen: Option<u64>,
        ttl: Duration,
        build: &B,
    ) -> Result<Option<Bytes>, E>
    where
        T: Serialize,
        E: From<String>,
        B: Fn() -> F,
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
        let built = self
            .build_under_version(key, version_key, seen, ttl, build)
            .await;
        if leased {
            let _ = self.delete(&lease_key).await;
        }
        built
    }

    /// Builds and stores under a version known before the database was read: a
    /// write after that point bumps it, and what is stored then no longer counts.
    async fn build_under_version<T, E, B, F>(
        &self,
        key: &str,
        version_key: &str,
        seen: Option<u64>,
        ttl: Duration,
        build: &B,
    ) -> Result<Option<Bytes>, E>
    where
        T: Serialize,
        E: From<String>,
        B: Fn() -> F,
        F: Future<Output = Result<Option<T>, E>>,
    {
        record_fill("object");
        let version = match seen {
            Some(version) => version,
            None => {
                // No counter yet. Absence is stored under "no counter" and mints none
                // (a made-up id leaves nothing that lasts); what exists needs a counter
                // made before the read whose result is stored, so it is read again.
                let Some(first) = build().await? else {
                    let _ = self
                        .set(key, &seal_not_found(NO_COUNTER), NOT_FOUND_TTL)
                        .await;
                    return Ok(None);
                };
                let Ok(version) = self.incr(version_key).await else {
                    return seal(NO_COUNTER, ttl, &first).map(Some).map_err(E::from);
                };
                record_fill("object");
                version
            }
        };
        let Some(value) = build().await? else {
            let _ = self.set(key, &seal_not_found(version), NOT_FOUND_TTL).await;
            return Ok(None);
        };
        let bytes = seal(version, ttl, &value).map_err(E::from)?;
        let _ = self.set(key, &bytes, ttl).await;
        Ok(Some(bytes))
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

    /// A simple field write: a new version, and the object `read` (from the primary,
    /// after the write's commit) stored under it. The version is taken *before* the
    /// read: of two concurrent writers, the one that read the older row holds the
    /// older version, so its value — however late it arrives — is never current
    /// (bumping after the read let a slow writer store its older row under the newest
    /// version, to be served until the TTL). Answers what `read` answered; a failed or
    /// empty read leaves the object invalidated by the bump.
    pub async fn update_object<T: Serialize, E>(
        &self,
        key: &str,
        ttl: Duration,
        read: impl Future<Output = Result<Option<T>, E>>,
    ) -> Result<Option<T>, E> {
        if self.is_none() {
            return read.await;
        }
        let version = match self.incr(&format!("ver:{key}")).await {
            Ok(version) => Some(version),
            Err(error) => {
                tracing::warn!(%error, key, "could not bump a version; retrying until the cache is back");
                self.bump_later(format!("ver:{key}"));
                None
            }
        };
        let value = read.await;
        if let (Some(version), Ok(Some(object))) = (version, &value)
            && let Ok(bytes) = seal(version, ttl, object)
        {
            let _ = self.set(key, &bytes, ttl).await;
        }
        value
    }
}
