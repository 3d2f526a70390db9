//! `/api/ping`, the cheapest proxied route (contract: "Operations"). `/healthz` and
//! `/metrics` are the process shell's (`bakery_service`).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::openapi::Pong;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ping))
}

/// The cheapest proxied route: touches no store.
#[utoipa::path(get, path = "/api/ping", operation_id = "ping", tag = "operations",
    responses((status = 200, body = Pong, description = "OK")))]
async fn ping(State(state): State<AppState>) -> Response {
    Json(Pong {
        pong: true,
        id: state.id(),
    })
    .into_response()
}
