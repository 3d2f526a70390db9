//! Talking to bakery over HTTP as its clients do.

use std::time::Duration;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// The `bakery_session=...` pair from a response's `Set-Cookie`, if any.
pub fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("bakery_session="))
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
}

pub fn served_by(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Signs up and logs in `username`; returns the cookie pair.
pub async fn sign_up_and_log_in(http: &reqwest::Client, base: &str, username: &str) -> String {
    let created = http
        .post(format!("{base}/api/users"))
        .json(&serde_json::json!({"username": username, "email": format!("{username}@example.com"), "password": "password-1"}))
        .send()
        .await
        .expect("sign up");
    assert_eq!(created.status(), 201, "sign up {username}");
    let login = http
        .post(format!("{base}/api/session"))
        .json(&serde_json::json!({"username": username, "password": "password-1"}))
        .send()
        .await
        .expect("log in");
    assert_eq!(login.status(), 200);
    session_cookie(&login).expect("a session cookie")
}

/// Logs in and returns the cookie pair.
pub async fn log_in(http: &reqwest::Client, base: &str, username: &str, password: &str) -> String {
    let login = http
        .post(format!("{base}/api/session"))
        .json(&serde_json::json!({"username": username, "password": password}))
        .send()
        .await
        .expect("log in");
    assert_eq!(login.status(), 200, "log in as {username}");
    session_cookie(&login).expect("a session cookie")
}

/// `GET url` as the holder of `cookie`; the answer's JSON body.
pub async fn get_json(url: &str, cookie: &str) -> serde_json::Value {
    client()
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: the body is not JSON: {e}"))
}

/// Asserts the contract's JSON error shape and returns its code.
pub async fn error_code(response: reqwest::Response) -> String {
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .unwrap_or_else(|e| panic!("{status}: error body is not JSON: {e}"));
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{status}: no error.code in {body}"));
    assert!(
        body["error"]["message"].is_string(),
        "{status}: no error.message in {body}"
    );
    code.to_string()
}

/// A counter of a process's `/metrics` whose labels include all of `labels`, summed
/// over the series that match.
pub async fn metric(addr: std::net::SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let text = client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Creates a product as `admin` (a cookie pair); its id.
pub async fn create_product(
    base: &str,
    admin: &str,
    name: &str,
    description: &str,
    price_cents: i64,
) -> i64 {
    let created = client()
        .post(format!("{base}/api/products"))
        .header("cookie", admin)
        .json(&serde_json::json!({"name": name, "description": description, "price_cents": price_cents}))
        .send()
        .await
        .expect("create a product");
    assert_eq!(created.status(), 201, "create product {name}");
    created
        .json::<serde_json::Value>()
        .await
        .expect("a product")["id"]
        .as_i64()
        .expect("its id")
}

/// Creates a baking class as `admin` (a cookie pair) with `capacity` seats; its id.
pub async fn create_class(base: &str, admin: &str, title: &str, capacity: i64) -> i64 {
    let created = client()
        .post(format!("{base}/api/events"))
        .header("cookie", admin)
        .json(&serde_json::json!({"title": title, "starts_at": "2031-05-01T10:00:00Z", "capacity": capacity}))
        .send()
        .await
        .expect("create a class");
    assert_eq!(created.status(), 201, "create class {title}");
    created.json::<serde_json::Value>().await.expect("a class")["id"]
        .as_i64()
        .expect("its id")
}
