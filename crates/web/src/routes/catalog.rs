//! The catalog (contract: "Catalog"): products with their price, description,
//! images and reviews; admins change products, users write reviews.

use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bakery_app::catalog::{ProductDraft, ProductEdit, ReviewDraft, ReviewEdit};
use bakery_app::media::{UPLOAD_LIMIT, accepted};
use bakery_core::catalog::{Product, ProductSummary, Review};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{CurrentUser, Id, Json, MaybeUser, freshness};
use crate::openapi::{
    BadRequest, Conflict, JobAccepted, JsonBody, NeedsSession, NotFound, PageOf, Unavailable,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, change, remove))
        .routes(routes!(reviews, review))
        .routes(routes!(upload_image).layer(DefaultBodyLimit::max(UPLOAD_LIMIT)))
        .routes(routes!(remove_review, edit_review))
}

/// `?limit=&cursor=` of a paged list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl Page {
    /// `limit` 1–100 (default 20) and `cursor` (the `next_cursor` of the previous page).
    pub fn parse(&self) -> ApiResult<(i64, i64)> {
        let limit = match self.limit.as_deref() {
            None => 20,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if (1..=100).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_limit",
                        "limit is a whole number from 1 to 100",
                    ));
                }
            },
        };
        let cursor = match self.cursor.as_deref() {
            None | Some("") => 0,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if n >= 0 => n,
                _ => {
                    return Err(ApiError::bad_request(
                        "bad_cursor",
                        "use the next_cursor of the previous page",
                    ));
                }
            },
        };
        Ok((limit, cursor))
    }

    /// Cuts a page fetched with `limit + 1` rows (the extra one tells whether there is
    /// a next page) to `limit`, and gives the next cursor: the last id shown.
    pub fn cut<T>(
        mut items: Vec<T>,
        limit: i64,
        id: impl Fn(&T) -> i64,
    ) -> (Vec<T>, Option<String>) {
        if items.len() as i64 <= limit {
            return (items, None);
        }
        items.truncate(limit as usize);
        let next = items.last().map(|item| id(item).to_string());
        (items, next)
    }
}

/// The product list, a page at a time, in id order.
#[utoipa::path(get, path = "/api/products", operation_id = "list_products", tag = "catalog", params(Page),
    responses((status = 200, body = PageOf<ProductSummary>, description = "OK"), BadRequest, Unavailable))]
async fn list(
    State(state): State<AppState>,
    MaybeUser(current): MaybeUser,
    query: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(page) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let (limit, cursor) = page.parse()?;
    let after = current.and_then(|c| c.lsn);
    let items = state.app.product_page(cursor, limit + 1, after).await?;
    let (items, next_cursor) = Page::cut(items, limit, |p| p.id);
    Ok(axum::Json(PageOf { items, next_cursor }).into_response())
}

/// `Product:{id}`: the whole product, assembled once and served from the cache.
#[utoipa::path(get, path = "/api/products/{id}", operation_id = "show_product", tag = "catalog",
    params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, body = Product, description = "OK"), BadRequest, NotFound, Unavailable))]
async fn show(
    State(state): State<AppState>,
    MaybeUser(current): MaybeUser,
    Id(id): Id,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let after = current.and_then(|c| c.lsn);
    let json = state
        .app
        .product_json(id, after, freshness(&headers))
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response())
}

/// A new product (admin).
#[utoipa::path(post, path = "/api/products", operation_id = "create_product", tag = "catalog", request_body = ProductDraft,
    security(("session" = [])),
    responses((status = 201, body = Product, description = "created"), JsonBody, NeedsSession, Conflict, Unavailable))]
async fn create(
    State(state): State<AppState>,
    current: CurrentUser,
    Json(draft): Json<ProductDraft>,
) -> ApiResult<Response> {
    let written = state.app.create_product(&current.user, draft).await?;
    let (remembered, product) = current.remember(&state, written).await;
    Ok((StatusCode::CREATED, remembered, axum::Json(product)).into_response())
}

/// Changes a product's name, description or price (admin); the cached object is
/// updated in place.
#[utoipa::path(patch, path = "/api/products/{id}", operation_id = "change_product", tag = "catalog", request_body = ProductEdit,
    params(("id" = i64, Path, minimum = 1)), security(("session" = [])),
    responses((status = 200, body = Product, description = "OK"), JsonBody, NeedsSession, NotFound, Conflict, Unavailable))]
async fn change(
    State(state): State<AppState>,
    current: CurrentUser,
    Id(id): Id,
    Json(edit): Json<ProductEdit>,
) -> ApiResult<Response> {
    let written = state.app.change_product(&current.user, id, edit).await?;
    let (remembered, product) = current.remember(&state, written).await;
    Ok((remembered, axum::Json(product)).into_response())
}

/// Deletes a product with its reviews and images (admin).
#[utoipa::path(delete, path = "/api/products/{id}", operation_id = "delete_product", tag = "catalog",
    params(("id" = i64, Path, minimum = 1)), security(("session" = [])),
    responses((status = 204, description = "deleted"), BadRequest, NeedsSession, NotFound, Unavailable))]
async fn remove(
    State(state): State<AppState>,
    current: CurrentUser,
    Id(id): Id,
) -> ApiResult<Response> {
    let written = state.app.delete_product(&current.user, id).await?;
    let (remembered, ()) = current.remember(&state, written).await;
    Ok((StatusCode::NO_CONTENT, remembered, ()).into_response())
}

