//! Extractors whose rejections speak the contract's JSON errors.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponseParts, ResponseParts};
use bakery_app::{Freshness, Written};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::ApiError;
use bakery_session::cookie as session_cookie;

/// `axum::Json`, with malformed bodies, wrong content types and oversize bodies
/// answered as 400, 415 and 413 JSON errors. The body must be a JSON object (every
/// body of the API is one): serde would otherwise read a struct from an array too,
/// so `[null, null]` would pass for "change nothing".
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<Object<T>>::from_request(req, state).await {
            Ok(axum::Json(Object(value))) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// `T`, read only from a JSON object.
struct Object<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OnlyMaps<T>(std::marker::PhantomData<T>);

        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for OnlyMaps<T> {
            type Value = T;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(OnlyMaps(std::marker::PhantomData))
            .map(Object)
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send JSON with content-type: application/json",
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(
            "malformed_json",
            format!("the body is not valid JSON: {}", e.body_text()),
        ),
        JsonRejection::JsonDataError(e) => ApiError::bad_request("invalid_input", e.body_text()),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the body is larger than 1 MiB",
        ),
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
    /// Whether cookies set for this request must be `Secure`.
    secure: bool,
}

impl CurrentUser {
    /// Remembers a committed write of this user so their next reads, on whichever
    /// clone, see it: its position goes into the session (a running maximum). The
    /// write has happened whatever the session store says, so this never fails: when
    /// the store cannot take the position, the client gets it in a cookie instead
    /// (see [`session_cookie::wrote`]), and the answer still reports the write.
    pub async fn remember<T>(&self, state: &AppState, written: Written<T>) -> (Remembered, T) {
        let Some(lsn) = written.lsn else {
            return (Remembered(None), written.value);
        };
        match state.sessions.record_write(&self.session, lsn.0).await {
            Ok(()) => (Remembered(None), written.value),
            Err(error) => {
                tracing::warn!(%error, lsn = lsn.0, "could not record a write in the session; handing its position to the client");
                (
                    Remembered(Some(session_cookie::wrote(lsn.0, self.secure))),
                    written.value,
                )
            }
        }
    }
}

/// What a write leaves on its answer for the writer's next reads: nothing, or the
/// fallback cookie with its position.
pub struct Remembered(Option<axum::http::HeaderValue>);

impl IntoResponseParts for Remembered {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        if let Some(cookie) = self.0 {
            res.headers_mut()
                .append(axum::http::header::SET_COOKIE, cookie);
        }
        Ok(res)
    }
}

/// A positive numeric id from the path; 400 `invalid_id` otherwise.
pub struct Id(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let invalid = || ApiError::bad_request("invalid_id", "an id is a positive whole number");
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| invalid())?;
        match raw.parse::<i64>() {
            Ok(id) if id > 0 => Ok(Self(id)),
            _ => Err(invalid()),
        }
    }
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // A session store that cannot answer is a 503 here: this request needs it.
        session_user(parts, state, false)
            .await?
            .ok_or_else(ApiError::unauthorized)
    }
}

/// How fresh a request's cached reads must be. Without a session cookie a visitor
/// cannot have written anything, so the clone's near cache, when switched on, may
/// answer it (an invalidation for someone else's write may still be on its way);
/// with one, reads see every write acknowledged so far.
pub fn freshness(headers: &axum::http::HeaderMap) -> Freshness {
    if session_cookie::read(headers).is_some() {
        Freshness::Current
    } else {
        Freshness::Near
    }
}

/// The logged-in user if there is one: for pages anybody may see. A session store
/// that cannot answer makes the visitor anonymous rather than the page an error:
/// public pages stay up while it is away (logging in and writing wait for it).
pub struct MaybeUser(pub Option<CurrentUser>);

impl FromRequestParts<AppState> for MaybeUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(session_user(parts, state, true).await?))
    }
}

/// The user behind the request's session cookie, if any; with `as_visitor`, a
/// session store that cannot answer makes the request anonymous instead of failing.
async fn session_user(
    parts: &Parts,
    state: &AppState,
    as_visitor: bool,
) -> Result<Option<CurrentUser>, ApiError> {
    let Some(id) = session_cookie::read(&parts.headers) else {
        return Ok(None);
    };
    let session = match state.sessions.load(&id).await {
        Ok(Some(session)) => session,
        Ok(None) => return Ok(None),
        Err(error) if as_visitor => {
            tracing::warn!(%error, "session store unavailable; serving the page as to a visitor");
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    };
    // The session's position, or a later one the session store could not take.
    let position = session
        .write_lsn
        .max(session_cookie::read_wrote(&parts.headers).unwrap_or(0));
    let lsn = (position > 0).then_some(bakery_db::Lsn(position));
    let user = state.app.user(session.user_id, lsn).await?;
    let secure = state.cookie_secure(&parts.headers);
    Ok(user.map(|user| CurrentUser {
        user,
        session: id,
        lsn,
        secure,
    }))
}

/// The client's address: as the load balancer determined it (`x-bakery-client-ip`,
/// which it always sets, believing only trusted proxies), else the last hop of
/// `x-forwarded-for`; "direct" for a request that reached the clone without either.
pub fn client_ip(headers: &axum::http::HeaderMap) -> String {
    if let Some(ip) = headers
        .get("x-bakery-client-ip")
        .and_then(|v| v.to_str().ok())
    {
        return ip.to_string();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|hop| !hop.is_empty())
        .unwrap_or("direct")
        .to_string()
}
