//! HTTP/2 to the members of a multiplexed pool (`lb_http2_pools`; the push
//! service's by default): requests share a few connections instead of holding one
//! each.
//!
//! Over HTTP/1 a notification stream held a connection to the push process for its
//! whole life: two descriptors at the balancer per stream (10,000 streams did not
//! fit in the 20,000 a process may open here) and a connection's buffers at the push
//! process. Over HTTP/2 a stream is a few hundred bytes of state on a shared
//! connection. Cleartext with prior knowledge (h2c): the backends are ours, and
//! every service of bakery answers HTTP/1 and HTTP/2 on one port.
//!
//! Each worker thread keeps its own connections (as [`crate::upstream`] does), a new
//! one opened when those it has carry [`STREAMS_PER_CONNECTION`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::reply::BoxError;
use crate::timer::Coarse;
use crate::upstream::{
    Answer, AnswerBody, BUFFERED_MAX, IDLE_TIMEOUT, Outgoing, UpstreamError, connect,
};

/// Streams one connection carries before another is opened: under the 200 that
/// hyper's server allows a connection by default, which would queue the rest.
const STREAMS_PER_CONNECTION: usize = 128;

/// Flow-control windows: a stream's, and the connection's (shared by its streams).
/// Larger than HTTP/2's 64 KiB default, so a client slow to read its events holds
/// back neither the others nor a burst of events for all of them.
const STREAM_WINDOW: u32 = 256 << 10;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// One worker thread's HTTP/2 connections to the backends.
pub struct Multiplexed {
    conns: Mutex<HashMap<SocketAddr, Vec<Shared>>>,
    connect_timeout: Duration,
    timer: Coarse,
}

/// A connection and the streams open on it.
#[derive(Clone)]
struct Shared {
    sender: SendRequest<Full<Bytes>>,
    open: Arc<AtomicUsize>,
    /// When it last had no stream open.
    idle_since: Arc<Mutex<Instant>>,
}

/// A stream open on a [`Shared`] connection, counted until it is dropped (with the
/// body of the answer, for a streamed one).
struct StreamSlot(Shared);

impl StreamSlot {
    fn take(shared: &Shared) -> Self {
        shared.open.fetch_add(1, Ordering::Relaxed);
        Self(shared.clone())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }
}

impl Multiplexed {
    pub fn new(connect_timeout: Duration, timer: Coarse) -> Self {
        Self {
            conns: Mutex::new(HashMap::new()),
            connect_timeout,
            timer,
        }
    }

    /// Sends `request` to `addr` on a shared connection: the answer once its head
    /// has arrived (and its body, when it is small and its length known).
    pub async fn exchange(
        &self,
        addr: SocketAddr,
        request: &Outgoing,
    ) -> Result<Answer, UpstreamError> {
        // A shared connection the backend closed meanwhile (it restarted, or said
        // GOAWAY) sent nothing and is no fault of the backend's: the request goes on
        // another connection, as over HTTP/1. Only a new connection that fails so is
        // reported.
        let (slot, response) = loop {
            let (slot, fresh) = match self.checkout(addr) {
                Some(slot) => (slot, false),
                None => (self.connect(addr).await?, true),
            };
            let mut sender = slot.0.sender.clone();
            let sent = match sender.ready().await {
                Ok(()) => sender.send_request(to_http2(request)?).await,
                Err(error) => Err(error),
            };
            match sent {
                Ok(response) => break (slot, response),
                Err(error) if error.is_canceled() || error.is_closed() => {
                    self.forget(addr, &slot.0);
                    if fresh {
                        return Err(UpstreamError::Unsent(error.to_string()));
                    }
                }
                Err(error) => return Err(UpstreamError::Exchange(error.to_string())),
            }
        };
        let (parts, body) = response.into_parts();
        let bodiless = request.head_only
            || parts.status.is_informational()
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        let length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let body = if bodiless {
            AnswerBody::Full(Bytes::new())
        } else if length.is_some_and(|n| n <= BUFFERED_MAX) {
            let whole = body
                .collect()
                .await
                .map_err(|e| UpstreamError::Exchange(e.to_string()))?;
            AnswerBody::Full(whole.to_bytes())
        } else {
            AnswerBody::Stream(
                Counted { body, _slot: slot }
                    .map_err(|e| Box::new(e) as BoxError)
                    .boxed(),
            )
        };
        Ok(Answer::from_map(
            parts.status,
            parts.headers,
            bodiless,
            body,
        ))
    }

