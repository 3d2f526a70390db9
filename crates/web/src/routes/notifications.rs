//! `GET /api/notifications`: the user's newest notifications. Their live stream,
//! `/api/notifications/stream`, is the push service's (`bakery push`).

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::CurrentUser;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/notifications", get(list))
}

async fn list(State(state): State<AppState>, current: CurrentUser) -> ApiResult<Response> {
    let items = state.app.notifications(current.user.id).await?;
    Ok(axum::Json(json!({ "items": items })).into_response())
}
