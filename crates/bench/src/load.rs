//! The load generator: HTTP/1.1 keep-alive connections driving one [`Mix`] of
//! requests, in one of two models.
//!
//! - **Closed** (`connections` = N): each connection sends its next request when
//!   the last one answered, so the offered load falls when the system slows down.
//!   What it measures is throughput at a concurrency.
//! - **Open** (`rate` = R/s): requests are due at fixed times (wrk2's model: each
//!   connection owns every N-th slot of a constant-rate schedule), and a request's
//!   latency is measured from when it was *due*, not when it could be sent. A
//!   stall therefore counts for every request it delayed (coordinated omission
//!   corrected) instead of for one.
//!
//! Latencies go into HDR histograms (microseconds, 3 significant digits); only
//! what happens after the warm-up counts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One request of a scenario.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: hyper::Method,
    pub path: String,
    pub cookie: Option<String>,
    /// A JSON body (sent with `content-type: application/json`).
    pub body: Option<Bytes>,
}

impl Call {
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: hyper::Method::GET,
            path: path.into(),
            cookie: None,
            body: None,
        }
    }

    pub fn with_cookie(mut self, cookie: Option<&str>) -> Self {
        self.cookie = cookie.map(str::to_string);
        self
    }
}

/// What a scenario sends: calls with weights, drawn in a fixed cycle so every run
/// sends the same sequence (a weight of 3 puts a call 3 times in the cycle).
#[derive(Clone, Debug)]
pub struct Mix {
    cycle: Arc<Vec<Call>>,
}

impl Mix {
    pub fn new(weighted: Vec<(Call, usize)>) -> Self {
        let mut cycle = Vec::new();
        for (call, weight) in weighted {
            cycle.extend(std::iter::repeat_n(call, weight.max(1)));
        }
        // Interleave (a stride coprime with the length) so one kind of call does
        // not come in a long run.
        let n = cycle.len();
        let stride = (1..=n)
            .rev()
            .find(|s| gcd(*s, n) == 1 && *s < n)
            .unwrap_or(1);
        let spread = (0..n).map(|i| cycle[(i * stride) % n].clone()).collect();
        Self {
            cycle: Arc::new(spread),
        }
    }

    pub fn one(call: Call) -> Self {
        Self::new(vec![(call, 1)])
    }

