//! The JSON API's OpenAPI 3.1 document, generated from the code: each handler's
//! `#[utoipa::path]` (method, path, parameters, body, answers) and each type's
//! `ToSchema`, collected by the routers as they are built (`utoipa_axum`), so the
//! document cannot list a route the clone does not serve or miss one it does.
//! Served at `GET /api/openapi.json`; a fuzzer (Schemathesis) checks live answers
//! against it in the test suite.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

/// The contract's error body: `{"error": {"code", "message"}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// What went wrong, for programs: `snake_case`, e.g. `not_logged_in`, `event_full`.
    pub code: String,
    /// The same for people.
    pub message: String,
}

/// A whole list: `{items}`.
#[derive(Serialize, ToSchema)]
pub struct ListOf<T: ToSchema> {
    pub items: Vec<T>,
}

/// One page of a longer list: `{items, next_cursor}`; `next_cursor` is `null` on
/// the last page, and otherwise the `cursor` that asks for the next one.
#[derive(Serialize, ToSchema)]
pub struct PageOf<T: ToSchema> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Slow work accepted: follow it at `GET /api/jobs/{job_id}`.
#[derive(Serialize, ToSchema)]
pub struct JobAccepted {
    pub job_id: i64,
}

/// `{user}`: the account after logging in or changing it.
#[derive(Serialize, ToSchema)]
pub struct UserEnvelope {
    pub user: bakery_core::User,
}

/// `GET /api/ping`.
#[derive(Serialize, ToSchema)]
pub struct Pong<'a> {
    pub pong: bool,
    /// The clone that answered.
    pub id: &'a str,
}

/// The session cookie scheme every "(user)" and "(admin)" route names.
pub const SESSION: &str = "session";

struct SessionCookie;

impl Modify for SessionCookie {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SESSION,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                bakery_session::cookie::NAME,
                "set by POST /api/session; HttpOnly, SameSite=Lax",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "bakery",
        license(name = "MIT OR Apache-2.0"),
        description = "The JSON API of a bakery web clone (see the project's CONTRACT). \
            Errors are `{\"error\": {\"code\", \"message\"}}`. Unsafe requests carrying \
            an `Origin` of another site, or `Sec-Fetch-Site: cross-site`, are 403 `csrf`.",
    ),
    components(schemas(ErrorBody)),
    modifiers(&SessionCookie)
)]
struct Base;

/// The document: `paths` (what the routers collected) on the base (info, error
/// body, session cookie).
pub fn document(paths: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    Base::openapi().merge_from(paths)
}

/// The document as JSON text.
pub fn to_json(document: &utoipa::openapi::OpenApi) -> Vec<u8> {
    serde_json::to_vec(document).expect("an OpenAPI document is plain JSON")
}

fn error(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

/// Sets of error answers that many operations share, named in their
/// `responses(...)` beside their own answers.
macro_rules! errors {
    ($($(#[$doc:meta])* $name:ident { $($status:literal => $description:literal),+ $(,)? })+) => {$(
        $(#[$doc])*
        pub struct $name;

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                BTreeMap::from([$(($status.to_string(), error($description))),+])
            }
        }
    )+};
}

errors! {
    /// Every operation: a backend it needs is down.
    Unavailable {
        "503" => "a backend this needs is down (database, session store), or the clone is busy; `Retry-After` may say when to try again",
    }
    /// Operations with a path id, a query or a body.
    BadRequest {
        "400" => "malformed or invalid input; the code says which (`invalid_id`, `bad_cursor`, `malformed_json`, ...)",
    }
    /// Operations on one thing, by id.
    NotFound {
        "404" => "there is no such thing (or it is not yours to see)",
    }
    /// Operations that need a session.
    NeedsSession {
        "401" => "not logged in",
        "403" => "not allowed (`forbidden`), or an unsafe request from another origin (`csrf`)",
    }
    /// Unsafe operations without a session (they still meet the origin check).
    CrossSite {
        "403" => "an unsafe request from another origin (`csrf`)",
    }
    /// Operations that take a JSON body.
    JsonBody {
        "400" => "malformed or invalid input; the code says which",
        "413" => "the body is over 1 MiB",
        "415" => "the body is not sent as `application/json`",
    }
    /// Writes that can meet another write.
    Conflict {
        "409" => "conflicts with what exists (`username_taken`, `event_full`, `already_reviewed`, ...)",
    }
    /// Logins and sign-ups.
    RateLimited {
        "429" => "too many attempts (`rate_limited`); `Retry-After` says when to try again",
    }
}
