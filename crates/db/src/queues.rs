//! The embedded broker's table, `broker_messages`: its SQL, here with the rest of
//! the schema's; the broker (`bakery_broker::embedded`) decides when to call what.
//!
//! A delivery is a lease: a claim sets `leased_until` and counts an attempt; an ack
//! deletes the row, a retry moves `due_at` ahead, a dead letter moves the row to
//! `dead.<queue>`. Every settlement names the attempt it settles, so a lease that ran
//! out and went to another consumer is that consumer's to settle.

use sqlx::AnyPool;
use tokio::sync::{Mutex, MutexGuard};

use crate::{Database, DbError, Dialect, now_millis};

/// The PostgreSQL channel a queue's name is announced on when it gets a message.
pub const QUEUES_CHANNEL: &str = "bakery_broker";

/// A message as it is queued.
pub struct Enqueued<'a> {
    pub message_id: &'a str,
    pub correlation_id: &'a str,
    pub kind: &'a str,
    pub body: &'a str,
}

/// A claimed message: its row, and the attempt this claim is.
#[derive(Debug)]
pub struct Claimed {
    pub row: i64,
    pub message_id: String,
    pub correlation_id: String,
    pub kind: String,
    pub body: String,
    pub attempt: i64,
}

/// A message in a dead-letter queue.
#[derive(Debug)]
pub struct Dead {
    pub message_id: String,
    pub kind: String,
    pub correlation_id: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub dead_at: Option<i64>,
}

/// How a delivery ends.
pub enum Settle<'a> {
    Ack,
    /// Due again at `due_at`.
    RetryAt {
        due_at: i64,
        reason: &'a str,
    },
    /// To the dead-letter queue `dead_queue`.
    Dead {
        dead_queue: &'a str,
        reason: &'a str,
    },
}

/// The queues' rows, for one process.
pub struct Queues {
    pool: AnyPool,
    dialect: Dialect,
    /// SQLite: this process's queue writes take turns here rather than in SQLite's
    /// busy handler, which sleeps between tries and wastes most of the time under
    /// contention. (Other processes still contend, much less.)
    sqlite_writer: Mutex<()>,
}

type ClaimedRow = (i64, String, String, String, String, i64);
type DeadRow = (String, String, String, i64, Option<String>, Option<i64>);

impl Database {
    /// The embedded broker's queues in this database.
    pub fn queues(&self) -> Queues {
        Queues {
            pool: self.primary().clone(),
            dialect: self.dialect(),
            sqlite_writer: Mutex::new(()),
        }
    }
}

