//! The web clone's router in process, without a socket: requests in, the contract's
//! answers out, against a real SQLite database made for the test.

// A panic is how a test reports a failure; helpers unwrap as tests do.
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bakery_config::Config;
use bakery_web::{AppState, app};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

async fn router() -> (axum::Router, bakery_testkit::TempDir) {
    let dir = bakery_testkit::TempDir::new();
    let env = [
        ("BAKERY_DATA_DIR".to_string(), dir.0.display().to_string()),
        (
            "BAKERY_ADMIN_PASSWORD".to_string(),
            "admin-password".to_string(),
        ),
    ];
    let config = Config::from_layers(None, env).expect("a valid test config");
    bakery_db::bootstrap(&config, false)
        .await
        .expect("a migrated database");
    let state = AppState::connect(config, "web-test")
        .await
        .expect("the stores open");
    (app(state), dir)
}

async fn call(
    router: &axum::Router,
    request: Request<Body>,
) -> (StatusCode, header::HeaderMap, Value) {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router answers");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("a body").to_bytes();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn json_request(method: &str, uri: &str, cookie: Option<&str>, body: Value) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    request
        .body(Body::from(body.to_string()))
        .expect("a request")
}

#[tokio::test]
async fn the_router_serves_the_contract_in_process() {
    let (router, _dir) = router().await;

    let (status, headers, body) = call(
        &router,
        Request::get("/api/ping").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["id"].as_str()),
        (StatusCode::OK, Some("web-test"))
    );
    assert_eq!(headers["x-served-by"], "web-test");
    assert!(headers.contains_key("x-request-id"));

    let sign_up = json!({"username": "ann", "email": "ann@example.com", "password": "password-1"});
    let (status, _, user) = call(
        &router,
        json_request("POST", "/api/users", None, sign_up.clone()),
    )
    .await;
    assert_eq!(
        (status, user["username"].as_str()),
        (StatusCode::CREATED, Some("ann"))
    );
    let (status, _, error) = call(&router, json_request("POST", "/api/users", None, sign_up)).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("username_taken"))
    );

    let credentials = json!({"username": "ann", "password": "password-1"});
    let (status, headers, _) = call(
        &router,
        json_request("POST", "/api/session", None, credentials),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let cookie = headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();

    let me = Request::get("/api/me")
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    let (status, _, me) = call(&router, me).await;
    assert_eq!(
        (status, me["username"].as_str()),
        (StatusCode::OK, Some("ann"))
    );

    let product = json!({"name": "Rye", "price_cents": 700});
    let (status, _, error) = call(
        &router,
        json_request("POST", "/api/products", Some(&cookie), product),
    )
    .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "only admins"
    );

    let (status, _, error) = call(
        &router,
        Request::get("/api/nothing").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let wrong_type = Request::post("/api/users")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("x"))
        .unwrap();
    let (status, _, _) = call(&router, wrong_type).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}
