//! The outbox relay: publishes the events that writes committed to the `outbox`
//! table, with confirms, and removes a row only once the broker confirmed it.
//!
//! A process's own writes kick it (published within milliseconds); a timer also
//! sweeps rows older than `outbox_sweep_after` that nobody published — their
//! writer died between its commit and its publish. Rows are claimed with a lease
//! (`SKIP LOCKED` on PostgreSQL), so relays in several processes share the work; a
//! relay that dies holding a claim loses it when the lease ends. A message may thus
//! be published twice (a crash after the confirm, before the delete): consumers are
//! idempotent on its id.

use std::sync::Arc;
use std::time::Duration;

use bakery_db::Database;
use bakery_db::messaging::OutboxRow;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{Broker, Message};

/// Rows claimed per pass.
const BATCH: i64 = 200;
/// Publishes in flight at once (each waits for its confirm).
const CONCURRENCY: usize = 32;
/// How long a claim holds before another relay may take the row.
const CLAIM_LEASE: Duration = Duration::from_secs(30);

/// A handle to this process's relay: [`Relay::kick`] after a write staged events.
#[derive(Clone)]
pub struct Relay {
    kick: Arc<Notify>,
}

impl Relay {
    /// Starts relaying until `stop`.
    pub fn start(
        db: Database,
        broker: Broker,
        sweep_after: Duration,
        stop: CancellationToken,
    ) -> Self {
        let kick = Arc::new(Notify::new());
        tokio::spawn(run(db, broker, sweep_after, kick.clone(), stop));
        Self { kick }
    }

    /// Something was staged: publish now rather than at the next sweep.
    pub fn kick(&self) {
        self.kick.notify_one();
    }
}

async fn run(
    db: Database,
    broker: Broker,
    sweep_after: Duration,
    kick: Arc<Notify>,
    stop: CancellationToken,
) {
    let sweep_every = (sweep_after / 2).max(Duration::from_millis(100));
    let mut failures = 0u32;
    loop {
        let kicked = tokio::select! {
            () = kick.notified() => true,
            () = tokio::time::sleep(sweep_every) => false,
            () = stop.cancelled() => return,
        };
        // A kick publishes everything committed so far; a sweep only what has waited
        // too long (the rows of other processes' writes that their relays did not
        // publish).
        let horizon = if kicked { Duration::ZERO } else { sweep_after };
        match drain(&db, &broker, horizon).await {
            Ok(()) => failures = 0,
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, failures, "the outbox relay could not publish; will try again");
                let pause = Duration::from_millis(200 * u64::from(failures.min(25)));
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = stop.cancelled() => return,
                }
                // Go again soon, without waiting for the next sweep.
                kick.notify_one();
            }
        }
    }
}

/// Publishes outbox rows committed at least `horizon` ago, batch after batch.
async fn drain(db: &Database, broker: &Broker, horizon: Duration) -> Result<(), String> {
    loop {
        let before = bakery_core::now_millis() - horizon.as_millis() as i64;
        let rows = db
            .claim_outbox(before, BATCH, CLAIM_LEASE.as_millis() as i64)
            .await
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Ok(());
        }
        let full = rows.len() as i64 == BATCH;
        let results: Vec<Result<i64, String>> = futures::stream::iter(rows)
            .map(|row| publish_one(db, broker, row))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        // The confirmed rows leave the outbox together (one statement, not one each).
        let sent: Vec<i64> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        // Failing here leaves the rows to be published again: duplicates the consumers
        // ignore, never a loss.
        db.outbox_sent_many(&sent)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(error) = results.into_iter().find_map(Result::err) {
            return Err(error);
        }
        if !full {
            return Ok(());
        }
    }
}

/// Publishes one row's message; answers the row's id once the broker confirmed it.
async fn publish_one(db: &Database, broker: &Broker, row: OutboxRow) -> Result<i64, String> {
    let message = Message {
        id: row.message_id,
        correlation_id: row.correlation_id,
        kind: row.kind,
        body: row.body,
    };
    match broker.publish(&row.exchange, &message).await {
        Ok(routed) => {
            tracing::debug!(message_id = %message.id, correlation_id = %message.correlation_id, kind = %message.kind, "published from the outbox");
            let routed = match routed {
                crate::Routed::Queued => "queued",
                crate::Routed::Unroutable => "unroutable",
            };
            bakery_telemetry::journey::note(
                &message.correlation_id,
                format!("{} published to {} ({routed})", message.kind, row.exchange),
                serde_json::json!({"message_id": message.id, "kind": message.kind, "exchange": row.exchange, "routed": routed}),
            );
            Ok(row.id)
        }
        Err(error) => {
            let _ = db.release_outbox(row.id).await;
            Err(error.to_string())
        }
    }
}
