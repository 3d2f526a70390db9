//! The database's side of messaging: the outbox (an event commits in the same
//! transaction as the write that caused it), the ids of messages a consumer already
//! handled (recorded in the same transaction as the handler's effect, so a
//! redelivery changes nothing), and users' notifications.

use bakery_events::Event;
use serde::Serialize;
use sqlx::AnyConnection;

use crate::{Database, DbError, Dialect, now_millis};

/// An event waiting in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub exchange: String,
    pub message_id: String,
    pub correlation_id: String,
    pub kind: String,
    pub body: String,
}

type OutboxTuple = (i64, String, String, String, String, String);

/// A stored notification, as the push service streams it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Notification {
    pub id: i64,
    #[serde(skip)]
    pub user_id: i64,
    pub kind: String,
    /// JSON text; serialised as the JSON value it holds.
    #[serde(serialize_with = "raw_json")]
    #[schema(value_type = Object)]
    pub payload: String,
    #[serde(serialize_with = "bakery_core::clock::serialize_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// The request that caused it (its journey continues on the streams).
    #[serde(skip)]
    pub correlation_id: String,
}

fn raw_json<S: serde::Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
    value.serialize(s)
}

type NotificationTuple = (i64, i64, String, String, i64, String);

fn notification(
    (id, user_id, kind, payload, created_at, correlation_id): NotificationTuple,
) -> Notification {
    Notification {
        id,
        user_id,
        kind,
        payload,
        created_at,
        correlation_id,
    }
}

/// The PostgreSQL channel a notification's id is announced on at commit.
pub const NOTIFICATIONS_CHANNEL: &str = "bakery_notifications";

/// Adds an event to the outbox inside the caller's transaction: it commits with the
/// write or not at all. The unit of work that runs this learns it staged something
/// ([`crate::Trace::staged`]) and kicks its relay after the commit.
pub(crate) async fn stage(
    conn: &mut AnyConnection,
    event: &impl Event,
    correlation_id: &str,
) -> Result<(), sqlx::Error> {
    stage_for(conn, event, &[correlation_id]).await
}

/// [`stage`] for a message that serves several requests (the jobs of a group
/// commit): it carries the first one's correlation id, and each request's journey
/// records the staging.
pub(crate) async fn stage_for(
    conn: &mut AnyConnection,
    event: &impl Event,
    correlation_ids: &[&str],
) -> Result<(), sqlx::Error> {
    Staging::of(event, correlation_ids).write(conn).await
}

/// An event's outbox row and the journey hops of the requests it serves, ready to
/// be written: alone ([`Staging::write`]) or as part of a larger statement
/// ([`Staging::texts`], [`Staging::bind`]).
pub(crate) struct Staging {
    exchange: &'static str,
    message_id: String,
    correlation_id: String,
    routing_key: String,
    body: String,
    created_at: i64,
    hops: Vec<bakery_telemetry::journey::Noted>,
}

/// Values of one outbox row.
const OUTBOX_VALUES: usize = 6;

impl Staging {
    pub(crate) fn of(event: &impl Event, correlation_ids: &[&str]) -> Self {
        let message = bakery_events::encode(event);
        let message_id = format!("{:032x}", rand::random::<u128>());
        let hops = crate::journey::hops(
            correlation_ids,
            &format!(
                "wrote on the primary; {} staged in the outbox",
                message.routing_key
            ),
            &serde_json::json!({"message_id": message_id, "kind": message.routing_key, "exchange": message.exchange}),
        );
        Self {
            exchange: message.exchange,
            message_id,
            correlation_id: correlation_ids
                .first()
                .copied()
                .unwrap_or_default()
                .to_string(),
            routing_key: message.routing_key,
            body: message.body,
            created_at: now_millis(),
            hops,
        }
    }

