//! The cache against its real engines: an embedded file, Redis, two Memcached nodes.

// A panic is how a test reports a failure; helpers unwrap as tests do.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bakery_cache::objects::InFlight;
use bakery_cache::{Cache, CacheResult, Freshness};
use bakery_config::CacheUrl;

const TTL: Duration = Duration::from_secs(60);

async fn engines() -> Vec<Cache> {
    let file = bakery_testkit::temp_path("cache.db");
    let redis = bakery_testkit::redis_url();
    let memcached = bakery_testkit::memcached_nodes();
    let timeout = Duration::from_millis(500);
    vec![
        Cache::connect(&CacheUrl::Embedded(file), timeout, 1000, "test")
            .await
            .expect("embedded cache"),
        Cache::connect(&CacheUrl::Redis(redis.clone()), timeout, 1000, "test")
            .await
            .unwrap_or_else(|e| panic!("Redis is needed at {redis}: {e}")),
        Cache::connect(&CacheUrl::Memcached(memcached), timeout, 1000, "test")
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Memcached is needed on 127.0.0.1:11211 and :11212 (scripts/services.sh): {e}"
                )
            }),
    ]
}

fn unique(name: &str) -> String {
    format!("{name}:{:x}", rand::random::<u64>())
}

async fn read(cache: &Cache, key: &str, value: &str) -> (Option<String>, CacheResult) {
    read_at(cache, key, value, Freshness::Current).await
}

/// Reads `key` as fresh as `freshness` asks; a miss builds `value`.
async fn read_at(
    cache: &Cache,
    key: &str,
    value: &str,
    freshness: Freshness,
) -> (Option<String>, CacheResult) {
    let value = value.to_string();
    cache
        .object::<String, String, _, _>(&InFlight::default(), key, TTL, freshness, move || {
            let value = value.clone();
            async move { Ok(Some(value)) }
        })
        .await
        .unwrap()
}

/// A write's cache work: `key` updated in place to `value` (as read after the commit).
async fn update(cache: &Cache, key: &str, value: &str) {
    let read = async { Ok::<_, String>(Some(value.to_string())) };
    cache.update_object(key, TTL, read).await.unwrap();
}

#[tokio::test]
async fn a_miss_fills_and_the_next_read_hits() {
    for cache in engines().await {
        let key = unique("Product");
        assert_eq!(
            read(&cache, &key, "rye").await,
            (Some("rye".into()), CacheResult::Miss),
            "{}",
            cache.engine()
        );
        assert_eq!(
            read(&cache, &key, "not asked").await,
            (Some("rye".into()), CacheResult::Hit),
            "{}",
            cache.engine()
        );
    }
}

#[tokio::test]
async fn an_update_in_place_is_read_back_and_an_invalidation_rebuilds() {
    for cache in engines().await {
        let key = unique("Product");
        read(&cache, &key, "v1").await;
        update(&cache, &key, "v2").await;
        assert_eq!(
            read(&cache, &key, "not asked").await,
            (Some("v2".into()), CacheResult::Hit),
            "{}",
            cache.engine()
        );
        cache.invalidate_object(&key).await;
        assert_eq!(
            read(&cache, &key, "v3").await,
            (Some("v3".into()), CacheResult::Miss),
            "{}",
            cache.engine()
        );
    }
}

