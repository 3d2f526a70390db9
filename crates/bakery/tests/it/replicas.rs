//! Primary and replica: reads go to a replica only when it has the reader's own
//! writes; a dead replica costs no read; a dead primary costs writes, not reads.
//! These run with the cache off (`BAKERY_CACHE_URL=none`): they watch where the
//! database reads go, and a cache in front would answer most of them.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use crate::harness::{
    self, Up, client, error_code, eventually, fresh_replicated_database, log_in, replica_admin_url,
    replica_url_for,
};
use crate::proxy::CuttableProxy;

fn db_role(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-db")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn price_and_role(http: &reqwest::Client, url: &str, cookie: Option<&str>) -> (i64, String) {
    let mut request = http.get(url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request.send().await.unwrap();
    if response.status() != 200 {
        let status = response.status();
        panic!(
            "read failed: {status} {}",
            response.text().await.unwrap_or_default()
        );
    }
    let role = db_role(&response);
    let body: serde_json::Value = response.json().await.unwrap();
    (body["price_cents"].as_i64().unwrap(), role)
}

/// The database engines with replicas: a fresh database on each's shared primary
/// and the URL of the same database on its replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Postgres,
    MariaDb,
}

impl Engine {
    async fn fresh(self) -> (String, String) {
        match self {
            Self::Postgres => {
                let url = fresh_replicated_database().await;
                let replica = replica_url_for(&url);
                (url, replica)
            }
            Self::MariaDb => {
                let url = harness::fresh_mariadb_database().await;
                let replica = harness::mariadb_replica_url_for(&url);
                (url, replica)
            }
        }
    }
}

/// Stops the shared replica applying what it receives until dropped (also when a
/// test fails): PostgreSQL's WAL replay paused, MariaDB's SQL thread stopped.
struct ReplayPaused(Engine);

impl ReplayPaused {
    fn start(engine: Engine) -> Self {
        match engine {
            Engine::Postgres => psql_on_replica("SELECT pg_wal_replay_pause()"),
            Engine::MariaDb => mariadb_on_replica("STOP SLAVE SQL_THREAD"),
        }
        Self(engine)
    }
}

impl Drop for ReplayPaused {
    fn drop(&mut self) {
        match self.0 {
            Engine::Postgres => psql_on_replica("SELECT pg_wal_replay_resume()"),
            Engine::MariaDb => mariadb_on_replica("START SLAVE SQL_THREAD"),
        }
    }
}

fn psql_on_replica(sql: &str) {
    let status = std::process::Command::new("psql")
        .args([replica_admin_url().as_str(), "-qAtc", sql])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("psql is needed");
    assert!(status.success(), "{sql} on the replica");
}

