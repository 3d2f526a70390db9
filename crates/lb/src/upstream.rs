//! Connections to the backends, driven inside the request's own task.
//!
//! The request's head arrives already written ([`crate::proxy`] writes it straight
//! from the client's headers); a response head is parsed with `httparse`, the
//! parser under hyper, into the response hyper's server sends on. Going through
//! hyper's client instead cost a second header map per request, its dispatcher's
//! channels and its encoder: `perf` put the load balancer's own (user) time per
//! request near twice nginx's with it. A request takes an idle connection from its
//! worker's pool, writes, reads the answer on the one task (as nginx does on its
//! event loop), and puts the connection back.
//!
//! Answers with a known length up to [`BUFFERED_MAX`] are read whole (nearly every
//! answer of a clone). Others (server-sent events, large files) are streamed by a
//! body that owns the connection, which ends with them. Idle connections are not
//! watched between requests, so [`Upstream::prune`] runs now and then: it closes
//! those idle past [`IDLE_TIMEOUT`] or closed by their backend, and forgets
//! backends left with none (a clone gone for good).

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::headers::{has_token, is_hop_by_hop, named_in_connection};
use crate::multiplex::Multiplexed;
use crate::reply::{self, Body, BoxError};
use crate::timer::Coarse;

/// Largest response read whole before it is answered.
pub(crate) const BUFFERED_MAX: u64 = 1 << 20;

/// Largest response head a backend may send.
const HEAD_MAX: usize = 64 << 10;

/// Most header lines in a response head.
const HEADERS_MAX: usize = 128;

/// What one read asks the socket for, at least.
const READ_CHUNK: usize = 8 << 10;

/// Idle connections kept per backend, per worker.
const IDLE_MAX: usize = 1024;

/// An idle connection unused this long is closed (as hyper's pooled client does).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One worker thread's connections to the backends.
pub struct Upstream {
    idle: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
    /// The connections to multiplexed pools' members.
    http2: Multiplexed,
    connect_timeout: Duration,
    /// How long a backend has to answer (the head and a buffered body).
    answer_timeout: Duration,
    timer: Coarse,
}

/// A request as it goes on the wire.
pub struct Outgoing {
    /// Request line, headers, blank line, and the body when it is small.
    pub head: Vec<u8>,
    /// The body when it was too large to copy after the head.
    pub tail: Bytes,
    /// A `HEAD` request: the answer has a length but no body.
    pub head_only: bool,
}

/// A backend's answer: its head as it came, and its body.
pub struct Answer {
    pub status: StatusCode,
    head: AnswerHead,
    /// No body by its nature (an answer to `HEAD`, a 204 or 304): the backend's
    /// `content-length` still describes the resource and is passed on.
    pub bodiless: bool,
    pub body: AnswerBody,
}

enum AnswerHead {
    /// The status line and headers, as an HTTP/1 backend sent them.
    Wire(Bytes),
    /// As hyper read them from an HTTP/2 backend ([`crate::multiplex`]).
    Map(HeaderMap),
}

pub enum AnswerBody {
    /// Read whole (empty when bodiless).
    Full(Bytes),
    /// Still arriving; the connection ends with it.
    Stream(Body),
}

impl Answer {
    /// An answer as hyper read it ([`crate::multiplex`]).
    pub(crate) fn from_map(
        status: StatusCode,
        headers: HeaderMap,
        bodiless: bool,
        body: AnswerBody,
    ) -> Self {
        Self {
            status,
            head: AnswerHead::Map(headers),
            bodiless,
            body,
        }
    }

    /// Calls `f` with each header the client gets, in order: all but the hop-by-hop
    /// ones and the framing, which whoever sends the answer on writes for its own
    /// connection.
    pub fn each_header(&self, mut f: impl FnMut(&str, &[u8])) {
        match &self.head {
            AnswerHead::Wire(head) => each_wire_header(head, self.bodiless, f),
            AnswerHead::Map(headers) => {
                for (name, value) in headers {
                    if self.bodiless || name != http::header::CONTENT_LENGTH {
                        f(name.as_str(), value.as_bytes());
                    }
                }
            }
        }
    }

