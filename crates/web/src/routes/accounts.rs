//! Accounts: sign up, log in and out, see and change my account
//! (contract: "Accounts").

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bakery_core::{Email, Password, User, Username};
use bakery_db::accounts::{NewUser, UserChange};
use serde::Deserialize;
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::extract::{CurrentUser, Json};
use crate::{AppState, session_cookie};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/users", post(sign_up))
        .route("/api/session", post(log_in).delete(log_out))
        .route("/api/me", get(me).patch(change_me))
}

#[derive(Deserialize)]
pub struct SignUp {
    pub username: String,
    pub email: String,
    pub password: String,
}

#[derive(Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// A change to my account; fields left out (or empty, from a form) stay as they are.
#[derive(Deserialize, Default)]
pub struct Change {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

async fn sign_up(State(state): State<AppState>, Json(body): Json<SignUp>) -> ApiResult<Response> {
    let user = create_account(&state, &body).await?;
    Ok((StatusCode::CREATED, axum::Json(user)).into_response())
}

/// Validates and stores a new account; shared by the API and the sign-up page.
pub async fn create_account(state: &AppState, body: &SignUp) -> ApiResult<User> {
    let username = Username::parse(&body.username)?;
    let email = Email::parse(&body.email)?;
    let password = Password::parse(&body.password)?;
    let hash = hash(password).await?;
    let new = NewUser { username: username.as_str(), email: email.as_str(), password_hash: &hash, is_admin: false };
    let (user, _) = state.db.create_user(new).await.map_err(username_conflict)?;
    state.user_created().await;
    Ok(user)
}

async fn log_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<Credentials>,
) -> ApiResult<Response> {
    let (user, set_cookie) = start_session(&state, &headers, &body).await?;
    Ok(([(header::SET_COOKIE, set_cookie)], axum::Json(json!({ "user": user }))).into_response())
}

/// Checks the credentials and starts a session under a fresh id, ending the one
/// the client had (so a planted id is never promoted to a logged-in one).
/// Returns the user and the `Set-Cookie` value.
pub async fn start_session(
    state: &AppState,
    headers: &HeaderMap,
    body: &Credentials,
) -> ApiResult<(User, axum::http::HeaderValue)> {
    let found = state.db.credentials(&body.username).await?;
    let candidate = body.password.clone();
    // Without an account we still verify against a fixed hash, so the answer takes
    // as long as for a wrong password and does not reveal which names exist.
    let stored = found.as_ref().map(|(_, hash)| hash.clone()).unwrap_or_else(|| DECOY_HASH.clone());
    let matches = tokio::task::spawn_blocking(move || bakery_core::verify_password(&candidate, &stored))
        .await
        .map_err(ApiError::internal)?;
    let user = match found {
        Some((user, _)) if matches => user,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "that username and password do not match",
            ));
        }
    };
    if let Some(old) = session_cookie::read(headers) {
        state.sessions.destroy(&old).await?;
    }
    let id = state.sessions.create(user.id).await?;
    Ok((user, session_cookie::set(&id, state.cookie_secure(headers))))
}

/// An argon2id hash of a random password nobody knows, made once per process.
static DECOY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let secret = format!("{:032x}", rand_secret());
    bakery_core::hash_password(&Password::parse(&secret).expect("32 hex digits are a valid password"))
});

fn rand_secret() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; two of them make 128 unpredictable bits.
    let half = || std::collections::hash_map::RandomState::new().build_hasher().finish() as u128;
    (half() << 64) | half()
}

async fn log_out(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    end_session(&state, &headers).await?;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, session_cookie::clear(state.cookie_secure(&headers)))])
        .into_response())
}

/// Ends the client's session on the server, if it has one.
pub async fn end_session(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    if let Some(id) = session_cookie::read(headers) {
        state.sessions.destroy(&id).await?;
    }
    Ok(())
}

async fn me(current: CurrentUser) -> axum::Json<User> {
    axum::Json(current.user)
}

async fn change_me(
    State(state): State<AppState>,
    current: CurrentUser,
    Json(body): Json<Change>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let user = change_account(&state, &current, &body).await?;
    Ok(axum::Json(json!({ "user": user })))
}

/// Validates and applies a change to the current user's account, remembers the write
/// for their next reads, and keeps the cache true; shared by the API and the account page.
pub async fn change_account(state: &AppState, current: &CurrentUser, body: &Change) -> ApiResult<User> {
    let username = body.username.as_deref().map(Username::parse).transpose()?;
    let email = body.email.as_deref().map(Email::parse).transpose()?;
    let password_hash = match body.password.as_deref().map(Password::parse).transpose()? {
        Some(password) => Some(hash(password).await?),
        None => None,
    };
    let change = UserChange {
        username: username.as_ref().map(Username::as_str),
        email: email.as_ref().map(Email::as_str),
        password_hash: password_hash.as_deref(),
    };
    let (user, lsn) = state.db.update_user(current.user.id, change).await.map_err(username_conflict)?;
    current.wrote(state, lsn).await?;
    let user = user.ok_or_else(ApiError::unauthorized)?;
    state.user_changed(&user, username.is_some()).await?;
    Ok(user)
}

async fn hash(password: Password) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || bakery_core::hash_password(&password)).await.map_err(ApiError::internal)
}

fn username_conflict(error: bakery_db::DbError) -> ApiError {
    match error {
        bakery_db::DbError::Conflict(_) => ApiError::conflict("username_taken", "that username is taken"),
        other => other.into(),
    }
}
