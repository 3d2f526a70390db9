//! `bakery web`: one stateless web clone. HTML pages and the JSON API over axum.
//!
//! A clone keeps nothing of its own between requests: users live in the database,
//! sessions in the shared session store. So any clone can serve any request, and
//! the load balancer may send each request to a different one.
//! Knows nothing of the load balancer beyond answering `/healthz` honestly.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use bakery_app::App;
use bakery_config::{Config, ConfigError};
use bakery_service::{Check, Shell};
use bakery_session::SessionStore;
use tokio::net::TcpListener;
use utoipa_axum::router::OpenApiRouter;

pub mod error;
pub mod extract;
pub mod openapi;
mod ops;
mod pages;
pub mod routes;

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
    /// The process shell: id, draining, health, metrics.
    pub shell: Shell,
    pub config: Arc<Config>,
    /// The domain's operations over the database, the cache and the broker.
    pub app: App,
    pub sessions: SessionStore,
    /// Pictures of the whole system for `/ops`.
    pub ops: bakery_ops::Ops,
    templates: Arc<minijinja::Environment<'static>>,
}

impl AppState {
    /// Connects to the stores named in `config`. A store that cannot be reached is a
    /// [`ConfigError`] naming its variable, so `main` can exit 2 with one clear line.
    pub async fn connect(config: Config, id: &str) -> anyhow::Result<Self> {
        let app = App::connect(&config).await?;
        app.keep_cache_swept();
        // Keys in the shared stores are namespaced by the database they belong to.
        let sessions = SessionStore::open(&config.sessions, app.namespace()).await?;
        // A clone needs the database. The rest it can do without, so they are only
        // reported: without the session store it serves what needs no session (the
        // rest answers 503), without the cache it reads the database, without the
        // broker its writes wait in the outbox.
        let checks = vec![
            Check::new("database", true, app.clone(), |app| async move {
                app.database_up().await
            }),
            Check::new("sessions", false, sessions.clone(), |sessions| async move {
                sessions.ping().await.is_ok()
            }),
            Check::new("cache", false, app.clone(), |app| async move {
                app.cache_up().await
            }),
            Check::new("broker", false, app.broker().clone(), |broker| async move {
                broker.is_up().await
            }),
        ];
        Ok(Self(Arc::new(Shared {
            shell: Shell::new(id, &config.http, checks)?,
            config: Arc::new(config),
            ops: bakery_ops::Ops::new(app.clone()),
            app,
            sessions,
            templates: Arc::new(bakery_site::templates()),
        })))
    }

    pub fn id(&self) -> &str {
        self.shell.id()
    }

    /// Whether the session cookie must be `Secure` for this request.
    pub(crate) fn cookie_secure(&self, headers: &HeaderMap) -> bool {
        self.config.web.cookie_secure || bakery_service::is_tls(headers)
    }
}

/// Opens the session store and the cache once, before any clone starts: the
/// embedded ones are files this creates, and several clones creating the same new
/// SQLite file at the same moment can trip over each other's locks.
pub async fn prepare_stores(config: &Config) -> Result<(), ConfigError> {
    let app = App::connect(config).await?;
    SessionStore::open(&config.sessions, app.namespace()).await?;
    app.close().await;
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
        .merge(ops::router())
        // Processed product images (the originals stay private).
        .nest_service(
            "/media/products",
            tower_http::services::ServeDir::new(state.app.media_dir().join("products")),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            store_headers,
        ))
        .layer(axum::middleware::from_fn(private_answers))
        .with_state(state.clone());
    bakery_service::layered(&state.shell, routes)
}

/// Says which database server answered the request (`x-db`) and what the cache
/// did (`x-cache`), unless debug headers are off.
async fn store_headers(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let work = bakery_cache::trace_cache(bakery_db::trace(next.run(req)));
    let ((mut response, db), cache) = work.await;
    if state.config.http.debug_headers {
        let headers = response.headers_mut();
        if let Some(role) = db.role {
            headers.insert("x-db", HeaderValue::from_static(role.as_str()));
        }
        if let Some(result) = cache {
            headers.insert("x-cache", HeaderValue::from_static(result.as_str()));
        }
    }
    response
}

/// An answer to a request with a session, or one that hands out a cookie, is that
/// user's alone: no shared cache (a proxy, a CDN, the browser's back button on a
/// shared machine) may keep it. Answers that say how they may be cached keep theirs.
async fn private_answers(req: Request, next: Next) -> Response {
    let personal = bakery_session::cookie::read(req.headers()).is_some();
    let mut response = next.run(req).await;
    let sets_cookie = response
        .headers()
        .contains_key(axum::http::header::SET_COOKIE);
    if (personal || sets_cookie)
        && !response
            .headers()
            .contains_key(axum::http::header::CACHE_CONTROL)
    {
        response.headers_mut().insert(
            axum::http::header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
    }
    response
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

/// Serves the clone on `listener` until `shutdown` resolves, then drains (see
/// [`bakery_service::serve`]).
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
    let announced = state.app.announce("web", listener.local_addr()?);
    bakery_service::serve(&state.shell, app(state.clone()), listener, shutdown).await?;
    announced.end().await;
    consumers.cancel();
    let _ = followups.await;
    state.app.close().await;
    Ok(())
}
