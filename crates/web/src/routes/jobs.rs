//! Jobs (contract: "Jobs"): read and cancel one's own; an admin may queue any kind.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{CurrentUser, Id, Json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/jobs", post(enqueue))
        .route("/api/jobs/{id}", get(show).delete(cancel))
}

#[derive(Deserialize)]
struct NewJob {
    kind: String,
    #[serde(default)]
    payload: serde_json::Value,
}

/// `POST /api/jobs` (admin; an addition to the contract): queues a job of any kind,
/// e.g. `{"kind": "noop", "payload": {"ms": 100}}`.
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
        axum::Json(json!({ "job_id": id })),
    )
        .into_response())
}

async fn show(
    State(state): State<AppState>,
    current: CurrentUser,
    Id(id): Id,
) -> ApiResult<Response> {
    let job = state.app.job(&current.user, id, current.lsn).await?;
    Ok(axum::Json(job).into_response())
}

async fn cancel(
    State(state): State<AppState>,
    current: CurrentUser,
    Id(id): Id,
) -> ApiResult<Response> {
    state.app.cancel_job(&current.user, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