    /// As hyper's server sends it on (it writes the framing from the body).
    pub fn into_response(self) -> Response<Body> {
        let headers = match self.head {
            AnswerHead::Map(mut headers) => {
                if !self.bodiless {
                    headers.remove(http::header::CONTENT_LENGTH);
                }
                headers
            }
            AnswerHead::Wire(head) => {
                let mut headers = HeaderMap::new();
                let base = head.as_ptr() as usize;
                each_wire_header(&head, self.bodiless, |name, value| {
                    let start = value.as_ptr() as usize - base;
                    // Values share the head; both were checked by the parser.
                    if let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_maybe_shared(head.slice(start..start + value.len())),
                    ) {
                        headers.append(name, value);
                    }
                });
                headers
            }
        };
        let body = match self.body {
            AnswerBody::Full(bytes) => reply::full(bytes),
            AnswerBody::Stream(body) => body,
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.headers_mut() = headers;
        response
    }
}

/// [`Answer::each_header`] of a head as it came on the wire. (It was parsed whole
/// once; parsing it again costs less than keeping every header's place.)
fn each_wire_header(head: &[u8], bodiless: bool, mut f: impl FnMut(&str, &[u8])) {
    let mut lines = [const { MaybeUninit::uninit() }; HEADERS_MAX];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    if config
        .parse_response_with_uninit_headers(&mut parsed, head, &mut lines)
        .is_err()
    {
        return;
    }
    let headers = &*parsed.headers;
    let named = named_in_connection(headers);
    for h in headers {
        let framing = h.name.eq_ignore_ascii_case("content-length") && !bodiless;
        if !framing && !named(h.name) && !is_hop_by_hop(h.name) {
            f(h.name, h.value);
        }
    }
}

struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed; its spare room takes the next read.
    buffer: BytesMut,
    idle_since: Instant,
}

#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made (refused, timed out): the backend is down.
    Connect(String),
    /// A new connection closed before the request was written: nothing was sent,
    /// but the backend is up (it accepted), so this says nothing about its health.
    Unsent(String),
    /// The exchange failed after the request was (or may have been) sent.
    Exchange(String),
    /// No answer in time (the backend may still be working on it).
    Timeout,
    /// Given up while waiting: the checker found the backend dead meanwhile.
    FoundDead,
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
            Self::Timeout => "timeout",
            Self::FoundDead => "found_dead",
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(cause) => write!(f, "cannot connect: {cause}"),
            Self::Unsent(cause) => write!(f, "closed before the request was sent: {cause}"),
            Self::Exchange(cause) => write!(f, "{cause}"),
            Self::Timeout => write!(f, "no answer in time"),
            Self::FoundDead => write!(f, "the backend was found dead while this waited"),
        }
    }
}

fn exchange(error: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Exchange(error.to_string())
}

