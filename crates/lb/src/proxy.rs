//! Forwarding one request: route, queue, buffer the body, pick a backend, send,
//! and retry on another backend only when that is safe.
//!
//! Retry rules: a connection that failed to open, or closed before the request was
//! written, carried nothing, so any request may go elsewhere (only the first ejects
//! the backend: the second means it is up); a failure after sending is retried only
//! for idempotent methods (a POST may already have had its effect); every retry
//! draws on the budget; a timeout is not retried (the backend may still be working
//! on it).

use std::net::{IpAddr, SocketAddr};

use bakery_config::ProxyNet;
use std::time::Duration;

use bakery_telemetry::{REQUEST_ID, SERVED_BY, accept_request_id, new_request_id, record_request};
use bytes::Bytes;
use http::header;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::headers::{is_hop_by_hop, is_one_of, itoa, named_in_connection, values};
use crate::pool::Pool;
use crate::reply::{self, Body};
use crate::upstream::{Answer, Outgoing, Upstream, UpstreamError};
use crate::{Lb, admin, edge};

/// A body up to this size goes out in one write with the head (a copy is cheaper
/// than a second syscall).
pub(crate) const INLINE_BODY_MAX: usize = 16 << 10;

/// The client connection a request came on.
pub struct Peer {
    pub addr: SocketAddr,
    /// Its address as `x-forwarded-for` names it, written once per connection.
    pub ip: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Self { addr, ip }
    }
}

/// Failures in a row after connecting that eject a member (Envoy's
/// `consecutive_gateway_failure`).
const CONSECUTIVE_FAILURES_TO_EJECT: u32 = 3;

/// A request read by hyper (see [`crate::front`] for those that are not).
pub async fn handle(
    lb: &Lb,
    upstream_client: &Upstream,
    peer: &Peer,
    req: Request<Incoming>,
) -> Response<Body> {
    let request_id = accept_request_id(req.headers().get(REQUEST_ID).map(HeaderValue::as_bytes))
        .unwrap_or_else(new_request_id);
    let request_id = HeaderValue::from_maybe_shared(Bytes::from(request_id))
        .expect("request ids are checked tokens");
    let path = req.uri().path();
    let at_edge = edge::eligible(req.method(), path, req.headers());
    let mut response = if let Some(response) = edge::respell(req.method(), path, req.uri().query())
    {
        record_request("edge", response.status().as_u16());
        lb.stamp(response)
    } else if admin::owns(path) {
        let response = admin::handle(lb, req, admin::Listener::Public).await;
        record_request("lb", response.status().as_u16());
        lb.stamp(response)
    } else if let Some(response) = at_edge
        .then(|| lb.edge.answer(path, req.headers()))
        .flatten()
    {
        record_request("edge", response.status().as_u16());
        lb.stamp(response)
    } else {
        let mut response = forward(lb, upstream_client, peer, req, &request_id, at_edge).await;
        if at_edge {
            metrics::counter!("bakery_edge_requests_total", "result" => "miss").increment(1);
            response
                .headers_mut()
                .insert(edge::EDGE_HEADER, HeaderValue::from_static("miss"));
        }
        response
    };
    response
        .headers_mut()
        .entry(REQUEST_ID)
        .or_insert(request_id);
    response
}

impl Lb {
    /// Names the load balancer in `x-served-by` on a response it made itself.
    pub(crate) fn stamp(&self, mut response: Response<Body>) -> Response<Body> {
        if let Some(id) = &self.served_by {
            response.headers_mut().insert(SERVED_BY, id.clone());
        }
        response
    }

    /// The load balancer's own error for a request on `route`, counted.
    pub(crate) fn refuse(
        &self,
        route: &str,
        status: StatusCode,
        code: &str,
        message: &str,
    ) -> Response<Body> {
        record_request(route, status.as_u16());
        self.stamp(reply::error(status, code, message))
    }
}