fn mariadb_on_replica(sql: &str) {
    let replica = harness::mariadb_replica_admin_url();
    let addr = addr_of(&replica);
    let status = std::process::Command::new("mariadb")
        .args([
            "-h",
            &addr.ip().to_string(),
            "-P",
            &addr.port().to_string(),
            "-ubakery",
            "-pbakery",
            "-e",
            sql,
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("the mariadb client is needed");
    assert!(status.success(), "{sql} on the MariaDB replica");
}

fn addr_of(url: &str) -> SocketAddr {
    let host_port = url.split('@').nth(1).unwrap().split('/').next().unwrap();
    host_port.parse().unwrap()
}

async fn new_product(http: &reqwest::Client, up: &Up, admin: &str) -> String {
    let created = http
        .post(up.url("/api/products"))
        .header("cookie", admin)
        .json(&json!({"name": "Rye", "price_cents": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    up.url(&format!("/api/products/{id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_while_the_replica_is_paused() {
    read_your_writes(Engine::Postgres).await;
}

/// MariaDB: the writer's reads wait for the replica to have applied the write's
/// GTID; with the replica's SQL thread stopped, none of them is stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_while_the_replica_is_paused_mariadb() {
    read_your_writes(Engine::MariaDb).await;
}

async fn read_your_writes(engine: Engine) {
    let (url, replica) = engine.fresh().await;
    let up = Up::start(
        vec![
            ("BAKERY_CACHE_URL".into(), "none".into()),
            ("BAKERY_DATABASE_URL".into(), url.clone()),
            ("BAKERY_REPLICA_URLS".into(), replica),
        ],
        2,
    );
    let http = client();
    let admin = log_in(&http, &up.base, "admin", "admin-password").await;
    let product = new_product(&http, &up, &admin).await;
    let from_replica = eventually(Duration::from_secs(10), async || {
        price_and_role(&http, &product, None).await == (100, "replica".into())
    })
    .await;
    assert!(
        from_replica,
        "anonymous reads go to the replica once it has replayed the product"
    );

    let paused = ReplayPaused::start(engine);
    let changed = http
        .patch(&product)
        .header("cookie", &admin)
        .json(&json!({"price_cents": 200}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    assert_eq!(db_role(&changed), "primary");
    for i in 0..100 {
        let (price, role) = price_and_role(&http, &product, Some(&admin)).await;
        assert_eq!(price, 200, "read {i} by the writer shows the new price");
        assert_eq!(role, "primary", "the paused replica is behind the writer");
    }
    let (stale, role) = price_and_role(&http, &product, None).await;
    assert_eq!(
        (stale, role.as_str()),
        (100, "replica"),
        "others may still be served by the replica"
    );
    // The operations view shows it happening: the replica behind in bytes and in
    // time, and the writer's reads sent to the primary for freshness.
    let behind = eventually(Duration::from_secs(5), async || {
        let picture = crate::ops::snapshot(&up, &admin).await;
        let replica = &picture["database"]["replicas"][0];
        replica["lag_bytes"].as_f64().unwrap_or(0.0) > 0.0
            && replica["lag_seconds"].as_f64().unwrap_or(0.0) > 0.0
            && picture["database"]["fresh_reads"].as_f64().unwrap_or(0.0) >= 100.0
    })
    .await;
    assert!(
        behind,
        "/ops shows the paused replica's lag and the fresh reads: {}",
        crate::ops::snapshot(&up, &admin).await["database"]
    );

    drop(paused);
    let caught_up = eventually(Duration::from_secs(10), async || {
        price_and_role(&http, &product, None).await == (200, "replica".into())
    })
    .await;
    assert!(
        caught_up,
        "after resume, anonymous reads go to the replica again and see the change"
    );
    let writer_on_replica = eventually(Duration::from_secs(10), async || {
        price_and_role(&http, &product, Some(&admin)).await == (200, "replica".into())
    })
    .await;
    assert!(
        writer_on_replica,
        "the writer's reads return to the replica once it has caught up"
    );
    let caught_up_in_view = eventually(Duration::from_secs(5), async || {
        let picture = crate::ops::snapshot(&up, &admin).await;
        let database = &picture["database"];
        database["replicas"][0]["lag_bytes"] == 0.0
            && database["replicas"][0]["up"] == true
            && database["replica_share"].as_f64().unwrap_or(0.0) > 0.0
    })
    .await;
    assert!(caught_up_in_view, "/ops shows the replica caught up");
    let mut metrics = String::new();
    for clone in up.clones() {
        metrics += &http
            .get(format!("http://{}/metrics", clone.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    assert!(
        metrics.contains("bakery_db_queries_total{role=\"replica\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("bakery_db_queries_total{role=\"primary\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_costs_no_failed_read() {
    stopped_replica(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_costs_no_failed_read_mariadb() {
    stopped_replica(Engine::MariaDb).await;
}

async fn stopped_replica(engine: Engine) {
    let (url, replica) = engine.fresh().await;
    let proxy = CuttableProxy::start(addr_of(&replica)).await;
    let via_proxy = replica.replace(&addr_of(&replica).to_string(), &proxy.addr.to_string());
    let up = Up::start(
        vec![
            ("BAKERY_CACHE_URL".into(), "none".into()),
            ("BAKERY_DATABASE_URL".into(), url),
            ("BAKERY_REPLICA_URLS".into(), via_proxy),
        ],
        2,
    );
    let http = client();
    let admin = log_in(&http, &up.base, "admin", "admin-password").await;
    let product = new_product(&http, &up, &admin).await;
    assert!(
        eventually(Duration::from_secs(10), async || price_and_role(
            &http, &product, None
        )
        .await
        .1 == "replica")
        .await
    );

    proxy.cut();
    for _ in 0..50 {
        let (price, _) = price_and_role(&http, &product, None).await;
        assert_eq!(price, 100);
    }
    assert_eq!(
        price_and_role(&http, &product, None).await.1,
        "primary",
        "with the replica gone, reads go to the primary"
    );

    proxy.restore().await;
    assert!(
        eventually(Duration::from_secs(10), async || price_and_role(
            &http, &product, None
        )
        .await
        .1 == "replica")
        .await,
        "the replica returns to rotation by itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_stopped_reads_use_the_replica_and_writes_get_503() {
    stopped_primary(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_stopped_reads_use_the_replica_and_writes_get_503_mariadb() {
    stopped_primary(Engine::MariaDb).await;
}

async fn stopped_primary(engine: Engine) {
    let (url, replica) = engine.fresh().await;
    let proxy = CuttableProxy::start(addr_of(&url)).await;
    let via_proxy = url.replace(&addr_of(&url).to_string(), &proxy.addr.to_string());
    let up = Up::start(
        vec![
            ("BAKERY_CACHE_URL".into(), "none".into()),
            ("BAKERY_DATABASE_URL".into(), via_proxy),
            ("BAKERY_REPLICA_URLS".into(), replica),
        ],
        2,
    );
    let http = client();
    let admin = log_in(&http, &up.base, "admin", "admin-password").await;
    let product = new_product(&http, &up, &admin).await;
    assert!(
        eventually(Duration::from_secs(10), async || price_and_role(
            &http, &product, None
        )
        .await
        .1 == "replica")
        .await
    );

    proxy.cut();
    for _ in 0..20 {
        assert_eq!(
            price_and_role(&http, &product, None).await,
            (100, "replica".into())
        );
        assert_eq!(
            price_and_role(&http, &product, Some(&admin)).await,
            (100, "replica".into())
        );
    }
    let write = http
        .patch(&product)
        .header("cookie", &admin)
        .json(&json!({"price_cents": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 503);
    assert_eq!(error_code(write).await, "primary_unavailable");

    proxy.restore().await;
    let recovered = eventually(Duration::from_secs(15), async || {
        let r = http
            .patch(&product)
            .header("cookie", &admin)
            .json(&json!({"price_cents": 300}))
            .send()
            .await
            .unwrap();
        r.status() == 200
    })
    .await;
    assert!(
        recovered,
        "writes work again once the primary is back, without a restart"
    );
    assert_eq!(price_and_role(&http, &product, Some(&admin)).await.0, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_lagging_beyond_the_bound_leaves_the_rotation_for_everyone() {
    lagging(Engine::Postgres).await;
}

/// MariaDB's lag is counted in transactions (GTID sequence numbers): a bound of 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_lagging_beyond_the_bound_leaves_the_rotation_for_everyone_mariadb() {
    lagging(Engine::MariaDb).await;
}

async fn lagging(engine: Engine) {
    let (url, replica) = engine.fresh().await;
    let up = Up::start(
        vec![
            ("BAKERY_CACHE_URL".into(), "none".into()),
            ("BAKERY_DATABASE_URL".into(), url.clone()),
            ("BAKERY_REPLICA_URLS".into(), replica),
            ("BAKERY_REPLICA_MAX_LAG_BYTES".into(), "1".into()),
        ],
        1,
    );
    let http = client();
    let admin = log_in(&http, &up.base, "admin", "admin-password").await;
    let product = new_product(&http, &up, &admin).await;
    assert!(
        eventually(Duration::from_secs(10), async || price_and_role(
            &http, &product, None
        )
        .await
        .1 == "replica")
        .await
    );

    let paused = ReplayPaused::start(engine);
    let changed = http
        .patch(&product)
        .header("cookie", &admin)
        .json(&json!({"price_cents": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let left = eventually(Duration::from_secs(5), async || {
        price_and_role(&http, &product, None).await == (5, "primary".into())
    })
    .await;
    assert!(
        left,
        "a replica behind by more than the bound serves nobody, not even anonymous readers"
    );
    drop(paused);
    assert!(
        eventually(Duration::from_secs(10), async || price_and_role(
            &http, &product, None
        )
        .await
            == (5, "replica".into()))
        .await,
        "caught up, it returns"
    );
}
