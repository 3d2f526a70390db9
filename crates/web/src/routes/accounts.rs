//! Accounts: sign up, log in and out, see and change my account
//! (contract: "Accounts"). The operations are the application's; this module
//! adds what is HTTP's: the session and its cookie.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bakery_app::accounts::{AccountChange, Credentials, SignUp};
use bakery_core::User;

use std::time::Duration;

use bakery_session::Limit;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{CurrentUser, Json, client_ip};
use crate::openapi::{
    Conflict, CrossSite, JsonBody, NeedsSession, RateLimited, Unavailable, UserEnvelope,
};
use bakery_session::cookie as session_cookie;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sign_up))
        .routes(routes!(log_in, log_out))
        .routes(routes!(me, change_me))
        .routes(routes!(verify_email))
}

/// The token of a verification mail.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct VerifyEmail {
    #[schema(min_length = 16, max_length = 128, pattern = "^[A-Za-z0-9_-]+$")]
    pub token: String,
}

/// The answer to a used verification token.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct EmailVerified {
    pub email_verified: bool,
}

/// Proves an address with the token its verification mail carried: once, before it
/// expires. No session needed (the link may be opened anywhere).
#[utoipa::path(post, path = "/api/users/verify-email", operation_id = "verify_email", tag = "accounts", request_body = VerifyEmail,
    responses((status = 200, body = EmailVerified, description = "the address is verified"),
        JsonBody, CrossSite, Unavailable,
        (status = 400, body = crate::openapi::ErrorBody, description = "invalid_token: unknown, used, expired, or for an address changed since")))]
async fn verify_email(
    State(state): State<AppState>,
    Json(input): Json<VerifyEmail>,
) -> ApiResult<Response> {
    state.app.verify_email(&input.token).await?;
    Ok(axum::Json(EmailVerified {
        email_verified: true,
    })
    .into_response())
}

/// Failed logins from one address: 30 at once, then one every 2 s.
const LOGINS_PER_ADDRESS: Limit = Limit {
    burst: 30,
    every: Duration::from_secs(2),
};
/// Failed logins for one username, from anywhere: 10 at once, then one every 6 s.
const LOGINS_PER_USER: Limit = Limit {
    burst: 10,
    every: Duration::from_secs(6),
};
/// Sign-ups from one address: 100 at once, then one a second.
const SIGN_UPS_PER_ADDRESS: Limit = Limit {
    burst: 100,
    every: Duration::from_secs(1),
};

fn rate_limited(wait: Duration) -> ApiError {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many attempts; try again later",
    )
    .retry_after(seconds.max(1))
}

/// Counts a sign-up from the client's address; 429 beyond the limit.
pub async fn limit_sign_ups(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let key = format!("signup-ip:{}", client_ip(headers));
    if let Some(wait) = state
        .sessions
        .rate_check(&key, SIGN_UPS_PER_ADDRESS)
        .await?
    {
        return Err(rate_limited(wait));
    }
    state
        .sessions
        .rate_count(&key, SIGN_UPS_PER_ADDRESS)
        .await?;
    Ok(())
}

/// A new account; log in afterwards.
#[utoipa::path(post, path = "/api/users", operation_id = "sign_up", tag = "accounts", request_body = SignUp,
    responses((status = 201, body = User, description = "created"), JsonBody, CrossSite, Conflict, RateLimited, Unavailable))]
async fn sign_up(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(input): Json<SignUp>,
) -> ApiResult<Response> {
    limit_sign_ups(&state, &headers).await?;
    // Nobody is logged in yet: the new account's position needs no remembering (its
    // owner's first read after logging in goes through the primary's credentials).
    let user = state.app.sign_up(input).await?.value;
    Ok((StatusCode::CREATED, axum::Json(user)).into_response())
}

/// Logs in: a fresh `bakery_session` cookie.
#[utoipa::path(post, path = "/api/session", operation_id = "log_in", tag = "accounts", request_body = Credentials,
    responses((status = 200, body = UserEnvelope, description = "logged in", headers(("set-cookie" = String, description = "the new session"))),
        JsonBody, CrossSite, RateLimited, Unavailable,
        (status = 401, body = crate::openapi::ErrorBody, description = "that username and password do not match")))]