    /// A stream on a connection to `addr` with room for it.
    fn checkout(&self, addr: SocketAddr) -> Option<StreamSlot> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.get_mut(&addr)?;
        list.retain(|c| !c.sender.is_closed());
        list.iter()
            .find(|c| c.open.load(Ordering::Relaxed) < STREAMS_PER_CONNECTION)
            .map(StreamSlot::take)
    }

    /// Drops a connection found closed, so no request picks it again.
    fn forget(&self, addr: SocketAddr, closed: &Shared) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = conns.get_mut(&addr) {
            list.retain(|c| !Arc::ptr_eq(&c.open, &closed.open));
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<StreamSlot, UpstreamError> {
        let stream = connect(&self.timer, self.connect_timeout, addr).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Unsent(e.to_string()))?;
        // Runs on this worker's runtime until the connection closes (the backend
        // goes, or every handle to it is dropped by `prune`).
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%addr, %error, "HTTP/2 connection to a backend ended");
            }
        });
        let shared = Shared {
            sender,
            open: Arc::default(),
            idle_since: Arc::new(Mutex::new(Instant::now())),
        };
        let slot = StreamSlot::take(&shared);
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.entry(addr).or_default().push(shared);
        Ok(slot)
    }

    /// Closes connections with no stream open since before `now - IDLE_TIMEOUT`
    /// and those closed by their backend; forgets backends left with none.
    pub fn prune(&self, now: Instant) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|_, list| {
            list.retain(|c| {
                let idle_since = *c.idle_since.lock().unwrap_or_else(|p| p.into_inner());
                !c.sender.is_closed()
                    && (c.open.load(Ordering::Relaxed) > 0
                        || now.saturating_duration_since(idle_since) < IDLE_TIMEOUT)
            });
            !list.is_empty()
        });
    }

    /// Connections held now, over every backend.
    #[cfg(test)]
    fn connection_count(&self) -> usize {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.values().map(Vec::len).sum()
    }
}

/// The request as [`crate::proxy`] wrote it for HTTP/1, as an HTTP/2 request: the
/// same method, target and headers (`host` becomes the authority).
fn to_http2(request: &Outgoing) -> Result<Request<Full<Bytes>>, UpstreamError> {
    let unsendable = |why: &str| UpstreamError::Unsent(format!("cannot send over HTTP/2: {why}"));
    let lines = request.head.windows(2).filter(|w| w == b"\r\n").count();
    let mut fields = vec![httparse::EMPTY_HEADER; lines];
    let mut parsed = httparse::Request::new(&mut fields);
    let length = match parsed.parse(&request.head) {
        Ok(httparse::Status::Complete(length)) => length,
        _ => return Err(unsendable("unparsable head")),
    };
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let mut authority = None;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            authority = Some(h.value);
            continue;
        }
        let name = http::HeaderName::from_bytes(h.name.as_bytes());
        let value = http::HeaderValue::from_bytes(h.value);
        match (name, value) {
            (Ok(name), Ok(value)) => headers.append(name, value),
            _ => return Err(unsendable("a bad header")),
        };
    }
    let uri = Uri::builder()
        .scheme("http")
        .authority(authority.unwrap_or(b"localhost"))
        .path_and_query(parsed.path.unwrap_or("/"))
        .build()
        .map_err(|e| unsendable(&e.to_string()))?;
    let body = if request.tail.is_empty() {
        Bytes::copy_from_slice(&request.head[length..])
    } else {
        request.tail.clone()
    };
    let method = http::Method::from_bytes(parsed.method.unwrap_or("GET").as_bytes())
        .map_err(|e| unsendable(&e.to_string()))?;
    let mut outgoing = Request::new(Full::new(body));
    *outgoing.method_mut() = method;
    *outgoing.uri_mut() = uri;
    *outgoing.version_mut() = http::Version::HTTP_2;
    *outgoing.headers_mut() = headers;
    Ok(outgoing)
}