    /// The outbox `INSERT` and, when there are hops, the journey's, their values
    /// numbered from `$first`; the number after the last.
    pub(crate) fn texts(&self, first: usize) -> (Vec<String>, usize) {
        let outbox = format!(
            "INSERT INTO outbox (exchange, message_id, correlation_id, kind, body, created_at)
             VALUES {}",
            crate::sql::value_rows(1, first, OUTBOX_VALUES, "")
        );
        let mut texts = vec![outbox];
        let next = first + OUTBOX_VALUES;
        if self.hops.is_empty() {
            return (texts, next);
        }
        texts.push(crate::journey::insert_text(self.hops.len(), next));
        (texts, next + 5 * self.hops.len())
    }

    /// Binds the values of [`Staging::texts`], in order, after those bound so far.
    pub(crate) fn bind(self, query: crate::sql::Query) -> crate::sql::Query {
        let query = query
            .bind(self.exchange)
            .bind(self.message_id)
            .bind(self.correlation_id)
            .bind(self.routing_key)
            .bind(self.body)
            .bind(self.created_at);
        crate::journey::bind(query, &self.hops)
    }

    /// Writes the row and its hops inside the caller's transaction: PostgreSQL in
    /// one statement (a round trip fewer for every write that stages an event), the
    /// others in two.
    pub(crate) async fn write(mut self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        let postgres = crate::Dialect::of_backend(conn.backend_name()) == crate::Dialect::Postgres;
        let (mut texts, _) = self.texts(1);
        if postgres || self.hops.is_empty() {
            self.bind(crate::sql::query(crate::sql::one_statement(texts)))
                .execute(&mut *conn)
                .await?;
        } else {
            let hops = std::mem::take(&mut self.hops);
            self.bind(crate::sql::query(texts.swap_remove(0)))
                .execute(&mut *conn)
                .await?;
            crate::journey::note_in(conn, &hops).await?;
        }
        crate::replica::note_staged();
        Ok(())
    }
}

