//! Layers every request goes through, outermost first: request id, correlation and
//! `x-served-by`, metrics, the timeout, security headers on HTML, the CSRF check.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bakery_telemetry::{REQUEST_ID, SERVED_BY};
use std::sync::atomic::Ordering;

use tracing::Instrument;

use crate::{ApiError, Shell};

/// Keeps (or makes) the request id, echoes it on the response, names this process
/// in `x-served-by`, and counts the request by route and status. Every log line of
/// the request, and every message its writes stage, carries its id as the
/// correlation id.
pub async fn request_context(State(shell): State<Shell>, mut req: Request, next: Next) -> Response {
    let request_id =
        bakery_telemetry::accept_request_id(req.headers().get(REQUEST_ID).map(|v| v.as_bytes()))
            .unwrap_or_else(bakery_telemetry::new_request_id);
    let id_header = HeaderValue::from_str(&request_id).expect("request ids are checked tokens");
    req.headers_mut().insert(REQUEST_ID, id_header.clone());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());

    let span = tracing::info_span!("request", correlation_id = %request_id);
    let work = bakery_telemetry::with_correlation(request_id, next.run(req)).instrument(span);
    let answering = InFlight::count(&shell);
    let mut response = RunToEnd::new(work).await;
    drop(answering);

    bakery_telemetry::record_request(&route, response.status().as_u16());
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID, id_header);
    // Every answer is what its content type says, HTML or not.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if shell.debug_headers() {
        headers.insert(SERVED_BY, shell.0.served_by.clone());
    }
    response
}

/// One request counted in flight until dropped (also when the client went away).
struct InFlight<'a>(&'a Shell);

impl<'a> InFlight<'a> {
    fn count(shell: &'a Shell) -> Self {
        shell.0.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(shell)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs a request's work to its end even when the client goes away (hyper then drops
/// the request's future): a write must never stop between the database and the cache
/// invalidation it owes, and a query must not be dropped half-way (sqlx connections do
/// not recover well from that). Polled in place while the client waits — no task, no
/// hand-off on the hot path; if dropped unfinished, what is left moves to a task.
struct RunToEnd<F: Future + Send + 'static> {
    work: Option<std::pin::Pin<Box<F>>>,
}

impl<F: Future + Send + 'static> RunToEnd<F> {
    fn new(work: F) -> Self {
        Self {
            work: Some(Box::pin(work)),
        }
    }
}

impl<F: Future + Send + 'static> Future for RunToEnd<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let work = self.work.as_mut().expect("polled after it finished");
        let output = std::task::ready!(work.as_mut().poll(cx));
        self.work = None;
        std::task::Poll::Ready(output)
    }
}

impl<F: Future + Send + 'static> Drop for RunToEnd<F> {
    fn drop(&mut self) {
        // Outside a runtime (the process is ending) there is nothing left to finish on.
        if let (Some(work), Ok(runtime)) = (self.work.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                work.await;
            });
        }
    }
}

/// Answers 503 `timeout` when a handler takes longer than the configured bound.
pub async fn timeout(State(shell): State<Shell>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(shell.0.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            ApiError::unavailable("timeout", "the request took too long; try again").into_response()
        }
    }
}

/// Refuses an unsafe request that a browser says came from another site — with or
/// without a session cookie, so a cross-site login form is refused too: `Origin`
/// naming another origin (scheme, host and port compared), or `Sec-Fetch-Site:
/// cross-site`. Clients that send neither header (curl, other services) pass, as the
/// contract says.
pub async fn csrf(req: Request, next: Next) -> Response {
    if is_cross_site(req.method(), req.headers()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "cross-site requests may not change anything",
        )
        .into_response();
    }
    next.run(req).await
}

fn is_cross_site(method: &Method, headers: &HeaderMap) -> bool {
    let unsafe_method = !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    if !unsafe_method {
        return false;
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    // `Origin: null` (sandboxed frames, some redirects) names no origin of ours.
    let Some(theirs) = origin.to_str().ok().and_then(parse_origin) else {
        return true;
    };
    let scheme = if is_tls(headers) { "https" } else { "http" };
    let ours = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|host| parse_origin(&format!("{scheme}://{host}")));
    ours != Some(theirs)
}

/// Whether the request came over TLS (as the load balancer says).
pub fn is_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// `(scheme, host, port)` of an origin, the port made explicit (80 and 443 by
/// default), the host in lower case.
fn parse_origin(origin: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split('/').next()?;
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            match port.parse::<u16>() {
                Ok(port) => (host, port),
                Err(_) if port.is_empty() => (host, default_port),
                Err(_) => return None,
            }
        }
        _ => (authority, default_port),
    };
    Some((scheme, host.to_ascii_lowercase(), port))
}