/// Reads the body hyper parsed, then [`send`]s the request.
async fn forward(
    lb: &Lb,
    upstream_client: &Upstream,
    peer: &Peer,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    edge_miss: bool,
) -> Response<Body> {
    let pool = lb.route(req.uri().path());
    // Answered before the body was read whole: the connection cannot carry another
    // request (the unread rest would be taken for one), so the client is told it
    // closes rather than finding out on its next request.
    let refused = |status: StatusCode, code: &str, message: &str| {
        let mut response = lb.refuse(pool.route_label(), status, code, message);
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        response
    };

    let (parts, body) = req.into_parts();
    // The body first, under its own limit and deadline, and before the request takes
    // an in-flight slot: slots are for requests being served, not for clients that
    // trickle (or never send) their bodies. Buffering it (as nginx does by default)
    // also lets a request whose connection failed go to another backend.
    let limit = body_limit(&lb.config, parts.uri.path());
    if content_length(&parts.headers).is_some_and(|length| length > limit as u64) {
        return refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is too large",
        );
    }
    // A share of the balancer's body budget first: what the body may take, held
    // until the request is done; none left, the client comes back in a moment.
    let _reserved = if has_body(&parts.headers) {
        let size = content_length(&parts.headers).map_or(limit, |length| length as usize);
        match lb
            .buffered
            .clone()
            .try_acquire_many_owned(size.max(1) as u32)
        {
            Ok(permit) => Some(permit),
            Err(_) => {
                let mut response = refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "too many request bodies are on their way; try again shortly",
                );
                response.headers_mut().insert(
                    hyper::header::RETRY_AFTER,
                    hyper::header::HeaderValue::from_static("1"),
                );
                return response;
            }
        }
    } else {
        None
    };
    let body = if has_body(&parts.headers) {
        let read =
            tokio::time::timeout(lb.config.body_timeout, Limited::new(body, limit).collect());
        match read.await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return refused(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the request body is too large",
                );
            }
            Ok(Err(_)) => {
                return refused(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    "the request body could not be read",
                );
            }
            Err(_) => {
                return refused(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "the request body did not arrive in time",
                );
            }
        }
    } else {
        Bytes::new()
    };

    let fields = header_lines(&parts.headers);
    let head = Head {
        method: &parts.method,
        target: parts.uri.path_and_query().map_or("/", PathAndQuery::as_str),
        incoming: &fields,
        request_id: request_id.as_bytes(),
        edge_miss,
        body_length: body.len(),
    };
    match send(lb, upstream_client, pool, peer, &head, &body).await {
        Ok(answer) => answer.into_response(),
        Err(own) => own,
    }
}