/// Records that `consumer` handled `message_id`; false when it already had.
async fn first_handling(
    conn: &mut AnyConnection,
    consumer: &str,
    message_id: &str,
) -> Result<bool, sqlx::Error> {
    Ok(crate::sql::query(
        "INSERT INTO handled_messages (consumer, message_id, handled_at) VALUES ($1, $2, $3)
         ON CONFLICT (consumer, message_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(message_id)
    .bind(now_millis())
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}

impl Database {
    /// Takes up to `limit` outbox rows for `lease_ms` (no other relay takes them
    /// meanwhile), the oldest first; only rows committed before `created_before`.
    pub async fn claim_outbox(
        &self,
        created_before: i64,
        limit: i64,
        lease_ms: i64,
    ) -> Result<Vec<OutboxRow>, DbError> {
        let now = now_millis();
        let mut rows: Vec<OutboxTuple> = match self.dialect() {
            Dialect::MariaDb => {
                // No UPDATE ... RETURNING: the rows are locked, changed and read back.
                let mut tx = self.primary().begin().await?;
                let ids: Vec<i64> = crate::sql::query_scalar(
                    "SELECT id FROM outbox WHERE claimed_until <= $1 AND created_at <= $2
                     ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
                )
                .bind(now)
                .bind(created_before)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                let rows = if ids.is_empty() {
                    Vec::new()
                } else {
                    crate::sql::query(format!(
                        "UPDATE outbox SET claimed_until = $1 WHERE id IN ({})",
                        crate::sql::placeholders(2, ids.len())
                    ))
                    .bind(now + lease_ms)
                    .bind_all(&ids)
                    .execute(&mut *tx)
                    .await?;
                    crate::sql::query_as(format!(
                        "SELECT id, exchange, message_id, correlation_id, kind, body FROM outbox WHERE id IN ({})",
                        crate::sql::placeholders(1, ids.len())
                    ))
                    .bind_all(&ids)
                    .fetch_all(&mut *tx)
                    .await?
                };
                tx.commit().await?;
                rows
            }
            dialect => {
                let skip_locked = if dialect == Dialect::Postgres {
                    " FOR UPDATE SKIP LOCKED"
                } else {
                    ""
                };
                let sql = format!(
                    "UPDATE outbox SET claimed_until = $1
                     WHERE id IN (SELECT id FROM outbox WHERE claimed_until <= $2 AND created_at <= $3
                                  ORDER BY id LIMIT $4{skip_locked})
                       AND claimed_until <= $2
                     RETURNING id, exchange, message_id, correlation_id, kind, body"
                );
                crate::sql::query_as(sql)
                    .bind(now + lease_ms)
                    .bind(now)
                    .bind(created_before)
                    .bind(limit)
                    .fetch_all(self.primary())
                    .await?
            }
        };
        rows.sort_by_key(|row| row.0);
        Ok(rows
            .into_iter()
            .map(
                |(id, exchange, message_id, correlation_id, kind, body)| OutboxRow {
                    id,
                    exchange,
                    message_id,
                    correlation_id,
                    kind,
                    body,
                },
            )
            .collect())
    }

    /// The broker confirmed these rows' messages: they leave the outbox, in one
    /// statement.
    pub async fn outbox_sent_many(&self, ids: &[i64]) -> Result<(), DbError> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "DELETE FROM outbox WHERE id IN ({})",
            crate::sql::placeholders(1, ids.len())
        );
        crate::sql::query(sql)
            .bind_all(ids)
            .execute(self.primary())
            .await?;
        Ok(())
    }

    /// Gives a claimed row back (its publish failed) for the next relay pass.
    pub async fn release_outbox(&self, id: i64) -> Result<(), DbError> {
        crate::sql::query("UPDATE outbox SET claimed_until = 0 WHERE id = $1")
            .bind(id)
            .execute(self.primary())
            .await?;
        Ok(())
    }

    /// Whether `consumer` has handled `message_id` already.
    pub async fn handled(&self, consumer: &str, message_id: &str) -> Result<bool, DbError> {
        let found: Option<i64> = crate::sql::query_scalar(
            "SELECT 1 FROM handled_messages WHERE consumer = $1 AND message_id = $2",
        )
        .bind(consumer)
        .bind(message_id)
        .fetch_optional(self.primary())
        .await?;
        Ok(found.is_some())
    }

    /// Marks `message_id` handled by `consumer`; false when it was before.
    pub async fn mark_handled(&self, consumer: &str, message_id: &str) -> Result<bool, DbError> {
        let mut conn = self.primary().acquire().await?;
        Ok(first_handling(&mut conn, consumer, message_id).await?)
    }

    /// Marks `message_id` handled by `consumer` and stages `follow_up` in one
    /// transaction; false (and nothing staged) when it was handled before.
    pub async fn handled_with_follow_up(
        &self,
        consumer: &str,
        message_id: &str,
        correlation_id: &str,
        follow_up: &impl Event,
    ) -> Result<bool, DbError> {
        let mut tx = self.primary().begin().await?;
        if !first_handling(&mut tx, consumer, message_id).await? {
            return Ok(false);
        }
        stage(&mut tx, follow_up, correlation_id).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The follow-up of a sent confirmation: sets the RSVP's `confirmation_sent_at`
    /// (first time only) and records the message, in one transaction. False when
    /// the message was handled before.
    pub async fn confirmation_sent(
        &self,
        consumer: &str,
        message_id: &str,
        rsvp_id: i64,
        sent_at: i64,
    ) -> Result<bool, DbError> {
        let mut tx = self.primary().begin().await?;
        if !first_handling(&mut tx, consumer, message_id).await? {
            return Ok(false);
        }
        crate::sql::query(
            "UPDATE rsvps SET confirmation_sent_at = $1 WHERE id = $2 AND confirmation_sent_at IS NULL",
        )
        .bind(sent_at)
        .bind(rsvp_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// What a mail about `event_id` to `user_id` needs: (username, email, whether
    /// it is verified, event title, event start); `None` when either is gone.
    pub async fn mail_details(
        &self,
        user_id: i64,
        event_id: i64,
    ) -> Result<Option<(String, String, i64, String, i64)>, DbError> {
        Ok(crate::sql::query_as(
            "SELECT u.username, u.email, u.email_verified, e.title, e.starts_at FROM users u, events e
             WHERE u.id = $1 AND e.id = $2",
        )
        .bind(user_id)
        .bind(event_id)
        .fetch_optional(self.primary())
        .await?)
    }

    /// Stores a notification once per message (a redelivery stores nothing) and
    /// answers its id, or `None` when it was stored before or the user is gone.
    /// Ids commit in order (the table is locked for the insert on PostgreSQL; SQLite
    /// has one writer), so readers may follow the table by id without gaps.
    pub async fn store_notification(
        &self,
        message_id: &str,
        correlation_id: &str,
        user_id: i64,
        kind: &str,
        payload: &str,
    ) -> Result<Option<i64>, DbError> {
        let mut conn = self.primary().acquire().await?;
        if self.dialect() == Dialect::MariaDb {
            // Held past the commit (released below), as PostgreSQL's table lock is.
            crate::sql::query("SELECT GET_LOCK('bakery.notifications', 10)")
                .execute(&mut *conn)
                .await?;
        }
        let stored: Result<Option<i64>, DbError> = async {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            if self.is_postgres() {
                crate::sql::query("LOCK TABLE notifications IN SHARE ROW EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
            }
            let id: Option<i64> = crate::sql::query_scalar(
                "INSERT INTO notifications (user_id, kind, payload, message_id, created_at, correlation_id)
                 SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM users WHERE id = $1)
                 ON CONFLICT (message_id) DO NOTHING RETURNING id",
            )
            .bind(user_id)
            .bind(kind)
            .bind(payload)
            .bind(message_id)
            .bind(now_millis())
            .bind(correlation_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let (Some(id), true) = (id, self.is_postgres()) {
                crate::sql::query("SELECT pg_notify($1, $2)")
                    .bind(NOTIFICATIONS_CHANNEL)
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(id)
        }
        .await;
        if self.dialect() == Dialect::MariaDb {
            // Whatever happened: the connection goes back to the pool without it.
            crate::sql::query("SELECT RELEASE_LOCK('bakery.notifications')")
                .execute(&mut *conn)
                .await?;
        }
        stored
    }

    /// Notifications stored after `after_id`, of every user, oldest first.
    pub async fn notifications_after(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<Notification>, DbError> {
        let rows: Vec<NotificationTuple> = crate::sql::query_as(
            "SELECT id, user_id, kind, payload, created_at, correlation_id FROM notifications
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after_id)
        .bind(limit)
        .fetch_all(self.primary())
        .await?;
        Ok(rows.into_iter().map(notification).collect())
    }

    /// `user_id`'s notifications after `after_id`, oldest first.
    pub async fn notifications_of(
        &self,
        user_id: i64,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<Notification>, DbError> {
        let rows: Vec<NotificationTuple> = crate::sql::query_as(
            "SELECT id, user_id, kind, payload, created_at, correlation_id FROM notifications
             WHERE user_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(user_id)
        .bind(after_id)
        .bind(limit)
        .fetch_all(self.primary())
        .await?;
        Ok(rows.into_iter().map(notification).collect())
    }

    /// `user_id`'s newest notifications, newest first.
    pub async fn latest_notifications(
        &self,
        user_id: i64,
        limit: i64,
    ) -> Result<Vec<Notification>, DbError> {
        let rows: Vec<NotificationTuple> = crate::sql::query_as(
            "SELECT id, user_id, kind, payload, created_at, correlation_id FROM notifications
             WHERE user_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(user_id)
        .bind(limit)
        .fetch_all(self.primary())
        .await?;
        Ok(rows.into_iter().map(notification).collect())
    }

    /// The newest notification id (0 when none): where a fresh follower starts.
    pub async fn last_notification_id(&self) -> Result<i64, DbError> {
        let id: Option<i64> = crate::sql::query_scalar("SELECT MAX(id) FROM notifications")
            .fetch_one(self.primary())
            .await?;
        Ok(id.unwrap_or(0))
    }
}
