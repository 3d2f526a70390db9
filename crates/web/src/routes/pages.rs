//! Staff pages (contract: "Jobs, notifications, pages"): `PUT /api/pages/{slug}`
//! stores the Markdown and answers 202 with the job that renders it for the edge.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bakery_app::pages::PageDraft;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{CurrentUser, Json};
use crate::openapi::{JobAccepted, JsonBody, NeedsSession, Unavailable};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(put_page))
}

/// Stores a staff page (admin) and queues its render; the load balancer serves it
/// at `/pages/{slug}` once rendered.
#[utoipa::path(put, path = "/api/pages/{slug}", operation_id = "put_page", tag = "pages", request_body = PageDraft,
    params(("slug" = String, Path, pattern = "^[a-z0-9-]{1,64}$")), security(("session" = [])),
    responses((status = 202, body = JobAccepted, description = "accepted"), JsonBody, NeedsSession, Unavailable))]
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
        axum::Json(JobAccepted { job_id: id }),
    )
        .into_response())
}