/// Sends a request to a member of `pool` (taking an in-flight slot first), and
/// again to another when that is safe: the backend's answer, or the load
/// balancer's own error.
pub(crate) async fn send(
    lb: &Lb,
    upstream_client: &Upstream,
    pool: &Pool,
    peer: &Peer,
    head: &Head<'_>,
    body: &Bytes,
) -> Result<Answer, Response<Body>> {
    let route = pool.route_label();
    // The bounded queue: take a free slot at once, or wait a little, then shed load.
    let _slot = match lb.slots.try_acquire() {
        Ok(permit) => permit,
        Err(_) => match tokio::time::timeout(lb.config.queue_timeout, lb.slots.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(lb.refuse(
                    route,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "the load balancer is at capacity; try again",
                ));
            }
        },
    };
    let idempotent = is_idempotent(head.method);

    lb.budget.deposit();
    // Backends this request failed on; empty (no allocation) when the first answers.
    let mut tried: Vec<usize> = Vec::new();
    loop {
        let Some((index, backend)) = pool.pick(&tried) else {
            let message = if tried.is_empty() {
                "no healthy backend can serve this"
            } else {
                "every backend tried failed"
            };
            return Err(lb.refuse(
                route,
                StatusCode::SERVICE_UNAVAILABLE,
                "backend_unavailable",
                message,
            ));
        };
        // Written for each attempt (a retry is rare): no copy kept for one.
        let mut wire = head.write(peer, &lb.config.trusted_proxies, &backend.host);
        let inline = body.len() <= INLINE_BODY_MAX;
        if inline {
            wire.extend_from_slice(body);
        }
        let upstream = Outgoing {
            head: wire,
            tail: if inline { Bytes::new() } else { body.clone() },
            head_only: *head.method == Method::HEAD,
        };

        let inflight = backend.start_request();
        // Stranded on a member that dies (a host cut away answers nothing until the
        // upstream timeout): once the checker finds it dead, an idempotent request
        // is given up there and tried on another; any other waits for its answer.
        let outcome = upstream_client
            .request_unless(backend.addr, &upstream, pool.http2, || {
                idempotent && backend.is_dead()
            })
            .await;
        drop(inflight);
        let error = match outcome {
            Ok(answer) => {
                backend.record_success();
                pool.count_response(answer.status);
                return Ok(answer);
            }
            Err(UpstreamError::Timeout) => {
                metrics::counter!("bakery_lb_upstream_errors_total", "kind" => "timeout")
                    .increment(1);
                return Err(lb.refuse(
                    route,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream_timeout",
                    "the backend took too long to answer",
                ));
            }
            Err(error) => error,
        };
        tried.push(index);
        let connect_failed = error.is_connect();
        metrics::counter!("bakery_lb_upstream_errors_total", "kind" => error.kind()).increment(1);
        tracing::warn!(backend = %backend.id, %error, connect_failed, "upstream attempt failed");
        // Outlier detection: a refused connection, or a streak of failures after
        // connecting, takes the member out until the checker sees it pass again.
        let streak = backend.record_failure();
        if (connect_failed || streak >= CONSECUTIVE_FAILURES_TO_EJECT) && pool.eject(&backend) {
            let reason = if connect_failed {
                "connect_failed"
            } else {
                "consecutive_failures"
            };
            metrics::counter!("bakery_lb_ejections_total", "reason" => reason).increment(1);
            tracing::warn!(backend = %backend.id, reason, "ejected");
        }
        if !(error.is_unsent() || idempotent) || !lb.budget.try_withdraw() {
            return Err(lb.refuse(
                route,
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_failed",
                "the backend failed to answer",
            ));
        }
        metrics::counter!("bakery_lb_retries_total").increment(1);
    }
}

/// Whether the client sent a body at all (GETs usually do not: no buffering then).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The body limit of `path`: uploads (the API's and the product page's form) have
/// their own, every other route the JSON one.
pub(crate) fn body_limit(config: &bakery_config::LbConfig, path: &str) -> usize {
    let upload = path
        .strip_prefix("/api/products/")
        .or_else(|| path.strip_prefix("/products/"))
        .and_then(|rest| rest.strip_suffix("/images"))
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()));
    if upload {
        config.max_body_bytes
    } else {
        config.max_json_body_bytes
    }
}

/// The declared `Content-Length`, when there is one that parses.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Headers a client may not have dropped by naming them in `Connection`: the clones
/// rely on them (an `Origin` or `Sec-Fetch-Site` dropped would slip a cross-site
/// request past the CSRF check).
const END_TO_END: [&str; 8] = [
    "host",
    "content-length",
    "content-type",
    "cookie",
    "authorization",
    "origin",
    "sec-fetch-site",
    "accept-encoding",
];

/// Carries the client's address, as the load balancer determined it, to the clones
/// (rate limits count by it); whatever a client sends under this name is replaced.
pub const CLIENT_IP: &str = "x-bakery-client-ip";

/// hyper's header map as the header lines [`Head`] reads.
fn header_lines(headers: &HeaderMap) -> Vec<httparse::Header<'_>> {
    headers
        .iter()
        .map(|(name, value)| httparse::Header {
            name: name.as_str(),
            value: value.as_bytes(),
        })
        .collect()
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the
/// rightmost `x-forwarded-for` entry that is not itself a trusted proxy.
fn client_address(
    incoming: &[httparse::Header<'_>],
    peer: SocketAddr,
    trusted: &[ProxyNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut address = peer.ip();
    if !is_trusted(&address) {
        return address;
    }
    let hops: Vec<IpAddr> = values(incoming, "x-forwarded-for")
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .collect();
    for hop in hops.into_iter().rev() {
        address = hop;
        if !is_trusted(&hop) {
            break;
        }
    }
    address
}

/// What every attempt at a request sends, whichever backend it goes to.
pub(crate) struct Head<'a> {
    pub method: &'a Method,
    /// Origin form: path and query.
    pub target: &'a str,
    /// The client's headers, as hyper or [`crate::front`] read them.
    pub incoming: &'a [httparse::Header<'a>],
    pub request_id: &'a [u8],
    pub edge_miss: bool,
    pub body_length: usize,
}

