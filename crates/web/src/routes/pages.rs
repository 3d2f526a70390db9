//! Staff pages (contract: "Jobs, notifications, pages"): `PUT /api/pages/{slug}`
//! stores the Markdown and answers 202 with the job that renders it for the edge.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use bakery_app::pages::PageDraft;
use serde_json::json;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{CurrentUser, Json};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/pages/{slug}", put(put_page))
}

async fn put_page(
    State(state): State<AppState>,
    current: CurrentUser,
    Path(slug): Path<String>,
    Json(draft): Json<PageDraft>,
) -> ApiResult<Response> {
    let written = state.app.put_page(&current.user, &slug, draft).await?;
    let (remembered, id) = current.remember(&state, written).await;
    Ok((
        StatusCode::ACCEPTED,
        remembered,
        axum::Json(json!({ "job_id": id })),
    )
        .into_response())
}