/// A review of a product (user); one per user per product.
#[utoipa::path(post, path = "/api/products/{id}/reviews", operation_id = "review_product", tag = "catalog", request_body = ReviewDraft,
    params(("id" = i64, Path, minimum = 1)), security(("session" = [])),
    responses((status = 201, body = Review, description = "created"), JsonBody, NeedsSession, NotFound, Conflict, Unavailable))]
async fn review(
    State(state): State<AppState>,
    current: CurrentUser,
    Id(product_id): Id,
    Json(draft): Json<ReviewDraft>,
) -> ApiResult<Response> {
    let written = state
        .app
        .add_review(&current.user, product_id, draft)
        .await?;
    let (remembered, review) = current.remember(&state, written).await;
    Ok((StatusCode::CREATED, remembered, axum::Json(review)).into_response())
}

/// `GET /api/products/{id}/reviews?limit=&cursor=`: every review, newest first, a
/// page at a time (the product embeds only the newest 20).
#[utoipa::path(get, path = "/api/products/{id}/reviews", operation_id = "list_reviews", tag = "catalog",
    params(("id" = i64, Path, minimum = 1), Page),
    responses((status = 200, body = PageOf<Review>, description = "OK"), BadRequest, NotFound, Unavailable))]
async fn reviews(
    State(state): State<AppState>,
    MaybeUser(current): MaybeUser,
    Id(product_id): Id,
    query: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(page) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let (limit, cursor) = page.parse()?;
    let before = if cursor == 0 { i64::MAX } else { cursor };
    let after = current.and_then(|c| c.lsn);
    let items = state
        .app
        .reviews_of(product_id, before, limit + 1, after)
        .await?;
    let (items, next_cursor) = Page::cut(items, limit, |r| r.id);
    Ok(axum::Json(PageOf { items, next_cursor }).into_response())
}

/// `PATCH /api/reviews/{id}` `{rating?, body?}`: its author edits it.
#[utoipa::path(patch, path = "/api/reviews/{id}", operation_id = "edit_review", tag = "catalog", request_body = ReviewEdit,
    params(("id" = i64, Path, minimum = 1)), security(("session" = [])),
    responses((status = 200, body = Review, description = "OK"), JsonBody, NeedsSession, NotFound, Unavailable))]
async fn edit_review(
    State(state): State<AppState>,
    current: CurrentUser,
    Id(id): Id,
    Json(edit): Json<ReviewEdit>,
) -> ApiResult<Response> {
    let written = state.app.edit_review(&current.user, id, edit).await?;
    let (remembered, review) = current.remember(&state, written).await;
    Ok((remembered, axum::Json(review)).into_response())
}

/// Deletes a review (its author or an admin).
#[utoipa::path(delete, path = "/api/reviews/{id}", operation_id = "delete_review", tag = "catalog",
    params(("id" = i64, Path, minimum = 1)), security(("session" = [])),
    responses((status = 204, description = "deleted"), BadRequest, NeedsSession, NotFound, Unavailable))]
async fn remove_review(
    State(state): State<AppState>,
    current: CurrentUser,
    Id(id): Id,
) -> ApiResult<Response> {
    let written = state.app.delete_review(&current.user, id).await?;
    let (remembered, ()) = current.remember(&state, written).await;
    Ok((StatusCode::NO_CONTENT, remembered, ()).into_response())
}

/// `POST /api/products/{id}/images` (admin): the body is the image; 202 `{job_id}`
/// once it is stored and queued (processing is a worker's job).
#[utoipa::path(post, path = "/api/products/{id}/images", operation_id = "upload_image", tag = "catalog",
    params(("id" = i64, Path, minimum = 1)), security(("session" = [])),
    request_body(description = "the image, at most 10 MiB", content((Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"))),
    responses((status = 202, body = JobAccepted, description = "stored and queued for the workers"),
        BadRequest, NeedsSession, NotFound, Unavailable,
        (status = 413, body = crate::openapi::ErrorBody, description = "over 10 MiB"),
        (status = 415, body = crate::openapi::ErrorBody, description = "not image/png or image/jpeg"),
        (status = 422, body = crate::openapi::ErrorBody, description = "an image too large in pixels to process")))]
async fn upload_image(
    State(state): State<AppState>,
    current: CurrentUser,
    Id(id): Id,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let (format, body) = match receive_image(&state, &current, &headers, body).await {
        Ok(received) => received,
        // Refused before the body was read whole: this connection cannot carry
        // another request, so the load balancer is told not to send one on it.
        Err(refused) => return Ok(crate::error::before_the_body(refused.into_response())),
    };
    let written = state
        .app
        .upload_image(&current.user, id, format, body)
        .await?;
    let (remembered, job_id) = current.remember(&state, written).await;
    Ok((
        StatusCode::ACCEPTED,
        remembered,
        axum::Json(JobAccepted { job_id }),
    )
        .into_response())
}

/// Who may upload is decided before a byte of the body is read (nobody else's
/// upload costs the clone 10 MiB of memory), then the declared type, then the body
/// under its limit.
async fn receive_image(
    state: &AppState,
    current: &CurrentUser,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> ApiResult<(bakery_app::media::ImageFormat, axum::body::Bytes)> {
    state.app.require_admin(&current.user).await?;
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(format) = accepted(content_type) else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "an image is sent as image/png or image/jpeg",
        ));
    };
    let body = axum::body::to_bytes(body, UPLOAD_LIMIT)
        .await
        .map_err(|error| {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|cause| cause.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("an image is at most {} MiB", UPLOAD_LIMIT >> 20),
                )
            } else {
                ApiError::bad_request("invalid_body", "the body could not be read")
            }
        })?;
    Ok((format, body))
}
