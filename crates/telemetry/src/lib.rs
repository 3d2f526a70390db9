//! Observability shared by every role: logs (`tracing`), metrics with the contract's
//! names (Prometheus text through `metrics-exporter-prometheus`), and request ids.
//!
//! Knows nothing of HTTP frameworks: roles call [`record_request`] from their own
//! middleware and serve [`Metrics::render`] on `/metrics`.

use std::sync::OnceLock;

pub mod journey;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The header that carries a request's id across every hop.
pub const REQUEST_ID: &str = "x-request-id";
/// The id of the process that produced a response.
pub const SERVED_BY: &str = "x-served-by";

/// Logs go to stderr, so stdout stays free for the machine-readable lines the
/// supervisor reads (`listening ...`, `started ...`, `ready ...`).
///
/// `filter` is a level (`info`) or per-target levels (`warn,bakery_lb=debug`); one that
/// does not parse means `info`. (tracing-subscriber's `Targets`, not its `EnvFilter`:
/// the same syntax less span filters, without a regex engine to build.)
pub fn init_logging(filter: &str) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;

    let filter = filter
        .parse::<Targets>()
        .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second call (tests start several roles in one process) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .try_init();
}

/// The process-wide Prometheus recorder.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// Installs the recorder once per process and returns a handle to render it.
    pub fn install() -> Self {
        static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
        let handle = HANDLE
            .get_or_init(|| {
                let recorder = PrometheusBuilder::new().build_recorder();
                let handle = recorder.handle();
                // Fails only when another recorder is installed, in which case ours stays
                // unused and renders empty; no role installs another.
                let _ = metrics::set_global_recorder(recorder);
                describe();
                handle
            })
            .clone();
        Self { handle }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

fn describe() {
    metrics::describe_counter!(
        "bakery_http_requests_total",
        "HTTP requests answered, by route and status."
    );
    metrics::describe_counter!(
        "bakery_db_queries_total",
        "Database queries, by role (primary or replica)."
    );
    metrics::describe_counter!(
        "bakery_broker_published_total",
        "Messages published and confirmed by the broker, by exchange."
    );
    metrics::describe_counter!(
        "bakery_broker_consumed_total",
        "Deliveries settled, by queue and outcome (ack, retry, dead)."
    );
    metrics::describe_counter!(
        "bakery_lb_retries_total",
        "Requests the load balancer sent again to another backend."
    );
    metrics::describe_counter!(
        "bakery_lb_ejections_total",
        "Backends taken out of rotation, by reason."
    );
    metrics::describe_counter!(
        "bakery_lb_upstream_errors_total",
        "Failed attempts to reach a backend, by kind."
    );
}

/// Counts one answered HTTP request under the contract's metric name.
pub fn record_request(route: &str, status: u16) {
    metrics::counter!(
        "bakery_http_requests_total",
        "route" => route.to_string(),
        "status" => status.to_string()
    )
    .increment(1);
}

/// A fresh request id: 128 random bits as 32 hex digits.
pub fn new_request_id() -> String {
    // By hand rather than `format!`: one of these is made for most requests.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = rand::random::<u128>();
    (0..32)
        .rev()
        .map(|nibble| HEX[(bits >> (nibble * 4)) as usize & 0xf] as char)
        .collect()
}

/// Keeps a client's request id only if it is a sane token, so logs and headers
/// never carry what an attacker put there.
pub fn accept_request_id(value: Option<&[u8]>) -> Option<String> {
    let text = std::str::from_utf8(value?).ok()?;
    let sane = !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    sane.then(|| text.to_string())
}

static PROCESS_ID: OnceLock<String> = OnceLock::new();

/// Names this process (`web-2`, `worker-1`) for what it records beyond its own
/// answers (the journey of a request, the process registry). The first name given
/// stays: tests that run several roles in one process see the first.
pub fn set_process_id(id: &str) {
    let _ = PROCESS_ID.set(id.to_string());
}

/// This process's name, or `bakery-<pid>` before a role named it.
pub fn process_id() -> &'static str {
    PROCESS_ID.get_or_init(|| format!("bakery-{}", std::process::id()))
}

/// This machine's name, for telling hosts apart in the process registry.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}

tokio::task_local! {
    /// The id of the request (or message) the current work serves.
    static CORRELATION: String;
}

/// Runs `work` as part of `correlation_id`: [`correlation_id`] answers it inside, and
/// events staged by the work carry it.
pub async fn with_correlation<F: Future>(correlation_id: String, work: F) -> F::Output {
    CORRELATION.scope(correlation_id, work).await
}

/// The correlation id of the current work, or a fresh one outside any.
pub fn correlation_id() -> String {
    CORRELATION
        .try_with(Clone::clone)
        .unwrap_or_else(|_| new_request_id())
}

/// Raises this process's soft limit of open files to its hard limit (the common
/// soft limit, 1,024, holds a few hundred proxied streams at two descriptors each)
/// and answers the limit in force.
pub fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// The soft limit of open files in force.
pub fn open_files_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

/// Resolves on SIGINT or SIGTERM: the one shutdown signal every role listens to.
/// The handlers are installed when this is called, not when the future is first
/// polled, so a signal that comes early (while a role is still starting) is not
/// fatal. Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).expect("installing a SIGTERM handler works on Unix");
    let mut interrupt =
        signal(SignalKind::interrupt()).expect("installing a SIGINT handler works on Unix");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_clients_are_kept_only_when_sane() {
        let ok = http::HeaderValue::from_static("abc-123_x.y");
        assert_eq!(
            accept_request_id(Some(ok.as_bytes())).as_deref(),
            Some("abc-123_x.y")
        );
        let hostile = http::HeaderValue::from_static("<script>");
        assert_eq!(accept_request_id(Some(hostile.as_bytes())), None);
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(id, new_request_id(), "random");
        assert_eq!(accept_request_id(Some(id.as_bytes())), Some(id));
    }

    /// The filters config.default.toml shows parse as documented.
    #[test]
    fn documented_log_filters_parse() {
        use tracing::Level;
        use tracing_subscriber::filter::Targets;

        let filter: Targets = "bakery_lb=debug,info".parse().expect("parses");
        assert!(filter.would_enable("bakery_lb::front", &Level::DEBUG));
        assert!(!filter.would_enable("bakery_web", &Level::DEBUG));
        assert!(filter.would_enable("bakery_web", &Level::INFO));
        let filter: Targets = "warn".parse().expect("parses");
        assert!(!filter.would_enable("bakery_web", &Level::INFO));
    }
}
