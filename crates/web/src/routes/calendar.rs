//! The calendar (contract: "Calendar"): baking classes and RSVPs.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bakery_app::calendar::{EventDraft, Rsvped};
use serde_json::json;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{CurrentUser, Id, Json, MaybeUser};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/events", get(list).post(create))
        .route("/api/events/{id}", get(show))
        .route("/api/events/{id}/rsvp", post(rsvp).delete(cancel))
        .route("/api/me/rsvps", get(my_rsvps))
}

async fn list(State(state): State<AppState>, MaybeUser(current): MaybeUser) -> ApiResult<Response> {
    let items = state.app.events(current.and_then(|c| c.lsn)).await?;
    Ok(axum::Json(json!({ "items": items })).into_response())
}

async fn show(
    State(state): State<AppState>,
    MaybeUser(current): MaybeUser,
    Id(id): Id,
) -> ApiResult<Response> {
    let (viewer, after) = current
        .map(|c| (Some(c.user.id), c.lsn))
        .unwrap_or((None, None));
    Ok(axum::Json(state.app.event(id, viewer, after).await?).into_response())
}

async fn create(
    State(state): State<AppState>,
    current: CurrentUser,
    Json(draft): Json<EventDraft>,
) -> ApiResult<Response> {
    let written = state.app.create_event(&current.user, draft).await?;
    let (remembered, event) = current.remember(&state, written).await;
    Ok((StatusCode::CREATED, remembered, axum::Json(event)).into_response())
}

async fn rsvp(
    State(state): State<AppState>,
    current: CurrentUser,
    Id(event_id): Id,
) -> ApiResult<Response> {
    let written = state.app.rsvp(&current.user, event_id).await?;
    let (remembered, rsvped) = current.remember(&state, written).await;
    Ok(match rsvped {
        Rsvped::Created(rsvp) => {
            (StatusCode::CREATED, remembered, axum::Json(rsvp)).into_response()
        }
        Rsvped::Existing(rsvp) => (remembered, axum::Json(rsvp)).into_response(),
    })
}

async fn cancel(
    State(state): State<AppState>,
    current: CurrentUser,
    Id(event_id): Id,
) -> ApiResult<Response> {
    let written = state.app.cancel_rsvp(&current.user, event_id).await?;
    let (remembered, _) = current.remember(&state, written).await;
    Ok((StatusCode::NO_CONTENT, remembered, ()).into_response())
}

async fn my_rsvps(State(state): State<AppState>, current: CurrentUser) -> ApiResult<Response> {
    let items = state.app.rsvps_of(current.user.id, current.lsn).await?;
    Ok(axum::Json(json!({ "items": items })).into_response())
}
