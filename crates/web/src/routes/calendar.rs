//! The calendar (contract: "Calendar"): baking classes and RSVPs.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bakery_core::calendar;
use bakery_db::calendar::{NewEvent, RsvpOutcome};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{AdminUser, CurrentUser, Id, Json, MaybeUser};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/events", get(list).post(create))
        .route("/api/events/{id}", get(show))
        .route("/api/events/{id}/rsvp", post(rsvp).delete(cancel))
        .route("/api/me/rsvps", get(my_rsvps))
}

async fn list(State(state): State<AppState>, MaybeUser(current): MaybeUser) -> ApiResult<Response> {
    let items = state.event_list(current.and_then(|c| c.lsn)).await?;
    Ok(axum::Json(json!({ "items": items })).into_response())
}

async fn show(State(state): State<AppState>, MaybeUser(current): MaybeUser, Id(id): Id) -> ApiResult<Response> {
    let (user_id, after) = current.map(|c| (Some(c.user.id), c.lsn)).unwrap_or((None, None));
    let event = state.db.event(id, user_id, after).await?.ok_or_else(ApiError::not_found)?;
    Ok(axum::Json(event).into_response())
}

#[derive(Deserialize)]
struct NewEventBody {
    title: String,
    #[serde(default)]
    description: String,
    starts_at: String,
    capacity: i64,
}

async fn create(State(state): State<AppState>, AdminUser(admin): AdminUser, Json(body): Json<NewEventBody>) -> ApiResult<Response> {
    let title = calendar::event_title(&body.title)?;
    let description = calendar::event_description(&body.description)?;
    let starts_at = bakery_core::clock::parse_rfc3339(&body.starts_at)?;
    let capacity = calendar::capacity(body.capacity)?;
    let (id, lsn) =
        state.db.create_event(NewEvent { title: &title, description: &description, starts_at, capacity }).await?;
    admin.wrote(&state, lsn).await?;
    state.events_changed().await;
    let event = state.db.event(id, None, lsn).await?.ok_or_else(ApiError::not_found)?;
    Ok((StatusCode::CREATED, axum::Json(event)).into_response())
}

async fn rsvp(State(state): State<AppState>, current: CurrentUser, Id(event_id): Id) -> ApiResult<Response> {
    let (outcome, lsn) = state.db.rsvp(event_id, current.user.id).await?;
    current.wrote(&state, lsn).await?;
    if matches!(outcome, RsvpOutcome::Created(_)) {
        state.events_changed().await;
    }
    match outcome {
        RsvpOutcome::Created(rsvp) => Ok((StatusCode::CREATED, axum::Json(rsvp)).into_response()),
        RsvpOutcome::Existing(rsvp) => Ok(axum::Json(rsvp).into_response()),
        RsvpOutcome::Full => Err(ApiError::conflict("event_full", "every seat of this class is taken")),
        RsvpOutcome::NoSuchEvent => Err(ApiError::not_found()),
    }
}

async fn cancel(State(state): State<AppState>, current: CurrentUser, Id(event_id): Id) -> ApiResult<StatusCode> {
    let (cancelled, lsn) = state.db.cancel_rsvp(event_id, current.user.id).await?;
    current.wrote(&state, lsn).await?;
    if cancelled {
        state.events_changed().await;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn my_rsvps(State(state): State<AppState>, current: CurrentUser) -> ApiResult<Response> {
    let items = state.db.rsvps_of(current.user.id, current.lsn).await?;
    Ok(axum::Json(json!({ "items": items })).into_response())
}
