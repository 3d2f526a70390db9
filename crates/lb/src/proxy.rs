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
use http::header::{self, HeaderName};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::reply::{self, Body};
use crate::upstream::Upstream;
use crate::{Lb, admin, client_ip, edge};

/// Headers that belong to one hop and are never forwarded (RFC 9110, 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Failures in a row after connecting that eject a member (Envoy's
/// `consecutive_gateway_failure`).
const CONSECUTIVE_FAILURES_TO_EJECT: u32 = 3;

pub async fn handle(
    lb: &Lb,
    upstream_client: &Upstream,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let request_id =
        accept_request_id(req.headers().get(REQUEST_ID)).unwrap_or_else(new_request_id);
    let request_id = HeaderValue::from_str(&request_id).expect("request ids are checked tokens");
    let path = req.uri().path();
    let at_edge = edge::eligible(req.method(), path, req.headers());
    let mut response = if admin::owns(path) {
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
}

async fn forward(
    lb: &Lb,
    upstream_client: &Upstream,
    peer: SocketAddr,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    edge_miss: bool,
) -> Response<Body> {
    let pool = lb.route(req.uri().path()).clone();
    let route = pool.route_label();
    let own = |status: StatusCode, code: &str, message: &str| {
        record_request(route, status.as_u16());
        lb.stamp(reply::error(status, code, message))
    };
    // Answered before the body was read whole: the connection cannot carry another
    // request (the unread rest would be taken for one), so the client is told it
    // closes rather than finding out on its next request.
    let refused = |status: StatusCode, code: &str, message: &str| {
        let mut response = own(status, code, message);
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

    // The bounded queue: take a free slot at once, or wait a little, then shed load.
    let _slot = match lb.slots.try_acquire() {
        Ok(permit) => permit,
        Err(_) => match tokio::time::timeout(lb.config.queue_timeout, lb.slots.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                return own(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "the load balancer is at capacity; try again",
                );
            }
        },
    };

    // Made for each attempt (a retry is rare): no copy kept for one.
    let headers_for_upstream = || {
        let mut headers =
            upstream_headers(&parts.headers, peer, request_id, &lb.config.trusted_proxies);
        if edge_miss {
            headers.insert(edge::MISS_HEADER, HeaderValue::from_static("1"));
        }
        headers
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let idempotent = is_idempotent(&parts.method);

    lb.budget.deposit();
    let mut tried: Vec<usize> = Vec::with_capacity(2);
    loop {
        let Some((index, backend)) = pool.pick(&tried) else {
            let message = if tried.is_empty() {
                "no healthy backend can serve this"
            } else {
                "every backend tried failed"
            };
            return own(
                StatusCode::SERVICE_UNAVAILABLE,
                "backend_unavailable",
                message,
            );
        };
        tried.push(index);
        let mut upstream = Request::new(Full::new(body.clone()));
        *upstream.method_mut() = parts.method.clone();
        // Origin form on a connection of our own to the backend.
        *upstream.uri_mut() = http::Uri::from(path_and_query.clone());
        *upstream.headers_mut() = headers_for_upstream();
        if !upstream.headers().contains_key(header::HOST) {
            upstream
                .headers_mut()
                .insert(header::HOST, backend.host.clone());
        }

        let inflight = backend.start_request();
        let outcome = tokio::time::timeout(
            lb.config.upstream_timeout,
            upstream_client.request(backend.addr, upstream),
        )
        .await;
        drop(inflight);
        let error = match outcome {
            Ok(Ok(response)) => {
                backend.record_success();
                pool.count_response(response.status());
                return downstream(response);
            }
            Ok(Err(error)) => error,
            Err(_) => {
                metrics::counter!("bakery_lb_upstream_errors_total", "kind" => "timeout")
                    .increment(1);
                return own(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream_timeout",
                    "the backend took too long to answer",
                );
            }
        };
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
            return own(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_failed",
                "the backend failed to answer",
            );
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

/// The client's headers without hop-by-hop ones, plus the request id and the
/// `x-forwarded-*` pair. `Host` is kept, so clones see the name the client used.
/// The body limit of `path`: uploads have their own, every other route the JSON one.
fn body_limit(config: &bakery_config::LbConfig, path: &str) -> usize {
    let upload = path
        .strip_prefix("/api/products/")
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
const END_TO_END: [HeaderName; 8] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::COOKIE,
    header::AUTHORIZATION,
    header::ORIGIN,
    HeaderName::from_static("sec-fetch-site"),
    header::ACCEPT_ENCODING,
];

/// Carries the client's address, as the load balancer determined it, to the clones
/// (rate limits count by it); whatever a client sends under this name is replaced.
pub const CLIENT_IP: &str = "x-bakery-client-ip";

/// The client's address: the peer, or — when the peer is a trusted proxy — the
/// rightmost `x-forwarded-for` entry that is not itself a trusted proxy.
fn client_address(incoming: &HeaderMap, peer: SocketAddr, trusted: &[ProxyNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut address = peer.ip();
    if !is_trusted(&address) {
        return address;
    }
    let hops: Vec<IpAddr> = incoming
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
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

fn upstream_headers(
    incoming: &HeaderMap,
    peer: SocketAddr,
    request_id: &HeaderValue,
    trusted: &[ProxyNet],
) -> HeaderMap {
    let named_in_connection: Vec<String> = incoming
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(incoming.len() + 3);
    for (name, value) in incoming {
        let named = named_in_connection.iter().any(|n| n == name.as_str());
        if HOP_BY_HOP.contains(name) || (named && !END_TO_END.contains(name)) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out.insert(REQUEST_ID, request_id.clone());
    // Only the load balancer says a request missed its edge.
    out.remove(edge::MISS_HEADER);
    // A trusted proxy's word on the client and the scheme is kept; anyone else's is
    // replaced (this edge itself speaks plain HTTP).
    let from_proxy = trusted.iter().any(|net| net.contains(&peer.ip()));
    let peer_ip = HeaderValue::from_str(&client_ip(peer)).ok();
    if !from_proxy {
        // The common case: the peer is the client, named once for both headers.
        if let Some(ip) = peer_ip {
            out.insert("x-forwarded-for", ip.clone());
            out.insert(CLIENT_IP, ip);
        }
        out.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        return out;
    }
    let forwarded_for = match incoming
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(earlier) => format!("{earlier}, {}", client_ip(peer)),
        None => client_ip(peer),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        out.insert("x-forwarded-for", value);
    }
    let proto = incoming
        .get("x-forwarded-proto")
        .filter(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
        .map_or("http", |_| "https");
    out.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    if let Ok(value) = HeaderValue::from_str(&client_address(incoming, peer, trusted).to_string()) {
        out.insert(CLIENT_IP, value);
    }
    out
}

/// The backend's response without its hop-by-hop headers.
fn downstream(mut response: Response<Body>) -> Response<Body> {
    for name in &HOP_BY_HOP {
        // Keep transfer-encoding's absence/presence to hyper: it frames the body itself.
        response.headers_mut().remove(name);
    }
    response
}

/// How long the health checker waits for one `/healthz`.
pub(crate) fn probe_timeout(interval: Duration) -> Duration {
    interval.min(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_methods_are_retried_after_sending() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }

    #[test]
    fn hop_by_hop_headers_stay_behind_and_forwarding_headers_are_added() {
        let mut incoming = HeaderMap::new();
        incoming.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        incoming.insert("x-secret-hop", HeaderValue::from_static("1"));
        incoming.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        incoming.insert(header::HOST, HeaderValue::from_static("bakery.test"));
        incoming.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        incoming.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let peer: SocketAddr = "127.0.0.9:5000".parse().unwrap();
        let rid = HeaderValue::from_static("rid");
        // From an untrusted peer the client's claims are replaced.
        let out = upstream_headers(&incoming, peer, &rid, &[]);
        assert!(!out.contains_key(header::CONNECTION));
        assert!(!out.contains_key("x-secret-hop"));
        assert!(!out.contains_key("keep-alive"));
        assert_eq!(out[header::HOST], "bakery.test");
        assert_eq!(out["x-forwarded-for"], "127.0.0.9");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out[CLIENT_IP], "127.0.0.9");
        assert_eq!(out[REQUEST_ID], "rid");
        // From a trusted proxy they are kept, and the client is the one it names.
        let trusted: Vec<ProxyNet> = vec!["127.0.0.0/8".parse().unwrap()];
        let out = upstream_headers(&incoming, peer, &rid, &trusted);
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out[CLIENT_IP], "10.0.0.1");
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
