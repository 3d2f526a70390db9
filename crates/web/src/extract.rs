//! Extractors whose rejections speak the contract's JSON errors.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::ApiError;
use crate::session_cookie;

/// `axum::Json`, with malformed bodies, wrong content types and oversize bodies
/// answered as 400, 415 and 413 JSON errors.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send JSON with content-type: application/json",
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {}", e.body_text())),
        JsonRejection::JsonDataError(e) => ApiError::bad_request("invalid_input", e.body_text()),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the body is larger than 1 MiB")
        }
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

/// The logged-in user, from the session cookie; 401 when there is none.
pub struct CurrentUser {
    pub user: bakery_core::User,
    pub session: bakery_session::SessionId,
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        MaybeUser::from_request_parts(parts, state).await?.0.ok_or_else(ApiError::unauthorized)
    }
}

/// The logged-in user if there is one: for pages anybody may see.
pub struct MaybeUser(pub Option<CurrentUser>);

impl FromRequestParts<AppState> for MaybeUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(id) = session_cookie::read(&parts.headers) else { return Ok(Self(None)) };
        let Some(session) = state.sessions.load(&id).await? else { return Ok(Self(None)) };
        let user = state.db.user_by_id(session.user_id).await?;
        Ok(Self(user.map(|user| CurrentUser { user, session: id })))
    }
}
