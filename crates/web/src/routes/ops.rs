//! Operations: `/api/ping`, `/healthz`, `/metrics` (contract: "Operations").

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::openapi::Pong;

/// `/api/ping` is in the API document; `/healthz` and `/metrics` are every
/// process's own, for the load balancer and Prometheus.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ping))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

/// The cheapest proxied route: touches no store.
#[utoipa::path(get, path = "/api/ping", operation_id = "ping", tag = "operations",
    responses((status = 200, body = Pong, description = "OK")))]
async fn ping(State(state): State<AppState>) -> Response {
    Json(Pong {
        pong: true,
        id: &state.id,
    })
    .into_response()
}

/// 200 when this clone can serve; 503 while draining (so the load balancer stops
/// sending new requests at once) or when a store it needs does not answer.
async fn healthz(State(state): State<AppState>) -> Response {
    let id = &*state.id;
    if state.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining", "id": id})),
        )
            .into_response();
    }
    let (db, sessions, broker_up) = tokio::join!(
        state.app.db().ping(),
        state.sessions.ping(),
        state.app.broker().is_up()
    );
    let broker = if broker_up { "up" } else { "down" };
    let failing: Vec<&str> = [
        ("database", db.is_err()),
        ("sessions", sessions.is_err()),
        ("broker", !broker_up && state.broker_required()),
    ]
    .into_iter()
    .filter_map(|(name, failed)| failed.then_some(name))
    .collect();
    if failing.is_empty() {
        Json(json!({"status": "ok", "id": id, "broker": broker})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "id": id, "failing": failing, "broker": broker})),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
