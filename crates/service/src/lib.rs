//! The process shell every HTTP-speaking role stands on (`web`, `push`, `email`,
//! `worker`): serving and draining, request ids and correlation, metrics by route,
//! the request timeout, the CSRF check, security headers on HTML, panics answered as
//! JSON, the contract's errors ([`ApiError`]) and fallbacks, `/healthz` (from the
//! [`Check`]s the role gives) and `/metrics`. It knows no store: each role opens
//! what it uses and says how to check it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use bakery_config::HttpConfig;
use bakery_telemetry::Metrics;
use tokio::net::TcpListener;

pub mod error;
mod health;
mod middleware;

pub use error::{ApiError, ApiResult};
pub use health::Check;
pub use middleware::is_tls;

/// JSON bodies beyond this are answered 413 (contract: 1 MiB).
pub const JSON_BODY_LIMIT: usize = 1 << 20;

/// One process's identity, settings and state as the shell sees them. Cheap to
/// clone (one `Arc`).
#[derive(Clone)]
pub struct Shell(Arc<Inner>);

struct Inner {
    id: Arc<str>,
    served_by: HeaderValue,
    debug_headers: bool,
    request_timeout: Duration,
    drain_grace: Duration,
    draining: AtomicBool,
    /// Requests being answered now (a gauge, set when `/metrics` is rendered).
    in_flight: AtomicUsize,
    metrics: Metrics,
    checks: Vec<Check>,
}

impl Shell {
    /// The shell of process `id`, whose `/healthz` asks `checks`.
    pub fn new(id: &str, config: &HttpConfig, checks: Vec<Check>) -> anyhow::Result<Self> {
        bakery_telemetry::set_process_id(id);
        Ok(Self(Arc::new(Inner {
            id: Arc::from(id),
            served_by: HeaderValue::from_str(id).context("--id must be a valid header value")?,
            debug_headers: config.debug_headers,
            request_timeout: config.request_timeout,
            drain_grace: config.drain_grace,
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            metrics: Metrics::install(),
            checks,
        })))
    }

    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// Whether answers carry `x-served-by` and the stores' debug headers.
    pub fn debug_headers(&self) -> bool {
        self.0.debug_headers
    }

    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::Relaxed)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// Requests being answered now.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(Ordering::Relaxed)
    }

    fn checks(&self) -> &[Check] {
        &self.0.checks
    }
}

/// `routes` (state applied) with `/healthz` and `/metrics`, the contract's JSON 404
/// and 405, and the layers every bakery HTTP process shares, outermost first:
/// request id, correlation and metrics; errors as pages for browsers; panics as 500
/// JSON; the body limit; the timeout; security headers on HTML; the CSRF check.
pub fn layered(shell: &Shell, routes: Router) -> Router {
    routes
        .merge(health::router(shell))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::middleware::from_fn(middleware::csrf))
        .layer(axum::middleware::from_fn(middleware::html_security))
        .layer(axum::middleware::from_fn_with_state(
            shell.clone(),
            middleware::timeout,
        ))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_| -> Response { ApiError::internal("a handler panicked").into_response() },
        ))
        .layer(axum::middleware::from_fn(middleware::html_errors))
        .layer(axum::middleware::from_fn_with_state(
            shell.clone(),
            middleware::request_context,
        ))
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains: `/healthz`
/// answers 503 for the configured grace (the load balancer stops sending new
/// requests) while requests keep being served, then in-flight requests finish. The
/// role closes its stores after.
pub async fn serve(
    shell: &Shell,
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shell = shell.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            shell.0.draining.store(true, Ordering::Relaxed);
            let grace = shell.0.drain_grace;
            tracing::info!(?grace, "draining");
            tokio::time::sleep(grace).await;
        })
        .await?;
    Ok(())
}
