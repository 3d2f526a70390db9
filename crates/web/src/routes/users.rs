//! Public profiles: who a user is and what they reviewed. Both are cached queries,
//! so after a rename every page showing the user's name shows the new one.

use axum::extract::{Path, Query, State};
use bakery_core::Profile;
use bakery_core::catalog::UserReview;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::MaybeUser;
use crate::openapi::{BadRequest, NotFound, Unavailable};
use crate::routes::catalog::Page;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(profile))
        .routes(routes!(reviews))
}

/// A page of what a user reviewed, with who they are.
#[derive(Serialize, ToSchema)]
struct ReviewsOfUser {
    user: Profile,
    items: Vec<UserReview>,
    next_cursor: Option<String>,
}

/// The profile named in the path; 404 when nobody is called that (or the name
/// cannot be one).
pub async fn find(state: &AppState, current: &MaybeUser, username: &str) -> ApiResult<Profile> {
    let after = current.0.as_ref().and_then(|c| c.lsn);
    state
        .app
        .profile(username, after)
        .await?
        .ok_or_else(ApiError::not_found)
}

/// What anybody may see of a user.
#[utoipa::path(get, path = "/api/users/{username}", operation_id = "show_profile", tag = "accounts",
    params(("username" = String, Path)),
    responses((status = 200, body = Profile, description = "OK"), NotFound, Unavailable))]
async fn profile(
    State(state): State<AppState>,
    current: MaybeUser,
    Path(username): Path<String>,
) -> ApiResult<axum::Json<Profile>> {
    Ok(axum::Json(find(&state, &current, &username).await?))
}

/// What a user reviewed, newest first, a page at a time.
#[utoipa::path(get, path = "/api/users/{username}/reviews", operation_id = "list_user_reviews", tag = "accounts",
    params(("username" = String, Path), Page),
    responses((status = 200, body = ReviewsOfUser, description = "OK"), BadRequest, NotFound, Unavailable))]
async fn reviews(
    State(state): State<AppState>,
    current: MaybeUser,
    Path(username): Path<String>,
    query: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<ReviewsOfUser>> {
    let Query(page) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let (limit, cursor) = page.parse()?;
    let user = find(&state, &current, &username).await?;
    // Newest first: the cursor is the last id seen, and the first page starts above all ids.
    let before = if cursor == 0 { i64::MAX } else { cursor };
    let after = current.0.as_ref().and_then(|c| c.lsn);
    let items = state
        .app
        .user_reviews(user.id, before, limit + 1, after)
        .await?;
    let (items, next_cursor) = Page::cut(items, limit, |r| r.id);
    Ok(axum::Json(ReviewsOfUser {
        user,
        items,
        next_cursor,
    }))
}
