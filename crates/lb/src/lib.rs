//! `bakery lb`: the HTTP load balancer in front of the web clones, and the static
//! edge that answers pre-rendered pages from its own copy ([`edge`]). Plain
//! requests are read and answered by its own HTTP/1.1 code on `httparse`
//! ([`front`], [`upstream`]); every other request is served by hyper's.
//!
//! Pools of backends are reached by path prefix ([`topology`]); inside a pool a
//! member is picked by least-request (the fewest in flight; power of two choices in
//! large pools) or round robin
//! ([`pool`]); members come and go at run time and are checked actively and
//! passively ([`health`], [`backend`]); failed attempts are retried only when that
//! is safe, under a budget ([`retry_budget`], [`proxy`]).
//! Knows nothing of what the clones do: it forwards bytes and reads `/healthz`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bakery_config::{Config, LbConfig};
use bakery_telemetry::Metrics;
use http::HeaderValue;
use hyper::server::conn::http1;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

mod admin;
pub mod backend;
pub mod edge;
mod front;
mod headers;
mod health;
mod multiplex;
pub mod pool;
mod proxy;
mod reply;
pub mod retry_budget;
mod timer;
pub mod topology;
mod upstream;

use backend::Backend;
use pool::Pool;
use retry_budget::RetryBudget;
pub use topology::{BackendSpec, RouteSpec, Topology};

/// The load balancer's shared state.
pub struct Lb {
    id: String,
    served_by: Option<HeaderValue>,
    config: LbConfig,
    pools: HashMap<String, Arc<Pool>>,
    /// Longest prefix first, so the most specific route wins.
    routes: Vec<(String, Arc<Pool>)>,
    default_pool: Arc<Pool>,
    budget: RetryBudget,
    /// The bounded queue: a request waits for one of these before it is proxied.
    slots: Semaphore,
    /// Bytes of request bodies held at once, one permit a byte
    /// (`max_buffered_bytes`).
    buffered: Arc<Semaphore>,
    metrics: Metrics,
    draining: AtomicBool,
    edge: Arc<edge::Edge>,
    /// Open connections per client address (`max_connections_per_client`).
    clients: std::sync::Mutex<HashMap<std::net::IpAddr, usize>>,
    /// The most one address may hold: `max_connections_per_client`, but never more
    /// than a quarter of the open-files limit (a proxied connection holds two
    /// descriptors; the rest is headroom for every other client).
    max_per_client: usize,
}

/// One client connection counted against its address while it is open.
struct ClientSlot {
    lb: Arc<Lb>,
    ip: std::net::IpAddr,
}

impl ClientSlot {
    /// Counts a connection from `ip`; `None` when that address has its fill.
    fn take(lb: &Arc<Lb>, ip: std::net::IpAddr) -> Option<Self> {
        let mut clients = lb.clients.lock().unwrap_or_else(|p| p.into_inner());
        let open = clients.entry(ip).or_default();
        if *open >= lb.max_per_client {
            return None;
        }
        *open += 1;
        Some(Self { lb: lb.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut clients = self.lb.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = clients.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                clients.remove(&self.ip);
            }
        }
    }
}

