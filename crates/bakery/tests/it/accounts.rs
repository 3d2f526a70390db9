//! Accounts per the contract, on SQLite and on PostgreSQL.

use crate::harness::{
    Up, client, error_code, fresh_postgres_database, session_cookie, sign_up_and_log_in,
};

async fn accounts_follow_the_contract(up: &Up) {
    let http = client();
    let created = http
        .post(up.url("/api/users"))
        .json(&serde_json::json!({"username": "Baguette", "email": "b@example.com", "password": "password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let user: serde_json::Value = created.json().await.unwrap();
    assert_eq!(user["username"], "Baguette");
    assert_eq!(user["is_admin"], false);
    assert!(user["id"].as_i64().is_some());
    assert!(user.get("password_hash").is_none() && user.get("password").is_none());

    let taken = http
        .post(up.url("/api/users"))
        .json(&serde_json::json!({"username": "baguette", "email": "c@example.com", "password": "password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        taken.status(),
        409,
        "usernames are unique regardless of case"
    );
    assert_eq!(error_code(taken).await, "username_taken");

    let wrong = http
        .post(up.url("/api/session"))
        .json(&serde_json::json!({"username": "Baguette", "password": "password-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(error_code(wrong).await, "invalid_credentials");
    let nobody = http
        .post(up.url("/api/session"))
        .json(&serde_json::json!({"username": "nobody", "password": "password-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        nobody.status(),
        401,
        "an unknown name answers like a wrong password"
    );

    let anonymous = http.get(up.url("/api/me")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    let cookie = sign_up_and_log_in(&http, &up.base, "croissant").await;
    let changed = http
        .patch(up.url("/api/me"))
        .header("cookie", &cookie)
        .json(&serde_json::json!({"username": "pain-au-chocolat", "password": "new-password", "current_password": "password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    // A new password ends the session it was changed from too; the answer hands
    // over a fresh one.
    let old_cookie = cookie;
    let cookie = session_cookie(&changed).expect("a rotated session");
    assert_ne!(cookie, old_cookie);
    let body: serde_json::Value = changed.json().await.unwrap();
    assert_eq!(body["user"]["username"], "pain-au-chocolat");
    let relogin = http
        .post(up.url("/api/session"))
        .json(&serde_json::json!({"username": "pain-au-chocolat", "password": "new-password", "current_password": "password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(relogin.status(), 200, "the new name and password work");
    let clash = http
        .patch(up.url("/api/me"))
        .header("cookie", &cookie)
        .json(&serde_json::json!({"username": "BAGUETTE"}))
        .send()
        .await
        .unwrap();
    assert_eq!(clash.status(), 409);

    let admin = http
        .post(up.url("/api/session"))
        .json(&serde_json::json!({"username": "admin", "password": "admin-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        admin.status(),
        200,
        "admin is created at first start with BAKERY_ADMIN_PASSWORD"
    );
    let body: serde_json::Value = admin.json().await.unwrap();
    assert_eq!(body["user"]["is_admin"], true);
}

async fn pages_render_through_the_load_balancer(up: &Up) {
    let http = client();
    let home = http.get(up.url("/")).send().await.unwrap();
    assert_eq!(home.status(), 200);
    let served = crate::harness::served_by(&home);
    let html = home.text().await.unwrap();
    assert!(
        html.contains(&format!("served by {served}")),
        "the home page names its clone"
    );
    let signup = http
        .post(up.url("/signup"))
        .form(&[
            ("username", "<b>tart</b>"),
            ("email", "t@example.com"),
            ("password", "password-1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 400);
    let html = signup.text().await.unwrap();
    assert!(
        html.contains("&lt;b&gt;tart") && !html.contains("<b>tart</b>"),
        "markup is escaped"
    );
    let ok = http
        .post(up.url("/signup"))
        .form(&[
            ("username", "tart"),
            ("email", "t@example.com"),
            ("password", "password-1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 303, "sign up redirects to the account page");
    let cookie = crate::harness::session_cookie(&ok).expect("signed up and logged in");
    let account = http
        .get(up.url("/account"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(account.text().await.unwrap().contains("t@example.com"));
    // The account form: a bad name is refused on the page, a good one saved (the
    // email left empty stays as it was).
    let bad = http
        .post(up.url("/account"))
        .header("cookie", &cookie)
        .form(&[("username", "no spaces"), ("email", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(
        bad.text()
            .await
            .unwrap()
            .contains("a username is 3 to 32 characters")
    );
    let saved = http
        .post(up.url("/account"))
        .header("cookie", &cookie)
        .form(&[("username", "tartine"), ("email", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), 303);
    let page = http
        .get(up.url("/account"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("tartine") && page.contains("t@example.com"),
        "renamed, email kept"
    );
    let out = http
        .post(up.url("/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    let account = http
        .get(up.url("/account"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(
        account.status(),
        303,
        "logged out: the account page sends to /login"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_on_sqlite() {
    let up = Up::start(vec![], 2);
    accounts_follow_the_contract(&up).await;
    pages_render_through_the_load_balancer(&up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_on_postgres() {
    let url = fresh_postgres_database().await;
    let up = Up::start(vec![("BAKERY_DATABASE_URL".into(), url)], 2);
    accounts_follow_the_contract(&up).await;
    pages_render_through_the_load_balancer(&up).await;
}
