//! The HTTP layer's errors are the process shell's ([`bakery_service::ApiError`]):
//! every error type of the layers below says what it means
//! ([`bakery_core::problem::IntoProblem`]) and becomes the contract's JSON with `?`.

pub use bakery_service::{ApiError, ApiResult};
