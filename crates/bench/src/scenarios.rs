//! What a bench run asks of the system: each scenario prepares its data once
//! (users, sessions, an event, a pre-rendered page) and gives the [`Mix`] of
//! requests the load generator sends.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use crate::load::{Call, Mix};
use crate::topology::{ADMIN_PASSWORD, Lab, log_in};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// `GET /api/ping`: the cheapest proxied route (HTTP and the load balancer).
    Ping,
    /// `GET /api/products/{id}`: the cached object `Product:{id}`, as JSON.
    Product,
    /// The same with the cache off (`BAKERY_CACHE_URL=none`): assembled each time.
    ProductUncached,
    /// `GET /products/{id}` logged in: the product page rendered by a clone from
    /// the cached object (the clones' CPU is the limit).
    ProductPage,
    /// `GET /pages/about`: pre-rendered, served by the load balancer's edge.
    Edge,
    /// `POST` and `DELETE /api/events/{id}/rsvp` by 16 users: writes, each with
    /// its outbox message.
    Rsvp,
    /// A read-heavy browse: lists, products, pages, my account, now and then a login.
    Browse,
}

pub const ALL: &[Scenario] = &[
    Scenario::Ping,
    Scenario::Product,
    Scenario::ProductUncached,
    Scenario::ProductPage,
    Scenario::Edge,
    Scenario::Rsvp,
    Scenario::Browse,
];

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Product => "product",
            Self::ProductUncached => "product-uncached",
            Self::ProductPage => "product-page",
            Self::Edge => "edge",
            Self::Rsvp => "rsvp",
            Self::Browse => "browse",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        ALL.iter().copied().find(|s| s.name() == name)
    }

    /// The scenario `--scenario` names; a clear error (exit 2) otherwise.
    pub fn from_flag(name: &str) -> Result<Self, bakery_config::ConfigError> {
        Self::parse(name).ok_or_else(|| {
            bakery_config::ConfigError::new(
                "--scenario",
                format!("expected one of {}", Self::names()),
            )
        })
    }

    pub fn names() -> String {
        ALL.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
    }

    /// Environment the clones need for this scenario.
    pub fn clone_env(self) -> Vec<(String, String)> {
        match self {
            Self::ProductUncached => vec![("BAKERY_CACHE_URL".into(), "none".into())],
            _ => vec![],
        }
    }

    /// Makes what the scenario needs through `base` (a load balancer of the lab)
    /// and returns its requests.
    pub async fn prepare(self, lab: &Lab, base: &str) -> anyhow::Result<Mix> {
        const PRODUCT: i64 = 1; // the demo bakery's first loaf
        Ok(match self {
            Self::Ping => Mix::one(Call::get("/api/ping")),
            Self::Product | Self::ProductUncached => {
                Mix::one(Call::get(format!("/api/products/{PRODUCT}")))
            }
            Self::ProductPage => {
                let cookie = user(base, "bench-reader").await?;
                Mix::one(Call::get(format!("/products/{PRODUCT}")).with_cookie(Some(&cookie)))
            }
            Self::Edge => {
                publish_page(lab, base).await?;
                Mix::one(Call::get("/pages/about"))
            }
            Self::Rsvp => {
                let event = big_event(lab).await?;
                let mut calls = Vec::new();
                for i in 0..16 {
                    let cookie = user(base, &format!("bench-guest-{i}")).await?;
                    let path = format!("/api/events/{event}/rsvp");
                    let mut rsvp = Call::get(path.clone()).with_cookie(Some(&cookie));
                    rsvp.method = hyper::Method::POST;
                    let mut cancel = rsvp.clone();
                    cancel.method = hyper::Method::DELETE;
                    calls.push((rsvp, 1));
                    calls.push((cancel, 1));
                }
                Mix::new(calls)
            }
            Self::Browse => {
                let cookie = user(base, "bench-browser").await?;
                let login = Call {
                    method: hyper::Method::POST,
                    path: "/api/session".into(),
                    cookie: None,
                    body: Some(Bytes::from(
                        json!({"username": "bench-browser", "password": USER_PASSWORD}).to_string(),
                    )),
                };
                let me = Some(cookie.as_str());
                Mix::new(vec![
                    (Call::get("/api/products?limit=20"), 8),
                    (Call::get("/api/products/1"), 6),
                    (Call::get("/api/products/2"), 4),
                    (Call::get("/api/products/3"), 3),
                    (Call::get("/products/1").with_cookie(me), 4),
                    (Call::get("/api/events"), 4),
                    (Call::get("/api/me").with_cookie(me), 4),
                    (Call::get("/api/me/rsvps").with_cookie(me), 2),
                    (login, 1),
                ])
            }
        })
    }
}

const USER_PASSWORD: &str = "bench-password";

/// Signs `username` up (once) and logs in; its cookie pair.
pub(crate) async fn user(base: &str, username: &str) -> anyhow::Result<String> {
    let _ = reqwest::Client::new()
        .post(format!("{base}/api/users"))
        .json(&json!({
            "username": username,
            "email": format!("{username}@bench.localhost"),
            "password": USER_PASSWORD,
        }))
        .send()
        .await?;
    log_in(base, username, USER_PASSWORD).await
}

/// A class nobody can fill: RSVPs never meet `event_full`.
pub(crate) async fn big_event(lab: &Lab) -> anyhow::Result<i64> {
    let db = bakery_db::Database::connect_configured(&lab.config).await?;
    let (id, _) = db
        .create_event(bakery_db::calendar::NewEvent {
            title: "Benchmark bake-along",
            description: "Room for everyone.",
            starts_at: bakery_core::now_millis() + 86_400_000,
            capacity: 100_000,
        })
        .await?;
    db.close().await;
    Ok(id)
}

/// Publishes `/pages/about` and waits until the edge serves it: a worker of the
/// lab renders it, then stops.
async fn publish_page(lab: &Lab, base: &str) -> anyhow::Result<()> {
    let admin = log_in(base, "admin", ADMIN_PASSWORD).await?;
    let http = reqwest::Client::new();
    let put = http
        .put(format!("{base}/api/pages/about"))
        .header("cookie", &admin)
        .json(&json!({
            "title": "About the bakery",
            "body_markdown": "# Baked overnight\n\nEvery page here was rendered before you asked.",
        }))
        .send()
        .await?;
    anyhow::ensure!(
        put.status().as_u16() == 202,
        "PUT /api/pages/about: {}",
        put.status()
    );
    let mut worker = lab
        .launcher
        .start(&bakery_supervisor::child::ChildSpec {
            role: bakery_supervisor::child::Role::Worker,
            id: "bench-worker".into(),
            listen: "127.0.0.1:0".into(),
            args: vec![],
        })
        .await?;
    let mut served = false;
    for _ in 0..200 {
        let page = http.get(format!("{base}/pages/about")).send().await?;
        if page.headers().get("x-edge").is_some_and(|v| v == "hit") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop(Duration::from_secs(10)).await;
    anyhow::ensure!(served, "the page was not at the edge within 20 s");
    Ok(())
}