async fn log_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(input): Json<Credentials>,
) -> ApiResult<Response> {
    let (user, set_cookie) = start_session(&state, &headers, &input).await?;
    Ok((
        [(header::SET_COOKIE, set_cookie)],
        axum::Json(UserEnvelope { user }),
    )
        .into_response())
}

/// Checks the credentials and starts a session under a fresh id, ending the one
/// the client had (so a planted id is never promoted to a logged-in one).
/// Returns the user and the `Set-Cookie` value; shared by the API and the pages.
pub async fn start_session(
    state: &AppState,
    headers: &HeaderMap,
    input: &Credentials,
) -> ApiResult<(User, HeaderValue)> {
    let keys = [
        (
            format!("login-ip:{}", client_ip(headers)),
            LOGINS_PER_ADDRESS,
        ),
        (
            format!("login-user:{}", input.username.trim().to_lowercase()),
            LOGINS_PER_USER,
        ),
    ];
    for (key, limit) in &keys {
        if let Some(wait) = state.sessions.rate_check(key, *limit).await? {
            return Err(rate_limited(wait));
        }
    }
    let user = match state.app.authenticate(input).await {
        Ok(user) => user,
        Err(bakery_app::Error::InvalidCredentials) => {
            for (key, limit) in &keys {
                state.sessions.rate_count(key, *limit).await?;
            }
            return Err(bakery_app::Error::InvalidCredentials.into());
        }
        Err(other) => return Err(other.into()),
    };
    if let Some(old) = session_cookie::read(headers) {
        state.sessions.destroy(&old).await?;
    }
    let id = state.sessions.create(user.id).await?;
    Ok((user, session_cookie::set(&id, state.cookie_secure(headers))))
}

/// Logs out: the session ends on the server, its id is refused afterwards.
#[utoipa::path(delete, path = "/api/session", operation_id = "log_out", tag = "accounts",
    responses((status = 204, description = "logged out"), CrossSite, Unavailable))]
async fn log_out(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    end_session(&state, &headers).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            session_cookie::clear(state.cookie_secure(&headers)),
        )],
    )
        .into_response())
}

/// Ends the client's session on the server, if it has one.
pub async fn end_session(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    if let Some(id) = session_cookie::read(headers) {
        state.sessions.destroy(&id).await?;
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/me", operation_id = "me", tag = "accounts", security(("session" = [])),
    responses((status = 200, body = User, description = "OK"), NeedsSession, Unavailable))]
async fn me(current: CurrentUser) -> axum::Json<User> {
    axum::Json(current.user)
}

/// Changes my username, email or password; the last two need `current_password`
/// (403 `wrong_password`), and a new password ends every other session.
#[utoipa::path(patch, path = "/api/me", operation_id = "change_me", tag = "accounts", request_body = AccountChange,
    security(("session" = [])),
    responses((status = 200, body = UserEnvelope, description = "OK"), JsonBody, NeedsSession, Conflict, Unavailable))]
async fn change_me(
    State(state): State<AppState>,
    headers: HeaderMap,
    current: CurrentUser,
    Json(change): Json<AccountChange>,
) -> ApiResult<Response> {
    let new_password = change.password.is_some();
    let written = state.app.change_account(&current.user, change).await?;
    if new_password {
        let cookie = end_other_sessions(&state, &headers, &written).await?;
        let body = axum::Json(UserEnvelope {
            user: written.value,
        });
        return Ok(([(header::SET_COOKIE, cookie)], body).into_response());
    }
    let (remembered, user) = current.remember(&state, written).await;
    Ok((remembered, axum::Json(UserEnvelope { user })).into_response())
}

/// After a password change: every session of the user ends (whoever held one is
/// out) and the one making the change goes on under a fresh id; the new
/// `Set-Cookie`.
/// The new session carries the change's position, so its next reads see it.
pub async fn end_other_sessions(
    state: &AppState,
    headers: &HeaderMap,
    written: &bakery_app::Written<User>,
) -> ApiResult<HeaderValue> {
    state.sessions.destroy_user(written.value.id).await?;
    let id = state.sessions.create(written.value.id).await?;
    if let Some(lsn) = written.lsn {
        state.sessions.record_write(&id, lsn.0).await?;
    }
    Ok(session_cookie::set(&id, state.cookie_secure(headers)))
}
