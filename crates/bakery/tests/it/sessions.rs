//! Shared sessions: any clone serves any user, on the embedded store and on Redis.

use std::collections::HashSet;

use crate::harness::{
    Up, client, error_code, redis_url, served_by, session_cookie, sign_up_and_log_in,
};

async fn any_clone_serves_a_logged_in_user(up: &Up) {
    let http = client();
    let cookie = sign_up_and_log_in(&http, &up.base, "crumb").await;
    let mut seen = HashSet::new();
    for _ in 0..30 {
        let r = http
            .get(up.url("/api/me"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "authenticated on {}", served_by(&r));
        seen.insert(served_by(&r));
        let me: serde_json::Value = r.json().await.unwrap();
        assert_eq!(me["username"], "crumb");
    }
    assert_eq!(seen.len(), 3, "30 requests landed on every clone: {seen:?}");

    // Logout through one clone ends the session on every clone.
    let out = http
        .delete(up.url("/api/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let cleared = out.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cleared.contains("Max-Age=0"),
        "the client is told to forget it: {cleared}"
    );
    let mut refused_by = HashSet::new();
    for _ in 0..30 {
        let r = http
            .get(up.url("/api/me"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        refused_by.insert(served_by(&r));
        assert_eq!(r.status(), 401);
        assert_eq!(error_code(r).await, "not_logged_in");
    }
    assert_eq!(
        refused_by.len(),
        3,
        "every clone refused the old id: {refused_by:?}"
    );
}

async fn the_cookie_has_the_contract_flags_and_a_fresh_id_at_login(up: &Up) {
    let http = client();
    let first = sign_up_and_log_in(&http, &up.base, "rye").await;
    let login = http
        .post(up.url("/api/session"))
        .header("cookie", &first)
        .json(&serde_json::json!({"username": "rye", "password": "password-1"}))
        .send()
        .await
        .unwrap();
    let raw = login.headers()["set-cookie"].to_str().unwrap().to_string();
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(raw.contains(flag), "{flag} in {raw}");
    }
    assert!(
        !raw.contains("Secure"),
        "plain HTTP without BAKERY_COOKIE_SECURE: {raw}"
    );
    let second = session_cookie(&login).unwrap();
    assert_ne!(first, second, "the id changes at login");
    let old = http
        .get(up.url("/api/me"))
        .header("cookie", &first)
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401, "the replaced id is refused");
    let new = http
        .get(up.url("/api/me"))
        .header("cookie", &second)
        .send()
        .await
        .unwrap();
    assert_eq!(new.status(), 200);
}

async fn cross_site_writes_with_a_session_are_refused(up: &Up) {
    let http = client();
    let cookie = sign_up_and_log_in(&http, &up.base, "scone").await;
    let host = up.base.trim_start_matches("http://").to_string();
    let evil = http
        .patch(up.url("/api/me"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .json(&serde_json::json!({"email": "evil@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(evil.status(), 403);
    assert_eq!(error_code(evil).await, "csrf");
    let fetch = http
        .patch(up.url("/api/me"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .json(&serde_json::json!({"email": "evil@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(fetch.status(), 403);
    let same = http
        .patch(up.url("/api/me"))
        .header("cookie", &cookie)
        .header("origin", format!("http://{host}"))
        .json(
            &serde_json::json!({"email": "scone@bakery.example", "current_password": "password-1"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 200, "same-origin passes");
    let me: serde_json::Value = http
        .get(up.url("/api/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        me["email"], "scone@bakery.example",
        "the refused requests changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_the_embedded_store() {
    let up = Up::start(vec![], 3);
    any_clone_serves_a_logged_in_user(&up).await;
    the_cookie_has_the_contract_flags_and_a_fresh_id_at_login(&up).await;
    cross_site_writes_with_a_session_are_refused(&up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_redis() {
    let up = Up::start(vec![("BAKERY_SESSION_URL".into(), redis_url())], 3);
    any_clone_serves_a_logged_in_user(&up).await;
    the_cookie_has_the_contract_flags_and_a_fresh_id_at_login(&up).await;
    cross_site_writes_with_a_session_are_refused(&up).await;
    // The sessions really are in Redis.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is needed");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("bakery:session:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "sessions are stored in Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_cookie_when_configured() {
    let up = Up::start(vec![("BAKERY_COOKIE_SECURE".into(), "1".into())], 1);
    let http = client();
    http.post(up.url("/api/users"))
        .json(&serde_json::json!({"username": "bun", "email": "bun@example.com", "password": "password-1"}))
        .send()
        .await
        .unwrap();
    let login = http
        .post(up.url("/api/session"))
        .json(&serde_json::json!({"username": "bun", "password": "password-1"}))
        .send()
        .await
        .unwrap();
    assert!(
        login.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Secure")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart_of_every_clone() {
    // The embedded store is a file: a new set of clones still knows the session.
    let data = crate::harness::TempDir::new();
    let env = vec![("BAKERY_DATA_DIR".to_string(), data.0.display().to_string())];
    let http = client();
    let cookie = {
        let up = Up::start(env.clone(), 1);
        sign_up_and_log_in(&http, &up.base, "loaf").await
    };
    let up = Up::start(env, 2);
    let r = http
        .get(up.url("/api/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the session outlived the processes");
}

/// Redis with Sentinel (issue "Beyond one machine"): the primary killed under a
/// logged-in user's requests; the sentinels promote the replica and every clone
/// follows it without a restart. Meanwhile the user's requests are answered as that
/// user, or refused (503 while no primary answers, 401 if the session had not reached
/// the replica) — never as someone else, never with a 500; afterwards the session
/// written before the failover works, new logins work, and the cache fills again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_the_cache_follow_a_sentinel_failover() {
    use std::time::{Duration, Instant};

    use bakery_testkit::sentinel::RedisSentinel;

    let mut redis = RedisSentinel::start("bakery-test");
    let up = Up::start(
        vec![
            ("BAKERY_SESSION_URL".into(), redis.url(0)),
            ("BAKERY_CACHE_URL".into(), redis.url(1)),
        ],
        2,
    );
    let http = client();
    let cookie = sign_up_and_log_in(&http, &up.base, "sentinel-sam").await;
    let me = |cookie: String| {
        let http = http.clone();
        let url = up.url("/api/me");
        async move {
            let answer = http.get(url).header("cookie", cookie).send().await.unwrap();
            let status = answer.status().as_u16();
            let body: serde_json::Value = answer.json().await.unwrap_or_default();
            (status, body)
        }
    };
    assert_eq!(me(cookie.clone()).await.0, 200);
    redis.wait_replicated();

    let old_primary = redis.primary_port;
    let killed = Instant::now();
    redis.kill_primary();
    let mut seen = Vec::new();
    let mut followed = None;
    while killed.elapsed() < Duration::from_secs(40) {
        let (status, body) = me(cookie.clone()).await;
        assert!(
            matches!(status, 200 | 401 | 503),
            "{status} {body} during the failover"
        );
        if status == 200 {
            assert_eq!(body["username"], "sentinel-sam", "someone else's session");
        }
        seen.push(status);
        let login = http
            .post(up.url("/api/session"))
            .json(&serde_json::json!({"username": "sentinel-sam", "password": "password-1"}))
            .send()
            .await
            .unwrap();
        assert_ne!(login.status(), 500, "a login during the failover");
        if login.status() == 200 && status == 200 {
            followed = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let followed = followed.unwrap_or_else(|| {
        panic!("no login within 40 s of the primary's death; answers to /api/me: {seen:?}")
    });
    assert_ne!(
        redis.primary_now(),
        Some(old_primary),
        "the sentinels promoted the replica"
    );
    let (status, body) = me(cookie.clone()).await;
    assert_eq!(
        (status, body["username"].as_str()),
        (200, Some("sentinel-sam")),
        "the session written before the failover is still there"
    );
    // The cache works again on the new primary: a product read is a hit the second time.
    let admin = crate::harness::log_in(&http, &up.base, "admin", "admin-password").await;
    let product = crate::harness::create_product(&up.base, &admin, "Sentinel rye", "", 500).await;
    let url = up.url(&format!("/api/products/{product}"));
    let hit = crate::harness::eventually(Duration::from_secs(10), async || {
        let answer = http.get(&url).send().await.unwrap();
        answer.headers().get("x-cache").is_some_and(|v| v == "hit")
    })
    .await;
    assert!(hit, "the cache never answered again after the failover");
    let refused = seen.iter().filter(|s| **s != 200).count();
    eprintln!(
        "sentinel failover: a login and the old session work {:.2} s after the primary was killed; {refused} of {} answers meanwhile refused (401/503), none wrong",
        followed.as_secs_f64(),
        seen.len()
    );
}
