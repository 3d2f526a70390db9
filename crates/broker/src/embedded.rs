//! The embedded broker: queues are rows of `broker_messages` in the configured
//! database, so every process sharing the database shares them, durably.
//!
//! A delivery is a lease: consuming sets `leased_until` and counts an attempt; an
//! ack deletes the row, a retry moves `due_at` ahead, a dead letter moves the row to
//! `dead.<queue>`. A consumer that dies loses its leases when they end, and the
//! messages go to another consumer: at-least-once, as with RabbitMQ.
//!
//! Consumers are woken promptly: on PostgreSQL by `LISTEN`/`NOTIFY` (sent in the
//! publishing transaction, delivered at its commit); on SQLite, which has no such
//! channel between processes, by a cheap indexed read every few tens of
//! milliseconds (a claim, which writes, runs only when something is ready).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bakery_core::now_millis;
use bakery_db::Database;
use sqlx::AnyPool;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::topology::{self, dead_queue};
use crate::{
    BrokerError, DeadLetter, Delivery, Handler, Message, Policy, Routed, STOP_GRACE, Settlement,
    record_consumed, run_handler,
};

/// The PostgreSQL channel a queue's name is announced on when it gets a message.
const CHANNEL: &str = "bakery_broker";
/// How often an idle consumer looks for work without a wake-up (SQLite's only way;
/// on PostgreSQL a safety net, and what makes delayed retries due).
const POLL_SQLITE: Duration = Duration::from_millis(25);
const POLL_POSTGRES: Duration = Duration::from_millis(250);

pub struct Embedded {
    pool: AnyPool,
    postgres: bool,
    policy: Arc<Policy>,
    /// Wakes this process's consumers of a queue (its own publishes, and NOTIFYs).
    wake: HashMap<&'static str, Arc<Notify>>,
    /// SQLite: this process's broker writes take turns here rather than in SQLite's
    /// busy handler, which sleeps between tries and wastes most of the time under
    /// contention. (Other processes still contend, much less.)
    sqlite_writer: tokio::sync::Mutex<()>,
}

type Row = (i64, String, String, String, String, i64);
/// message_id, kind, correlation_id, attempts, last_error, dead_at
type DeadRow = (String, String, String, i64, Option<String>, Option<i64>);