/// A streamed answer's body, holding its stream's place on the connection.
struct Counted {
    body: Incoming,
    _slot: StreamSlot,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(head: &str, tail: &'static [u8]) -> Outgoing {
        Outgoing {
            head: head.as_bytes().to_vec(),
            tail: Bytes::from_static(tail),
            head_only: false,
        }
    }

    #[test]
    fn an_http1_head_becomes_an_http2_request() {
        let request = to_http2(&outgoing(
            "POST /api/x?y=1 HTTP/1.1\r\nhost: shop.test\r\nx-request-id: r1\r\ncontent-length: 2\r\n\r\nhi",
            b"",
        ))
        .unwrap();
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(request.uri().to_string(), "http://shop.test/api/x?y=1");
        assert!(request.headers().get("host").is_none());
        assert_eq!(request.headers()["x-request-id"], "r1");
        assert_eq!(request.headers()["content-length"], "2");
        let body = futures::executor::block_on(request.into_body().collect())
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"hi");
        // A large body travels beside the head.
        let request = to_http2(&outgoing(
            "PUT / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n\r\n",
            b"body",
        ))
        .unwrap();
        let body = futures::executor::block_on(request.into_body().collect())
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"body");
        assert!(to_http2(&outgoing("nonsense", b"")).is_err());
    }

    /// A backend on a port of its own: `serve` runs each connection it accepts.
    async fn backend<F, Fut>(serve: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        (addr, server)
    }

    /// A backend that answers one request a connection, then closes it (as a
    /// restarting push process does): every request still gets its answer, on a
    /// new connection when the old one is found closed.
    #[tokio::test]
    async fn a_connection_the_backend_closed_is_replaced() {
        use std::convert::Infallible;
        let (addr, server) = backend(|stream| async move {
            let (done, answered) = tokio::sync::oneshot::channel::<()>();
            let done = std::sync::Mutex::new(Some(done));
            let service = hyper::service::service_fn(move |_req| {
                if let Some(done) = done.lock().unwrap().take() {
                    let _ = done.send(());
                }
                async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = answered => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        })
        .await;
        let multiplexed = Multiplexed::new(Duration::from_secs(1), Coarse::default());
        let request = outgoing("GET /x HTTP/1.1\r\nhost: a\r\n\r\n", b"");
        for i in 0..20 {
            let answer = multiplexed.exchange(addr, &request).await;
            let answer = answer.unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(answer.status, StatusCode::OK);
        }
        server.abort();
    }

    #[tokio::test]
    async fn streams_share_connections_up_to_their_limit() {
        use std::convert::Infallible;
        // A backend answering every request with an endless stream over HTTP/2.
        let (addr, server) = backend(|stream| async move {
            let service = hyper::service::service_fn(|_req| async {
                use futures::StreamExt;
                let first = Frame::data(Bytes::from_static(b"x"));
                let frames = futures::stream::iter([Ok::<_, Infallible>(first)])
                    .chain(futures::stream::pending());
                let body = http_body_util::StreamBody::new(frames);
                Ok::<_, Infallible>(hyper::Response::new(body))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        })
        .await;
        let multiplexed = Multiplexed::new(Duration::from_secs(1), Coarse::default());
        let request = outgoing("GET /stream HTTP/1.1\r\nhost: a\r\n\r\n", b"");
        let mut open = Vec::new();
        for _ in 0..STREAMS_PER_CONNECTION + 1 {
            let answer = multiplexed.exchange(addr, &request).await.unwrap();
            assert_eq!(answer.status, StatusCode::OK);
            let AnswerBody::Stream(mut body) = answer.body else {
                panic!("an endless answer must be streamed");
            };
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(&first[..], b"x");
            open.push(body);
        }
        assert_eq!(multiplexed.connection_count(), 2);
        // Streams that end free their places: the next ones reuse the connections.
        open.truncate(10);
        for _ in 0..50 {
            let answer = multiplexed.exchange(addr, &request).await.unwrap();
            open.push(match answer.body {
                AnswerBody::Stream(body) => body,
                AnswerBody::Full(_) => panic!("an endless answer must be streamed"),
            });
        }
        assert_eq!(multiplexed.connection_count(), 2);
        open.clear();
        multiplexed.prune(Instant::now() + IDLE_TIMEOUT * 2);
        assert_eq!(multiplexed.connection_count(), 0);
        server.abort();
    }
}