impl Queues {
    /// SQLite: this process's turn to write (see `sqlite_writer`); PostgreSQL needs none.
    async fn writer_turn(&self) -> Option<MutexGuard<'_, ()>> {
        if self.dialect == Dialect::Sqlite {
            Some(self.sqlite_writer.lock().await)
        } else {
            None
        }
    }

    /// A transaction for the broker's bookkeeping (claims, acks, retries): on
    /// PostgreSQL committed without waiting for the WAL flush — losing one in a crash
    /// only delivers a message again, which consumers tolerate anyway — and on SQLite
    /// taken in turn with this process's other queue writes.
    async fn bookkeeping(
        &self,
    ) -> Result<
        (
            sqlx::Transaction<'static, sqlx::Any>,
            Option<MutexGuard<'_, ()>>,
        ),
        sqlx::Error,
    > {
        let turn = self.writer_turn().await;
        let mut tx = self.pool.begin().await?;
        if self.dialect == Dialect::Postgres {
            crate::sql::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }
        Ok((tx, turn))
    }

    /// Whether the database answers within a second.
    pub async fn is_up(&self) -> bool {
        let ping = crate::sql::query("SELECT 1").execute(&self.pool);
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(1), ping).await,
            Ok(Ok(_))
        )
    }

    /// Queues `message` on each of `queues`, in one durable commit (it must survive a
    /// crash); the same message queued twice (a relay retrying) is queued once.
    pub async fn enqueue(&self, queues: &[&str], message: &Enqueued<'_>) -> Result<(), DbError> {
        let now = now_millis();
        let _turn = self.writer_turn().await;
        let mut tx = self.pool.begin().await?;
        for queue in queues {
            crate::sql::query(
                "INSERT INTO broker_messages (queue, message_id, correlation_id, kind, body, due_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (queue, message_id) DO NOTHING",
            )
            .bind(*queue)
            .bind(message.message_id)
            .bind(message.correlation_id)
            .bind(message.kind)
            .bind(message.body)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// PostgreSQL: tells every listening process that `queue` has a message. Sent
    /// after the commit in a transaction of its own: a NOTIFY in the publishing
    /// transaction would serialise every publisher's commit on PostgreSQL's
    /// notification lock. Lost in a crash, it costs a poll. SQLite: nothing.
    pub async fn announce(&self, queue: &str) {
        if self.dialect == Dialect::Postgres {
            let _ = crate::sql::query("SELECT pg_notify($1, $2)")
                .bind(QUEUES_CHANNEL)
                .bind(queue)
                .execute(&self.pool)
                .await;
        }
    }

    /// Leases up to `limit` ready messages of `queue` until `leased_until`, oldest
    /// first, each claim counting an attempt.
    pub async fn claim(
        &self,
        queue: &str,
        limit: usize,
        leased_until: i64,
    ) -> Result<Vec<Claimed>, DbError> {
        let now = now_millis();
        // A read first: idle polling must not take SQLite's write lock.
        let ready: Option<i64> = crate::sql::query_scalar(
            "SELECT id FROM broker_messages WHERE queue = $1 AND due_at <= $2 AND leased_until <= $2 LIMIT 1",
        )
        .bind(queue)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if ready.is_none() {
            return Ok(Vec::new());
        }
        let (mut tx, _turn) = self.bookkeeping().await?;
        let mut rows: Vec<ClaimedRow> = if self.dialect == Dialect::MariaDb {
            // No UPDATE ... RETURNING: the rows are locked, changed and read back.
            let ids: Vec<i64> = crate::sql::query_scalar(
                "SELECT id FROM broker_messages WHERE queue = $1 AND due_at <= $2 AND leased_until <= $2
                 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
            )
            .bind(queue)
            .bind(now)
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await?;
            if ids.is_empty() {
                Vec::new()
            } else {
                crate::sql::query(format!(
                    "UPDATE broker_messages SET leased_until = $1, attempts = attempts + 1 WHERE id IN ({})",
                    crate::sql::placeholders(2, ids.len())
                ))
                .bind(leased_until)
                .bind_all(&ids)
                .execute(&mut *tx)
                .await?;
                crate::sql::query_as(format!(
                    "SELECT id, message_id, correlation_id, kind, body, attempts FROM broker_messages WHERE id IN ({})",
                    crate::sql::placeholders(1, ids.len())
                ))
                .bind_all(&ids)
                .fetch_all(&mut *tx)
                .await?
            }
        } else {
            let skip_locked = if self.dialect == Dialect::Postgres {
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
            crate::sql::query_as(sql)
                .bind(leased_until)
                .bind(queue)
                .bind(now)
                .bind(limit as i64)
                .fetch_all(&mut *tx)
                .await?
        };
        tx.commit().await?;
        rows.sort_by_key(|row| row.0);
        Ok(rows
            .into_iter()
            .map(
                |(row, message_id, correlation_id, kind, body, attempt)| Claimed {
                    row,
                    message_id,
                    correlation_id,
                    kind,
                    body,
                    attempt,
                },
            )
            .collect())
    }

    /// Ends the delivery of `row` claimed as `attempt`.
    pub async fn settle(&self, row: i64, attempt: i64, how: Settle<'_>) -> Result<(), DbError> {
        let (mut tx, _turn) = self.bookkeeping().await?;
        match how {
            Settle::Ack => {
                crate::sql::query("DELETE FROM broker_messages WHERE id = $1 AND attempts = $2")
                    .bind(row)
                    .bind(attempt)
                    .execute(&mut *tx)
                    .await?;
            }
            Settle::RetryAt { due_at, reason } => {
                crate::sql::query(
                    "UPDATE broker_messages SET due_at = $3, leased_until = 0, last_error = $4
                     WHERE id = $1 AND attempts = $2",
                )
                .bind(row)
                .bind(attempt)
                .bind(due_at)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
            }
            Settle::Dead { dead_queue, reason } => {
                crate::sql::query(
                    "UPDATE broker_messages SET queue = $3, leased_until = 0, last_error = $4, dead_at = $5
                     WHERE id = $1 AND attempts = $2",
                )
                .bind(row)
                .bind(attempt)
                .bind(dead_queue)
                .bind(reason)
                .bind(now_millis())
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Extends the lease of `row` claimed as `attempt` to `leased_until`.
    pub async fn renew(&self, row: i64, attempt: i64, leased_until: i64) -> Result<(), DbError> {
        let (mut tx, _turn) = self.bookkeeping().await?;
        crate::sql::query(
            "UPDATE broker_messages SET leased_until = $3 WHERE id = $1 AND attempts = $2",
        )
        .bind(row)
        .bind(attempt)
        .bind(leased_until)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The messages in the dead-letter queue `dead_queue`, oldest first.
    /// Messages per queue (dead-letter queues included, by their own name): ready
    /// (due now or later, not leased) and leased (being handled).
    pub async fn depths(&self) -> Result<Vec<(String, i64, i64)>, DbError> {
        Ok(crate::sql::query_as(
            "SELECT queue,
                    CAST(SUM(CASE WHEN leased_until <= $1 THEN 1 ELSE 0 END) AS BIGINT),
                    CAST(SUM(CASE WHEN leased_until > $1 THEN 1 ELSE 0 END) AS BIGINT)
             FROM broker_messages GROUP BY queue",
        )
        .bind(now_millis())
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn dead(&self, dead_queue: &str) -> Result<Vec<Dead>, DbError> {
        let rows: Vec<DeadRow> = crate::sql::query_as(
            "SELECT message_id, kind, correlation_id, attempts, last_error, dead_at
             FROM broker_messages WHERE queue = $1 ORDER BY id",
        )
        .bind(dead_queue)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(message_id, kind, correlation_id, attempts, last_error, dead_at)| Dead {
                    message_id,
                    kind,
                    correlation_id,
                    attempts,
                    last_error,
                    dead_at,
                },
            )
            .collect())
    }

    /// Moves dead letters of `dead_queue` (all, or the one `message_id`) back to
    /// `queue` as new, due now; how many.
    pub async fn replay(
        &self,
        queue: &str,
        dead_queue: &str,
        message_id: Option<&str>,
    ) -> Result<usize, DbError> {
        let done = crate::sql::query(
            "UPDATE broker_messages SET queue = $1, attempts = 0, due_at = $3, leased_until = 0, dead_at = NULL
             WHERE queue = $2 AND ($4 = '' OR message_id = $4)",
        )
        .bind(queue)
        .bind(dead_queue)
        .bind(now_millis())
        .bind(message_id.unwrap_or(""))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() as usize)
    }
}
