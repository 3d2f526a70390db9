//! Connections to the backends, driven inside the request's own task.
//!
//! hyper's pooled client gives every upstream connection a task of its own: a
//! request goes from the client connection's task to that task and its response
//! comes back, two wake-ups per request on top of the proxying (`perf` showed the
//! load balancer spending half its time in the scheduler and the kernel's
//! wake-ups). Here a request takes an idle connection from its worker's pool and
//! drives it itself — writes the request, reads the response head and body — on
//! the one task, as nginx does on its event loop, then puts it back.
//!
//! Responses with a known length up to [`BUFFERED_MAX`] are read whole that way
//! (nearly every answer of a clone). Others (server-sent events, large files) hand
//! their connection to a task of its own and stream, and that connection is not
//! reused. Idle connections are not watched between requests, so [`Upstream::prune`]
//! runs now and then: it closes those idle past [`IDLE_TIMEOUT`] or closed by their
//! backend, and forgets backends left with none (a clone gone for good).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::reply::Body;

/// Largest response read whole before it is answered.
const BUFFERED_MAX: u64 = 1 << 20;

/// Idle connections kept per backend, per worker.
const IDLE_MAX: usize = 1024;

/// An idle connection unused this long is closed (as hyper's pooled client does).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type Sender = http1::SendRequest<Full<Bytes>>;
type Driver = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// One worker thread's connections to the backends.
pub struct Upstream {
    idle: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
    connect_timeout: Duration,
}

struct Conn {
    sender: Sender,
    driver: Driver,
    idle_since: Instant,
}

impl Conn {
    /// Lets it read what arrived while it was idle: a backend that closed it
    /// (keep-alive timeout, restart) shows here, before anything is sent.
    fn is_open(&mut self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        Pin::new(&mut self.driver).poll(&mut cx).is_pending() && !self.sender.is_closed()
    }
}

#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made (refused, timed out): the backend is down.
    Connect(String),
    /// A new connection closed before the request was written: nothing was sent,
    /// but the backend is up (it accepted), so this says nothing about its health.
    Unsent(String),
    /// The exchange failed after the request was (or may have been) sent.
    Exchange(hyper::Error),
}

impl UpstreamError {
    /// The backend could not be reached at all.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }

    /// Nothing reached the backend: any request may go to another.
    pub fn is_unsent(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Unsent(_))
    }

    /// Its label in `bakery_lb_upstream_errors_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Unsent(_) => "unsent",
            Self::Exchange(_) => "reset",
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(cause) => write!(f, "cannot connect: {cause}"),
            Self::Unsent(cause) => write!(f, "closed before the request was sent: {cause}"),
            Self::Exchange(error) => write!(f, "{error}"),
        }
    }
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) to `addr`; its response.
    ///
    /// An idle connection the backend closed meanwhile (its keep-alive ran out, it
    /// restarted) is no fault of the backend's and costs nothing: the request, still
    /// unsent, goes on another connection, as hyper's pooled client does. Only a new
    /// connection that fails is reported.
    pub async fn request(
        &self,
        addr: SocketAddr,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<Body>, UpstreamError> {
        loop {
            let (mut conn, fresh) = match self.checkout(addr) {
                Some(conn) => (conn, false),
                None => (self.connect(addr).await?, true),
            };
            let Conn { sender, driver, .. } = &mut conn;
            // Nothing is sent until the connection is ready.
            let (ready, alive) = driven(driver, sender.ready()).await;
            let closed = match ready {
                Err(error) => Some(error.to_string()),
                Ok(()) if !alive => Some("the connection closed".to_string()),
                Ok(()) => None,
            };
            if let Some(cause) = closed {
                if fresh {
                    return Err(UpstreamError::Unsent(cause));
                }
                continue;
            }
            let (response, alive) = driven(driver, sender.try_send_request(request)).await;
            let response = match response {
                Ok(response) => response,
                Err(mut error) => match error.take_message() {
                    // Handed back unsent (the connection closed first).
                    Some(unsent) if !fresh => {
                        request = unsent;
                        continue;
                    }
                    Some(_) => return Err(UpstreamError::Unsent(error.into_error().to_string())),
                    None => return Err(UpstreamError::Exchange(error.into_error())),
                },
            };
            return self.read_response(addr, conn, response, alive).await;
        }
    }

    /// The response whole when its length is known and small (the connection goes
    /// back to the idle list), else streamed on a connection that ends with it.
    async fn read_response(
        &self,
        addr: SocketAddr,
        mut conn: Conn,
        response: Response<hyper::body::Incoming>,
        alive: bool,
    ) -> Result<Response<Body>, UpstreamError> {
        // Exact for a `Content-Length` body, and 0 for answers that have none (204,
        // 304, a HEAD's): those keep their connection too.
        let length = hyper::body::Body::size_hint(response.body()).exact();
        if !alive || length.is_none_or(|n| n > BUFFERED_MAX) {
            // Streamed: the connection drives itself from now on, and ends with
            // this response (its sender is dropped).
            let Conn { driver, .. } = conn;
            tokio::spawn(async move {
                let _ = driver.await;
            });
            return Ok(response.map(|body| body.boxed()));
        }
        let (parts, body) = response.into_parts();
        let (collected, alive) = driven(&mut conn.driver, body.collect()).await;
        let bytes = collected.map_err(UpstreamError::Exchange)?.to_bytes();
        if alive {
            self.checkin(addr, conn);
        }
        Ok(Response::from_parts(
            parts,
            Full::new(bytes).map_err(|never| match never {}).boxed(),
        ))
    }

    fn checkout(&self, addr: SocketAddr) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.get_mut(&addr)?;
        while let Some(mut conn) = conns.pop() {
            if conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, addr: SocketAddr, mut conn: Conn) {
        conn.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.entry(addr).or_default();
        if conns.len() < IDLE_MAX {
            conns.push(conn);
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| UpstreamError::Connect("timed out".into()))?
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, driver) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        Ok(Conn {
            sender,
            driver,
            idle_since: Instant::now(),
        })
    }

    /// Closes idle connections unused since before `now - IDLE_TIMEOUT` or closed by
    /// their backend, and forgets backends left with none.
    pub fn prune(&self, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, conns| {
            conns.retain_mut(|conn| {
                now.saturating_duration_since(conn.idle_since) < IDLE_TIMEOUT && conn.is_open()
            });
            !conns.is_empty()
        });
    }

    /// Idle connections held now, over every backend.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.values().map(Vec::len).sum()
    }
}

