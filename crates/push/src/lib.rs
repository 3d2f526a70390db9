//! `bakery push`: the push service. It consumes `push.notifications` (RSVPs, sent
//! emails, finished jobs), stores each as a notification of its user, once per
//! message, and streams notifications to the user's open `text/event-stream`
//! connections.
//!
//! How an event reaches every push replica: the consumer that takes a message (one
//! replica, point-to-point) stores it in the database; every replica follows the
//! `notifications` table by id ([`feed`]) — woken by `NOTIFY` on PostgreSQL, by a
//! short poll on SQLite — and hands each new row to its own open streams. The table
//! is the log, so a stream that reconnects with `Last-Event-ID`, to this replica or
//! another, after a restart or not, first gets what it missed from it.

use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use bakery_broker::{Delivery, Outcome, handler, topology};
use bakery_config::Config;
use bakery_web::AppState;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod feed;
mod stream;

use feed::Feed;

/// Serves the push service on `listener` until `shutdown`.
pub async fn run(
    config: Config,
    id: &str,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState::connect(config.clone(), id).await?;
    // Consuming is this role's whole job: without its broker it does not start.
    state.app.broker().check(&config).await?;
    state.require_broker();
    let feed = Feed::start(state.app.db().clone())
        .await
        .context("cannot follow the notifications")?;
    let stop = CancellationToken::new();
    let consumer = {
        let (db, feed) = (state.app.db().clone(), feed.clone());
        let handler = handler(move |delivery: Delivery| {
            let (db, feed) = (db.clone(), feed.clone());
            async move { store(&db, &feed, delivery).await }
        });
        state
            .app
            .broker()
            .consume(topology::PUSH_NOTIFICATIONS, handler, stop.clone())
    };
    // Open streams end as soon as shutdown starts (they would hold the drain open
    // for ever); browsers reconnect, with Last-Event-ID, to another push process.
    let closing = CancellationToken::new();
    let routes = Router::new()
        .merge(bakery_web::routes::ops::router())
        .route("/api/notifications/stream", get(stream::open))
        .layer(axum::Extension(stream::Streams {
            feed,
            closing: closing.clone(),
        }));
    let router = bakery_web::layered(state.clone(), routes);
    tracing::info!(id, addr = %listener.local_addr()?, broker = state.app.broker().engine(), "push service serving");
    let shutdown = async move {
        shutdown.await;
        closing.cancel();
    };
    bakery_web::serve(state.clone(), router, listener, shutdown).await?;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), consumer).await;
    state.app.broker().close().await;
    Ok(())
}

/// Stores one event as its user's notification (a redelivery stores nothing).
async fn store(db: &bakery_db::Database, feed: &Feed, delivery: Delivery) -> Outcome {
    let message = &delivery.message;
    let event = match message.event() {
        Ok(event) => event,
        Err(e) => return Outcome::Dead(e.to_string()),
    };
    // A job nobody owns (an operator's, a benchmark's) has nobody to tell.
    let Some(user_id) = event.notified_user() else {
        return Outcome::Ack;
    };
    match db
        .store_notification(&message.id, user_id, &message.kind, &event.payload_json())
        .await
    {
        Ok(stored) => {
            tracing::info!(kind = %message.kind, user_id, notification = ?stored, "notification stored");
            feed.wake();
            Outcome::Ack
        }
        Err(e) => Outcome::Retry(e.to_string()),
    }
}
