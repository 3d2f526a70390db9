//! Hostile and malformed input: always the contract's JSON error, never a 5xx.

use crate::harness::{Up, client, error_code, sign_up_and_log_in};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_contract_errors_and_never_a_5xx() {
    let up = Up::start(vec![], 2);
    let http = client();
    let users = up.url("/api/users");

    let malformed = http
        .post(&users)
        .header("content-type", "application/json")
        .body("{\"username\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(error_code(malformed).await, "malformed_json");

    let wrong_type = http
        .post(&users)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);
    assert_eq!(error_code(wrong_type).await, "unsupported_media_type");

    let missing = http
        .post(&users)
        .json(&serde_json::json!({"username": "abc"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    assert_eq!(error_code(missing).await, "invalid_input");

    let wrong_shape = http
        .post(&users)
        .json(&serde_json::json!({"username": 5, "email": [], "password": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_shape.status(), 400);

    let huge = format!("{{\"username\": \"{}\"}}", "a".repeat(1_100_000));
    let too_large = http
        .post(&users)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(too_large.status(), 413);
    assert_eq!(error_code(too_large).await, "body_too_large");

    let unknown = http.get(up.url("/no/such/route")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(error_code(unknown).await, "not_found");

    let method = http.put(up.url("/api/ping")).send().await.unwrap();
    assert_eq!(method.status(), 405);
    assert_eq!(error_code(method).await, "method_not_allowed");

    let hostile_names = [
        "robert'); DROP TABLE users;--".to_string(),
        "nul\0byte".to_string(),
        "<script>alert(1)</script>".to_string(),
        "x".repeat(10_000),
        "émile".to_string(),
        "\"quoted\"".to_string(),
        "".to_string(),
    ];
    for name in &hostile_names {
        let r = http
            .post(&users)
            .json(&serde_json::json!({"username": name, "email": "h@example.com", "password": "password-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            400,
            "username {:?}",
            name.chars().take(40).collect::<String>()
        );
        assert_eq!(error_code(r).await, "invalid_username");
    }
    for email in [
        "not-an-email",
        "a@b",
        "nul\0@example.com",
        &format!("{}@example.com", "x".repeat(300)),
    ] {
        let r = http
            .post(&users)
            .json(&serde_json::json!({"username": "hostile", "email": email, "password": "password-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(error_code(r).await, "invalid_email");
    }
    let short = http
        .post(&users)
        .json(&serde_json::json!({"username": "hostile", "email": "h@example.com", "password": "short"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(short).await, "invalid_password");

    // A password with a NUL, quotes and markup is just a password.
    let odd = "p\0'\"<b>ssword";
    let cookie_user = http
        .post(&users)
        .json(
            &serde_json::json!({"username": "oddpass", "email": "o@example.com", "password": odd}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(cookie_user.status(), 201);
    let login = http
        .post(up.url("/api/session"))
        .json(&serde_json::json!({"username": "oddpass", "password": odd}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);

    // Garbage cookies are simply not a session.
    for cookie in [
        "bakery_session=",
        "bakery_session=../../etc/passwd",
        "bakery_session=AAAA; x=1",
    ] {
        let r = http
            .get(up.url("/api/me"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "cookie {cookie:?}");
    }
    let cookie = sign_up_and_log_in(&http, &up.base, "patcher").await;
    let bad_patch = http
        .patch(up.url("/api/me"))
        .header("cookie", &cookie)
        .json(&serde_json::json!({"username": "no spaces allowed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_patch.status(), 400);
    let not_json = http
        .patch(up.url("/api/me"))
        .header("cookie", &cookie)
        .body("username=x")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 415);
}

/// Contract, third round: a browser (its `Accept` prefers HTML) gets an error as an
/// HTML page with the right status and the pages' security headers; an API client
/// keeps the JSON error.
#[tokio::test]
async fn browsers_get_error_pages_and_api_clients_json() {
    let up = crate::harness::Up::start(vec![], 1);
    let http = crate::harness::client();
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    for (method, path, status) in [
        ("GET", "/nope", 404),
        ("GET", "/products/99999", 404),
        ("GET", "/api/me", 401),
        ("DELETE", "/api/session/x", 404),
    ] {
        let page = http
            .request(method.parse().unwrap(), up.url(path))
            .header("accept", browser)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), status, "{method} {path}");
        let headers = page.headers().clone();
        let content_type = headers["content-type"].to_str().unwrap().to_string();
        assert!(
            content_type.starts_with("text/html"),
            "{path}: {content_type}"
        );
        assert!(headers.contains_key("content-security-policy"), "{path}");
        let body = page.text().await.unwrap();
        assert!(
            body.contains(&status.to_string()) && body.contains("<a href=\"/\">"),
            "{body}"
        );

        let api = http
            .request(method.parse().unwrap(), up.url(path))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(api.status(), status);
        let error: serde_json::Value = api.json().await.unwrap();
        assert!(error["error"]["code"].is_string(), "{path}: {error}");
    }
    // A cross-site form post from a browser: 403, as a page.
    let refused = http
        .post(up.url("/api/products"))
        .header("accept", browser)
        .header("origin", "https://evil.example")
        .json(&serde_json::json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("403 Forbidden"));
}
