//! The client's side of a connection.
//!
//! Plain requests — HTTP/1.1, with no body or a length-framed one that came with
//! the head, not for the edge or the load balancer's own pages: nearly every
//! request a clone serves — are read here with `httparse`, and the backend's answer
//! is passed on header line by header line: no header map is built either way
//! (nginx works so; hyper's server cost a map each way per request, its dispatcher
//! and its encoder, about a third of the balancer's own time in `perf`). The first
//! request that is anything else (a chunked or late body, `Expect`, an upgrade,
//! HTTP/1.0, an absolute target, a head too large or malformed, the edge, the
//! balancer's own pages) hands the connection, with what was read of it, to hyper's
//! server for the rest of its life ([`crate::proxy::handle`]): it knows every
//! corner of the protocol, and those requests are few.

use std::future::Future;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bakery_config::LbConfig;
use bakery_telemetry::{REQUEST_ID, accept_request_id, new_request_id};
use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::headers::{has_token, itoa, values};
use crate::proxy::{self, Head, INLINE_BODY_MAX, Peer};
use crate::reply::{self, Body, put_header};
use crate::timer::Coarse;
use crate::upstream::{Answer, AnswerBody, Upstream};
use crate::{Lb, admin, edge};

/// Most header lines in a request read here; a request with more goes to hyper
/// (which allows 100).
const HEADERS_MAX: usize = 64;

/// What a worker thread's connections share.
pub struct Worker {
    pub lb: Arc<Lb>,
    pub upstream: Upstream,
    pub timer: Coarse,
    /// hyper's server, for the connections handed over.
    pub http: http1::Builder,
}

/// Serves one client connection until it closes, times out, or `drain` says stop
/// (after the request in hand).
pub async fn serve(
    worker: Arc<Worker>,
    mut stream: TcpStream,
    peer: Peer,
    mut drain: tokio::sync::watch::Receiver<bool>,
) {
    let lb = &*worker.lb;
    let drained = drain.changed();
    tokio::pin!(drained);
    let mut buffer = BytesMut::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    // The whole head must arrive within the header timeout of the previous
    // answer (an idle connection too), as with hyper's `header_read_timeout`.
    let mut deadline = worker
        .timer
        .sleep_until(Instant::now() + lb.config.header_timeout);
    loop {
        let mut lines = [const { MaybeUninit::uninit() }; HEADERS_MAX];
        let mut request = httparse::Request::new(&mut []);
        let length = match request.parse_with_uninit_headers(&buffer, &mut lines) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if buffer.len() < lb.config.max_header_bytes => {
                if buffer.capacity() - buffer.len() < 1024 {
                    buffer.reserve(4096);
                }
                let read = tokio::select! {
                    biased;
                    read = stream.read_buf(&mut buffer) => read,
                    () = &mut deadline => return,
                    _ = &mut drained => return,
                };
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
            // Too large, malformed, or too many headers: hyper answers it.
            _ => return hand_over(&worker, stream, buffer.freeze(), &peer, drained).await,
        };
        let Some(mut plain) = Plain::read(&request, &lb.config) else {
            return hand_over(&worker, stream, buffer.freeze(), &peer, drained).await;
        };
        // A body still arriving is read by hyper, under its body timeout.
        let end = length + plain.body_length;
        if buffer.len() < end {
            return hand_over(&worker, stream, buffer.freeze(), &peer, drained).await;
        }
        let body = Bytes::copy_from_slice(&buffer[length..end]);
        plain.close |= lb.draining.load(Ordering::Relaxed);
        // No wake-ups from it while a long answer (a stream) goes out.
        deadline.disarm();
        let answered = plain
            .answer(
                &worker,
                &peer,
                request.headers,
                &body,
                &mut stream,
                &mut out,
            )
            .await;
        if answered.is_err() {
            return;
        }
        if plain.close {
            let _ = stream.shutdown().await;
            return;
        }
        buffer.advance(end);
        deadline = worker
            .timer
            .sleep_until(Instant::now() + lb.config.header_timeout);
    }
}

/// A request this module serves, as read from its head.
struct Plain<'a> {
    method: Method,
    target: &'a str,
    path: &'a str,
    /// Its `content-length` (within the route's limit).
    body_length: usize,
    /// The connection closes after this request (the client asked, or draining).
    close: bool,
}

