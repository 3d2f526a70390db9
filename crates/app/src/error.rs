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
