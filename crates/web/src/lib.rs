//! `bakery web`: one stateless web clone. HTML pages and the JSON API over axum.
//!
//! A clone keeps nothing of its own between requests: users live in the database,
//! sessions in the shared session store. So any clone can serve any request, and
//! the load balancer may send each request to a different one.
//! Knows nothing of the load balancer beyond answering `/healthz` honestly.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bakery_app::App;
use bakery_config::{Config, ConfigError};
use bakery_session::{Lifetimes, SessionStore};
use bakery_telemetry::Metrics;
use tokio::net::TcpListener;
use utoipa_axum::router::OpenApiRouter;

pub mod error;
pub mod extract;
mod middleware;
pub mod openapi;
mod pages;
pub use pages::templates;
pub mod prerender;
pub mod routes;
mod session_cookie;

use error::ApiError;

/// JSON bodies beyond this are answered 413 (contract: 1 MiB).
pub const JSON_BODY_LIMIT: usize = 1 << 20;

/// What every handler can reach. One `Arc`: axum clones the state for every
/// extractor and middleware of every request, so a clone must be one increment.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The clone's handles to its stores and its own settings.
pub struct Shared {
    pub id: Arc<str>,
    served_by: HeaderValue,
    pub config: Arc<Config>,
    /// The domain's operations over the database and the cache.
    pub app: App,
    pub sessions: SessionStore,
    pub metrics: Metrics,
    templates: Arc<minijinja::Environment<'static>>,
    draining: Arc<AtomicBool>,
    /// Whether `/healthz` fails while the broker is away (consumers need it; a web
    /// clone does not: its writes wait in the outbox).
    broker_required: AtomicBool,
}

impl AppState {
    /// Connects to the stores named in `config`. A store that cannot be reached is a
    /// [`ConfigError`] naming its variable, so `main` can exit 2 with one clear line.
    pub async fn connect(config: Config, id: &str) -> anyhow::Result<Self> {
        let app = App::connect(&config).await?;
        app.keep_cache_swept();
        // Keys in the shared stores are namespaced by the database they belong to.
        let sessions = open_sessions(&config, app.namespace()).await?;
        Ok(Self(Arc::new(Shared {
            id: Arc::from(id),
            served_by: HeaderValue::from_str(id).context("--id must be a valid header value")?,
            config: Arc::new(config),
            app,
            sessions,
            metrics: Metrics::install(),
            templates: Arc::new(pages::templates()),
            draining: Arc::new(AtomicBool::new(false)),
            broker_required: AtomicBool::new(false),
        })))
    }

    /// From now on `/healthz` answers 503 while the broker is away.
    pub fn require_broker(&self) {
        self.broker_required.store(true, Ordering::Relaxed);
    }

    pub fn broker_required(&self) -> bool {
        self.broker_required.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the session cookie must be `Secure` for this request.
    pub(crate) fn cookie_secure(&self, headers: &HeaderMap) -> bool {
        self.config.cookie_secure || session_cookie::is_tls(headers)
    }
}

/// Opens the session store named in `config`; a [`ConfigError`] when it cannot be used.
pub async fn open_sessions(config: &Config, namespace: &str) -> Result<SessionStore, ConfigError> {
    let lifetimes = Lifetimes {
        idle: config.session_idle_timeout,
        absolute: config.session_absolute_timeout,
    };
    SessionStore::connect(&config.session_url, lifetimes, namespace)
        .await
        .map_err(|e| {
            ConfigError::new(
                "BAKERY_SESSION_URL",
                format!("cannot use the session store: {e}"),
            )
        })
}

/// Opens the session store and the cache once, before any clone starts: the
/// embedded ones are files this creates, and several clones creating the same new
/// SQLite file at the same moment can trip over each other's locks.
pub async fn prepare_stores(config: &Config) -> Result<(), ConfigError> {
    let app = App::connect(config).await?;
    open_sessions(config, app.namespace()).await?;
    app.db().close().await;
    Ok(())
}

/// The whole web clone: routes, fallbacks and layers.
pub fn app(state: AppState) -> Router {
    let (api, document) = api_routes().split_for_parts();
    let document = axum::body::Bytes::from(openapi::to_json(&openapi::document(document)));
    let routes = api
        .route(
            "/api/openapi.json",
            axum::routing::get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    document,
                )
            }),
        )
        .merge(pages::router())
        // Processed product images (the originals stay private).
        .nest_service(
            "/media/products",
            tower_http::services::ServeDir::new(state.app.media_dir().join("products")),
        );
    layered(state, routes)
}

/// The JSON API's routes, each with its part of the OpenAPI document.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(routes::ops::router())
        .merge(routes::accounts::router())
        .merge(routes::catalog::router())
        .merge(routes::calendar::router())
        .merge(routes::jobs::router())
        .merge(routes::pages::router())
        .merge(routes::notifications::router())
        .merge(routes::users::router())
}

/// `routes` behind the layers every bakery HTTP process shares (request id and
/// correlation, metrics, timeout, CSRF, body limit, panics as 500 JSON), with the
/// contract's JSON 404 and 405. The push and email services serve through this too.
pub fn layered(state: AppState, routes: Router<AppState>) -> Router {
    routes
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "that method is not allowed here",
            )
        })
        .layer(axum::middleware::from_fn(middleware::csrf))
        .layer(axum::middleware::from_fn(middleware::html_security))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::timeout,
        ))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_| -> Response { ApiError::internal("a handler panicked").into_response() },
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::request_context,
        ))
        .with_state(state)
}

/// Serves the clone on `listener` until `shutdown` resolves, then drains: `/healthz`
/// answers 503 for the configured grace (the load balancer stops sending new
/// requests) while requests keep being served, then in-flight requests finish.
pub async fn run(
    config: Config,
    id: &str,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState::connect(config, id).await?;
    // The calendar's follow-ups (`email.sent` → `confirmation_sent_at`) are
    // consumed by the clones, which own the calendar.
    let consumers = tokio_util::sync::CancellationToken::new();
    let followups = state.app.follow_up_emails(consumers.clone());
    tracing::info!(id, addr = %listener.local_addr()?, sessions = state.sessions.engine(), broker = state.app.broker().engine(), "web clone serving");
    serve(state.clone(), app(state.clone()), listener, shutdown).await?;
    consumers.cancel();
    let _ = followups.await;
    state.app.broker().close().await;
    Ok(())
}

/// Serves `router` until `shutdown`, then drains (see [`run`]) and closes the stores.
pub async fn serve(
    state: AppState,
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grace = state.config.drain_grace;
    let draining = state.draining.clone();
    let db = state.app.db().clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            draining.store(true, Ordering::Relaxed);
            tracing::info!(?grace, "draining");
            tokio::time::sleep(grace).await;
        })
        .await?;
    db.close().await;
    Ok(())
}
