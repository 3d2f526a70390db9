//! The HTTP layer's errors are the process shell's ([`bakery_service::ApiError`]):
//! every error type of the layers below says what it means
//! ([`bakery_core::problem::IntoProblem`]) and becomes the contract's JSON with `?`.

pub use bakery_service::{ApiError, ApiResult};

/// `response` with `Connection: close`: for an answer sent before the request's body
/// was read (an upload refused at once), whose unread rest would otherwise be taken
/// for the next request on the connection; the load balancer then opens a new one.
pub fn before_the_body(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}
