//! The one error type of the HTTP layer, answered as the contract's JSON:
//! `{"error": {"code": "<snake_case>", "message": "<sentence>"}}`.
//! Client mistakes keep their message; server faults are logged, never shown.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bakery_core::Invalid;
use bakery_db::DbError;
use bakery_session::SessionError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Tells the client when to try again.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "not_logged_in", "log in first")
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "there is nothing here")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// A fault of ours: logged with its cause, answered without it.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on our side",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        Self::bad_request(invalid.code, invalid.message)
    }
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        (&error).into()
    }
}

impl From<&DbError> for ApiError {
    fn from(error: &DbError) -> Self {
        match error {
            DbError::Unavailable(cause) => {
                tracing::warn!(%cause, "database unavailable");
                Self::unavailable(
                    "database_unavailable",
                    "the database is unavailable; try again shortly",
                )
            }
            DbError::PrimaryUnavailable => Self::unavailable(
                "primary_unavailable",
                "the primary database is unavailable, so changes cannot be saved now; reading still works",
            ),
            DbError::Conflict(constraint) => {
                Self::conflict("conflict", format!("that conflicts with {constraint}"))
            }
            DbError::Other(cause) => Self::internal(cause),
        }
    }
}

/// The application's answers, in the contract's words.
impl From<bakery_app::Error> for ApiError {
    fn from(error: bakery_app::Error) -> Self {
        use bakery_app::Error;
        match error {
            Error::Invalid(invalid) => invalid.into(),
            Error::NotFound => Self::not_found(),
            Error::Forbidden(message) => Self::forbidden(message),
            Error::Conflict { code, message } => Self::conflict(code, message),
            Error::Unprocessable { code, message } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            Error::InvalidCredentials => Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "that username and password do not match",
            ),
            Error::WrongPassword => Self::new(
                StatusCode::FORBIDDEN,
                "wrong_password",
                "the current password does not match",
            ),
            Error::Busy(message) => Self::unavailable("busy", message).retry_after(1),
            Error::NoSuchAccount => Self::unauthorized(),
            Error::Store(db) => (&*db).into(),
            Error::Internal(cause) => Self::internal(cause),
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(error: SessionError) -> Self {
        tracing::warn!(%error, "session store unavailable");
        Self::unavailable(
            "session_store_unavailable",
            "the session store is unavailable; try again shortly",
        )
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