impl<'a> Plain<'a> {
    /// `None` when the request is one for hyper.
    fn read(request: &httparse::Request<'_, 'a>, config: &LbConfig) -> Option<Self> {
        if request.version != Some(1) {
            return None;
        }
        let method = Method::from_bytes(request.method?.as_bytes()).ok()?;
        let target = request.path?;
        // Origin form only, and no fragment (absolute form and `*` go to hyper).
        if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii() && b != b'#') {
            return None;
        }
        let path = target.split('?').next().unwrap_or(target);
        if admin::owns(path)
            || edge::may_serve(&method, path)
            || edge::spelling(&method, path) != edge::Spelling::Canonical
        {
            return None;
        }
        let mut close = false;
        let mut body_length: Option<usize> = None;
        for h in request.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                // One plain decimal length; a list, a sign or a second header: hyper's.
                let digits = !h.value.is_empty() && h.value.len() <= 12;
                if body_length.is_some() || !digits || !h.value.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                body_length = std::str::from_utf8(h.value).ok()?.parse().ok();
            }
            if name.eq_ignore_ascii_case("transfer-encoding")
                || name.eq_ignore_ascii_case("expect")
                || name.eq_ignore_ascii_case("upgrade")
            {
                return None;
            }
            if name.eq_ignore_ascii_case("connection") {
                close |= has_token(h.value, "close");
            }
        }
        let body_length = body_length.unwrap_or(0);
        // Too large: hyper's path refuses it (413) and closes.
        if body_length > proxy::body_limit(config, path) {
            return None;
        }
        Some(Self {
            method,
            target,
            path,
            body_length,
            close,
        })
    }

    /// Forwards the request and writes the answer (or the balancer's own error).
    async fn answer(
        &self,
        worker: &Worker,
        peer: &Peer,
        incoming: &[httparse::Header<'_>],
        body: &Bytes,
        stream: &mut TcpStream,
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let lb = &*worker.lb;
        let request_id =
            accept_request_id(values(incoming, REQUEST_ID).next()).unwrap_or_else(new_request_id);
        let head = Head {
            method: &self.method,
            target: self.target,
            incoming,
            request_id: request_id.as_bytes(),
            edge_miss: false,
            body_length: body.len(),
        };
        let pool = lb.route(self.path);
        let sent = proxy::send(lb, &worker.upstream, pool, peer, &head, body).await;
        out.clear();
        let rest = match sent {
            Ok(answer) => write_answer(out, answer, request_id.as_bytes(), self.close),
            Err(own) => {
                let head_only = self.method == Method::HEAD;
                write_own(out, own, request_id.as_bytes(), self.close, head_only).await
            }
        };
        send_out(stream, out, rest).await
    }
}

/// What is left to send after the head (and a small body) in `out`.
enum Rest {
    Nothing,
    Bytes(Bytes),
    /// Sent on in chunks as it arrives.
    Chunked(Body),
}

