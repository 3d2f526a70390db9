//! Jobs (contract: "Jobs"): read and cancel one's own; an admin may queue any kind.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bakery_core::job::Job;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{CurrentUser, Id, Json};
use crate::openapi::{BadRequest, JobAccepted, JsonBody, NeedsSession, NotFound, Unavailable};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(enqueue))
        .routes(routes!(show, cancel))
}

#[derive(Deserialize, ToSchema)]
struct NewJob {
    /// `noop`, `image` or `render`.
    kind: String,
    /// What the kind takes, e.g. `{"ms": 100}` for `noop`.
    #[serde(default)]
    payload: serde_json::Value,
}

/// `POST /api/jobs` (admin; an addition to the contract): queues a job of any kind,
/// e.g. `{"kind": "noop", "payload": {"ms": 100}}`.
#[utoipa::path(post, path = "/api/jobs", operation_id = "enqueue_job", tag = "jobs", request_body = NewJob,
    security(("session" = [])),
    responses((status = 202, body = JobAccepted, description = "accepted"), JsonBody, NeedsSession, Unavailable))]
async fn enqueue(
    State(state): State<AppState>,
    current: CurrentUser,
    Json(new): Json<NewJob>,
) -> ApiResult<Response> {
    state.app.require_admin(&current.user).await?;
    let written = state
        .app
        .enqueue_job(&new.kind, Some(&current.user), new.payload)
        .await?;
    let (remembered, id) = current.remember(&state, written).await;
    Ok((
        StatusCode::ACCEPTED,
        remembered,
        axum::Json(JobAccepted { job_id: id }),
    )
        .into_response())
}

/// A job's state and progress (its owner or an admin).
#[utoipa::path(get, path = "/api/jobs/{id}", operation_id = "show_job", tag = "jobs",
    params(("id" = i64, Path, minimum = 1)), security(("session" = [])),
    responses((status = 200, body = Job, description = "OK"), BadRequest, NeedsSession, NotFound, Unavailable))]
async fn show(
    State(state): State<AppState>,
    current: CurrentUser,
    Id(id): Id,
) -> ApiResult<Response> {
    let job = state.app.job(&current.user, id, current.lsn).await?;
    Ok(axum::Json(job).into_response())
}

/// Cancels a queued or running job (its owner or an admin); it ends `cancelled`.
#[utoipa::path(delete, path = "/api/jobs/{id}", operation_id = "cancel_job", tag = "jobs",
    params(("id" = i64, Path, minimum = 1)), security(("session" = [])),
    responses((status = 204, description = "cancelled"), BadRequest, NeedsSession, NotFound, Unavailable,
        (status = 409, body = crate::openapi::ErrorBody, description = "the job has already ended (`job_finished`)")))]
async fn cancel(
    State(state): State<AppState>,
    current: CurrentUser,
    Id(id): Id,
) -> ApiResult<Response> {
    state.app.cancel_job(&current.user, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
