//! The calendar (contract: "Calendar"): baking classes and RSVPs.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bakery_app::calendar::{EventDraft, Rsvped};
use bakery_core::calendar::{Event, EventSummary, Rsvp};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{CurrentUser, Id, Json, MaybeUser};
use crate::openapi::{BadRequest, Conflict, JsonBody, ListOf, NeedsSession, NotFound, Unavailable};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show))
        .routes(routes!(rsvp, cancel))
        .routes(routes!(my_rsvps))
}

/// The baking classes, soonest first.
#[utoipa::path(get, path = "/api/events", operation_id = "list_events", tag = "calendar",
    responses((status = 200, body = ListOf<EventSummary>, description = "OK"), Unavailable))]
async fn list(State(state): State<AppState>, MaybeUser(current): MaybeUser) -> ApiResult<Response> {
    let items = state.app.events(current.and_then(|c| c.lsn)).await?;
    Ok(axum::Json(ListOf { items }).into_response())
}

/// One class, with `my_rsvp` when logged in and RSVPed.
#[utoipa::path(get, path = "/api/events/{id}", operation_id = "show_event", tag = "calendar",
    params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, body = Event, description = "OK"), BadRequest, NotFound, Unavailable))]
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

/// A new class (admin).
#[utoipa::path(post, path = "/api/events", operation_id = "create_event", tag = "calendar", request_body = EventDraft,
    security(("session" = [])),
    responses((status = 201, body = Event, description = "created"), JsonBody, NeedsSession, Unavailable))]
async fn create(
    State(state): State<AppState>,
    current: CurrentUser,
    Json(draft): Json<EventDraft>,
) -> ApiResult<Response> {
    let written = state.app.create_event(&current.user, draft).await?;
    let (remembered, event) = current.remember(&state, written).await;
    Ok((StatusCode::CREATED, remembered, axum::Json(event)).into_response())
}

/// RSVPs to a class (user): 201 the first time, 200 with the same RSVP after;
/// the confirmation mail follows through the broker.
#[utoipa::path(post, path = "/api/events/{id}/rsvp", operation_id = "rsvp", tag = "calendar",
    params(("id" = i64, Path, minimum = 1)), security(("session" = [])),
    responses((status = 201, body = Rsvp, description = "created"), (status = 200, body = Rsvp, description = "already RSVPed"),
        BadRequest, NeedsSession, NotFound, Conflict, Unavailable))]
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

/// Cancels my RSVP to a class.
#[utoipa::path(delete, path = "/api/events/{id}/rsvp", operation_id = "cancel_rsvp", tag = "calendar",
    params(("id" = i64, Path, minimum = 1)), security(("session" = [])),
    responses((status = 204, description = "cancelled"), BadRequest, NeedsSession, NotFound, Unavailable))]
async fn cancel(
    State(state): State<AppState>,
    current: CurrentUser,
    Id(event_id): Id,
) -> ApiResult<Response> {
    let written = state.app.cancel_rsvp(&current.user, event_id).await?;
    let (remembered, _) = current.remember(&state, written).await;
    Ok((StatusCode::NO_CONTENT, remembered, ()).into_response())
}

/// My RSVPs; `confirmation_sent_at` is set once the email service has sent the mail.
#[utoipa::path(get, path = "/api/me/rsvps", operation_id = "my_rsvps", tag = "calendar", security(("session" = [])),
    responses((status = 200, body = ListOf<Rsvp>, description = "OK"), NeedsSession, Unavailable))]
async fn my_rsvps(State(state): State<AppState>, current: CurrentUser) -> ApiResult<Response> {
    let items = state.app.rsvps_of(current.user.id, current.lsn).await?;
    Ok(axum::Json(ListOf { items }).into_response())
}