fn broker_error(error: sqlx::Error) -> BrokerError {
    match bakery_db::DbError::from(error) {
        e if e.is_retryable() => BrokerError::Unavailable(e.to_string()),
        e => BrokerError::Other(e.to_string()),
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
            db.listen(CHANNEL, move |queue| {
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
            pool: db.pool().clone(),
            postgres,
            policy,
            wake,
            sqlite_writer: tokio::sync::Mutex::new(()),
        })
    }

    /// SQLite: this process's turn to write (see `sqlite_writer`); PostgreSQL needs none.
    async fn writer_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if self.postgres {
            None
        } else {
            Some(self.sqlite_writer.lock().await)
        }
    }

    /// A transaction for the broker's bookkeeping (claims, acks, retries): on
    /// PostgreSQL committed without waiting for the WAL flush — losing one in a crash
    /// only delivers a message again, which consumers tolerate anyway — and on SQLite
    /// taken in turn with this process's other broker writes.
    async fn bookkeeping(
        &self,
    ) -> Result<
        (
            sqlx::Transaction<'static, sqlx::Any>,
            Option<tokio::sync::MutexGuard<'_, ()>>,
        ),
        sqlx::Error,
    > {
        let turn = self.writer_turn().await;
        let mut tx = self.pool.begin().await?;
        if self.postgres {
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }
        Ok((tx, turn))
    }

    pub async fn is_up(&self) -> bool {
        let ping = sqlx::query("SELECT 1").execute(&self.pool);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Ok(_))
        )
    }

    pub async fn publish(&self, exchange: &str, message: &Message) -> Result<Routed, BrokerError> {
        let queues = topology::route(exchange, &message.kind);
        if queues.is_empty() {
            return Ok(Routed::Unroutable);
        }
        let now = now_millis();
        // Publishing stays a durable commit (the message must survive a crash).
        let turn = self.writer_turn().await;
        let mut tx = self.pool.begin().await.map_err(broker_error)?;
        for queue in &queues {
            // The same message published twice (a relay retrying) is queued once.
            sqlx::query(
                "INSERT INTO broker_messages (queue, message_id, correlation_id, kind, body, due_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (queue, message_id) DO NOTHING",
            )
            .bind(*queue)
            .bind(&message.id)
            .bind(&message.correlation_id)
            .bind(&message.kind)
            .bind(&message.body)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(broker_error)?;
        }
        tx.commit().await.map_err(broker_error)?;
        drop(turn);
        for queue in queues {
            self.wake[queue].notify_one();
            if self.postgres {
                // After the commit and in a transaction of its own: a NOTIFY in the
                // publishing transaction would serialise every publisher's commit on
                // PostgreSQL's notification lock. Lost in a crash, it costs a poll.
                let _ = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(queue)
                    .execute(&self.pool)
                    .await;
            }
        }
        Ok(Routed::Queued)
    }

    /// Leases up to `limit` ready messages of `queue`, oldest first.
    async fn claim(
        &self,
        queue: &'static str,
        limit: usize,
    ) -> Result<Vec<(i64, Delivery)>, sqlx::Error> {
        let now = now_millis();
        // A read first: idle polling must not take SQLite's write lock.
        let ready: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM broker_messages WHERE queue = $1 AND due_at <= $2 AND leased_until <= $2 LIMIT 1",
        )
        .bind(queue)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if ready.is_none() {
            return Ok(Vec::new());
        }
        let skip_locked = if self.postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE broker_messages SET leased_until = $1, attempts = attempts + 1
             WHERE id IN (SELECT id FROM broker_messages
                          WHERE queue = $2 AND due_at <= $3 AND leased_until <= $3
                          ORDER BY id LIMIT $4{skip_locked})
               AND leased_until <= $3
             RETURNING id, message_id, correlation_id, kind, body, attempts"
        );
        let (mut tx, _turn) = self.bookkeeping().await?;
        let mut rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(now + self.policy.lease.as_millis() as i64)
            .bind(queue)
            .bind(now)
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.sort_by_key(|row| row.0);
        Ok(rows
            .into_iter()
            .map(|(row, id, correlation_id, kind, body, attempts)| {
                let delivery = Delivery {
                    message: Message {
                        id,
                        correlation_id,
                        kind,
                        body,
                    },
                    queue,
                    attempt: attempts as u32,
                };
                (row, delivery)
            })
            .collect())
    }

    async fn settle(
        &self,
        row: i64,
        delivery: &Delivery,
        settlement: &Settlement,
    ) -> Result<(), sqlx::Error> {
        let attempts = i64::from(delivery.attempt);
        // Each statement checks the attempt count: a lease that ran out and was taken
        // by another consumer is that consumer's to settle.
        let (mut tx, _turn) = self.bookkeeping().await?;
        match settlement {
            Settlement::Ack => {
                sqlx::query("DELETE FROM broker_messages WHERE id = $1 AND attempts = $2")
                    .bind(row)
                    .bind(attempts)
                    .execute(&mut *tx)
                    .await?;
            }
            Settlement::RetryAfter(delay, reason) => {
                sqlx::query(
                    "UPDATE broker_messages SET due_at = $3, leased_until = 0, last_error = $4
                     WHERE id = $1 AND attempts = $2",
                )
                .bind(row)
                .bind(attempts)
                .bind(now_millis() + delay.as_millis() as i64)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
            }
            Settlement::Dead(reason) => {
                sqlx::query(
                    "UPDATE broker_messages SET queue = $3, leased_until = 0, last_error = $4, dead_at = $5
                     WHERE id = $1 AND attempts = $2",
                )
                .bind(row)
                .bind(attempts)
                .bind(dead_queue(delivery.queue))
                .bind(reason)
                .bind(now_millis())
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn consume(
        self: Arc<Self>,
        queue: &'static str,
        handler: Handler,
        stop: CancellationToken,
    ) {
        let wake = self.wake[queue].clone();
        let poll = if self.postgres {
            POLL_POSTGRES
        } else {
            POLL_SQLITE
        };
        let prefetch = usize::from(self.policy.prefetch);
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
        record_consumed(delivery.queue, &settlement);
        log_settlement(&delivery, &settlement);
        if let Err(error) = self.settle(row, &delivery, &settlement).await {
            tracing::warn!(queue = delivery.queue, message_id = %delivery.message.id, %error, "cannot settle; it will be delivered again when its lease ends");
        }
    }

    async fn renew(&self, row: i64, attempt: u32) -> Result<(), sqlx::Error> {
        let (mut tx, _turn) = self.bookkeeping().await?;
        sqlx::query("UPDATE broker_messages SET leased_until = $3 WHERE id = $1 AND attempts = $2")
            .bind(row)
            .bind(i64::from(attempt))
            .bind(now_millis() + self.policy.lease.as_millis() as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    pub async fn dead_letters(
        &self,
        queues: &[&'static str],
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        let mut letters = Vec::new();
        for queue in queues {
            let rows: Vec<DeadRow> = sqlx::query_as(
                "SELECT message_id, kind, correlation_id, attempts, last_error, dead_at
                 FROM broker_messages WHERE queue = $1 ORDER BY id",
            )
            .bind(dead_queue(queue))
            .fetch_all(&self.pool)
            .await
            .map_err(broker_error)?;
            letters.extend(rows.into_iter().map(
                |(message_id, kind, correlation_id, attempts, error, died_at)| DeadLetter {
                    queue: queue.to_string(),
                    message_id,
                    kind,
                    correlation_id,
                    attempts: attempts as u32,
                    error: error.unwrap_or_default(),
                    died_at: died_at.unwrap_or(0),
                },
            ));
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
            let done = sqlx::query(
                "UPDATE broker_messages SET queue = $1, attempts = 0, due_at = $3, leased_until = 0, dead_at = NULL
                 WHERE queue = $2 AND ($4 = '' OR message_id = $4)",
            )
            .bind(*queue)
            .bind(dead_queue(queue))
            .bind(now_millis())
            .bind(message_id.unwrap_or(""))
            .execute(&self.pool)
            .await
            .map_err(broker_error)?;
            replayed += done.rows_affected() as usize;
            if self.postgres {
                let _ = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(*queue)
                    .execute(&self.pool)
                    .await;
            }
        }
        Ok(replayed)
    }
}

pub(crate) fn log_settlement(delivery: &Delivery, settlement: &Settlement) {
    let (queue, id, correlation_id, attempt) = (
        delivery.queue,
        &delivery.message.id,
        &delivery.message.correlation_id,
        delivery.attempt,
    );
    match settlement {
        Settlement::Ack => {
            tracing::debug!(queue, message_id = %id, %correlation_id, attempt, "handled")
        }
        Settlement::RetryAfter(delay, reason) => {
            tracing::warn!(queue, message_id = %id, %correlation_id, attempt, ?delay, reason, "will retry")
        }
        Settlement::Dead(reason) => {
            tracing::error!(queue, message_id = %id, %correlation_id, attempt, reason, "dead-lettered")
        }
    }
}
