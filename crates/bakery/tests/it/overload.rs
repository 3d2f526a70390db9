//! A backend that cannot take more work costs a 503 with the contract's error, never
//! a 500: here, a PostgreSQL that refuses new connections (too many clients).

use std::time::Duration;

use sqlx::Connection;

use crate::harness::{Up, client, eventually, fresh_postgres_database, postgres_admin_url};

async fn admin_sql(sql: String) {
    let mut conn = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .expect("PostgreSQL admin connection");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("admin statement");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_refusing_connections_answers_503_never_500() {
    // A role of its own (superusers ignore connection limits) owning a fresh database.
    let url = fresh_postgres_database().await;
    let (base, database) = url.rsplit_once('/').unwrap();
    let role = format!("bakery_limited_{:012x}", rand::random::<u64>() >> 16);
    admin_sql(format!("CREATE ROLE {role} LOGIN")).await;
    admin_sql(format!("ALTER DATABASE {database} OWNER TO {role}")).await;
    let host = base.rsplit('@').next().unwrap();
    let role_url = format!("postgres://{role}@{host}/{database}");
    let env = vec![
        ("BAKERY_DATABASE_URL".to_string(), role_url),
        ("BAKERY_CACHE_URL".to_string(), "none".to_string()),
    ];
    let mut up = Up::start_with(env, 2, &[]);
    let http = client();
    let product = up.url("/api/products/1");
    assert_eq!(
        http.get(&product).send().await.unwrap().status(),
        200,
        "the demo product is there"
    );

    // No connection for the role from now on, and every open one closed: the clones'
    // pools must reconnect and are refused.
    admin_sql(format!("ALTER ROLE {role} CONNECTION LIMIT 0")).await;
    admin_sql(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
    ))
    .await;
    let reads = (0..60).map(|_| {
        let (http, product) = (http.clone(), product.clone());
        async move {
            let r = http.get(&product).send().await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (
                status,
                body["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        }
    });
    let answers = futures::future::join_all(reads).await;
    for (status, code) in &answers {
        assert!(
            *status == 200 || (*status == 503 && code == "database_unavailable"),
            "{status} {code}"
        );
    }
    assert!(
        answers.iter().any(|(s, _)| *s == 503),
        "some reads were refused a connection: {answers:?}"
    );

    // Given connections again, the clones serve by themselves.
    admin_sql(format!("ALTER ROLE {role} CONNECTION LIMIT -1")).await;
    let served = eventually(Duration::from_secs(10), async || {
        futures::future::join_all((0..10).map(|_| http.get(&product).send()))
            .await
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.status() == 200))
    })
    .await;
    assert!(
        served,
        "reads recover once the database takes connections again"
    );
    up.terminate(Duration::from_secs(20));
    admin_sql(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).await;
    admin_sql(format!("DROP ROLE IF EXISTS {role}")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clone_keeps_to_its_database_pool_size() {
    let url = fresh_postgres_database().await;
    let database = url.rsplit_once('/').unwrap().1.to_string();
    let env = vec![
        ("BAKERY_DATABASE_URL".to_string(), url.clone()),
        ("BAKERY_CACHE_URL".to_string(), "none".to_string()),
        ("BAKERY_DATABASE_POOL_SIZE".to_string(), "2".to_string()),
    ];
    let mut up = Up::start_with(env, 1, &[]);
    let http = client();
    // 40 concurrent reads of a product assembled from five concurrent queries each.
    let reads = (0..40).map(|_| http.get(up.url("/api/products/1")).send());
    let statuses: Vec<u16> = futures::future::join_all(reads)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert!(
        statuses.iter().all(|&s| s == 200),
        "two connections serve them all, in turn: {statuses:?}"
    );
    let mut conn = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .expect("PostgreSQL admin connection");
    let (open,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'web-1'
             AND query NOT LIKE 'LISTEN%'",
    )
    .bind(&database)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    // (Its connection for the broker's LISTEN is not part of the pool.)
    assert!(
        (1..=2).contains(&open),
        "{open} connections for a pool of 2"
    );
    up.terminate(Duration::from_secs(20));
}