impl Upstream {
    pub fn new(connect_timeout: Duration, answer_timeout: Duration, timer: Coarse) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            http2: Multiplexed::new(connect_timeout, timer.clone()),
            connect_timeout,
            answer_timeout,
            timer,
        }
    }

    /// Sends `request` to `addr`; its response, or [`UpstreamError::Timeout`] when
    /// it is not there within the answer timeout.
    #[cfg(test)]
    pub async fn request(
        &self,
        addr: SocketAddr,
        request: &Outgoing,
    ) -> Result<Answer, UpstreamError> {
        self.request_unless(addr, request, false, || false).await
    }

    /// [`Upstream::request`] (over HTTP/2 when `http2`), given up (`FoundDead`) as
    /// soon as `dead` holds: it is asked while the answer is awaited, at least once a
    /// second.
    pub async fn request_unless(
        &self,
        addr: SocketAddr,
        request: &Outgoing,
        http2: bool,
        dead: impl Fn() -> bool,
    ) -> Result<Answer, UpstreamError> {
        let exchange = async {
            if http2 {
                self.http2.exchange(addr, request).await
            } else {
                self.exchange(addr, request).await
            }
        };
        match self
            .timer
            .timeout_unless(self.answer_timeout, exchange, dead)
            .await
        {
            Ok(outcome) => outcome,
            Err(crate::timer::Stopped::Elapsed) => Err(UpstreamError::Timeout),
            Err(crate::timer::Stopped::GaveUp) => Err(UpstreamError::FoundDead),
        }
    }

    /// An idle connection the backend closed meanwhile (its keep-alive ran out, it
    /// restarted) is no fault of the backend's and costs nothing: the request, not
    /// written whole, goes on another connection. Only a new connection that fails
    /// is reported.
    async fn exchange(
        &self,
        addr: SocketAddr,
        request: &Outgoing,
    ) -> Result<Answer, UpstreamError> {
        loop {
            let (mut conn, fresh) = match self.checkout(addr) {
                Some(conn) => (conn, false),
                None => (self.connect(addr).await?, true),
            };
            if let Err(error) = conn.send(request).await {
                if fresh {
                    return Err(UpstreamError::Unsent(error.to_string()));
                }
                continue;
            }
            let (response, reusable) = conn.read_response(request.head_only).await?;
            if let Some(conn) = reusable {
                self.checkin(addr, conn);
            }
            return Ok(response);
        }
    }

    fn checkout(&self, addr: SocketAddr) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.get_mut(&addr)?;
        while let Some(conn) = conns.pop() {
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
        let stream = connect(&self.timer, self.connect_timeout, addr).await?;
        Ok(Conn {
            stream,
            buffer: BytesMut::new(),
            idle_since: Instant::now(),
        })
    }

    /// Closes idle connections unused since before `now - IDLE_TIMEOUT` or closed by
    /// their backend, and forgets backends left with none.
    pub fn prune(&self, now: Instant) {
        self.http2.prune(now);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, conns| {
            conns.retain(|conn| {
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

/// A new connection to a backend (no delay: requests are written whole), within
/// `timeout`.
pub(crate) async fn connect(
    timer: &Coarse,
    timeout: Duration,
    addr: SocketAddr,
) -> Result<TcpStream, UpstreamError> {
    let stream = timer
        .timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::Connect("timed out".into()))?
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// How a response body ends (RFC 9112, 6.3).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    /// None by its nature: an answer to `HEAD`, a 1xx, 204 or 304.
    None,
    Length(u64),
    Chunked,
    /// Until the backend closes the connection.
    Close,
}

impl Conn {
    /// Whether an idle connection can carry a request: nothing arrived on it while
    /// it was idle (a close, or stray bytes, show as readiness). Costs a syscall
    /// only when the reactor saw something.
    fn is_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    async fn send(&mut self, request: &Outgoing) -> io::Result<()> {
        self.stream.write_all(&request.head).await?;
        if !request.tail.is_empty() {
            self.stream.write_all(&request.tail).await?;
        }
        Ok(())
    }

    /// Reads into the buffer's spare room; an error when the backend closed.
    async fn fill(&mut self) -> io::Result<()> {
        if self.buffer.capacity() - self.buffer.len() < READ_CHUNK / 4 {
            self.buffer.reserve(READ_CHUNK);
        }
        match self.stream.read_buf(&mut self.buffer).await? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            _ => Ok(()),
        }
    }

    /// The answer, and the connection when it can carry another request.
    async fn read_response(
        mut self,
        head_only: bool,
    ) -> Result<(Answer, Option<Conn>), UpstreamError> {
        let (status, head, framing, keep_alive) = loop {
            let parsed = self.read_head(head_only).await?;
            // 1xx answers (a 100 Continue) come before the real one.
            if !parsed.0.is_informational() {
                break parsed;
            }
            if parsed.0 == StatusCode::SWITCHING_PROTOCOLS {
                return Err(exchange("the backend switched protocols"));
            }
        };
        let bodiless = framing == Framing::None;
        let whole = match framing {
            Framing::None => Some(0),
            Framing::Length(length) if length <= BUFFERED_MAX => Some(length as usize),
            _ => None,
        };
        match whole {
            Some(length) => {
                while self.buffer.len() < length {
                    self.fill().await.map_err(exchange)?;
                }
                let body = self.buffer.split_to(length).freeze();
                let answer = Answer {
                    status,
                    head: AnswerHead::Wire(head),
                    bodiless,
                    body: AnswerBody::Full(body),
                };
                // Bytes beyond the answer were never asked for: do not reuse.
                let reusable = keep_alive && self.buffer.is_empty();
                Ok((answer, reusable.then_some(self)))
            }
            None => {
                let body = AnswerBody::Stream(self.stream_body(framing));
                Ok((
                    Answer {
                        status,
                        head: AnswerHead::Wire(head),
                        bodiless,
                        body,
                    },
                    None,
                ))
            }
        }
    }

    /// Parses one response head (reading until it is whole): its status, the head
    /// itself, how its body is framed, and whether the connection stays open.
    async fn read_head(
        &mut self,
        head_only: bool,
    ) -> Result<(StatusCode, Bytes, Framing, bool), UpstreamError> {
        loop {
            if !self.buffer.is_empty()
                && let Some(parsed) = self.parse_head(head_only)?
            {
                return Ok(parsed);
            }
            if self.buffer.len() >= HEAD_MAX {
                return Err(exchange("the response head is too large"));
            }
            self.fill()
                .await
                .map_err(|e| exchange(format_args!("the backend closed before answering: {e}")))?;
        }
    }

    /// `None` while the head is incomplete. Only what framing needs is read here;
    /// the headers are read again by whoever passes the answer on ([`Answer`]).
    fn parse_head(
        &mut self,
        head_only: bool,
    ) -> Result<Option<(StatusCode, Bytes, Framing, bool)>, UpstreamError> {
        let mut lines = [const { MaybeUninit::uninit() }; HEADERS_MAX];
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let parse =
            config.parse_response_with_uninit_headers(&mut parsed, &self.buffer, &mut lines);
        let length = match parse.map_err(exchange)? {
            httparse::Status::Partial => return Ok(None),
            httparse::Status::Complete(length) => length,
        };
        let status = StatusCode::from_u16(parsed.code.unwrap_or(0)).map_err(exchange)?;
        let http11 = parsed.version == Some(1);
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut close = !http11;
        for h in parsed.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| exchange("a bad content-length"))?;
                if content_length.is_some_and(|m| m != n) {
                    return Err(exchange("conflicting content-lengths"));
                }
                content_length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = last_token_is(h.value, "chunked");
            } else if h.name.eq_ignore_ascii_case("connection") {
                close |= has_token(h.value, "close");
                if !http11 && has_token(h.value, "keep-alive") {
                    close = false;
                }
            }
        }
        let has_no_body = head_only
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framing = if has_no_body {
            Framing::None
        } else if chunked {
            // A transfer coding wins over a length (RFC 9112, 6.3).
            Framing::Chunked
        } else {
            content_length.map_or(Framing::Close, Framing::Length)
        };
        let head = self.buffer.split_to(length).freeze();
        Ok(Some((
            status,
            head,
            framing,
            !close && framing != Framing::Close,
        )))
    }

    /// A body that reads the rest of the answer from the connection as it is sent
    /// on; the connection ends with it.
    fn stream_body(self, framing: Framing) -> Body {
        let state = Streaming {
            conn: self,
            framing,
            chunk_left: 0,
            done: false,
        };
        let frames = futures::stream::unfold(state, |mut state| async move {
            match state.next().await {
                Ok(Some(data)) => Some((Ok(Frame::data(data)), state)),
                Ok(None) => None,
                Err(error) => {
                    state.done = true;
                    Some((Err(error), state))
                }
            }
        });
        StreamBody::new(frames).boxed()
    }
}