/// Two writers of one object, as two admins' concurrent price changes: the first
/// reads its row back before the second commits, and stores it after the second
/// stored its newer row. The older row must not be what readers get (it was, until
/// the version was taken before the read: `edge::a_burst_of_changes_renders_once`
/// once saw the API answer an older price than the database held).
#[tokio::test]
async fn of_two_concurrent_writers_the_older_read_never_wins() {
    for cache in engines().await {
        let key = unique("Product");
        read(&cache, &key, "v0").await;
        let (read_done, first_read) = tokio::sync::oneshot::channel::<()>();
        let (let_store, stored_later) = tokio::sync::oneshot::channel::<()>();
        // The first writer reads "older" back, and is held up before storing it...
        let first = {
            let (cache, key) = (cache.clone(), key.clone());
            tokio::spawn(async move {
                let read = async move {
                    let _ = read_done.send(());
                    let _ = stored_later.await;
                    Ok::<_, String>(Some("older".to_string()))
                };
                cache.update_object(&key, TTL, read).await.unwrap()
            })
        };
        first_read.await.expect("the first writer read its row");
        // ...while the second commits, reads "newer" back and stores it.
        update(&cache, &key, "newer").await;
        let_store.send(()).unwrap();
        assert_eq!(first.await.unwrap().as_deref(), Some("older"));
        let (value, _) = read(&cache, &key, "newer").await;
        assert_eq!(value.as_deref(), Some("newer"), "{}", cache.engine());
    }
}

#[tokio::test]
async fn a_slow_fill_that_started_before_a_write_never_brings_old_data_back() {
    for cache in engines().await {
        let key = unique("Product");
        // The key has a counter (it was written before), so the fill builds once.
        cache.incr(&format!("ver:{key}")).await.unwrap();
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let (started, building) = tokio::sync::oneshot::channel::<()>();
        let held = std::sync::Arc::new(tokio::sync::Mutex::new(Some((started, wait))));
        // The fill reads "old" from the database, then is held up...
        let slow = {
            let (cache, key) = (cache.clone(), key.clone());
            tokio::spawn(async move {
                let build = move || {
                    let held = held.clone();
                    async move {
                        if let Some((started, wait)) = held.lock().await.take() {
                            let _ = started.send(());
                            let _ = wait.await;
                        }
                        Ok::<_, String>(Some("old".to_string()))
                    }
                };
                cache
                    .object::<String, String, _, _>(
                        &InFlight::default(),
                        &key,
                        TTL,
                        Freshness::Current,
                        build,
                    )
                    .await
            })
        };
        building.await.expect("the fill started");
        // ...while a write lands and updates the cache in place.
        update(&cache, &key, "new").await;
        release.send(()).unwrap();
        let _ = slow.await.unwrap();
        for _ in 0..3 {
            let (value, _) = read(&cache, &key, "rebuilt").await;
            assert_ne!(
                value.as_deref(),
                Some("old"),
                "{}: the late fill must not win",
                cache.engine()
            );
        }
    }
}

#[tokio::test]
async fn concurrent_misses_in_one_process_build_once() {
    for cache in engines().await {
        let key = unique("Product");
        let builds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let inflight = InFlight::default();
        // The key has a counter (it was written before), so each build is one read.
        cache.incr(&format!("ver:{key}")).await.unwrap();
        let reads = (0..50).map(|_| {
            let (cache, key, builds, inflight) =
                (cache.clone(), key.clone(), builds.clone(), inflight.clone());
            async move {
                let build = move || {
                    let builds = builds.clone();
                    async move {
                        builds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, String>(Some("built".to_string()))
                    }
                };
                cache
                    .object::<String, String, _, _>(&inflight, &key, TTL, Freshness::Current, build)
                    .await
                    .unwrap()
            }
        });
        let results = futures::future::join_all(reads).await;
        assert!(results.iter().all(|(v, _)| v.as_deref() == Some("built")));
        assert_eq!(
            builds.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{}: one build for 50 misses",
            cache.engine()
        );
    }
}

#[tokio::test]
async fn query_results_are_invalidated_by_a_write_to_their_tables() {
    for cache in engines().await {
        let table = unique("products");
        let tables = [table.as_str()];
        let run = |v: i32| async move { Ok::<_, String>(v) };
        let q = |v| cache.query("one", &tables, &(1, 2), TTL, run(v));
        assert_eq!(q(1).await.unwrap(), (1, CacheResult::Miss));
        assert_eq!(
            q(2).await.unwrap(),
            (1, CacheResult::Hit),
            "{}",
            cache.engine()
        );
        cache.invalidate_tables(&[table.as_str()]).await;
        assert_eq!(
            q(3).await.unwrap(),
            (3, CacheResult::Miss),
            "{}",
            cache.engine()
        );
        let other_params = cache
            .query("one", &[table.as_str()], &(9, 9), TTL, run(4))
            .await
            .unwrap();
        assert_eq!(
            other_params,
            (4, CacheResult::Miss),
            "parameters are part of the key"
        );
    }
}