impl Lb {
    pub fn new(config: &Config, id: &str, topology: &Topology) -> anyhow::Result<Self> {
        let lb = config.lb.clone();
        let new_pool = |name: &str| {
            Arc::new(Pool::new(
                name,
                lb.selection,
                lb.max_ejection_percent,
                lb.panic_threshold_percent,
                lb.http2_pools.iter().any(|pool| pool == name),
            ))
        };
        let pools: HashMap<String, Arc<Pool>> = topology
            .pool_names()
            .into_iter()
            .map(|name| (name.clone(), new_pool(&name)))
            .collect();
        for spec in &topology.backends {
            pools[&spec.pool].upsert(Backend::new(spec.id.clone(), spec.addr));
        }
        let mut routes: Vec<(String, Arc<Pool>)> = topology
            .routes
            .iter()
            .map(|r| (r.prefix.clone(), pools[&r.pool].clone()))
            .collect();
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));

        Ok(Self {
            id: id.to_string(),
            served_by: config
                .http
                .debug_headers
                .then(|| HeaderValue::from_str(id))
                .transpose()?,
            default_pool: pools[topology::DEFAULT_POOL].clone(),
            pools,
            routes,
            budget: RetryBudget::new(lb.retry_budget_percent, lb.retry_min_per_sec),
            slots: Semaphore::new(lb.max_inflight),
            buffered: Arc::new(Semaphore::new(lb.max_buffered_bytes)),
            metrics: Metrics::install(),
            draining: AtomicBool::new(false),
            edge: Arc::default(),
            clients: std::sync::Mutex::default(),
            max_per_client: lb
                .max_connections_per_client
                .min((bakery_telemetry::open_files_limit() / 4).max(1) as usize),
            config: lb,
        })
    }

    /// The pool that serves `path`.
    fn route(&self, path: &str) -> &Arc<Pool> {
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, pool)| pool)
            .unwrap_or(&self.default_pool)
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight
/// requests finish (at most 10 s, so a long-lived stream cannot hold it forever).
///
/// Thread per core, as nginx has worker processes: each worker thread runs its own
/// single-threaded runtime that accepts from the shared listening socket and keeps
/// its own upstream connection pool, so a request is read, forwarded and answered
/// on one thread with no cross-thread wake-ups (which cost more than the proxying
/// itself on a small machine). Pools, health and budgets are shared atomics.
pub async fn run(
    config: Config,
    id: &str,
    topology: Topology,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    bakery_telemetry::set_process_id(id);
    let lb = Arc::new(Lb::new(&config, id, &topology)?);
    let background = health::spawn(lb.clone());
    // One connection to the database (as the edge's own login when it has one,
    // waited for): the edge follows its pages through it, and the balancer keeps its
    // row in the process registry — with its admin address, where its metrics answer.
    let connected = tokio::spawn({
        let (config, admin, edge) = (
            config.clone(),
            admin_listener.local_addr()?,
            lb.edge.clone(),
        );
        async move {
            let db = edge::database(&config).await;
            let follower = edge.spawn_follower(db.clone());
            (
                follower,
                bakery_db::processes::announce(db, "lb", admin, false),
            )
        }
    });
    tracing::info!(id, addr = %listener.local_addr()?, "load balancer serving");
    let listener = listener.into_std()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_server = tokio::spawn(admin::serve(lb.clone(), admin_listener, stop_rx.clone()));
    let threads = match config.lb.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let workers = (0..threads)
        .map(|n| {
            let (lb, listener, stop) = (lb.clone(), listener.try_clone()?, stop_rx.clone());
            std::thread::Builder::new()
                .name(format!("lb-worker-{n}"))
                .spawn(move || worker(lb, listener, stop))
                .map_err(anyhow::Error::from)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    drop(listener);

    shutdown.await;
    lb.draining.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    tokio::task::spawn_blocking(move || {
        for worker in workers {
            if let Ok(Err(error)) = worker.join() {
                tracing::warn!(%error, "worker ended with an error");
            }
        }
    })
    .await?;
    background.abort();
    if connected.is_finished() {
        if let Ok((follower, announced)) = connected.await {
            follower.abort();
            announced.end().await;
        }
    } else {
        connected.abort();
    }
    let _ = admin_server.await;
    Ok(())
}

/// One worker thread: accept, serve each connection, and drain on stop.
fn worker(
    lb: Arc<Lb>,
    listener: std::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        let timer = timer::Coarse::default();
        timer.spawn_ticker();
        let mut http = http1::Builder::new();
        http.timer(timer.clone())
            .header_read_timeout(lb.config.header_timeout)
            .max_buf_size(lb.config.max_header_bytes.max(8192))
            .keep_alive(true);
        let worker = Arc::new(front::Worker {
            upstream: upstream::Upstream::new(
                lb.config.connect_timeout,
                lb.config.upstream_timeout,
                timer.clone(),
            ),
            lb: lb.clone(),
            timer,
            http,
        });
        // Idle upstream connections are not watched between requests: close the
        // stale and the dead now and then (the task ends with the runtime).
        let pruned = worker.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(upstream::IDLE_TIMEOUT / 4);
            loop {
                every.tick().await;
                pruned.upstream.prune(std::time::Instant::now());
            }
        });
        // Each connection holds a receiver: `true` asks it to finish, and the last
        // one dropped says all have.
        let (drain, draining) = tokio::sync::watch::channel(false);
        loop {
            let (stream, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
                _ = stop.wait_for(|stopped| *stopped) => break,
            };
            // One address may not hold every connection: beyond its share, closed.
            let Some(client_slot) = ClientSlot::take(&lb, addr.ip()) else {
                metrics::counter!("bakery_lb_refused_connections_total", "reason" => "per_client")
                    .increment(1);
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let connection = front::serve(
                worker.clone(),
                stream,
                proxy::Peer::new(addr),
                draining.clone(),
            );
            tokio::spawn(async move {
                let _client_slot = client_slot;
                connection.await;
            });
        }
        drop(listener);
        drop(draining);
        let _ = drain.send(true);
        if tokio::time::timeout(Duration::from_secs(10), drain.closed())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after 10 s; closing them");
        }
        Ok(())
    })
}
