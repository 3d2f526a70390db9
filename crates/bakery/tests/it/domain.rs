//! The catalog and the calendar per the contract: the same suite on SQLite and on
//! PostgreSQL with a streaming replica.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::harness::{
    Up, client, error_code, fresh_replicated_database, log_in, replica_url_for, sign_up_and_log_in,
};

struct Actors {
    http: reqwest::Client,
    admin: String,
    ann: String,
    bob: String,
}

async fn actors(up: &Up) -> Actors {
    let http = client();
    let admin = log_in(&http, &up.base, "admin", "admin-password").await;
    let ann = sign_up_and_log_in(&http, &up.base, "ann").await;
    let bob = sign_up_and_log_in(&http, &up.base, "bob").await;
    Actors {
        http,
        admin,
        ann,
        bob,
    }
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    assert!(status < 500, "never a 5xx: {status}");
    let body = if status == 204 {
        Value::Null
    } else {
        response.json().await.unwrap_or(Value::Null)
    };
    (status, body)
}

async fn catalog_follows_the_contract(up: &Up, a: &Actors) {
    let http = &a.http;
    let product = json!({"name": "Rye", "description": "Dark and dense.", "price_cents": 700});
    let (status, _) = send(http.post(up.url("/api/products")).json(&product)).await;
    assert_eq!(status, 401, "anonymous may not create");
    let (status, body) = send(
        http.post(up.url("/api/products"))
            .header("cookie", &a.ann)
            .json(&product),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "only admins create"
    );

    let (status, created) = send(
        http.post(up.url("/api/products"))
            .header("cookie", &a.admin)
            .json(&product),
    )
    .await;
    assert_eq!(status, 201);
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["name"], "Rye");
    assert_eq!(created["price_cents"], 700);
    assert_eq!(created["description"], "Dark and dense.");
    assert_eq!(created["images"], json!([]));
    assert_eq!(created["rating"], json!({"average": 0.0, "count": 0}));
    assert!(created["updated_at"].as_str().unwrap().ends_with('Z'));

    let (status, changed) = send(
        http.patch(up.url(&format!("/api/products/{id}")))
            .header("cookie", &a.admin)
            .json(&json!({"price_cents": 750})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(changed["price_cents"], 750);
    assert_eq!(changed["name"], "Rye", "fields not given stay");
    let (_, read_back) = send(
        http.get(up.url(&format!("/api/products/{id}")))
            .header("cookie", &a.admin),
    )
    .await;
    assert_eq!(
        read_back["price_cents"], 750,
        "the writer reads their own write"
    );

    let (status, review) = send(
        http.post(up.url(&format!("/api/products/{id}/reviews")))
            .header("cookie", &a.ann)
            .json(&json!({"rating": 5, "body": "Perfect with butter."})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(review["user"]["username"], "ann");
    assert_eq!(review["rating"], 5);
    let review_id = review["id"].as_i64().unwrap();
    send(
        http.post(up.url(&format!("/api/products/{id}/reviews")))
            .header("cookie", &a.bob)
            .json(&json!({"rating": 2, "body": "Too sour."})),
    )
    .await;
    let (_, with_reviews) = send(
        http.get(up.url(&format!("/api/products/{id}")))
            .header("cookie", &a.bob),
    )
    .await;
    assert_eq!(with_reviews["rating"], json!({"average": 3.5, "count": 2}));
    assert_eq!(with_reviews["reviews"].as_array().unwrap().len(), 2);

    let (status, _) = send(
        http.delete(up.url(&format!("/api/reviews/{review_id}")))
            .header("cookie", &a.bob),
    )
    .await;
    assert_eq!(status, 403, "only the author or an admin deletes a review");
    let (status, _) = send(
        http.delete(up.url(&format!("/api/reviews/{review_id}")))
            .header("cookie", &a.ann),
    )
    .await;
    assert_eq!(status, 204);
    let (_, after_delete) = send(
        http.get(up.url(&format!("/api/products/{id}")))
            .header("cookie", &a.ann),
    )
    .await;
    assert_eq!(
        after_delete["rating"]["count"], 1,
        "the author sees the deletion at once"
    );

    // Pagination: every product exactly once across pages.
    for i in 0..5 {
        let body = json!({"name": format!("Bun {i}"), "price_cents": 100 + i});
        assert_eq!(
            send(
                http.post(up.url("/api/products"))
                    .header("cookie", &a.admin)
                    .json(&body)
            )
            .await
            .0,
            201
        );
    }
    let mut seen = HashSet::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let url = up.url(&format!("/api/products?limit=2&cursor={cursor}"));
        let (status, page) = send(http.get(url).header("cookie", &a.admin)).await;
        assert_eq!(status, 200);
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            assert!(
                seen.insert(item["id"].as_i64().unwrap()),
                "no product twice"
            );
            assert!(item["rating"]["average"].is_number() && item["price_cents"].is_number());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);
    assert_eq!(pages, 3);

    let (status, _) = send(
        http.delete(up.url(&format!("/api/products/{id}")))
            .header("cookie", &a.admin),
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = send(
        http.get(up.url(&format!("/api/products/{id}")))
            .header("cookie", &a.admin),
    )
    .await;
    assert_eq!(status, 404);
    let remaining = with_reviews["reviews"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["user"]["username"] == "bob")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let (status, _) = send(
        http.delete(up.url(&format!("/api/reviews/{remaining}")))
            .header("cookie", &a.admin),
    )
    .await;
    assert_eq!(status, 404, "deleting a product removed its reviews");
}

async fn profiles_list_reviews_newest_first(up: &Up, a: &Actors) {
    let http = &a.http;
    // One review per user per product: bob reviews three pretzels.
    let mut posted = Vec::new();
    let mut id = 0;
    for n in 1..=3 {
        let (_, created) = send(
            http.post(up.url("/api/products"))
                .header("cookie", &a.admin)
                .json(&json!({"name": format!("Pretzel {n}"), "price_cents": 300})),
        )
        .await;
        id = created["id"].as_i64().unwrap();
        let body = json!({"rating": n, "body": format!("Try {n}.")});
        let (status, review) = send(
            http.post(up.url(&format!("/api/products/{id}/reviews")))
                .header("cookie", &a.bob)
                .json(&body),
        )
        .await;
        assert_eq!(status, 201);
        posted.push(review["id"].as_i64().unwrap());
    }
    let (status, profile) = send(http.get(up.url("/api/users/bob"))).await;
    assert_eq!(status, 200);
    assert_eq!(profile["username"], "bob");
    assert!(
        profile.get("email").is_none() && profile.get("is_admin").is_none(),
        "a profile is public: {profile}"
    );

    let (status, first) = send(http.get(up.url("/api/users/bob/reviews?limit=2"))).await;
    assert_eq!(status, 200);
    assert_eq!(first["user"]["id"], profile["id"]);
    let ids: Vec<i64> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![posted[2], posted[1]], "newest first");
    assert_eq!(
        first["items"][0]["product"],
        json!({"id": id, "name": "Pretzel 3"})
    );
    let next = first["next_cursor"].as_str().expect("a second page");
    let (_, second) =
        send(http.get(up.url(&format!("/api/users/bob/reviews?limit=2&cursor={next}")))).await;
    let ids: Vec<i64> = second["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![posted[0]], "the rest on the second page");
    assert!(second["next_cursor"].is_null(), "and no third");

    for name in [
        "nobody-here",
        "a b",
        "x",
        "'; DROP TABLE users;--",
        "%00",
        &"n".repeat(200),
    ] {
        let (status, body) = send(http.get(up.url(&format!("/api/users/{name}")))).await;
        assert_eq!(status, 404, "{name}: {body}");
        let (status, _) = send(http.get(up.url(&format!("/api/users/{name}/reviews")))).await;
        assert_eq!(status, 404, "{name}");
    }
    for query in ["limit=0", "limit=x", "cursor=-1"] {
        let (status, _) = send(http.get(up.url(&format!("/api/users/bob/reviews?{query}")))).await;
        assert_eq!(status, 400, "{query}");
    }
}

async fn capacity_is_never_exceeded(up: &Up, a: &Actors) {
    let http = &a.http;
    let event = json!({"title": "Sourdough 101", "description": "Bring an apron.", "starts_at": "2030-01-15T10:00:00Z", "capacity": 10});
    let (status, created) = send(
        http.post(up.url("/api/events"))
            .header("cookie", &a.admin)
            .json(&event),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(created["starts_at"], "2030-01-15T10:00:00Z");
    assert_eq!(created["attendees"], 0);
    let id = created["id"].as_i64().unwrap();

    // Sign-ups hash passwords (slow on purpose): a few at a time.
    let mut users = Vec::new();
    for batch in (0..50).collect::<Vec<_>>().chunks(10) {
        let names: Vec<String> = batch.iter().map(|i| format!("guest{i}")).collect();
        users.extend(
            futures::future::join_all(names.iter().map(|n| sign_up_and_log_in(http, &up.base, n)))
                .await,
        );
    }
    let answers = futures::future::join_all(users.iter().map(|cookie| {
        let request = http
            .post(up.url(&format!("/api/events/{id}/rsvp")))
            .header("cookie", cookie);
        async move { send(request).await }
    }))
    .await;
    let created = answers.iter().filter(|(s, _)| *s == 201).count();
    let full = answers
        .iter()
        .filter(|(s, b)| *s == 409 && b["error"]["code"] == "event_full")
        .count();
    assert_eq!(
        (created, full),
        (10, 40),
        "50 simultaneous RSVPs for 10 seats give exactly 10"
    );

    let seated = users
        .iter()
        .zip(&answers)
        .find(|(_, (s, _))| *s == 201)
        .unwrap();
    let (status, again) = send(
        http.post(up.url(&format!("/api/events/{id}/rsvp")))
            .header("cookie", seated.0),
    )
    .await;
    assert_eq!(status, 200, "repeating an RSVP gives the same one");
    assert_eq!(again["id"], seated.1.1["id"]);
    assert_eq!(again["status"], "confirmed");
    // Set by the email service's follow-up, whenever the mail went out.
    assert!(again["confirmation_sent_at"].is_null() || again["confirmation_sent_at"].is_string());

    let (_, event) = send(
        http.get(up.url(&format!("/api/events/{id}")))
            .header("cookie", seated.0),
    )
    .await;
    assert_eq!(event["attendees"], 10);
    assert_eq!(event["my_rsvp"]["id"], again["id"]);
    let (_, mine) = send(http.get(up.url("/api/me/rsvps")).header("cookie", seated.0)).await;
    assert_eq!(mine["items"][0]["event_id"], id);

    let (status, _) = send(
        http.delete(up.url(&format!("/api/events/{id}/rsvp")))
            .header("cookie", seated.0),
    )
    .await;
    assert_eq!(status, 204);
    let (_, event) = send(
        http.get(up.url(&format!("/api/events/{id}")))
            .header("cookie", seated.0),
    )
    .await;
    assert_eq!(event["attendees"], 9, "cancelling gives the seat back");
    assert!(event.get("my_rsvp").is_none());
    let (_, list) = send(http.get(up.url("/api/events")).header("cookie", &a.admin)).await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == id)
    );
    let (status, _) = send(
        http.post(up.url("/api/events/999999/rsvp"))
            .header("cookie", &a.ann),
    )
    .await;
    assert_eq!(status, 404);
}

/// One user's RSVP and cancellation at the same moment (a double click, two tabs)
/// never fail: both take the class's row first, so neither waits on the other
/// in the opposite order (a deadlock on PostgreSQL: a 500 after a second); an RSVP
/// that finds the user's own is answered with it, never "full"; and the seat count
/// matches the RSVPs left.
async fn rsvp_and_cancel_at_once_never_deadlock(up: &Up, a: &Actors) {
    let http = &a.http;
    let event = json!({"title": "Rye 201", "starts_at": "2030-02-01T10:00:00Z", "capacity": 100});
    let (status, created) = send(
        http.post(up.url("/api/events"))
            .header("cookie", &a.admin)
            .json(&event),
    )
    .await;
    assert_eq!(status, 201);
    let rsvp = up.url(&format!("/api/events/{}/rsvp", created["id"]));
    let users = [&a.ann, &a.bob];
    for _ in 0..40 {
        let answers = futures::future::join_all(users.iter().flat_map(|cookie| {
            [
                send(http.post(&rsvp).header("cookie", *cookie)),
                send(http.delete(&rsvp).header("cookie", *cookie)),
            ]
        }))
        .await;
        // The class has room: an RSVP is made (201) or was there (200), never
        // "full" because the user's own cancellation removed it meanwhile.
        for (status, body) in answers.iter().step_by(2) {
            assert!(
                matches!(status, 200 | 201),
                "an RSVP answered {status}: {body}"
            );
        }
    }
    let event_url = up.url(&format!("/api/events/{}", created["id"]));
    let mut seated = 0;
    for cookie in users {
        let (_, event) = send(http.get(&event_url).header("cookie", cookie)).await;
        seated += i64::from(event.get("my_rsvp").is_some_and(|r| !r.is_null()));
    }
    let (_, event) = send(http.get(&event_url).header("cookie", &a.admin)).await;
    assert_eq!(event["attendees"], seated, "{event}");
}

async fn hostile_input_gets_contract_errors(up: &Up, a: &Actors) {
    let http = &a.http;
    for id in [
        "abc",
        "-1",
        "0",
        "99999999999999999999",
        "1;DROP TABLE products",
        "%00",
    ] {
        let (status, body) = send(http.get(up.url(&format!("/api/products/{id}")))).await;
        assert!(status == 400 || status == 404, "{id}: {status} {body}");
        let (status, _) = send(http.get(up.url(&format!("/api/events/{id}")))).await;
        assert!(status == 400 || status == 404, "{id}: {status}");
    }
    let (status, _) = send(http.get(up.url("/api/products/424242"))).await;
    assert_eq!(status, 404);
    for query in ["limit=0", "limit=101", "limit=x", "cursor=-5", "cursor=abc"] {
        let (status, _) = send(http.get(up.url(&format!("/api/products?{query}")))).await;
        assert_eq!(status, 400, "{query}");
    }
    let admin = |request: reqwest::RequestBuilder| request.header("cookie", &a.admin);
    let bad_products = [
        json!({"name": "x", "price_cents": -1}),
        json!({"name": "", "price_cents": 1}),
        json!({"name": "x".repeat(5000), "price_cents": 1}),
        json!({"name": "x", "price_cents": 1.5}),
        json!({"name": "x", "price_cents": "12"}),
        json!({"name": "x", "price_cents": 1e30}),
        json!({"name": "nul\u{0}", "price_cents": 1}),
        json!({"name": "x", "description": "d".repeat(20_000), "price_cents": 1}),
    ];
    for body in bad_products {
        let (status, answer) = send(admin(http.post(up.url("/api/products"))).json(&body)).await;
        assert_eq!(status, 400, "{answer}");
    }
    let (status, created) = send(
        admin(http.post(up.url("/api/products")))
            .json(&json!({"name": "'; DROP TABLE products;--", "price_cents": 1})),
    )
    .await;
    assert_eq!(status, 201, "SQL-looking strings are just names");
    assert_eq!(created["name"], "'; DROP TABLE products;--");
    let id = created["id"].as_i64().unwrap();
    for body in [
        json!({"rating": 0, "body": "x"}),
        json!({"rating": 6, "body": "x"}),
        json!({"rating": 3, "body": ""}),
        json!({"rating": 3}),
    ] {
        let (status, _) = send(
            http.post(up.url(&format!("/api/products/{id}/reviews")))
                .header("cookie", &a.ann)
                .json(&body),
        )
        .await;
        assert_eq!(status, 400, "{body}");
    }
    let (status, _) = send(
        http.post(up.url("/api/products/424242/reviews"))
            .header("cookie", &a.ann)
            .json(&json!({"rating": 3, "body": "?"})),
    )
    .await;
    assert_eq!(status, 404);
    for body in [
        json!({"title": "t", "starts_at": "next tuesday", "capacity": 3}),
        json!({"title": "t", "starts_at": "2030-01-01T00:00:00Z", "capacity": 0}),
        json!({"title": "t", "starts_at": "2030-01-01T00:00:00Z", "capacity": -3}),
        json!({"title": "", "starts_at": "2030-01-01T00:00:00Z", "capacity": 3}),
    ] {
        let (status, answer) = send(admin(http.post(up.url("/api/events"))).json(&body)).await;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    let (status, body) = send(
        http.patch(up.url(&format!("/api/products/{id}")))
            .header("cookie", &a.bob)
            .json(&json!({"price_cents": 1})),
    )
    .await;
    assert_eq!((status, error_code_of(&body)), (403, "forbidden"));
}

fn error_code_of(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

pub async fn domain_suite(up: &Up) {
    let a = actors(up).await;
    catalog_follows_the_contract(up, &a).await;
    profiles_list_reviews_newest_first(up, &a).await;
    capacity_is_never_exceeded(up, &a).await;
    rsvp_and_cancel_at_once_never_deadlock(up, &a).await;
    hostile_input_gets_contract_errors(up, &a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_domain_on_sqlite() {
    let up = Up::start(vec![], 3);
    domain_suite(&up).await;
}

/// `up` on the database at `url` with its replica at `replica`, and `more`.
fn with_replica(url: String, replica: String, more: &[(&str, &str)]) -> Up {
    let mut env = vec![
        ("BAKERY_DATABASE_URL".to_string(), url),
        ("BAKERY_REPLICA_URLS".to_string(), replica),
    ];
    env.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Up::start(env, 3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_domain_on_postgres_with_a_replica() {
    let url = fresh_replicated_database().await;
    let replica = replica_url_for(&url);
    domain_suite(&with_replica(url, replica, &[])).await;
}

/// Path 2 (issue 28), "you can still use MySQL": the same suite on MariaDB with a
/// replica following it by GTID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_domain_on_mariadb_with_a_replica() {
    let url = crate::harness::fresh_mariadb_database().await;
    let replica = crate::harness::mariadb_replica_url_for(&url);
    domain_suite(&with_replica(url, replica, &[])).await;
}

/// Path 2 (issue 28): the same suite with product reads from the de-normalised
/// documents (with a replica: documents are read there too), and the documents equal
/// to the tables afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_domain_on_postgres_from_documents_with_a_replica() {
    let url = fresh_replicated_database().await;
    let replica = replica_url_for(&url);
    let up = with_replica(url, replica, &[("BAKERY_READ_MODEL", "documents")]);
    domain_suite(&up).await;
    crate::documents::documents_equal_the_tables(&up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_bakery_gets_the_demo_and_the_flag_turns_it_off() {
    let http = client();
    let up = Up::start_with(vec![], 1, &[]);
    let (_, list) = send(http.get(up.url("/api/products?limit=100"))).await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        12,
        "a dozen demo products"
    );
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["rating"]["count"].as_i64().unwrap() > 0),
        "with reviews"
    );
    let (_, events) = send(http.get(up.url("/api/events"))).await;
    assert_eq!(events["items"].as_array().unwrap().len(), 3);
    // The HTML pages show the same bakery, and the RSVP button works.
    let page = http
        .get(up.url("/products"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(page.matches("href=\"/products/").count(), 12, "{page}");
    // Each demo product gets a photo: drawn, queued as an image job, made by a worker.
    let photographed = crate::harness::eventually(std::time::Duration::from_secs(60), async || {
        let (_, list) = send(http.get(up.url("/api/products?limit=100"))).await;
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["thumb_url"].is_string())
    })
    .await;
    assert!(photographed, "every demo product has a thumbnail");
    let first = list["items"][0]["id"].as_i64().unwrap();
    let detail = http
        .get(up.url(&format!("/products/{first}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        detail.contains("<blockquote>") && detail.contains("flour_fan"),
        "reviews with their authors"
    );
    assert!(
        detail.contains("<img class=\"photo\"") && detail.contains("-1024.jpg"),
        "and its photo: {detail}"
    );
    let cookie = sign_up_and_log_in(&http, &up.base, "clicker").await;
    let event = events["items"][0]["id"].as_i64().unwrap();
    let clicked = http
        .post(up.url(&format!("/events/{event}/rsvp")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(clicked.status(), 303);
    let page = http
        .get(up.url(&format!("/events/{event}")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("You have a seat"), "{page}");
    drop(up);
    let bare = Up::start(vec![], 1);
    let (_, list) = send(http.get(bare.url("/api/products"))).await;
    assert_eq!(
        list["items"],
        json!([]),
        "--no-demo leaves the catalog empty"
    );
    let _ = error_code;
}