#[tokio::test]
async fn an_unreachable_cache_is_bypassed_not_failed() {
    let timeout = Duration::from_millis(200);
    // A node that accepts nothing: connecting fails, so start with a live one and point past it.
    let cache = Cache::connect(&CacheUrl::None, timeout, 1000, "test")
        .await
        .unwrap();
    assert_eq!(
        read(&cache, "Product:1", "db").await,
        (Some("db".into()), CacheResult::Bypass)
    );
    // A server that does not answer at start is not fatal either (processes come
    // up in any order): reads bypass it, and it reports itself down.
    for url in [
        CacheUrl::Redis("redis://127.0.0.1:1".into()),
        CacheUrl::Memcached(vec!["127.0.0.1:1".into()]),
    ] {
        let unreachable = Cache::connect(&url, timeout, 1000, "test")
            .await
            .expect("a cache that does not answer yet still opens");
        assert!(!unreachable.is_up().await);
        assert_eq!(
            read(&unreachable, "Product:1", "db").await,
            (Some("db".into()), CacheResult::Bypass),
            "{url:?}"
        );
    }
}

#[tokio::test]
async fn the_embedded_file_is_swept_of_expired_entries_and_kept_to_its_bound() {
    let file = std::env::temp_dir().join(format!(
        "bakery-cache-sweep-{}-{:x}.db",
        std::process::id(),
        rand::random::<u64>()
    ));
    let cache = Cache::connect(
        &CacheUrl::Embedded(file.clone()),
        Duration::from_secs(1),
        100,
        "test",
    )
    .await
    .expect("embedded cache");
    for i in 0..30 {
        cache
            .set(&format!("short:{i}"), b"x", Duration::from_millis(1))
            .await
            .unwrap();
    }
    cache
        .set("long", b"kept", Duration::from_secs(600))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(cache.sweep().await.unwrap(), 30, "every expired entry goes");
    assert_eq!(
        cache.get_many(&["long".to_string()]).await.unwrap()[0].as_deref(),
        Some(&b"kept"[..])
    );

    // Over the bound, the entries nearest to expiry go first; counters live longest.
    let version = cache.incr("ver:Product:1").await.unwrap();
    for i in 0..150u64 {
        cache
            .set(&format!("q:{i}"), b"r", Duration::from_secs(60 + i))
            .await
            .unwrap();
    }
    assert_eq!(
        cache.sweep().await.unwrap(),
        52,
        "1 + 1 + 150 entries, bounded to 100"
    );
    let kept = |key: &str| {
        let (cache, key) = (cache.clone(), key.to_string());
        async move { cache.get_many(&[key]).await.unwrap()[0].is_some() }
    };
    assert!(
        !kept("q:0").await && !kept("q:51").await,
        "the soonest to expire went"
    );
    assert!(kept("q:52").await && kept("q:149").await && kept("long").await);
    assert_eq!(
        cache
            .get_many(&["ver:Product:1".to_string()])
            .await
            .unwrap()[0]
            .as_deref(),
        Some(version.to_string().as_bytes())
    );
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn namespaces_keep_deployments_apart_on_one_server() {
    let redis =
        std::env::var("BAKERY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let file = bakery_testkit::temp_path("cache-ns.db");
    let urls = [
        CacheUrl::Embedded(file.clone()),
        CacheUrl::Redis(redis),
        CacheUrl::Memcached(bakery_testkit::memcached_nodes()),
    ];
    let timeout = Duration::from_millis(500);
    for url in urls {
        let a = Cache::connect(&url, timeout, 1000, &unique("a"))
            .await
            .expect("cache");
        let b = Cache::connect(&url, timeout, 1000, &unique("b"))
            .await
            .expect("cache");
        let key = unique("Product");
        assert_eq!(
            read(&a, &key, "from a").await,
            (Some("from a".into()), CacheResult::Miss)
        );
        assert_eq!(
            read(&a, &key, "unused").await,
            (Some("from a".into()), CacheResult::Hit),
            "{}",
            a.engine()
        );
        assert_eq!(
            read(&b, &key, "from b").await,
            (Some("from b".into()), CacheResult::Miss),
            "{}: b never sees a's object",
            b.engine()
        );
    }
    let _ = std::fs::remove_file(&file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_object_is_refreshed_before_it_expires() {
    // Memcached counts expiry in whole seconds, too coarse for a two-second life.
    for cache in engines()
        .await
        .into_iter()
        .filter(|c| c.engine() != "memcached")
    {
        let key = unique("Product");
        let ttl = Duration::from_secs(2);
        let inflight = InFlight::default();
        let builds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut misses = 0;
        let started = std::time::Instant::now();
        // Reads every 25 ms for 4.5 s: without refreshing ahead the object would miss
        // at 0, ~2 and ~4 s.
        while started.elapsed() < Duration::from_millis(4500) {
            let builds = builds.clone();
            let build = move || {
                let builds = builds.clone();
                async move {
                    builds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok::<_, String>(Some("fresh".to_string()))
                }
            };
            let (value, outcome) = cache
                .object::<String, String, _, _>(&inflight, &key, ttl, Freshness::Current, build)
                .await
                .unwrap();
            assert_eq!(value.as_deref(), Some("fresh"));
            misses += usize::from(outcome == CacheResult::Miss);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let builds = builds.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            misses < 3,
            "{}: {misses} misses; a hot object should not expire under its readers",
            cache.engine()
        );
        assert!(
            builds >= 2,
            "{}: refreshed in the background ({builds} builds)",
            cache.engine()
        );
    }
}

#[tokio::test]
async fn a_value_of_another_shape_is_rebuilt_not_an_error() {
    for cache in engines().await {
        let key = unique("Product");
        // An older release stored the object as a string; this one reads a number.
        assert_eq!(
            read(&cache, &key, "old shape").await.0.as_deref(),
            Some("old shape")
        );
        let inflight = InFlight::default();
        let now = cache
            .object::<u64, String, _, _>(&inflight, &key, TTL, Freshness::Current, || async {
                Ok(Some(42))
            })
            .await;
        assert_eq!(
            now,
            Ok((Some(42), CacheResult::Miss)),
            "{}: rebuilt from the database",
            cache.engine()
        );
        let again = cache
            .object::<u64, String, _, _>(&inflight, &key, TTL, Freshness::Current, || async {
                Ok(Some(0))
            })
            .await;
        assert_eq!(
            again,
            Ok((Some(42), CacheResult::Hit)),
            "{}: and stored for everyone",
            cache.engine()
        );
    }
}

/// A read of `key` whose build answers `value`, counting its builds in `builds`.
async fn read_counted(
    cache: &Cache,
    key: &str,
    value: Option<&str>,
    builds: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> (Option<String>, CacheResult) {
    let (value, builds) = (value.map(str::to_string), builds.clone());
    cache
        .object::<String, String, _, _>(
            &InFlight::default(),
            key,
            TTL,
            Freshness::Current,
            move || {
                builds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let value = value.clone();
                async move { Ok(value) }
            },
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn an_unknown_id_is_cached_briefly_as_not_found_and_mints_no_counter() {
    use std::sync::atomic::Ordering::SeqCst;
    for cache in engines().await {
        let engine = cache.engine();
        let key = unique("Product");
        let builds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        assert_eq!(
            read_counted(&cache, &key, None, &builds).await,
            (None, CacheResult::Miss)
        );
        for _ in 0..3 {
            assert_eq!(
                read_counted(&cache, &key, None, &builds).await,
                (None, CacheResult::Hit),
                "{engine}: the absence is a hit"
            );
        }
        assert_eq!(builds.load(SeqCst), 1, "{engine}: one database read");
        let counter = cache.get_many(&[format!("ver:{key}")]).await.unwrap();
        assert_eq!(counter[0], None, "{engine}: no counter minted");

        // The object is created: its write ends the "not found" at once.
        update(&cache, &key, "made").await;
        assert_eq!(
            read_counted(&cache, &key, None, &builds).await,
            (Some("made".into()), CacheResult::Hit),
            "{engine}"
        );

        // Deleted: absent again, under the key's counter, and a hit from then on.
        cache.invalidate_object(&key).await;
        assert_eq!(
            read_counted(&cache, &key, None, &builds).await,
            (None, CacheResult::Miss)
        );
        assert_eq!(
            read_counted(&cache, &key, Some("not asked"), &builds).await,
            (None, CacheResult::Hit),
            "{engine}"
        );
    }
}

#[tokio::test]
async fn a_key_without_a_counter_that_exists_is_stored_under_a_new_counter() {
    use std::sync::atomic::Ordering::SeqCst;
    for cache in engines().await {
        let engine = cache.engine();
        let key = unique("Product");
        let builds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        assert_eq!(
            read_counted(&cache, &key, Some("rye"), &builds).await,
            (Some("rye".into()), CacheResult::Miss)
        );
        // Read once to learn it exists, once more under the counter made in between.
        assert_eq!(builds.load(SeqCst), 2, "{engine}");
        let counter = cache.get_many(&[format!("ver:{key}")]).await.unwrap();
        assert!(counter[0].is_some(), "{engine}: a counter now");
        assert_eq!(
            read_counted(&cache, &key, Some("not asked"), &builds).await,
            (Some("rye".into()), CacheResult::Hit),
            "{engine}"
        );
    }
}

#[tokio::test]
async fn a_value_too_large_for_the_engine_is_served_uncached_and_counted() {
    let metrics = bakery_telemetry::Metrics::install();
    let too_large = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("bakery_cache_too_large_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    for cache in engines().await {
        let engine = cache.engine();
        let key = unique("Product");
        cache.incr(&format!("ver:{key}")).await.unwrap();
        let big = "x".repeat(cache.max_value_bytes() + 1);
        let before = too_large(&metrics.render());
        let builds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..2 {
            let (value, outcome) = read_counted(&cache, &key, Some(&big), &builds).await;
            assert_eq!(value.map(|v| v.len()), Some(big.len()), "{engine}: served");
            assert_eq!(outcome, CacheResult::Miss, "{engine}: never stored");
        }
        assert_eq!(
            too_large(&metrics.render()) - before,
            2.0,
            "{engine}: each refusal counted"
        );
        // A value within the limit is still stored.
        let small = unique("Product");
        read(&cache, &small, "rye").await;
        assert_eq!(
            read(&cache, &small, "not asked").await.1,
            CacheResult::Hit,
            "{engine}"
        );
    }
}

#[tokio::test]
async fn an_abandoned_fill_still_ends_releases_what_it_holds_and_stores_its_value() {
    for cache in engines().await {
        let engine = cache.engine();
        let key = unique("Product");
        cache.incr(&format!("ver:{key}")).await.unwrap();
        // One permit: the database connection the fill holds while it reads.
        let connections = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let inflight = InFlight::default();
        let build = {
            let connections = connections.clone();
            move || {
                let connections = connections.clone();
                async move {
                    let _connection = connections.acquire_owned().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, String>(Some("slow".to_string()))
                }
            }
        };
        // Its only request gives up long before the fill ends (a request timeout).
        let abandoned = tokio::time::timeout(
            Duration::from_millis(50),
            cache.object::<String, String, _, _>(&inflight, &key, TTL, Freshness::Current, build),
        )
        .await;
        assert!(abandoned.is_err(), "{engine}: the request gave up");
        assert!(
            bakery_testkit::eventually(Duration::from_secs(3), async || {
                connections.available_permits() == 1
            })
            .await,
            "{engine}: the abandoned fill ended and let its connection go"
        );
        assert_eq!(
            cache
                .object::<String, String, _, _>(
                    &inflight,
                    &key,
                    TTL,
                    Freshness::Current,
                    || async { Ok(Some("not asked".to_string())) }
                )
                .await
                .unwrap(),
            (Some("slow".into()), CacheResult::Hit),
            "{engine}: and stored what it built"
        );
    }
}

#[tokio::test]
async fn failed_invalidations_are_owed_once_per_key_and_made_when_the_cache_is_back() {
    let redis = bakery_testkit::redis_url();
    let target: std::net::SocketAddr = redis
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|_| panic!("the test Redis URL is redis://host:port, not {redis}"));
    let proxy = bakery_testkit::proxy::CuttableProxy::start(target).await;
    let namespace = unique("ns");
    // Short: every write during the cut waits this long for the cache.
    let timeout = Duration::from_millis(20);
    let through_proxy = Cache::connect(
        &CacheUrl::Redis(format!("redis://{}", proxy.addr)),
        timeout,
        1000,
        &namespace,
    )
    .await
    .unwrap();
    let direct = Cache::connect(&CacheUrl::Redis(redis), timeout, 1000, &namespace)
        .await
        .unwrap();
    let key = unique("Product");
    read(&through_proxy, &key, "before").await;
    assert_eq!(read(&direct, &key, "x").await.1, CacheResult::Hit);

    proxy.cut();
    for _ in 0..100 {
        through_proxy.invalidate_object(&key).await;
    }
    for i in 0..10 {
        through_proxy.invalidate_tables(&[&format!("t{i}")]).await;
    }
    assert_eq!(
        through_proxy.pending_bumps(),
        11,
        "100 failed writes to one key owe one bump, 10 tables one each"
    );

    proxy.restore().await;
    assert!(
        bakery_testkit::eventually(Duration::from_secs(10), async || {
            through_proxy.pending_bumps() == 0
        })
        .await,
        "every owed bump made once the cache is back"
    );
    assert_eq!(
        read(&direct, &key, "after").await,
        (Some("after".into()), CacheResult::Miss),
        "the value cached before the writes is not served again"
    );
}

async fn read_near(cache: &Cache, key: &str, value: &str) -> (Option<String>, CacheResult) {
    read_at(cache, key, value, Freshness::Near).await
}

/// Near reads of `key` on `cache` until one answers `expected` (an invalidation push
/// is on its way; a miss builds `built`); panics after two seconds.
async fn until_near_reads(cache: &Cache, key: &str, expected: &str, built: &str) {
    let answered = bakery_testkit::eventually(Duration::from_secs(2), async || {
        read_near(cache, key, built).await.0.as_deref() == Some(expected)
    })
    .await;
    assert!(answered, "the near copy never answered {expected:?}");
}

/// Two clones of one deployment on one Redis, each with its near cache.
async fn two_near_clones() -> (Cache, Cache) {
    let redis = bakery_testkit::redis_url();
    let namespace = unique("near");
    let connect = || async {
        Cache::connect(
            &CacheUrl::Redis(redis.clone()),
            Duration::from_millis(500),
            1000,
            &namespace,
        )
        .await
        .unwrap_or_else(|e| panic!("Redis is needed at {redis}: {e}"))
        .with_near_cache(100)
    };
    (connect().await, connect().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_near_cache_answers_from_memory_and_drops_what_changes_anywhere() {
    let (a, b) = two_near_clones().await;
    let key = unique("Product");
    assert_eq!(
        read_near(&a, &key, "v1").await,
        (Some("v1".into()), CacheResult::Miss)
    );
    assert_eq!(
        read_near(&a, &key, "unused").await,
        (Some("v1".into()), CacheResult::Hit),
        "read from Redis (the fill forgot what it wrote)"
    );
    // The miss's reads told Redis to track both keys, so the fill's own writes
    // come back as invalidation pushes; one that arrives after a later read has
    // marked its keys clears the mark, as any invalidation must, and that read's
    // answer is not kept. So the near copy is there once those pushes are in — on a
    // loaded machine, after the read above.
    let held = bakery_testkit::eventually(Duration::from_secs(2), async || {
        read_near(&a, &key, "unused").await.0.as_deref() == Some("v1")
            && a.near_stats().unwrap().held == 2
    })
    .await;
    let before = a.near_stats().unwrap();
    assert!(held, "the version and the object held near: {before:?}");
    assert_eq!(
        read_near(&a, &key, "unused").await,
        (Some("v1".into()), CacheResult::Hit)
    );
    assert_eq!(
        a.near_stats().unwrap().hits,
        before.hits + 1,
        "answered from memory"
    );

    // Another clone writes: a current read sees it at once, a near one once the push came.
    update(&b, &key, "v2").await;
    assert_eq!(read(&a, &key, "unused").await.0.as_deref(), Some("v2"));
    until_near_reads(&a, &key, "v2", "rebuilt").await;
    // This clone writes: its own near copy goes at once, without waiting for the push.
    update(&a, &key, "v3").await;
    assert_eq!(read_near(&a, &key, "unused").await.0.as_deref(), Some("v3"));
    // An invalidation elsewhere: rebuilt here.
    b.invalidate_object(&key).await;
    until_near_reads(&a, &key, "rebuilt", "rebuilt").await;
    // Memcached and the embedded file have no invalidation pushes: no near cache.
    let memcached = Cache::connect(
        &CacheUrl::Memcached(bakery_testkit::memcached_nodes()),
        Duration::from_millis(500),
        1000,
        "test",
    )
    .await
    .unwrap()
    .with_near_cache(100);
    assert!(memcached.near_stats().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_near_copy_outlives_a_burst_of_writes_elsewhere() {
    let (a, b) = two_near_clones().await;
    let key = unique("Product");
    // What the database holds: builds read it, the writer changes it before it
    // updates the cache (a write commits, then does its cache work).
    let database = std::sync::Arc::new(std::sync::Mutex::new("v0".to_string()));
    let from_database =
        |cache: Cache, key: String, database: std::sync::Arc<std::sync::Mutex<String>>| async move {
            cache
                .object::<String, String, _, _>(
                    &InFlight::default(),
                    &key,
                    TTL,
                    Freshness::Near,
                    move || {
                        let value = database.lock().unwrap().clone();
                        async move { Ok(Some(value)) }
                    },
                )
                .await
                .unwrap()
                .0
        };
    from_database(a.clone(), key.clone(), database.clone()).await;
    // Readers on one clone while the other writes fifty versions: answers that cross
    // invalidations on the wire must not be kept.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (a, key, stop, database) = (a.clone(), key.clone(), stop.clone(), database.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    from_database(a.clone(), key.clone(), database.clone()).await;
                    // A hit from memory never waits: let the writer run.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for i in 1..=50 {
        let value = format!("v{i}");
        *database.lock().unwrap() = value.clone();
        update(&b, &key, &value).await;
        tokio::task::yield_now().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    // A stale copy held from the burst would answer forever; a rebuild reads v50.
    until_near_reads(&a, &key, "v50", "v50").await;
    for _ in 0..20 {
        assert_eq!(read_near(&a, &key, "v50").await.0.as_deref(), Some("v50"));
    }
    let (current, _) = read(&a, &key, "v50").await;
    assert_eq!(
        current.as_deref(),
        Some("v50"),
        "Redis holds the last write too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tracked_connection_empties_the_near_cache_and_is_opened_again() {
    let (a, b) = two_near_clones().await;
    let key = unique("Product");
    read_near(&a, &key, "v1").await;
    read_near(&a, &key, "unused").await;
    let tracked = a
        .near_stats()
        .unwrap()
        .connection
        .expect("a tracked connection");
    let mut admin = redis::Client::open(bakery_testkit::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(tracked)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    // Written while that connection is gone: its push can never come.
    update(&b, &key, "v2").await;
    until_near_reads(&a, &key, "v2", "rebuilt").await;
    let now = a.near_stats().unwrap();
    assert_ne!(
        now.connection,
        Some(tracked),
        "a new tracked connection: {now:?}"
    );
}
