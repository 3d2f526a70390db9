//! The domain's vocabulary: validated values and the records the API speaks of.
//! No I/O here; every other crate builds on these types.

pub mod account;
pub mod calendar;
pub mod catalog;
pub mod clock;
pub mod edge;
pub mod html;
pub mod job;
pub mod password_hash;
pub mod problem;

pub use account::{Email, Password, Profile, User, Username};
pub use clock::now_millis;
pub use password_hash::{hash_password, verify_password};

/// Why a value was refused: a stable snake_case code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub code: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
