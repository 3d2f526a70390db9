//! What an operation can come to besides its value: the caller (HTTP, a worker)
//! decides how to say it.

use std::sync::Arc;

use bakery_core::Invalid;
use bakery_db::DbError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The input was refused by the domain's rules.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("there is no such thing")]
    NotFound,
    /// The actor may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// Well-formed but in conflict with the current state (a taken name, a full class).
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: &'static str,
    },
    /// Well-formed but impossible to act on (an image too large to process).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("that username and password do not match")]
    InvalidCredentials,
    /// A change that needs the account's current password did not come with it.
    #[error("the current password does not match")]
    WrongPassword,
    /// Too much of one costly kind of work at once (password hashing); worth trying
    /// again in a moment.
    #[error("{0}")]
    Busy(&'static str),
    /// The acting user no longer exists.
    #[error("the account no longer exists")]
    NoSuchAccount,
    /// A store failed. Shared, because one cache fill answers every concurrent miss
    /// and each gets the same error back (a database that is down stays a 503).
    #[error(transparent)]
    Store(Arc<DbError>),
    /// A fault of ours.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DbError> for Error {
    fn from(error: DbError) -> Self {
        Self::Store(Arc::new(error))
    }
}

/// The cache layer's own failures (a value it cannot encode or decode).
impl From<String> for Error {
    fn from(message: String) -> Self {
        Self::Internal(message)
    }
}

/// The application's answers, in the contract's words.
impl bakery_core::problem::IntoProblem for Error {
    fn into_problem(self) -> bakery_core::problem::Problem {
        use bakery_core::problem::{Kind, Problem};
        match self {
            Error::Invalid(invalid) => invalid.into_problem(),
            Error::NotFound => Problem::new(Kind::NotFound, "not_found", "there is nothing here"),
            Error::Forbidden(message) => Problem::new(Kind::Forbidden, "forbidden", message),
            Error::Conflict { code, message } => Problem::new(Kind::Conflict, code, message),
            Error::Unprocessable { code, message } => {
                Problem::new(Kind::Unprocessable, code, message)
            }
            Error::InvalidCredentials => Problem::new(
                Kind::Unauthenticated,
                "invalid_credentials",
                "that username and password do not match",
            ),
            Error::WrongPassword => Problem::new(
                Kind::Forbidden,
                "wrong_password",
                "the current password does not match",
            ),
            Error::Busy(message) => Problem::new(Kind::Unavailable, "busy", message).retry_after(1),
            Error::NoSuchAccount => {
                Problem::new(Kind::Unauthenticated, "not_logged_in", "log in first")
            }
            Error::Store(db) => (&*db).into_problem(),
            Error::Internal(cause) => Problem::internal(cause),
        }
    }
}