/// The rest of a streamed answer, piece by piece.
struct Streaming {
    conn: Conn,
    framing: Framing,
    /// Bytes left in the current chunk (chunked framing).
    chunk_left: u64,
    done: bool,
}

impl Streaming {
    /// The next piece of the body; `None` at its end.
    async fn next(&mut self) -> Result<Option<Bytes>, BoxError> {
        if self.done {
            return Ok(None);
        }
        match self.framing {
            Framing::None | Framing::Length(0) => Ok(None),
            Framing::Length(left) => {
                if self.conn.buffer.is_empty() {
                    self.conn.fill().await?;
                }
                let take = self.conn.buffer.len().min(left as usize);
                self.framing = Framing::Length(left - take as u64);
                Ok(Some(self.conn.buffer.split_to(take).freeze()))
            }
            Framing::Close => {
                if self.conn.buffer.is_empty() {
                    match self.conn.fill().await {
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                        other => other?,
                    }
                }
                Ok(Some(self.conn.buffer.split().freeze()))
            }
            Framing::Chunked => self.next_chunked().await,
        }
    }

    async fn next_chunked(&mut self) -> Result<Option<Bytes>, BoxError> {
        let conn = &mut self.conn;
        if self.chunk_left == 0 {
            // A chunk's size line (after the previous chunk's CRLF).
            let size = loop {
                match httparse::parse_chunk_size(&conn.buffer) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        conn.buffer.advance(used);
                        break size;
                    }
                    Ok(httparse::Status::Partial) if conn.buffer.len() <= 1024 => {
                        conn.fill().await?
                    }
                    _ => return Err("a bad chunk size line".into()),
                }
            };
            if size == 0 {
                // The last chunk: skip trailers up to the blank line that ends them.
                loop {
                    if conn.buffer.starts_with(b"\r\n") {
                        self.done = true;
                        return Ok(None);
                    }
                    if let Some(end) = conn.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        conn.buffer.advance(end + 4);
                        self.done = true;
                        return Ok(None);
                    }
                    conn.fill().await?;
                }
            }
            self.chunk_left = size;
        }
        if conn.buffer.is_empty() {
            conn.fill().await?;
        }
        let take = conn.buffer.len().min(self.chunk_left as usize);
        let data = conn.buffer.split_to(take).freeze();
        self.chunk_left -= take as u64;
        if self.chunk_left == 0 {
            while conn.buffer.len() < 2 {
                conn.fill().await?;
            }
            if &conn.buffer[..2] != b"\r\n" {
                return Err("a chunk did not end with CRLF".into());
            }
            conn.buffer.advance(2);
        }
        Ok(Some(data))
    }
}

