//! `GET /api/notifications`: the user's newest notifications. Their live stream,
//! `/api/notifications/stream`, is the push service's (`bakery push`).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bakery_db::messaging::Notification;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::CurrentUser;
use crate::openapi::{ListOf, NeedsSession, Unavailable};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// My newest notifications (50); their live stream is the push service's.
#[utoipa::path(get, path = "/api/notifications", operation_id = "list_notifications", tag = "notifications", security(("session" = [])),
    responses((status = 200, body = ListOf<Notification>, description = "OK"), NeedsSession, Unavailable))]
async fn list(State(state): State<AppState>, current: CurrentUser) -> ApiResult<Response> {
    let items = state.app.notifications(current.user.id).await?;
    Ok(axum::Json(ListOf { items }).into_response())
}
