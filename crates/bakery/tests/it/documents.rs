//! Path 2 of the lesson (issue 28): de-normalised product documents kept by the
//! workers' consumer of `product.changed` — the joins in its code — served with
//! `BAKERY_READ_MODEL=documents`, and proven equal to the tables after faults: a
//! worker killed in the middle of a burst of changes, the broker restarted, a
//! document spoiled by hand (`bakery documents check` finds it, `rebuild` mends it).

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::harness::{self, Engine, Up, eventually};

const LIMIT: Duration = Duration::from_secs(30);

/// `bakery documents check` for `up`'s deployment: its exit code and output.
fn check(up: &Up) -> (Option<i32>, String) {
    let (code, out, err) = harness::run_output(&["documents", "check"], up.env.clone());
    (code, format!("{out}{err}"))
}

/// Until `bakery documents check` passes (the consumer catches up), or `LIMIT`.
pub(crate) async fn documents_equal_the_tables(up: &Up) -> String {
    let mut last = String::new();
    let equal = eventually(LIMIT, async || {
        let (code, output) = check(up);
        last = output;
        code == Some(0)
    })
    .await;
    assert!(equal, "the documents never equalled the tables:\n{last}");
    last
}

async fn patch_price(up: &Up, cookie: &str, id: i64, cents: i64) -> u16 {
    harness::client()
        .patch(up.url(&format!("/api/products/{id}")))
        .header("cookie", cookie)
        .json(&json!({ "price_cents": cents }))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Reads that the clones answered from a document (not from the tables).
async fn document_reads(up: &Up) -> f64 {
    let mut total = 0.0;
    for clone in up.clones() {
        total += harness::metric(
            clone.addr,
            "bakery_documents_reads_total",
            &["source=\"document\""],
        )
        .await;
    }
    total
}

async fn documents_survive_faults(engine: Engine) {
    let mut env = engine.env().await;
    if !env.iter().any(|(k, _)| k == "BAKERY_DATABASE_URL") {
        env.push((
            "BAKERY_DATABASE_URL".into(),
            harness::fresh_postgres_database().await,
        ));
    }
    let database_url = env
        .iter()
        .find(|(k, _)| k == "BAKERY_DATABASE_URL")
        .map(|(_, v)| v.clone())
        .unwrap();
    env.push(("BAKERY_READ_MODEL".into(), "documents".into()));
    env.push(("BAKERY_JOB_LEASE_SECS".into(), "2".into()));
    env.push(("BAKERY_EMAIL_VERIFICATION".into(), "off".into()));
    let mut up = Up::start(env, 1);
    let http = harness::client();
    let admin = harness::log_in(&http, &up.base, "admin", "admin-password").await;
    let ann = harness::sign_up_and_log_in(&http, &up.base, "ann").await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(
            harness::create_product(&up.base, &admin, &format!("Loaf {n}"), "Whole.", 100).await,
        );
    }
    for &id in &ids {
        let review = http
            .post(up.url(&format!("/api/products/{id}/reviews")))
            .header("cookie", &ann)
            .json(&json!({"rating": 4, "body": "Good crumb."}))
            .send()
            .await
            .unwrap();
        assert_eq!(review.status(), 201);
    }
    // The writer reads their own write at once; an anonymous reader (cached, from
    // the document) sees it too, and the author's new name with it.
    assert_eq!(patch_price(&up, &admin, ids[0], 250).await, 200);
    let own = harness::get_json(&up.url(&format!("/api/products/{}", ids[0])), &admin).await;
    assert_eq!(own["price_cents"], 250, "the writer reads their own write");
    let renamed = http
        .patch(up.url("/api/me"))
        .header("cookie", &ann)
        .json(&json!({"username": "annie"}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 200);
    let base = up.base.clone();
    let anonymous = async |id: i64| -> Value {
        http.get(format!("{base}/api/products/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    assert!(
        eventually(LIMIT, async || {
            let product = anonymous(ids[0]).await;
            product["price_cents"] == 250 && product["reviews"][0]["user"]["username"] == "annie"
        })
        .await,
        "the anonymous read shows the price and the new name: {}",
        anonymous(ids[0]).await
    );
    assert!(
        document_reads(&up).await > 0.0,
        "the clone read from documents"
    );
    documents_equal_the_tables(&up).await;

    // A burst of changes; the workers (the documents' consumers) are killed in the
    // middle of it, and the broker restarted.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let burst = {
        let (base, admin, ids, done) = (up.base.clone(), admin.clone(), ids.clone(), done.clone());
        tokio::spawn(async move {
            let http = harness::client();
            let mut statuses = Vec::new();
            for round in 0..15 {
                for &id in &ids {
                    let status = http
                        .patch(format!("{base}/api/products/{id}"))
                        .header("cookie", &admin)
                        .json(&json!({ "price_cents": 300 + round }))
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    statuses.push(status);
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            statuses
        })
    };
    // A dozen of the 60 changes made: the workers die in the middle of the burst.
    assert!(
        eventually(LIMIT, async || done
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 12)
        .await,
        "the burst of changes did not start"
    );
    let workers: Vec<(String, i32)> = up
        .processes
        .iter()
        .filter(|p| p.role == "worker")
        .map(|p| (p.id.clone(), p.pid))
        .collect();
    for (_, pid) in &workers {
        kill(Pid::from_raw(*pid), Signal::SIGKILL).unwrap();
    }
    if engine == Engine::RabbitMq {
        crate::messaging::rabbitmqctl("stop_app");
        // Away for a while, as a restarted broker is.
        tokio::time::sleep(Duration::from_secs(2)).await;
        crate::messaging::rabbitmqctl("start_app");
    }
    let statuses = burst.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every change was taken: {statuses:?}"
    );
    let ids_of_workers: Vec<&str> = workers.iter().map(|(id, _)| id.as_str()).collect();
    crate::messaging::wait_all_restarted(&mut up, &ids_of_workers);
    let report = documents_equal_the_tables(&up).await;
    assert!(
        report.contains("product document(s) equal the tables"),
        "{report}"
    );
    for &id in &ids {
        assert_eq!(anonymous(id).await["price_cents"], 314, "product {id}");
    }

    // Spoiled by hand: one document's price (a redelivered event cannot mend it:
    // same version); and a product written straight into the tables, as a bulk load
    // would, which no event announced: it has no document.
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&database_url).await.unwrap();
    let (spoil, placeholder) = if database_url.starts_with("mysql:") {
        (
            "UPDATE product_documents SET body = JSON_SET(body, '$.price_cents', 1) WHERE product_id = ?",
            "?",
        )
    } else {
        (
            "UPDATE product_documents SET body = jsonb_set(body, '{price_cents}', '1') WHERE product_id = $1",
            "$1",
        )
    };
    sqlx::query(spoil)
        .bind(ids[1])
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO products (name, created_at, updated_at) VALUES ('Loaded loaf', 1, 1)")
        .execute(&mut db)
        .await
        .unwrap();
    let loaded: i64 = sqlx::query_scalar("SELECT MAX(id) FROM products WHERE name = 'Loaded loaf'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO product_prices (product_id, price_cents, updated_at) VALUES ({placeholder}, 90, 1)"
    )))
    .bind(loaded)
    .execute(&mut db)
    .await
    .unwrap();
    let (code, output) = check(&up);
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains(&format!("product {}: document version", ids[1]))
            && output.contains("price_cents: 314 in the tables, 1 in the document"),
        "{output}"
    );
    assert!(
        output.contains(&format!("product {loaded}: no document")),
        "{output}"
    );
    assert!(
        output.contains("2 of 5 product document(s) differ"),
        "{output}"
    );
    let (code, out, err) = harness::run_output(&["documents", "rebuild"], up.env.clone());
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("rebuilt the documents of 5 product(s)"),
        "{out}"
    );
    let (code, output) = check(&up);
    assert_eq!(code, Some(0), "{output}");
    // Readers get the tables' price, and the loaded product, once rebuilt, is read
    // from its document (the rebuild ended the object cached from the tables).
    assert_eq!(anonymous(ids[1]).await["price_cents"], 314);
    let before = document_reads(&up).await;
    assert_eq!(anonymous(loaded).await["price_cents"], 90);
    assert!(document_reads(&up).await > before);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_equal_the_tables_after_workers_are_killed_mid_burst_embedded_postgres() {
    documents_survive_faults(Engine::EmbeddedPostgres).await;
}

#[tokio::test]
async fn documents_equal_the_tables_after_workers_are_killed_mid_burst_embedded_mariadb() {
    documents_survive_faults(Engine::EmbeddedMariaDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_equal_the_tables_after_workers_are_killed_and_the_broker_restarted_rabbitmq() {
    documents_survive_faults(Engine::RabbitMq).await;
}