    fn call(&self, i: usize) -> &Call {
        &self.cycle[i % self.cycle.len()]
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[derive(Clone, Copy, Debug)]
pub enum Model {
    Closed { connections: usize },
    Open { rate: f64, connections: usize },
}

#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub model: Model,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What one run measured (after its warm-up).
#[derive(Debug)]
pub struct Measured {
    pub latency_us: Histogram<u64>,
    pub ok: u64,
    /// Answers that were not 2xx/3xx, and requests that failed outright.
    pub errors: u64,
    pub elapsed: Duration,
}

impl Measured {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s; 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Runs `plan` against `addr` (a host:port speaking HTTP/1.1) with `mix`.
pub async fn run(addr: SocketAddr, mix: &Mix, plan: Plan) -> anyhow::Result<Measured> {
    let connections = match plan.model {
        Model::Closed { connections } | Model::Open { connections, .. } => connections.max(1),
    };
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let mut tasks = Vec::with_capacity(connections);
    for k in 0..connections {
        let mix = mix.clone();
        let slot = match plan.model {
            Model::Closed { .. } => None,
            Model::Open { rate, .. } => Some(Slots {
                start,
                interval: Duration::from_secs_f64(connections as f64 / rate.max(0.001)),
                offset: Duration::from_secs_f64(k as f64 / rate.max(0.001)),
            }),
        };
        tasks.push(tokio::spawn(connection(
            addr,
            mix,
            k,
            connections,
            slot,
            measure_from,
            end,
        )));
    }
    let mut measured = Measured {
        latency_us: histogram(),
        ok: 0,
        errors: 0,
        elapsed: plan.duration,
    };
    for task in tasks {
        let (latency, ok, errors) = task.await??;
        measured.latency_us.add(latency)?;
        measured.ok += ok;
        measured.errors += errors;
    }
    Ok(measured)
}

/// An open model's schedule for one connection: its n-th request is due at
/// `start + offset + n × interval`.
#[derive(Clone, Copy)]
struct Slots {
    start: Instant,
    interval: Duration,
    offset: Duration,
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One connection's loop; (histogram, ok, errors) of what it measured.
async fn connection(
    addr: SocketAddr,
    mix: Mix,
    k: usize,
    connections: usize,
    slots: Option<Slots>,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let mut latency = histogram();
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut sender: Option<Sender> = None;
    let host = addr.to_string();
    let mut n: u64 = 0;
    loop {
        let due = match slots {
            Some(s) => {
                let due = s.start + s.offset + s.interval.mul_f64(n as f64);
                // Slots still due when the run ends were never sent: the latency
                // of those sent already tells how far behind the schedule was.
                if due >= end || Instant::now() >= end {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                now
            }
        };
        let call = mix.call(k + n as usize * connections);
        n += 1;
        let answered = match send(&mut sender, addr, &host, call).await {
            Ok(status) => status < 400,
            Err(_) => {
                sender = None;
                false
            }
        };
        let done = Instant::now();
        if due < measure_from || done > end {
            continue;
        }
        if answered {
            ok += 1;
            let us = done.duration_since(due).as_micros().max(1) as u64;
            latency.saturating_record(us);
        } else {
            errors += 1;
        }
    }
    Ok((latency, ok, errors))
}

/// Sends `call` on the connection (made or re-made as needed), reads the whole
/// answer; its status.
async fn send(
    sender: &mut Option<Sender>,
    addr: SocketAddr,
    host: &str,
    call: &Call,
) -> anyhow::Result<u16> {
    let usable = match sender.as_mut() {
        Some(s) => s.ready().await.is_ok(),
        None => false,
    };
    if !usable {
        *sender = Some(connect(addr).await?);
    }
    let ready = sender.as_mut().expect("connected above");
    let mut request = Request::builder()
        .method(call.method.clone())
        .uri(&call.path)
        .header(hyper::header::HOST, host);
    if let Some(cookie) = &call.cookie {
        request = request.header(hyper::header::COOKIE, cookie);
    }
    let body = match &call.body {
        Some(body) => {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
            body.clone()
        }
        None => Bytes::new(),
    };
    let response = ready.send_request(request.body(Full::new(body))?).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_keeps_its_weights_and_spreads_them() {
        let mix = Mix::new(vec![(Call::get("/a"), 3), (Call::get("/b"), 1)]);
        let cycle: Vec<&str> = (0..4).map(|i| mix.call(i).path.as_str()).collect();
        assert_eq!(cycle.iter().filter(|p| **p == "/a").count(), 3);
        assert_eq!(cycle.iter().filter(|p| **p == "/b").count(), 1);
        assert_eq!(mix.call(4).path, mix.call(0).path, "a fixed cycle");
    }

    /// A server that answers every request with 200 after `delay`, on one thread.
    async fn server(delay: Duration) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn the_open_model_keeps_its_rate() {
        let addr = server(Duration::from_millis(1)).await;
        let plan = Plan {
            model: Model::Open {
                rate: 400.0,
                connections: 8,
            },
            warmup: Duration::from_millis(200),
            duration: Duration::from_secs(2),
        };
        let measured = run(addr, &Mix::one(Call::get("/")), plan).await.unwrap();
        assert_eq!(measured.errors, 0);
        // 400/s for 2 s: 800 requests due in the window, whatever the machine.
        assert!(
            (760..=840).contains(&measured.ok),
            "{} requests in 2 s at 400/s",
            measured.ok
        );
    }

    #[tokio::test]
    async fn a_stall_counts_for_every_request_it_delayed() {
        // One connection, 100/s, and a server that takes 200 ms: requests are due
        // every 10 ms but can leave only every 200 ms, so most wait long past
        // their due time — the open model sees it; a closed one would report
        // 200 ms for each of the few it sent.
        let addr = server(Duration::from_millis(200)).await;
        let plan = Plan {
            model: Model::Open {
                rate: 100.0,
                connections: 1,
            },
            warmup: Duration::ZERO,
            duration: Duration::from_secs(2),
        };
        let open = run(addr, &Mix::one(Call::get("/")), plan).await.unwrap();
        let closed = run(
            addr,
            &Mix::one(Call::get("/")),
            Plan {
                model: Model::Closed { connections: 1 },
                ..plan
            },
        )
        .await
        .unwrap();
        assert!(closed.ms(0.99) < 400.0, "closed p99 {}", closed.ms(0.99));
        assert!(
            open.ms(0.99) > 1000.0,
            "open p99 {} ms counts the queue behind the stall",
            open.ms(0.99)
        );
    }
}
