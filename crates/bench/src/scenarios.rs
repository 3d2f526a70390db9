//! What a bench run asks of the system: each scenario prepares its data once
//! (users, sessions, an event, a pre-rendered page) and gives the [`Mix`] of
//! requests the load generator sends.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use crate::load::{Call, Mix};
use crate::topology::{Lab, log_in};

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
    /// `GET /products/{id}` with no session: the product page as a visitor gets it,
    /// pre-rendered and served by the load balancer's edge (the page
    /// `product-page` renders per request, and `bench compare --peer` serves from
    /// nginx and Varnish).
    Edge,
    /// `POST` and `DELETE /api/events/{id}/rsvp` by 16 users: writes, each with
    /// its outbox message.
    Rsvp,
    /// The same writes by 64 users, all to one class: every request changes that
    /// class's row (`events.attendees`) on the one primary, so clones queue for it
    /// (contention: the curve `bench scale` fits with σ above zero).
    HotWrite,
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
    Scenario::HotWrite,
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
            Self::HotWrite => "hot-write",
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

    /// Why its curve has the shape it has: what the clones share on its path.
    pub fn why(self) -> &'static str {
        match self {
            Self::Ping => {
                "the cheapest proxied route: each clone adds its own HTTP work, until the load balancer's CPU or the machine's cores are the limit"
            }
            Self::Product => {
                "each read is one key of the cache: the clones share nothing else on this path"
            }
            Self::ProductUncached => {
                "every read assembles the product from the database: the clones share it, and queue for its CPU and locks"
            }
            Self::ProductPage => {
                "each clone renders the page from the cached object: the clones share nothing else on this path, so each adds its share"
            }
            Self::Edge => {
                "the load balancer answers from its own copy: the clones are not on the path, so adding them adds nothing"
            }
            Self::Rsvp => {
                "each RSVP is a write transaction, with its outbox message, on the one primary: the clones queue for its write lock"
            }
            Self::HotWrite => {
                "every request writes the same row (one class's seat count) on the one primary, so the clones queue for its write lock"
            }
            Self::Browse => {
                "a mix of cached reads, rendered pages and now and then a login: mostly the clones' own CPU, the password hashing heaviest"
            }
        }
    }

    /// Why the database (a server) spends more per request the more requests it
    /// is sent at once, for the scenarios where it is on the path.
    pub fn crowding(self) -> &'static str {
        match self {
            Self::Rsvp | Self::HotWrite => {
                "each transaction waiting for the class's row is a server process the database must put to sleep and wake, and that then checks the row's newer versions before it may write — the more wait, the longer each one's walk"
            }
            _ => {
                "the more requests it serves at once, the more each costs it (locks, process switches)"
            }
        }
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
                let path = format!("/products/{PRODUCT}");
                at_the_edge(lab, base, &path).await?;
                Mix::one(Call::get(path))
            }
            Self::Rsvp => rsvps(lab, base, "bench-guest", 16).await?,
            Self::HotWrite => rsvps(lab, base, "bench-hot", 64).await?,
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

/// `users` users each RSVPing to and cancelling from one big class, at random.
async fn rsvps(lab: &Lab, base: &str, prefix: &str, users: usize) -> anyhow::Result<Mix> {
    let event = big_event(lab).await?;
    let path = format!("/api/events/{event}/rsvp");
    let mut calls = Vec::new();
    for i in 0..users {
        let cookie = user(base, &format!("{prefix}-{i}")).await?;
        let mut rsvp = Call::get(path.clone()).with_cookie(Some(&cookie));
        rsvp.method = hyper::Method::POST;
        let mut cancel = rsvp.clone();
        cancel.method = hyper::Method::DELETE;
        calls.push((rsvp, 1));
        calls.push((cancel, 1));
    }
    Ok(Mix::new(calls))
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

/// Waits until the edge serves `path` to a visitor: a worker of the lab renders it
/// (a miss asks for that), then stops.
async fn at_the_edge(lab: &Lab, base: &str, path: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let mut worker = lab.start_worker().await?;
    let mut served = false;
    for _ in 0..200 {
        let page = http.get(format!("{base}{path}")).send().await?;
        if page.headers().get("x-edge").is_some_and(|v| v == "hit") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop(Duration::from_secs(10)).await;
    anyhow::ensure!(served, "{path} was not at the edge within 20 s");
    Ok(())
}