/// Whether the last of the comma-separated `value` is `token`.
fn last_token_is(value: &[u8], token: &str) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A backend that answers every request with `answer`, on a kept-alive
    /// connection; sending `true` closes every connection it holds.
    async fn backend(answer: &'static [u8]) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
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

    fn upstream() -> Upstream {
        Upstream::new(
            Duration::from_secs(1),
            Duration::from_secs(5),
            Coarse::default(),
        )
    }

    fn get() -> Outgoing {
        Outgoing {
            head: b"GET / HTTP/1.1\r\nhost: backend\r\n\r\n".to_vec(),
            tail: Bytes::new(),
            head_only: false,
        }
    }

    /// The answer to `get()` from `addr`, as hyper's server would send it on.
    async fn answer(upstream: &Upstream, addr: SocketAddr) -> Response<Body> {
        upstream
            .request(addr, &get())
            .await
            .unwrap()
            .into_response()
    }

    async fn body_of(response: Response<Body>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn idle_connections_are_reused_then_pruned_when_stale_or_closed() {
        let (addr, close) = backend(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let upstream = upstream();
        for _ in 0..3 {
            let response = answer(&upstream, addr).await;
            assert_eq!(response.status(), 200);
            assert_eq!(body_of(response).await, "ok");
        }
        assert_eq!(upstream.idle_count(), 1, "one connection served all three");
        upstream.prune(Instant::now());
        assert_eq!(upstream.idle_count(), 1, "fresh and open: kept");
        upstream.prune(Instant::now() + IDLE_TIMEOUT);
        assert_eq!(upstream.idle_count(), 0, "idle too long: closed");

        upstream.request(addr, &get()).await.unwrap();
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

    #[tokio::test]
    async fn chunked_answers_stream_whole_and_hop_by_hop_headers_stay_behind() {
        let (addr, _close) = backend(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nkeep-alive: timeout=5\r\nx-kept: yes\r\n\
              connection: x-hop\r\nx-hop: 1\r\n\r\n\
              5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n",
        )
        .await;
        let upstream = upstream();
        let response = answer(&upstream, addr).await;
        assert_eq!(response.headers()["x-kept"], "yes");
        assert!(!response.headers().contains_key("keep-alive"));
        assert!(
            !response.headers().contains_key("x-hop"),
            "named in the backend's Connection"
        );
        assert!(
            !response
                .headers()
                .contains_key(http::header::TRANSFER_ENCODING)
        );
        assert_eq!(body_of(response).await, "hello, world");
        assert_eq!(
            upstream.idle_count(),
            0,
            "a streamed answer ends its connection"
        );
    }

    #[tokio::test]
    async fn informational_answers_are_skipped_and_empty_answers_keep_the_connection() {
        let (addr, _close) =
            backend(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nx-n: 1\r\n\r\n")
                .await;
        let upstream = upstream();
        for _ in 0..2 {
            let response = answer(&upstream, addr).await;
            assert_eq!(response.status(), 204);
            assert_eq!(response.headers()["x-n"], "1");
            assert!(body_of(response).await.is_empty());
        }
        assert_eq!(upstream.idle_count(), 1, "one connection served both");
    }

    #[tokio::test]
    async fn an_answer_delimited_by_close_is_read_to_the_end_and_not_reused() {
        let (addr, close) = backend(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").await;
        let upstream = upstream();
        let response = answer(&upstream, addr).await;
        // The backend ends the answer by closing.
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            close.send(true).unwrap();
        });
        assert_eq!(body_of(response).await, "until the end");
        closer.await.unwrap();
        assert_eq!(upstream.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_garbled_chunk_breaks_the_body_off() {
        let (addr, _close) =
            backend(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\nrest")
                .await;
        let upstream = upstream();
        let response = answer(&upstream, addr).await;
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "ok");
        let broken = body.frame().await.unwrap();
        assert!(
            broken.is_err(),
            "a bad size line is an error, not more waiting"
        );
    }

    #[tokio::test]
    async fn a_garbled_answer_is_an_exchange_error() {
        let (addr, _close) = backend(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").await;
        let upstream = upstream();
        let Err(error) = upstream.request(addr, &get()).await else {
            panic!("a garbled answer was taken");
        };
        assert!(!error.is_unsent(), "{error}");
        assert_eq!(error.kind(), "reset");
    }
}
