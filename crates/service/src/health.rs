//! `/healthz` and `/metrics`: every process's own, for the load balancer, the
//! supervisor and Prometheus.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use crate::Shell;

/// One thing `/healthz` asks about: a store or a broker the process uses.
#[derive(Clone)]
pub struct Check {
    name: &'static str,
    /// Whether the process cannot do its work without it (then `/healthz` fails
    /// while it is away); otherwise it is only reported.
    required: bool,
    probe: Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>,
}

impl Check {
    /// A check named `name` that asks `probe(handle)`: true when the thing is up.
    /// `handle` is what it asks through (a pool, a client), cloned for each ask.
    pub fn new<T, F, Fut>(name: &'static str, required: bool, handle: T, probe: F) -> Self
    where
        T: Clone + Send + Sync + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        Self {
            name,
            required,
            probe: Arc::new(move || Box::pin(probe(handle.clone()))),
        }
    }
}

/// How long one check may take before it counts as down: less than the balancer's
/// probe timeout (1 s by default), so that a store that answers nothing (a host cut
/// away) makes its check fail, not the whole `/healthz` — which would take a clone
/// that still serves out of the rotation for a store it can do without.
const CHECK_LIMIT: std::time::Duration = std::time::Duration::from_millis(700);

pub(crate) fn router(shell: &Shell) -> Router {
    let (health, metrics) = (shell.clone(), shell.clone());
    Router::new()
        .route("/healthz", get(move || healthz(health.clone())))
        .route("/metrics", get(move || render_metrics(metrics.clone())))
}

/// 200 when this process can do its work — `"status": "ok"`, or `"degraded"` naming
/// what it does without (a cache bypassed, public pages only); 503 while draining
/// (so the load balancer stops sending new requests at once) or when something it
/// requires does not answer. Each check is named with `up` or `down`.
async fn healthz(shell: Shell) -> Response {
    let id = shell.id();
    if shell.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining", "id": id})),
        )
            .into_response();
    }
    let checks = shell.checks();
    let answers = futures::future::join_all(checks.iter().map(|check| async {
        tokio::time::timeout(CHECK_LIMIT, (check.probe)())
            .await
            .unwrap_or(false)
    }))
    .await;
    let mut body = Map::new();
    let (mut failing, mut degraded) = (Vec::new(), Vec::new());
    for (check, up) in checks.iter().zip(answers) {
        body.insert(
            check.name.into(),
            Value::from(if up { "up" } else { "down" }),
        );
        match (up, check.required) {
            (true, _) => {}
            (false, true) => failing.push(check.name),
            (false, false) => degraded.push(check.name),
        }
    }
    body.insert("id".into(), Value::from(id));
    if failing.is_empty() && degraded.is_empty() {
        body.insert("status".into(), Value::from("ok"));
        Json(body).into_response()
    } else if failing.is_empty() {
        body.insert("status".into(), Value::from("degraded"));
        body.insert("degraded".into(), Value::from(degraded));
        Json(body).into_response()
    } else {
        body.insert("status".into(), Value::from("unavailable"));
        body.insert("failing".into(), Value::from(failing));
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn render_metrics(shell: Shell) -> Response {
    // Less this request itself.
    metrics::gauge!("bakery_http_in_flight").set(shell.in_flight().saturating_sub(1) as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shell.metrics().render(),
    )
        .into_response()
}
