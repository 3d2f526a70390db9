//! The load balancer's own routes: `/healthz` on both addresses; `/metrics` and
//! `/lb/backends` on the admin address only (they show internal addresses, health and
//! traffic: nothing for the public); membership changes there too, with the admin
//! token, by the supervisor or an operator.
//!
//! `PUT /lb/backends/{pool}/{id}` with `{"addr": "host:port"}` adds or replaces a
//! member; `DELETE /lb/backends/{pool}/{id}` removes one.

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use bakery_config::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::Lb;
use crate::backend::Backend;
use crate::reply::{self, Body};

/// Whether `path` is the load balancer's own on its public address: never
/// forwarded to a backend (so no clone's `/metrics` is reachable from outside), and
/// answered 404 there but for `/healthz`; [`handle`] on the admin listener answers
/// them all.
pub fn owns(path: &str) -> bool {
    path == "/healthz" || path == "/metrics" || path == "/lb/backends" || path.starts_with("/lb/")
}

/// Which address a request came in on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Public,
    Admin,
}

pub async fn handle(lb: &Lb, req: Request<Incoming>, on: Listener) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => healthz(lb),
        (_, "/healthz") => reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "that method is not allowed here",
        ),
        _ if on == Listener::Public => {
            reply::error(StatusCode::NOT_FOUND, "not_found", "there is nothing here")
        }
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(reply::full(lb.metrics.render()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        (&Method::GET, "/lb/backends") => reply::json(StatusCode::OK, &backends(lb)),
        (method, path)
            if path.starts_with("/lb/backends/")
                && (method == Method::PUT || method == Method::DELETE) =>
        {
            change_membership(lb, req).await
        }
        (_, "/metrics" | "/lb/backends") => reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "that method is not allowed here",
        ),
        _ => reply::error(StatusCode::NOT_FOUND, "not_found", "there is nothing here"),
    }
}

fn healthz(lb: &Lb) -> Response<Body> {
    if lb.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return reply::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "draining", "id": lb.id}),
        );
    }
    reply::json(StatusCode::OK, &json!({"status": "ok", "id": lb.id}))
}

fn backends(lb: &Lb) -> serde_json::Value {
    let mut names: Vec<&String> = lb.pools.keys().collect();
    names.sort();
    let pools: Vec<serde_json::Value> = names
        .into_iter()
        .map(|name| {
            let members: Vec<serde_json::Value> = lb.pools[name]
                .members()
                .iter()
                .map(|b| {
                    json!({
                        "id": b.id, "addr": b.addr.to_string(), "healthy": b.is_healthy(),
                        "draining": b.is_draining(), "inflight": b.inflight(), "served": b.served(),
                    })
                })
                .collect();
            json!({"name": name, "backends": members})
        })
        .collect();
    json!({ "pools": pools })
}

async fn change_membership(lb: &Lb, req: Request<Incoming>) -> Response<Body> {
    let authorized = match (
        &lb.config.admin_token,
        req.headers().get(header::AUTHORIZATION),
    ) {
        (Some(token), Some(given)) => constant_time_eq(
            given.as_bytes(),
            format!("Bearer {}", token.expose_secret()).as_bytes(),
        ),
        _ => false,
    };
    if !authorized {
        return reply::error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "changing backends needs the admin token",
        );
    }
    let path = req.uri().path().to_string();
    let Some((pool_name, id)) = path.trim_start_matches("/lb/backends/").split_once('/') else {
        return reply::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "use /lb/backends/{pool}/{id}",
        );
    };
    let Some(pool) = lb.pool(pool_name) else {
        return reply::error(
            StatusCode::NOT_FOUND,
            "unknown_pool",
            "there is no such pool",
        );
    };
    if req.method() == Method::DELETE {
        return if pool.remove(id) {
            tracing::info!(pool = pool_name, backend = id, "backend removed");
            reply::json(StatusCode::OK, &json!({"removed": id}))
        } else {
            reply::error(
                StatusCode::NOT_FOUND,
                "unknown_backend",
                "there is no such backend",
            )
        };
    }
    let body = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return reply::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the body is too large",
            );
        }
    };
    let addr = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("addr")
                .and_then(|a| a.as_str())
                .and_then(|a| a.parse().ok())
        });
    let Some(addr) = addr else {
        return reply::error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "send {\"addr\": \"IP:port\"}",
        );
    };
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return reply::error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "a backend id is 1 to 64 of [A-Za-z0-9_-]",
        );
    }
    pool.upsert(Backend::new(id.to_string(), addr));
    tracing::info!(pool = pool_name, backend = id, %addr, "backend added");
    reply::json(
        StatusCode::OK,
        &json!({"pool": pool_name, "id": id, "addr": addr.to_string()}),
    )
}

/// Compares secrets without an early exit that would leak their prefix by timing.
/// Compares without an early exit, so the time taken tells nothing of the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// Serves the admin API on its own listener until `stop`.
pub async fn serve(
    lb: std::sync::Arc<Lb>,
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            // The only change is to "stopped".
            _ = stop.changed() => return,
        };
        let lb = lb.clone();
        let service = hyper::service::service_fn(move |req| {
            let lb = lb.clone();
            async move {
                let response = handle(&lb, req, Listener::Admin).await;
                Ok::<_, std::convert::Infallible>(lb.stamp(response))
            }
        });
        let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
