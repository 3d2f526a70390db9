//! Operations (contract: "Operations"): `/api/ping`, the cheapest proxied route;
//! and for admins, a picture of the whole system (`/api/ops/snapshot`; `/ops`
//! shows them live) and the journey of a request (`/api/ops/journey/{request_id}`).
//! `/healthz` and `/metrics` are the process shell's (`bakery_service`).

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bakery_db::journey::Hop;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::CurrentUser;
use crate::openapi::{NeedsSession, NotFound, Pong, Unavailable};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ping))
        .routes(routes!(snapshot))
        .routes(routes!(journey))
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

/// The whole system now (admin): every process by role with its requests and
/// in-flight, the load balancers' pools (requests served by each member), caches,
/// database and replicas, broker queues, jobs, push streams and the edge.
#[utoipa::path(get, path = "/api/ops/snapshot", operation_id = "ops_snapshot", tag = "operations",
    security(("session" = [])),
    responses((status = 200, body = Object, description = "the picture"), NeedsSession, Unavailable))]
async fn snapshot(State(state): State<AppState>, current: CurrentUser) -> ApiResult<Response> {
    state.app.require_admin(&current.user).await?;
    Ok(Json(state.ops.snapshot().await).into_response())
}

#[derive(Serialize, ToSchema)]
struct Journey {
    request_id: String,
    /// In time order.
    #[schema(value_type = Vec<Object>)]
    hops: Vec<Hop>,
}

/// What a request caused across processes (admin): its write and outbox row, each
/// publish, each consumer's delivery with its outcome (ack, retry, dead), the mail,
/// the push, the follow-ups — hop by hop, in time order.
#[utoipa::path(get, path = "/api/ops/journey/{request_id}", operation_id = "ops_journey", tag = "operations",
    params(("request_id" = String, Path, description = "an `x-request-id` the system answered")),
    security(("session" = [])),
    responses((status = 200, body = Journey, description = "the hops"), NeedsSession, NotFound, Unavailable))]
async fn journey(
    State(state): State<AppState>,
    current: CurrentUser,
    Path(request_id): Path<String>,
) -> ApiResult<Response> {
    state.app.require_admin(&current.user).await?;
    let hops = state.app.journey(&request_id).await?;
    Ok(Json(Journey { request_id, hops }).into_response())
}
