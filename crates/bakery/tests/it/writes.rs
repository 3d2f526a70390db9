//! One place for every write: what a write owes happens whatever fails after its
//! commit, and the JSON API and the HTML forms leave the same state.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{
    Up, client, eventually, fresh_replicated_database, log_in, redis_url, replica_url_for,
    sign_up_and_log_in,
};
use crate::proxy::CuttableProxy;

fn addr_of(url: &str) -> std::net::SocketAddr {
    let host = url.trim_start_matches("redis://").trim_end_matches('/');
    host.parse()
        .unwrap_or_else(|_| panic!("a redis://IP:PORT test URL, got {url}"))
}

async fn price_in_database(url: &str, product: i64) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("the test database");
    sqlx::query_scalar("SELECT price_cents FROM product_prices WHERE product_id = $1")
        .bind(product)
        .fetch_one(&mut conn)
        .await
        .expect("the product's price")
}

/// The session store vanishes while writes are under way (cut at every moment from
/// before the session is read to after the commit). Whatever each write was told,
/// afterwards every clone serves the price the database holds: a committed write
/// never leaves the old value in the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_store_lost_mid_write_never_leaves_the_cache_stale() {
    // With a replica, a write's position goes into the session after the commit:
    // the moment a lost session store used to leave the cache stale.
    let database = fresh_replicated_database().await;
    let proxy = CuttableProxy::start(addr_of(&redis_url())).await;
    let up = Up::start(
        vec![
            ("BAKERY_DATABASE_URL".into(), database.clone()),
            ("BAKERY_REPLICA_URLS".into(), replica_url_for(&database)),
            (
                "BAKERY_SESSION_URL".into(),
                format!("redis://{}", proxy.addr),
            ),
            ("BAKERY_CACHE_URL".into(), redis_url()),
            // Each clone is read as a visitor right after each write: from Redis,
            // not from a near copy that may be a moment behind.
            ("BAKERY_CACHE_NEAR_MAX_ENTRIES".into(), "0".into()),
        ],
        2,
    );
    let http = client();
    let admin = log_in(&http, &up.base, "admin", "admin-password").await;
    let created: Value = http
        .post(up.url("/api/products"))
        .header("cookie", &admin)
        .json(&json!({"name": "Sourdough", "price_cents": 100}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().expect("an id");

    let mut outcomes = Vec::new();
    for round in 0..30u64 {
        // Warm every clone's view of the object, so a stale value would be served.
        for clone in up.clones() {
            let r = http
                .get(format!("http://{}/api/products/{id}", clone.addr))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        let write = http
            .patch(up.url(&format!("/api/products/{id}")))
            .header("cookie", &admin)
            .json(&json!({"price_cents": 200 + round}))
            .send();
        let cut_after = Duration::from_micros(round * 150);
        let (answer, ()) = tokio::join!(write, async {
            tokio::time::sleep(cut_after).await;
            proxy.cut();
        });
        let answer = answer.expect("the load balancer answers");
        let status = answer.status().as_u16();
        let handed_position = answer
            .headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.as_bytes().starts_with(b"bakery_wrote="));
        assert!(
            status == 200 || status == 503,
            "round {round}: a write is done (200) or refused (503), got {status}"
        );
        outcomes.push((status, handed_position));
        proxy.restore().await;
        // Every clone has its session store back before the next round.
        for clone in up.clones() {
            let me = format!("http://{}/api/me", clone.addr);
            let back = eventually(Duration::from_secs(10), async || {
                http.get(&me)
                    .header("cookie", &admin)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            })
            .await;
            assert!(back, "{} reaches the session store again", clone.id);
        }

        let truth = price_in_database(&database, id).await;
        if status == 200 {
            assert_eq!(
                truth,
                (200 + round) as i64,
                "round {round}: an acknowledged write is in the database"
            );
        }
        for clone in up.clones() {
            let served: Value = http
                .get(format!("http://{}/api/products/{id}", clone.addr))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(
                served["price_cents"].as_i64(),
                Some(truth),
                "round {round}: {} serves what the database holds",
                clone.id
            );
        }
    }
    assert!(
        outcomes.iter().any(|(status, _)| *status == 200),
        "some writes went through: {outcomes:?}"
    );
    eprintln!("outcomes (status, position handed to the client): {outcomes:?}");
}

/// `DELETE /api/events/{id}/rsvp` and the page's cancel form are one operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_form_and_the_api_cancel_an_rsvp_alike() {
    let up = Up::start(vec![], 2);
    let http = client();
    let admin = log_in(&http, &up.base, "admin", "admin-password").await;
    let event: Value = http
        .post(up.url("/api/events"))
        .header("cookie", &admin)
        .json(&json!({"title": "Croissants", "starts_at": "2030-01-01T10:00:00Z", "capacity": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = event["id"].as_i64().unwrap();
    let ann = sign_up_and_log_in(&http, &up.base, "ann").await;
    let bob = sign_up_and_log_in(&http, &up.base, "bob").await;

    // The class list is a cached query: it must follow every seat taken and given back.
    let listed = async || -> i64 {
        let list: Value = http
            .get(up.url("/api/events"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .unwrap()["attendees"]
            .as_i64()
            .unwrap()
    };
    let mine = async |cookie: &str| -> Value {
        http.get(up.url("/api/me/rsvps"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    assert_eq!(listed().await, 0);

    let r = http
        .post(up.url(&format!("/api/events/{id}/rsvp")))
        .header("cookie", &ann)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .post(up.url(&format!("/events/{id}/rsvp")))
        .header("cookie", &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "the form answers with a redirect");
    assert_eq!(listed().await, 2);

    let api = http
        .delete(up.url(&format!("/api/events/{id}/rsvp")))
        .header("cookie", &ann)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 204);
    assert_eq!(
        listed().await,
        1,
        "the API's cancel gives the seat back, and the list shows it"
    );
    let form = http
        .post(up.url(&format!("/events/{id}/cancel")))
        .header("cookie", &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 303);
    assert_eq!(
        listed().await,
        0,
        "the form's cancel gives the seat back, and the list shows it"
    );
    assert_eq!(
        mine(&ann).await,
        mine(&bob).await,
        "both are left with no RSVP"
    );
    assert_eq!(mine(&ann).await["items"], json!([]));

    // Cancelling what is not there changes nothing, either way.
    let api = http
        .delete(up.url(&format!("/api/events/{id}/rsvp")))
        .header("cookie", &ann)
        .send()
        .await
        .unwrap();
    let form = http
        .post(up.url(&format!("/events/{id}/cancel")))
        .header("cookie", &bob)
        .send()
        .await
        .unwrap();
    assert_eq!((api.status().as_u16(), form.status().as_u16()), (204, 303));
    assert_eq!(listed().await, 0);
    let detail: Value = http
        .get(up.url(&format!("/api/events/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["attendees"], 0);
}
