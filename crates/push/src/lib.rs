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
use bakery_broker::{Broker, Delivery, Outcome, handler, topology};
use bakery_config::Config;
use bakery_db::Database;
use bakery_service::{Check, Shell};
use bakery_session::SessionStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod feed;
mod session_watch;
mod stream;

use feed::Feed;

/// Serves the push service on `listener` until `shutdown`. It opens the database
/// (the notifications), the session store (who is asking for a stream) and the
/// broker; no cache.
pub async fn run(
    config: Config,
    id: &str,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (db, namespace) = Database::open(&config).await?;
    let broker = Broker::connect(&config.broker, &db).await?;
    // Consuming is this role's whole job: without its broker it does not start.
    broker.check(&config.broker).await?;
    let sessions = SessionStore::open(&config.sessions, &namespace).await?;
    let checks = vec![
        Check::new("database", true, db.clone(), |db| async move {
            db.ping().await.is_ok()
        }),
        Check::new("sessions", true, sessions.clone(), |sessions| async move {
            sessions.ping().await.is_ok()
        }),
        Check::new("broker", true, broker.clone(), |broker| async move {
            broker.is_up().await
        }),
    ];
    let shell = Shell::new(id, &config.http, checks)?;
    let feed = Feed::start(db.clone())
        .await
        .context("cannot follow the notifications")?;
    let stop = CancellationToken::new();
    let handler = {
        let (db, feed) = (db.clone(), feed.clone());
        handler(move |delivery: Delivery| {
            let (db, feed) = (db.clone(), feed.clone());
            async move { store(&db, &feed, delivery).await }
        })
    };
    let consumer = broker.consume(topology::PUSH_NOTIFICATIONS, handler, stop.clone());
    let following = feed.clone();
    // Open streams end as soon as shutdown starts (they would hold the drain open
    // for ever); browsers reconnect, with Last-Event-ID, to another push process.
    let closing = CancellationToken::new();
    let streams = stream::Streams {
        db: db.clone(),
        watch: session_watch::SessionWatch::start(sessions.clone(), closing.clone()),
        sessions,
        feed,
        closing: closing.clone(),
        open: std::sync::Arc::new(stream::OpenStreams::new(config.push.max_streams_per_user)),
        max_lifetime: config.push.max_stream,
    };
    let routes = Router::new()
        .route("/api/notifications/stream", get(stream::open))
        .with_state(streams);
    let router = bakery_service::layered(&shell, routes);
    tracing::info!(id, addr = %listener.local_addr()?, broker = broker.engine(), "push service serving");
    let shutdown = async move {
        shutdown.await;
        closing.cancel();
    };
    let announced =
        bakery_db::processes::announce(db.clone(), "push", listener.local_addr()?, true);
    bakery_service::serve(&shell, router, listener, shutdown).await?;
    announced.end().await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), consumer).await;
    broker.close().await;
    following.stop();
    db.close().await;
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
        .store_notification(
            &message.id,
            &message.correlation_id,
            user_id,
            &message.kind,
            &event.payload_json(),
        )
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