/// A browser asking for a page gets its error as a page: a request whose `Accept`
/// prefers `text/html` and whose answer is the contract's JSON error gets the same
/// status, headers and sentence as HTML. API clients keep the JSON.
pub async fn html_errors(req: Request, next: Next) -> Response {
    let wants_html = prefers_html(req.headers());
    let response = next.run(req).await;
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !wants_html || !json || response.status().as_u16() < 400 {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 10).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_default();
    let page = error_page(parts.status, &message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    for (name, value) in bakery_core::edge::HTML_HEADERS {
        parts.headers.insert(name, HeaderValue::from_static(value));
    }
    Response::from_parts(parts, axum::body::Body::from(page))
}

/// Whether `Accept` ranks `text/html` above (or with) JSON, as browsers send it.
fn prefers_html(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let quality = |wanted: &str| {
        accept
            .split(',')
            .filter_map(|item| {
                let mut parts = item.split(';');
                let media = parts.next()?.trim();
                (media.eq_ignore_ascii_case(wanted)).then(|| {
                    parts
                        .filter_map(|p| p.trim().strip_prefix("q="))
                        .find_map(|q| q.trim().parse::<f32>().ok())
                        .unwrap_or(1.0)
                })
            })
            .fold(0.0f32, f32::max)
    };
    let html = quality("text/html");
    html > 0.0 && html >= quality("application/json")
}

/// The page of an error: its status and sentence, and the way home.
fn error_page(status: StatusCode, message: &str) -> String {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title} — bakery</title></head>\n<body><main><h1>{title}</h1><p>{}</p><p><a href=\"/\">Back to the bakery</a></p></main></body></html>\n",
        bakery_core::html::escape(message)
    )
}

/// What every HTML answer carries: no sniffing into another type, a content
/// security policy (our own scripts, styles and images only; no framing), and the
/// older frame header for browsers without `frame-ancestors`.
pub async fn html_security(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if html {
        let headers = response.headers_mut();
        for (name, value) in bakery_core::edge::HTML_HEADERS {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    const COOKIE: (&str, &str) = (
        "cookie",
        "bakery_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );

    #[test]
    fn cross_site_unsafe_requests_are_refused_with_or_without_a_session() {
        let evil = headers(&[
            COOKIE,
            ("host", "bakery.test"),
            ("origin", "https://evil.test"),
        ]);
        assert!(is_cross_site(&Method::POST, &evil));
        let fetch = headers(&[COOKIE, ("sec-fetch-site", "cross-site")]);
        assert!(is_cross_site(&Method::DELETE, &fetch));
        let null = headers(&[COOKIE, ("host", "bakery.test"), ("origin", "null")]);
        assert!(is_cross_site(&Method::PATCH, &null));
        // A login form on another site, no cookie yet: login CSRF.
        let login = headers(&[("host", "bakery.test"), ("origin", "https://evil.test")]);
        assert!(is_cross_site(&Method::POST, &login));
        // Same host, another port or scheme: another origin.
        let port = headers(&[
            ("host", "bakery.test:8080"),
            ("origin", "http://bakery.test:9090"),
        ]);
        assert!(is_cross_site(&Method::POST, &port));
        let scheme = headers(&[("host", "bakery.test"), ("origin", "https://bakery.test")]);
        assert!(is_cross_site(&Method::POST, &scheme));
        let prefix = headers(&[
            ("host", "bakery.test"),
            ("origin", "http://bakery.test.evil.test"),
        ]);
        assert!(is_cross_site(&Method::POST, &prefix));
    }

    #[test]
    fn browsers_prefer_pages_and_api_clients_json() {
        let accept = |value: &'static str| headers(&[("accept", value)]);
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(prefers_html(&accept(firefox)));
        assert!(prefers_html(&accept("text/html")));
        assert!(!prefers_html(&accept("application/json")));
        assert!(!prefers_html(&accept("*/*")));
        assert!(!prefers_html(&accept("application/json, text/html;q=0.5")));
        assert!(!prefers_html(&accept("text/html;q=0")));
        assert!(!prefers_html(&headers(&[])));
        let page = error_page(StatusCode::NOT_FOUND, "no <script> here");
        assert!(page.contains("404 Not Found") && page.contains("no &lt;script&gt; here"));
    }

    #[test]
    fn same_origin_safe_and_headerless_requests_pass() {
        let same = headers(&[
            COOKIE,
            ("host", "bakery.test:8080"),
            ("origin", "http://bakery.test:8080"),
        ]);
        assert!(!is_cross_site(&Method::POST, &same));
        let default_port = headers(&[("host", "Bakery.test"), ("origin", "http://bakery.test:80")]);
        assert!(!is_cross_site(&Method::POST, &default_port));
        let tls = headers(&[
            ("host", "bakery.test"),
            ("x-forwarded-proto", "https"),
            ("origin", "https://bakery.test"),
        ]);
        assert!(!is_cross_site(&Method::POST, &tls));
        let curl = headers(&[COOKIE]);
        assert!(!is_cross_site(&Method::POST, &curl));
        let get = headers(&[COOKIE, ("origin", "https://evil.test")]);
        assert!(!is_cross_site(&Method::GET, &get));
    }
}
