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
    /// The primary's position after this user's latest write: their reads must
    /// come from a server that has replayed at least this far.
    pub lsn: Option<bakery_db::Lsn>,
}

impl CurrentUser {
    /// Remembers a write of this user (a running maximum in the session), so their
    /// next reads, on whichever clone, see it.
    pub async fn wrote(&self, state: &AppState, lsn: Option<bakery_db::Lsn>) -> Result<(), ApiError> {
        if let Some(lsn) = lsn {
            state.sessions.record_write(&self.session, lsn.0).await?;
        }
        Ok(())
    }
}

/// A logged-in admin; 401 when nobody is logged in, 403 for anyone else.
pub struct AdminUser(pub CurrentUser);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let current = CurrentUser::from_request_parts(parts, state).await?;
        if !current.user.is_admin {
            return Err(ApiError::forbidden("only an admin may do that"));
        }
        Ok(Self(current))
    }
}

/// A positive numeric id from the path; 400 `invalid_id` otherwise.
pub struct Id(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let invalid = || ApiError::bad_request("invalid_id", "an id is a positive whole number");
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await.map_err(|_| invalid())?;
        match raw.parse::<i64>() {
            Ok(id) if id > 0 => Ok(Self(id)),
            _ => Err(invalid()),
        }
    }
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
        let lsn = (session.write_lsn > 0).then_some(bakery_db::Lsn(session.write_lsn));
        let user = state.user(session.user_id, lsn).await?;
        Ok(Self(user.map(|user| CurrentUser { user, session: id, lsn })))
    }
}