fn put_status(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The length of `body` (none for an answer without one, or one that streams),
/// the connection's fate, the blank line, and the body when it is small.
fn put_body(out: &mut Vec<u8>, body: Option<Bytes>, close: bool) -> Rest {
    if let Some(body) = &body {
        put_header(out, b"content-length", itoa(&mut [0; 20], body.len()));
    }
    if close {
        put_header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    match body {
        Some(body) if body.len() > INLINE_BODY_MAX => Rest::Bytes(body),
        Some(body) => {
            out.extend_from_slice(&body);
            Rest::Nothing
        }
        None => Rest::Nothing,
    }
}

/// A backend's answer, its headers passed on as they came (but for the hop-by-hop
/// ones and the framing, which are this connection's).
fn write_answer(out: &mut Vec<u8>, answer: Answer, request_id: &[u8], close: bool) -> Rest {
    put_status(out, answer.status);
    let mut has_id = false;
    answer.each_header(|name, value| {
        has_id |= name.eq_ignore_ascii_case(REQUEST_ID);
        put_header(out, name.as_bytes(), value);
    });
    if !has_id {
        put_header(out, REQUEST_ID.as_bytes(), request_id);
    }
    match answer.body {
        // The backend's length (passed on above) describes what a GET would get.
        AnswerBody::Full(_) if answer.bodiless => put_body(out, None, close),
        AnswerBody::Full(body) => put_body(out, Some(body), close),
        AnswerBody::Stream(body) => {
            put_header(out, b"transfer-encoding", b"chunked");
            put_body(out, None, close);
            Rest::Chunked(body)
        }
    }
}

/// A response the load balancer made itself (always with its whole body).
async fn write_own(
    out: &mut Vec<u8>,
    response: Response<Body>,
    request_id: &[u8],
    close: bool,
    head_only: bool,
) -> Rest {
    let (parts, body) = response.into_parts();
    put_status(out, parts.status);
    for (name, value) in &parts.headers {
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    reply::put_date(out);
    put_header(out, REQUEST_ID.as_bytes(), request_id);
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if head_only {
        put_header(out, b"content-length", itoa(&mut [0; 20], body.len()));
        return put_body(out, None, close);
    }
    put_body(out, Some(body), close)
}

async fn send_out(stream: &mut TcpStream, out: &[u8], rest: Rest) -> io::Result<()> {
    stream.write_all(out).await?;
    match rest {
        Rest::Nothing => Ok(()),
        Rest::Bytes(body) => stream.write_all(&body).await,
        Rest::Chunked(mut body) => {
            let mut chunk = Vec::new();
            // A client that goes while its answer streams (an event stream closed)
            // is noticed at once rather than at the next write, which may be long in
            // coming: the backend's stream ends with it. Once the client sends
            // something (a pipelined request), it is left for after the answer.
            let mut watching = true;
            let mut peeked = [0u8; 1];
            loop {
                let frame = if watching {
                    tokio::select! {
                        frame = body.frame() => frame,
                        peeked = stream.peek(&mut peeked) => match peeked {
                            Ok(0) | Err(_) => return Err(io::ErrorKind::ConnectionAborted.into()),
                            Ok(_) => {
                                watching = false;
                                continue;
                            }
                        },
                    }
                } else {
                    body.frame().await
                };
                let Some(frame) = frame else { break };
                let frame = frame.map_err(io::Error::other)?;
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    chunk.clear();
                    // The chunk's size line, in hex (no `format!` per chunk).
                    let _ = write!(chunk, "{:x}\r\n", data.len());
                    chunk.extend_from_slice(&data);
                    chunk.extend_from_slice(b"\r\n");
                    stream.write_all(&chunk).await?;
                }
            }
            stream.write_all(b"0\r\n\r\n").await
        }
    }
}

/// Gives the connection to hyper's server, which reads `read` first, and serves it
/// until it closes or `drained` fires (then gracefully).
async fn hand_over(
    worker: &Worker,
    stream: TcpStream,
    read: Bytes,
    peer: &Peer,
    drained: Pin<&mut impl Future>,
) {
    let service = service_fn(|req| async {
        Ok::<_, std::convert::Infallible>(
            proxy::handle(&worker.lb, &worker.upstream, peer, req).await,
        )
    });
    let io = TokioIo::new(Replay { read, stream });
    let connection = worker.http.serve_connection(io, service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        _ = drained => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%error, peer = %peer.addr, "client connection ended with an error");
    }
}

/// A connection whose first bytes were already read: they are read again first.
struct Replay {
    read: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Replay {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Probe;
    use crate::topology::{BackendSpec, Topology};
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::time::Duration;

    type Seen = Arc<Mutex<Vec<String>>>;

    /// A backend that records each request as "METHOD target body" and answers
    /// `answer(method, target)`.
    async fn backend(answer: fn(&str, &str) -> Vec<u8>) -> (SocketAddr, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Seen::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buffer = BytesMut::new();
                    loop {
                        let mut lines = [httparse::EMPTY_HEADER; 64];
                        let mut request = httparse::Request::new(&mut lines);
                        let Ok(httparse::Status::Complete(length)) = request.parse(&buffer) else {
                            if socket.read_buf(&mut buffer).await.unwrap_or(0) == 0 {
                                return;
                            }
                            continue;
                        };
                        let body_length: usize = values(request.headers, "content-length")
                            .next()
                            .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                        if buffer.len() < length + body_length {
                            socket.read_buf(&mut buffer).await.unwrap();
                            continue;
                        }
                        let (method, target) = (request.method.unwrap(), request.path.unwrap());
                        let forwarded = values(request.headers, "x-forwarded-for").next();
                        let body = &buffer[length..length + body_length];
                        log.lock().unwrap().push(format!(
                            "{method} {target} {} for={}",
                            String::from_utf8_lossy(body),
                            String::from_utf8_lossy(forwarded.unwrap_or_default())
                        ));
                        let answer = answer(method, target);
                        buffer.advance(length + body_length);
                        socket.write_all(&answer).await.unwrap();
                    }
                });
            }
        });
        (addr, seen)
    }

    /// A load balancer (one worker) in front of `backend`.
    async fn balancer(backend: SocketAddr) -> SocketAddr {
        let mut config = bakery_config::Config::default();
        config.lb.header_timeout = Duration::from_millis(300);
        let topology = Topology {
            backends: vec![BackendSpec {
                pool: crate::topology::DEFAULT_POOL.into(),
                id: "b1".into(),
                addr: backend,
            }],
            routes: vec![],
        };
        let lb = Arc::new(Lb::new(&config, "lb-test", &topology).unwrap());
        for member in lb
            .pool(crate::topology::DEFAULT_POOL)
            .unwrap()
            .members()
            .iter()
        {
            member.record_probe(Probe::Pass, 1, 1);
        }
        let timer = Coarse::default();
        timer.spawn_ticker();
        let mut http = http1::Builder::new();
        http.timer(timer.clone());
        let worker = Arc::new(Worker {
            upstream: Upstream::new(
                config.lb.connect_timeout,
                Duration::from_secs(5),
                timer.clone(),
            ),
            lb,
            timer,
            http,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (drain, draining) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _drain = drain;
            while let Ok((stream, peer)) = listener.accept().await {
                tokio::spawn(serve(
                    worker.clone(),
                    stream,
                    Peer::new(peer),
                    draining.clone(),
                ));
            }
        });
        addr
    }

    /// Reads one answer: its head (lowercased) and its body, de-chunked.
    async fn read_answer(stream: &mut TcpStream, buffer: &mut BytesMut) -> (String, Vec<u8>) {
        loop {
            let mut lines = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut lines);
            if let Ok(httparse::Status::Complete(length)) = response.parse(buffer) {
                let head = String::from_utf8_lossy(&buffer[..length]).to_lowercase();
                let chunked = head.contains("transfer-encoding: chunked");
                let bodyless = head.contains("x-head-answer");
                let body_length: usize = values(response.headers, "content-length")
                    .next()
                    .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                if chunked {
                    while !buffer[length..].ends_with(b"0\r\n\r\n") {
                        assert!(stream.read_buf(buffer).await.unwrap() > 0);
                    }
                    let mut rest = buffer.split_off(length);
                    buffer.clear();
                    let mut body = Vec::new();
                    while let Ok(httparse::Status::Complete((used, size))) =
                        httparse::parse_chunk_size(&rest)
                    {
                        rest.advance(used);
                        body.extend_from_slice(&rest[..size as usize]);
                        rest.advance(size as usize + 2);
                    }
                    return (head, body);
                }
                let body_length = if bodyless { 0 } else { body_length };
                while buffer.len() < length + body_length {
                    assert!(stream.read_buf(buffer).await.unwrap() > 0);
                }
                let body = buffer[length..length + body_length].to_vec();
                buffer.advance(length + body_length);
                return (head, body);
            }
            assert!(stream.read_buf(buffer).await.unwrap() > 0, "closed early");
        }
    }

    fn ok(method: &str, target: &str) -> Vec<u8> {
        match (method, target) {
            ("HEAD", _) => {
                b"HTTP/1.1 200 OK\r\nx-head-answer: 1\r\ncontent-length: 5\r\n\r\n".to_vec()
            }
            (_, "/stream") => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
                .to_vec(),
            _ => b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\n\
                   x-kept: yes\r\ncontent-length: 2\r\n\r\nok"
                .to_vec(),
        }
    }

    #[tokio::test]
    async fn plain_requests_are_answered_pipelined_and_on_one_connection() {
        let (backend, seen) = backend(ok).await;
        let mut client = TcpStream::connect(balancer(backend).await).await.unwrap();
        let mut buffer = BytesMut::new();
        let get = |path: &str| {
            format!("GET {path} HTTP/1.1\r\nHost: bakery\r\nConnection: keep-alive\r\n\r\n")
        };
        client
            .write_all(format!("{}{}", get("/a"), get("/b?x=1")).as_bytes())
            .await
            .unwrap();
        for _ in 0..2 {
            let (head, body) = read_answer(&mut client, &mut buffer).await;
            assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
            assert!(head.contains("x-kept: yes"), "{head}");
            assert!(head.contains("content-length: 2\r\n"), "{head}");
            assert!(head.contains("x-request-id: "), "{head}");
            assert!(!head.contains("keep-alive"), "hop-by-hop: {head}");
            assert_eq!(body, b"ok");
        }
        // A HEAD answer has the backend's length and no body: the next answer
        // on the connection parses.
        client
            .write_all(b"HEAD /h HTTP/1.1\r\nHost: bakery\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_answer(&mut client, &mut buffer).await;
        assert!(head.contains("content-length: 5\r\n"), "{head}");
        assert!(body.is_empty());
        client.write_all(get("/stream").as_bytes()).await.unwrap();
        let (head, body) = read_answer(&mut client, &mut buffer).await;
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert_eq!(body, b"hello, world");
        client.write_all(get("/c").as_bytes()).await.unwrap();
        assert_eq!(read_answer(&mut client, &mut buffer).await.1, b"ok");
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "GET /a  for=127.0.0.1",
                "GET /b?x=1  for=127.0.0.1",
                "HEAD /h  for=127.0.0.1",
                "GET /stream  for=127.0.0.1",
                "GET /c  for=127.0.0.1"
            ]
        );
    }

    #[tokio::test]
    async fn bodies_are_forwarded_here_or_by_hyper_and_the_connection_goes_on() {
        let (backend, seen) = backend(ok).await;
        let front = balancer(backend).await;
        let mut client = TcpStream::connect(front).await.unwrap();
        let mut buffer = BytesMut::new();
        // Pipelined: a length-framed body that came with its head is forwarded here;
        // a chunked one hands the connection (and the GET after it, already read)
        // to hyper.
        client
            .write_all(
                b"GET /first HTTP/1.1\r\nHost: b\r\n\r\n\
                  POST /rsvp HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\n\r\nhello\
                  POST /chunked HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n\
                  3\r\nabc\r\n0\r\n\r\n\
                  GET /after HTTP/1.1\r\nHost: b\r\n\r\n",
            )
            .await
            .unwrap();
        for _ in 0..4 {
            let (head, body) = read_answer(&mut client, &mut buffer).await;
            assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
            assert_eq!(body, b"ok");
        }
        // A body that comes after its head is read by hyper.
        let mut late = TcpStream::connect(front).await.unwrap();
        late.write_all(b"PUT /late HTTP/1.1\r\nHost: b\r\nContent-Length: 4\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        late.write_all(b"late").await.unwrap();
        assert_eq!(read_answer(&mut late, &mut BytesMut::new()).await.1, b"ok");
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "GET /first  for=127.0.0.1",
                "POST /rsvp hello for=127.0.0.1",
                "POST /chunked abc for=127.0.0.1",
                "GET /after  for=127.0.0.1",
                "PUT /late late for=127.0.0.1"
            ]
        );
    }

    #[tokio::test]
    async fn close_is_honoured_and_a_malformed_or_silent_head_is_not_forwarded() {
        let (backend, seen) = backend(ok).await;
        let front = balancer(backend).await;
        let mut client = TcpStream::connect(front).await.unwrap();
        let mut buffer = BytesMut::new();
        client
            .write_all(b"GET /bye HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = read_answer(&mut client, &mut buffer).await;
        assert!(head.contains("connection: close"), "{head}");
        assert_eq!(client.read_buf(&mut buffer).await.unwrap(), 0, "closed");

        let mut client = TcpStream::connect(front).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = read_answer(&mut client, &mut BytesMut::new()).await;
        assert!(head.starts_with("http/1.1 400"), "hyper's answer: {head}");

        // Half a head: closed once the header timeout (300 ms here) passes.
        let mut client = TcpStream::connect(front).await.unwrap();
        client.write_all(b"GET /half HTTP/1.1\r\nHo").await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(3), client.read_buf(&mut buffer));
        assert_eq!(closed.await.unwrap().unwrap(), 0);
        assert_eq!(*seen.lock().unwrap(), ["GET /bye  for=127.0.0.1"]);
    }
}