impl Head<'_> {
    /// The request line and headers for a backend: the client's headers without
    /// hop-by-hop ones (and without those the load balancer sets itself), plus the
    /// request id, the `x-forwarded-*` pair and the client's address. `Host` is
    /// kept, so clones see the name the client used (`host` when it sent none).
    fn write(&self, peer: &Peer, trusted: &[ProxyNet], host: &HeaderValue) -> Vec<u8> {
        let incoming = self.incoming;
        let mut out =
            Vec::with_capacity(256 + self.target.len() + 48 * incoming.len() + self.body_length);
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut line = |name: &[u8], value: &[u8]| reply::put_header(&mut out, name, value);
        let named = named_in_connection(incoming);
        let mut has_host = false;
        for h in incoming {
            has_host |= h.name.eq_ignore_ascii_case("host");
            if is_hop_by_hop(h.name)
                || is_one_of(h.name, &SET_HERE)
                || (named(h.name) && !is_one_of(h.name, &END_TO_END))
            {
                continue;
            }
            line(h.name.as_bytes(), h.value);
        }
        if !has_host {
            line(b"host", host.as_bytes());
        }
        line(REQUEST_ID.as_bytes(), self.request_id);
        // Only the load balancer says a request missed its edge.
        if self.edge_miss {
            line(edge::MISS_HEADER.as_bytes(), b"1");
        }
        // A trusted proxy's word on the client and the scheme is kept; anyone else's
        // is replaced (this edge itself speaks plain HTTP).
        let from_proxy = trusted.iter().any(|net| net.contains(&peer.addr.ip()));
        if from_proxy {
            let forwarded_for: Vec<&[u8]> = values(incoming, "x-forwarded-for")
                .chain([peer.ip.as_bytes()])
                .collect();
            line(b"x-forwarded-for", &forwarded_for.join(&b", "[..]));
            let https = values(incoming, "x-forwarded-proto")
                .next()
                .is_some_and(|v| v.eq_ignore_ascii_case(b"https"));
            line(b"x-forwarded-proto", if https { b"https" } else { b"http" });
            let client = client_address(incoming, peer.addr, trusted).to_string();
            line(CLIENT_IP.as_bytes(), client.as_bytes());
        } else {
            // The common case: the peer is the client, named once for both headers.
            line(b"x-forwarded-for", peer.ip.as_bytes());
            line(b"x-forwarded-proto", b"http");
            line(CLIENT_IP.as_bytes(), peer.ip.as_bytes());
        }
        // The body was read whole: its length, however the client framed it.
        if self.body_length > 0
            || matches!(*self.method, Method::POST | Method::PUT | Method::PATCH)
        {
            line(b"content-length", itoa(&mut [0; 20], self.body_length));
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// Headers the load balancer writes itself, whatever the client sent under them.
/// (`expect`: the body is read whole before it is sent, so there is nothing to
/// wait for.)
const SET_HERE: [&str; 7] = [
    REQUEST_ID,
    edge::MISS_HEADER,
    "x-forwarded-for",
    "x-forwarded-proto",
    CLIENT_IP,
    "content-length",
    "expect",
];

/// How long the health checker waits for one `/healthz`.
pub(crate) fn probe_timeout(interval: Duration) -> Duration {
    interval.min(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    #[test]
    fn only_idempotent_methods_are_retried_after_sending() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }

    /// The head `incoming` becomes for a backend, parsed back: (request line, headers).
    fn sent(
        incoming: &HeaderMap,
        method: &Method,
        body: usize,
        trusted: &[ProxyNet],
    ) -> (String, HeaderMap) {
        let fields = header_lines(incoming);
        let head = Head {
            method,
            target: "/api/ping?x=1",
            incoming: &fields,
            request_id: b"rid",
            edge_miss: false,
            body_length: body,
        };
        let peer = Peer::new("127.0.0.9:5000".parse().unwrap());
        let wire = head.write(&peer, trusted, &HeaderValue::from_static("10.1.1.1:80"));
        let mut lines = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Request::new(&mut lines);
        assert_eq!(
            parsed.parse(&wire).unwrap(),
            httparse::Status::Complete(wire.len())
        );
        let line = format!("{} {}", parsed.method.unwrap(), parsed.path.unwrap());
        let mut headers = HeaderMap::new();
        for h in parsed.headers.iter() {
            headers.append(
                HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(h.value).unwrap(),
            );
        }
        (line, headers)
    }

    #[test]
    fn hop_by_hop_headers_stay_behind_and_forwarding_headers_are_added() {
        let mut incoming = HeaderMap::new();
        incoming.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop, Cookie"),
        );
        incoming.insert("x-secret-hop", HeaderValue::from_static("1"));
        incoming.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        incoming.insert(header::COOKIE, HeaderValue::from_static("s=1"));
        incoming.insert(header::HOST, HeaderValue::from_static("bakery.test"));
        incoming.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        incoming.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        incoming.insert(REQUEST_ID, HeaderValue::from_static("from-client"));
        incoming.insert(edge::MISS_HEADER, HeaderValue::from_static("1"));
        incoming.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        // From an untrusted peer the client's claims are replaced.
        let (line, out) = sent(&incoming, &Method::GET, 0, &[]);
        assert_eq!(line, "GET /api/ping?x=1");
        assert!(!out.contains_key(header::CONNECTION));
        assert!(!out.contains_key("x-secret-hop"));
        assert!(!out.contains_key("keep-alive"));
        assert!(!out.contains_key(header::EXPECT));
        assert!(
            !out.contains_key(edge::MISS_HEADER),
            "only the balancer says so"
        );
        assert!(
            !out.contains_key(header::CONTENT_LENGTH),
            "a GET without a body"
        );
        assert_eq!(
            out[header::COOKIE],
            "s=1",
            "end-to-end, whatever Connection says"
        );
        assert_eq!(out[header::HOST], "bakery.test");
        assert_eq!(out["x-forwarded-for"], "127.0.0.9");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out[CLIENT_IP], "127.0.0.9");
        assert_eq!(out.get_all(REQUEST_ID).iter().count(), 1);
        assert_eq!(out[REQUEST_ID], "rid");
        // From a trusted proxy they are kept, and the client is the one it names.
        let trusted: Vec<ProxyNet> = vec!["127.0.0.0/8".parse().unwrap()];
        let (_, out) = sent(&incoming, &Method::GET, 0, &trusted);
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out[CLIENT_IP], "10.0.0.1");
    }

    #[test]
    fn the_body_length_is_the_buffered_one_and_host_is_filled_in() {
        let mut incoming = HeaderMap::new();
        incoming.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        incoming.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        let (line, out) = sent(&incoming, &Method::POST, 12, &[]);
        assert_eq!(line, "POST /api/ping?x=1");
        assert!(!out.contains_key(header::TRANSFER_ENCODING));
        assert_eq!(out.get_all(header::CONTENT_LENGTH).iter().count(), 1);
        assert_eq!(out[header::CONTENT_LENGTH], "12");
        assert_eq!(
            out[header::HOST],
            "10.1.1.1:80",
            "the backend's, when the client sent none"
        );
        let (_, out) = sent(&HeaderMap::new(), &Method::POST, 0, &[]);
        assert_eq!(
            out[header::CONTENT_LENGTH],
            "0",
            "a POST says it has no body"
        );
    }

    #[test]
    fn lengths_are_written_in_decimal() {
        for n in [0, 7, 10, 16384, usize::MAX] {
            assert_eq!(itoa(&mut [0; 20], n), n.to_string().as_bytes());
        }
    }

    #[test]
    fn bodies_are_buffered_only_when_there_is_one() {
        let mut headers = HeaderMap::new();
        assert!(!has_body(&headers));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(!has_body(&headers));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert!(has_body(&headers));
    }
}
