//! The embedded broker: queues are rows of `broker_messages` in the configured
//! database, so every process sharing the database shares them, durably.
//!
//! A delivery is a lease: consuming sets `leased_until` and counts an attempt; an
//! ack deletes the row, a retry moves `due_at` ahead, a dead letter moves the row to
//! `dead.<queue>`. A consumer that dies loses its leases when they end, and the
//! messages go to another consumer: at-least-once, as with RabbitMQ.
//!
//! The table's SQL is `bakery_db::queues` (with the rest of the schema's); this
//! module is the engine: routing, leases, consumers, wake-ups.
//!
//! Consumers are woken promptly: on PostgreSQL by `LISTEN`/`NOTIFY` (sent after the
//! publishing transaction's commit); on SQLite, which has no such
//! channel between processes, by a cheap indexed read every few tens of
//! milliseconds (a claim, which writes, runs only when something is ready).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bakery_core::now_millis;
use bakery_db::queues::{Enqueued, QUEUES_CHANNEL, Queues, Settle};
use bakery_db::{Database, DbError};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::topology::{self, dead_queue};
use crate::{
    BrokerError, DeadLetter, Delivery, Handler, Message, Policy, QueueDepth, Routed, STOP_GRACE,
    Settlement, run_handler, settled,
};

/// How often an idle consumer looks for work without a wake-up (SQLite's only way;
/// on PostgreSQL a safety net, and what makes delayed retries due).
const POLL_SQLITE: Duration = Duration::from_millis(25);
const POLL_POSTGRES: Duration = Duration::from_millis(250);

pub struct Embedded {
    /// The rows (`bakery_db::queues`: the table's SQL lives with the schema).
    queues: Queues,
    postgres: bool,
    policy: Arc<Policy>,
    /// Wakes this process's consumers of a queue (its own publishes, and NOTIFYs).
    wake: HashMap<&'static str, Arc<Notify>>,
}

fn broker_error(error: DbError) -> BrokerError {
    if error.is_retryable() {
        BrokerError::Unavailable(error.to_string())
    } else {
        BrokerError::Other(error.to_string())
    }
}

impl Embedded {
    pub async fn open(db: &Database, policy: Arc<Policy>) -> Result<Self, String> {
        let wake: HashMap<&'static str, Arc<Notify>> = topology::QUEUES
            .iter()
            .map(|q| (*q, Arc::new(Notify::new())))
            .collect();
        let postgres = db.is_postgres();
        if postgres {
            // A queue's name wakes its consumers; a reconnect wakes them all (some
            // notifications may have been missed meanwhile).
            let wakes = wake.clone();
            db.listen(QUEUES_CHANNEL, move |queue| {
                match queue.and_then(|q| wakes.get(q)) {
                    Some(notify) => notify.notify_one(),
                    None if queue.is_none() => wakes.values().for_each(|n| n.notify_one()),
                    None => {}
                }
            })
            .await
            .map_err(|e| format!("cannot listen for messages: {e}"))?;
        }
        Ok(Self {
            queues: db.queues(),
            postgres,
            policy,
            wake,
        })
    }

    pub async fn is_up(&self) -> bool {
        self.queues.is_up().await
    }

    pub async fn publish(&self, exchange: &str, message: &Message) -> Result<Routed, BrokerError> {
        let queues = topology::route(exchange, &message.kind);
        if queues.is_empty() {
            return Ok(Routed::Unroutable);
        }
        let enqueued = Enqueued {
            message_id: &message.id,
            correlation_id: &message.correlation_id,
            kind: &message.kind,
            body: &message.body,
        };
        self.queues
            .enqueue(&queues, &enqueued)
            .await
            .map_err(broker_error)?;
        for queue in queues {
            self.wake[queue].notify_one();
            self.queues.announce(queue).await;
        }
        Ok(Routed::Queued)
    }

    fn lease_until(&self) -> i64 {
        now_millis() + self.policy.lease.as_millis() as i64
    }

    /// Leases up to `limit` ready messages of `queue`, oldest first.
    async fn claim(
        &self,
        queue: &'static str,
        limit: usize,
    ) -> Result<Vec<(i64, Delivery)>, DbError> {
        let claimed = self.queues.claim(queue, limit, self.lease_until()).await?;
        Ok(claimed
            .into_iter()
            .map(|c| {
                let delivery = Delivery {
                    message: Message {
                        id: c.message_id,
                        correlation_id: c.correlation_id,
                        kind: c.kind,
                        body: c.body,
                    },
                    queue,
                    attempt: c.attempt as u32,
                };
                (c.row, delivery)
            })
            .collect())
    }

    async fn settle(
        &self,
        row: i64,
        delivery: &Delivery,
        settlement: &Settlement,
    ) -> Result<(), DbError> {
        let dead = dead_queue(delivery.queue);
        let how = match settlement {
            Settlement::Ack => Settle::Ack,
            Settlement::RetryAfter(delay, reason) => Settle::RetryAt {
                due_at: now_millis() + delay.as_millis() as i64,
                reason,
            },
            Settlement::Dead(reason) => Settle::Dead {
                dead_queue: &dead,
                reason,
            },
        };
        self.queues
            .settle(row, i64::from(delivery.attempt), how)
            .await
    }

