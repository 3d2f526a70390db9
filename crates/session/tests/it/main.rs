//! The session store against its real engines: a SQLite file and a Redis server.

// A panic is how a test reports a failure; helpers unwrap as tests do.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bakery_config::SessionUrl;
use bakery_session::{Lifetimes, SessionId, SessionStore};

const LONG: Duration = Duration::from_secs(3600);

use bakery_testkit::redis_url;

fn sqlite_path() -> std::path::PathBuf {
    bakery_testkit::temp_path("sessions.db")
}

async fn stores(lifetimes: Lifetimes) -> Vec<SessionStore> {
    let sqlite = SessionStore::connect(&SessionUrl::Sqlite(sqlite_path()), lifetimes, "test")
        .await
        .expect("SQLite store");
    let redis = SessionStore::connect(&SessionUrl::Redis(redis_url()), lifetimes, "test")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Redis is needed at {} (set BAKERY_TEST_REDIS_URL): {e}",
                redis_url()
            )
        });
    vec![sqlite, redis]
}

#[tokio::test]
async fn a_session_lives_until_it_is_destroyed() {
    for store in stores(Lifetimes {
        idle: LONG,
        absolute: LONG,
    })
    .await
    {
        let id = store.create(42).await.unwrap();
        let session = store
            .load(&id)
            .await
            .unwrap()
            .expect("a fresh session loads");
        assert_eq!(session.user_id, 42, "{}", store.engine());
        let other = store.create(42).await.unwrap();
        assert_ne!(id, other, "every session gets its own id");
        store.destroy(&id).await.unwrap();
        assert!(
            store.load(&id).await.unwrap().is_none(),
            "{}: destroyed means gone",
            store.engine()
        );
        assert!(
            store.load(&other).await.unwrap().is_some(),
            "{}: the other session is untouched",
            store.engine()
        );
    }
}

#[tokio::test]
async fn an_idle_session_expires() {
    for store in stores(Lifetimes {
        idle: Duration::ZERO,
        absolute: LONG,
    })
    .await
    {
        let id = store.create(7).await.unwrap();
        assert!(
            store.load(&id).await.unwrap().is_none(),
            "{}: idle timeout of zero",
            store.engine()
        );
    }
}

#[tokio::test]
async fn a_session_ends_at_its_absolute_timeout_even_when_used() {
    for store in stores(Lifetimes {
        idle: LONG,
        absolute: Duration::ZERO,
    })
    .await
    {
        let id = store.create(7).await.unwrap();
        assert!(
            store.load(&id).await.unwrap().is_none(),
            "{}: absolute timeout of zero",
            store.engine()
        );
    }
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_no_session() {
    for store in stores(Lifetimes {
        idle: LONG,
        absolute: LONG,
    })
    .await
    {
        let unknown = SessionId::from_cookie(&"A".repeat(43)).unwrap();
        assert!(store.load(&unknown).await.unwrap().is_none());
    }
    assert!(SessionId::from_cookie("short").is_none());
    assert!(SessionId::from_cookie(&"/".repeat(43)).is_none());
}

#[tokio::test]
async fn only_a_digest_of_the_id_is_stored() {
    let path = sqlite_path();
    let store = SessionStore::connect(
        &SessionUrl::Sqlite(path.clone()),
        Lifetimes {
            idle: LONG,
            absolute: LONG,
        },
        "test",
    )
    .await
    .unwrap();
    let id = store.create(9).await.unwrap();
    let bytes = std::fs::read(&path).unwrap_or_default();
    let wal = std::fs::read(path.with_extension("db-wal")).unwrap_or_default();
    let needle = id.as_str().as_bytes();
    let found = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(
        !found(&bytes) && !found(&wal),
        "the raw session id never reaches the store"
    );
}

#[tokio::test]
async fn a_session_belongs_to_its_namespace() {
    let lifetimes = Lifetimes {
        idle: LONG,
        absolute: LONG,
    };
    let path = sqlite_path();
    for url in [
        SessionUrl::Sqlite(path.clone()),
        SessionUrl::Redis(redis_url()),
    ] {
        let ours = SessionStore::connect(&url, lifetimes, "instance-a")
            .await
            .expect("store");
        let theirs = SessionStore::connect(&url, lifetimes, "instance-b")
            .await
            .expect("store");
        let id = ours.create(7).await.unwrap();
        assert!(
            theirs.load(&id).await.unwrap().is_none(),
            "{}: another database's session is unknown here",
            ours.engine()
        );
        assert_eq!(ours.load(&id).await.unwrap().map(|s| s.user_id), Some(7));
    }
    let _ = std::fs::remove_file(&path);
}