/// Runs `work` while driving the connection; (its output, whether the connection
/// is still open). A connection that ends meanwhile ends `work` too (its sender
/// and body channels close), so this never waits on a dead connection.
async fn driven<T>(driver: &mut Driver, work: impl Future<Output = T>) -> (T, bool) {
    let mut work = std::pin::pin!(work);
    let mut alive = true;
    let out = std::future::poll_fn(|cx| {
        if alive && Pin::new(&mut *driver).poll(cx).is_ready() {
            alive = false;
        }
        work.as_mut().poll(cx)
    })
    .await;
    (out, alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that answers every request `200 ok` on a kept-alive connection;
    /// dropping the returned sender closes every connection it holds.
    async fn backend() -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close, closed) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut closed = closed.clone();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    loop {
                        tokio::select! {
                            read = socket.read(&mut buffer) => match read {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {
                                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                    if socket.write_all(answer).await.is_err() {
                                        return;
                                    }
                                }
                            },
                            _ = closed.changed() => return,
                        }
                    }
                });
            }
        });
        (addr, close)
    }

    fn get() -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = http::Uri::from_static("/");
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("backend"),
        );
        request
    }

    #[tokio::test]
    async fn idle_connections_are_reused_then_pruned_when_stale_or_closed() {
        let (addr, close) = backend().await;
        let upstream = Upstream::new(Duration::from_secs(1));
        for _ in 0..3 {
            let response = upstream.request(addr, get()).await.unwrap();
            assert_eq!(response.status(), 200);
        }
        assert_eq!(upstream.idle_count(), 1, "one connection served all three");
        upstream.prune(Instant::now());
        assert_eq!(upstream.idle_count(), 1, "fresh and open: kept");
        upstream.prune(Instant::now() + IDLE_TIMEOUT);
        assert_eq!(upstream.idle_count(), 0, "idle too long: closed");

        upstream.request(addr, get()).await.unwrap();
        assert_eq!(upstream.idle_count(), 1);
        close.send(true).unwrap();
        // The backend's close reaches this side.
        tokio::time::sleep(Duration::from_millis(50)).await;
        upstream.prune(Instant::now());
        assert_eq!(upstream.idle_count(), 0, "closed by the backend: dropped");
        assert!(
            upstream.idle.lock().unwrap().is_empty(),
            "and the backend forgotten"
        );
    }
}