    pub async fn depths(&self) -> Result<Vec<QueueDepth>, BrokerError> {
        let rows = self.queues.depths().await.map_err(broker_error)?;
        let count = |name: &str, pick: fn(&(String, i64, i64)) -> i64| {
            rows.iter()
                .filter(|row| row.0 == name)
                .map(|row| pick(row).max(0) as u64)
                .sum::<u64>()
        };
        Ok(topology::QUEUES
            .iter()
            .map(|&queue| {
                let dead = dead_queue(queue);
                QueueDepth {
                    queue,
                    ready: count(queue, |row| row.1),
                    unacked: Some(count(queue, |row| row.2)),
                    consumers: None,
                    dead: count(&dead, |row| row.1) + count(&dead, |row| row.2),
                }
            })
            .collect())
    }

    pub async fn consume(
        self: Arc<Self>,
        queue: &'static str,
        prefetch: u16,
        handler: Handler,
        stop: CancellationToken,
    ) {
        let wake = self.wake[queue].clone();
        let poll = if self.postgres {
            POLL_POSTGRES
        } else {
            POLL_SQLITE
        };
        // At least 1: `Broker::consume_at_most`, the one caller, sees to it.
        let prefetch = usize::from(prefetch);
        let mut running: JoinSet<()> = JoinSet::new();
        let mut failures = 0u32;
        tracing::info!(queue, engine = "embedded", "consuming");
        // Claims are taken in batches: a claim per freed slot would cost a round of
        // queries per message.
        let batch = (prefetch / 4).max(1);
        while !stop.is_cancelled() {
            while running.try_join_next().is_some() {}
            let free = prefetch.saturating_sub(running.len());
            let mut claimed = 0;
            if free >= batch.min(prefetch) || running.is_empty() {
                match self.claim(queue, free).await {
                    Ok(deliveries) => {
                        failures = 0;
                        claimed = deliveries.len();
                        for (row, delivery) in deliveries {
                            let (this, handler) = (self.clone(), handler.clone());
                            running
                                .spawn(async move { this.handle(row, delivery, &handler).await });
                        }
                    }
                    Err(error) => {
                        failures += 1;
                        tracing::warn!(queue, %error, "cannot take messages; will try again");
                    }
                }
            }
            if claimed > 0 && claimed == free {
                continue; // more may be waiting
            }
            let pause = if failures > 0 {
                Duration::from_millis(200 * u64::from(failures.min(25)))
            } else {
                poll
            };
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
                () = stop.cancelled() => {}
            }
        }
        // Let deliveries in hand finish; the rest of their leases run out otherwise.
        let _ = tokio::time::timeout(STOP_GRACE, async {
            while running.join_next().await.is_some() {}
        })
        .await;
    }

    async fn handle(&self, row: i64, delivery: Delivery, handler: &Handler) {
        // The lease is renewed while the handler runs: it ends only when its
        // consumer dies, never under a handler that is merely slow (which would
        // otherwise hand the same message to a second consumer meanwhile).
        let work = run_handler(handler, delivery.clone());
        tokio::pin!(work);
        let renew_every = self.policy.lease / 4;
        let outcome = loop {
            tokio::select! {
                outcome = &mut work => break outcome,
                () = tokio::time::sleep(renew_every) => {
                    if let Err(error) = self.renew(row, delivery.attempt).await {
                        tracing::warn!(queue = delivery.queue, message_id = %delivery.message.id, %error, "cannot renew a lease");
                    }
                }
            }
        };
        let settlement = self.policy.settle(delivery.attempt, outcome);
        settled(&delivery, &settlement);
        if let Err(error) = self.settle(row, &delivery, &settlement).await {
            tracing::warn!(queue = delivery.queue, message_id = %delivery.message.id, %error, "cannot settle; it will be delivered again when its lease ends");
        }
    }

    async fn renew(&self, row: i64, attempt: u32) -> Result<(), DbError> {
        self.queues
            .renew(row, i64::from(attempt), self.lease_until())
            .await
    }

    pub async fn dead_letters(
        &self,
        queues: &[&'static str],
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        let mut letters = Vec::new();
        for queue in queues {
            let dead = self
                .queues
                .dead(&dead_queue(queue))
                .await
                .map_err(broker_error)?;
            letters.extend(dead.into_iter().map(|d| DeadLetter {
                queue: queue.to_string(),
                message_id: d.message_id,
                kind: d.kind,
                correlation_id: d.correlation_id,
                attempts: d.attempts as u32,
                error: d.last_error.unwrap_or_default(),
                died_at: d.dead_at.unwrap_or(0),
            }));
        }
        Ok(letters)
    }

    pub async fn replay(
        &self,
        queues: &[&'static str],
        message_id: Option<&str>,
    ) -> Result<usize, BrokerError> {
        let mut replayed = 0;
        for queue in queues {
            replayed += self
                .queues
                .replay(queue, &dead_queue(queue), message_id)
                .await
                .map_err(broker_error)?;
            self.queues.announce(queue).await;
        }
        Ok(replayed)
    }
}
