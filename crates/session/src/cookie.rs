//! The `bakery_session` cookie: HttpOnly, SameSite=Lax, Secure over TLS or when
//! configured, scoped to the whole site.

use cookie::{Cookie, SameSite};
use http::{HeaderMap, HeaderValue, header};

use crate::SessionId;

pub const NAME: &str = bakery_core::edge::SESSION_COOKIE;

/// The session id the client sent, if it has the shape of one.
pub fn read(headers: &HeaderMap) -> Option<SessionId> {
    cookies(headers)
        .find(|c| c.name() == NAME)
        .and_then(|c| SessionId::from_cookie(c.value()))
}

/// `Set-Cookie` that hands the client a session.
pub fn set(id: &SessionId, secure: bool) -> HeaderValue {
    let cookie = Cookie::build((NAME, id.as_str().to_string()))
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .path("/")
        .build();
    HeaderValue::from_str(&cookie.to_string()).expect("a base64url id makes a valid header")
}

/// The fallback of read-your-writes: a write's WAL position, handed to the client
/// when the session store could not take it. Reads of this client then wait for it
/// as for the session's own position. Not a secret and not trusted for anything
/// else: a forged value only sends its sender's own reads to the primary.
pub const WROTE: &str = "bakery_wrote";

pub fn wrote(lsn: u64, secure: bool) -> HeaderValue {
    let cookie = Cookie::build((WROTE, lsn.to_string()))
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .path("/")
        .build();
    HeaderValue::from_str(&cookie.to_string()).expect("digits make a valid header")
}

/// The position in a `bakery_wrote` cookie, if the client sent one.
pub fn read_wrote(headers: &HeaderMap) -> Option<u64> {
    cookies(headers)
        .find(|c| c.name() == WROTE)
        .and_then(|c| c.value().parse().ok())
}

fn cookies(headers: &HeaderMap) -> impl Iterator<Item = Cookie<'_>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
}

/// `Set-Cookie` that makes the client forget its session.
pub fn clear(secure: bool) -> HeaderValue {
    let cookie = Cookie::build((NAME, ""))
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .path("/")
        .max_age(cookie::time::Duration::ZERO)
        .build();
    HeaderValue::from_str(&cookie.to_string()).expect("an empty cookie makes a valid header")
}
