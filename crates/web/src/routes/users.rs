//! Public profiles: who a user is and what they reviewed. Both are cached queries,
//! so after a rename every page showing the user's name shows the new one.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use bakery_core::Profile;
use serde_json::json;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::MaybeUser;
use crate::routes::catalog::Page;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/users/{username}", get(profile))
        .route("/api/users/{username}/reviews", get(reviews))
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

async fn profile(
    State(state): State<AppState>,
    current: MaybeUser,
    Path(username): Path<String>,
) -> ApiResult<axum::Json<Profile>> {
    Ok(axum::Json(find(&state, &current, &username).await?))
}

async fn reviews(
    State(state): State<AppState>,
    current: MaybeUser,
    Path(username): Path<String>,
    query: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<serde_json::Value>> {
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
    Ok(axum::Json(
        json!({ "user": user, "items": items, "next_cursor": next_cursor }),
    ))
}
