//! The catalog (contract: "Catalog"): products with their price, description,
//! images and reviews; admins change products, users write reviews.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use bakery_core::catalog;
use bakery_db::catalog::{NewProduct, ProductChange};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{AdminUser, CurrentUser, Id, Json, MaybeUser};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/products", get(list).post(create))
        .route("/api/products/{id}", get(show).patch(change).delete(remove))
        .route("/api/products/{id}/reviews", post(review))
        .route("/api/reviews/{id}", delete(remove_review))
}

#[derive(Deserialize)]
pub struct Page {
    limit: Option<String>,
    cursor: Option<String>,
}

impl Page {
    /// `limit` 1–100 (default 20) and `cursor` (the `next_cursor` of the previous page).
    pub fn parse(&self) -> ApiResult<(i64, i64)> {
        let limit = match self.limit.as_deref() {
            None | Some("") => 20,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if (1..=100).contains(&n) => n,
                _ => return Err(ApiError::bad_request("invalid_limit", "limit is a whole number from 1 to 100")),
            },
        };
        let cursor = match self.cursor.as_deref() {
            None | Some("") => 0,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if n >= 0 => n,
                _ => return Err(ApiError::bad_request("invalid_cursor", "use the next_cursor of the previous page")),
            },
        };
        Ok((limit, cursor))
    }

    /// Cuts a page fetched with `limit + 1` rows (the extra one tells whether there is
    /// a next page) to `limit`, and gives the next cursor: the last id shown.
    pub fn cut<T>(mut items: Vec<T>, limit: i64, id: impl Fn(&T) -> i64) -> (Vec<T>, Option<String>) {
        if items.len() as i64 <= limit {
            return (items, None);
        }
        items.truncate(limit as usize);
        let next = items.last().map(|item| id(item).to_string());
        (items, next)
    }
}

async fn list(
    State(state): State<AppState>,
    MaybeUser(current): MaybeUser,
    query: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(page) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let (limit, cursor) = page.parse()?;
    let after = current.and_then(|c| c.lsn);
    let items = state.product_page(cursor, limit + 1, after).await?;
    let (items, next_cursor) = Page::cut(items, limit, |p| p.id);
    Ok(axum::Json(json!({ "items": items, "next_cursor": next_cursor })).into_response())
}

async fn show(State(state): State<AppState>, MaybeUser(current): MaybeUser, Id(id): Id) -> ApiResult<Response> {
    let after = current.and_then(|c| c.lsn);
    let json = state.product_json(id, after).await?.ok_or_else(ApiError::not_found)?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], json).into_response())
}

#[derive(Deserialize)]
struct NewProductBody {
    name: String,
    #[serde(default)]
    description: String,
    price_cents: i64,
}

async fn create(State(state): State<AppState>, AdminUser(admin): AdminUser, Json(body): Json<NewProductBody>) -> ApiResult<Response> {
    let name = catalog::product_name(&body.name)?;
    let description = catalog::product_description(&body.description)?;
    let price_cents = catalog::price_cents(body.price_cents)?;
    let (id, lsn) = state.db.create_product(NewProduct { name: &name, description: &description, price_cents }).await?;
    admin.wrote(&state, lsn).await?;
    let product = state.product_changed(id).await?.ok_or_else(ApiError::not_found)?;
    Ok((StatusCode::CREATED, axum::Json(product)).into_response())
}

#[derive(Deserialize)]
struct ChangeBody {
    name: Option<String>,
    description: Option<String>,
    price_cents: Option<i64>,
}

async fn change(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Id(id): Id,
    Json(body): Json<ChangeBody>,
) -> ApiResult<Response> {
    let name = body.name.as_deref().map(catalog::product_name).transpose()?;
    let description = body.description.as_deref().map(catalog::product_description).transpose()?;
    let price_cents = body.price_cents.map(catalog::price_cents).transpose()?;
    let change = ProductChange { name: name.as_deref(), description: description.as_deref(), price_cents };
    let (found, lsn) = state.db.update_product(id, change).await?;
    if !found {
        return Err(ApiError::not_found());
    }
    admin.wrote(&state, lsn).await?;
    let product = state.product_changed(id).await?.ok_or_else(ApiError::not_found)?;
    Ok(axum::Json(product).into_response())
}

async fn remove(State(state): State<AppState>, AdminUser(admin): AdminUser, Id(id): Id) -> ApiResult<StatusCode> {
    let (found, lsn) = state.db.delete_product(id).await?;
    admin.wrote(&state, lsn).await?;
    state.product_restructured(id).await;
    if found { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::not_found()) }
}

#[derive(Deserialize)]
struct ReviewBody {
    rating: i64,
    body: String,
}

async fn review(
    State(state): State<AppState>,
    current: CurrentUser,
    Id(product_id): Id,
    Json(body): Json<ReviewBody>,
) -> ApiResult<Response> {
    let rating = catalog::rating(body.rating)?;
    let text = catalog::review_body(&body.body)?;
    let (review, lsn) = state.db.create_review(product_id, current.user.id, rating, &text).await?;
    current.wrote(&state, lsn).await?;
    let review = review.ok_or_else(ApiError::not_found)?;
    state.product_restructured(product_id).await;
    Ok((StatusCode::CREATED, axum::Json(review)).into_response())
}

async fn remove_review(State(state): State<AppState>, current: CurrentUser, Id(id): Id) -> ApiResult<StatusCode> {
    let (product_id, author) = state.db.review_owner(id).await?.ok_or_else(ApiError::not_found)?;
    if author != current.user.id && !current.user.is_admin {
        return Err(ApiError::forbidden("only its author or an admin may delete a review"));
    }
    let (_, lsn) = state.db.delete_review(id).await?;
    current.wrote(&state, lsn).await?;
    state.product_restructured(product_id).await;
    Ok(StatusCode::NO_CONTENT)
}
