//! Events (baking classes) and RSVPs. Capacity holds under any concurrency: a seat
//! is taken by one conditional `UPDATE ... WHERE attendees < capacity`, whose row
//! lock (PostgreSQL) or write lock (SQLite) serialises the takers.

use bakery_core::calendar::{Event, EventSummary, Rsvp};

use bakery_events::{RsvpCancelled, RsvpCreated};

use crate::messaging::stage;
use crate::{CachedQuery, Database, DbError, Lsn, now_millis};

pub struct NewEvent<'a> {
    pub title: &'a str,
    pub description: &'a str,
    pub starts_at: i64,
    pub capacity: i64,
}

/// What an RSVP request came to.
pub enum RsvpOutcome {
    Created(Rsvp),
    /// The user already had one: the same RSVP again.
    Existing(Rsvp),
    Full,
    NoSuchEvent,
}

type EventRow = (i64, String, String, i64, i64, i64);
type RsvpRow = (i64, i64, String, i64, Option<i64>);

fn rsvp((id, event_id, status, created_at, confirmation_sent_at): RsvpRow) -> Rsvp {
    Rsvp {
        id,
        event_id,
        status,
        created_at,
        confirmation_sent_at,
    }
}

const RSVP_COLUMNS: &str = "id, event_id, status, created_at, confirmation_sent_at";

/// The class list.
pub static LIST_EVENTS: CachedQuery = CachedQuery::new(
    "events.list",
    "SELECT id, title, starts_at, capacity, attendees FROM events ORDER BY starts_at, id LIMIT 500",
    &["events"],
);

impl Database {
    /// Every event, soonest first (at most 500).
    pub async fn list_events(&self, after: Option<Lsn>) -> Result<Vec<EventSummary>, DbError> {
        let rows = self
            .read(after, async |pool| {
                crate::sql::query_as::<(i64, String, i64, i64, i64)>(LIST_EVENTS.sql())
                    .fetch_all(&pool)
                    .await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, title, starts_at, capacity, attendees)| EventSummary {
                id,
                title,
                starts_at,
                capacity,
                attendees,
            })
            .collect())
    }

    /// One event, with `user_id`'s RSVP when given.
    pub async fn event(
        &self,
        id: i64,
        user_id: Option<i64>,
        after: Option<Lsn>,
    ) -> Result<Option<Event>, DbError> {
        let row = self
            .read(after, async |pool| {
                crate::sql::query_as::<EventRow>(
                    "SELECT id, title, description, starts_at, capacity, attendees FROM events WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&pool)
                .await
            })
            .await?;
        let Some((id, title, description, starts_at, capacity, attendees)) = row else {
            return Ok(None);
        };
        let my_rsvp = match user_id {
            Some(user_id) => {
                self.read(after, move |pool| async move {
                    find_rsvp(&pool, id, user_id).await
                })
                .await?
            }
            None => None,
        };
        Ok(Some(Event {
            id,
            title,
            description,
            starts_at,
            capacity,
            attendees,
            my_rsvp,
        }))
    }

    pub async fn create_event(&self, new: NewEvent<'_>) -> Result<(i64, Option<Lsn>), DbError> {
        self.write(move |pool| async move {
            crate::sql::query_scalar(
                "INSERT INTO events (title, description, starts_at, capacity, attendees, created_at)
                 VALUES ($1, $2, $3, $4, 0, $5) RETURNING id",
            )
            .bind(new.title)
            .bind(new.description)
            .bind(new.starts_at)
            .bind(new.capacity)
            .bind(now_millis())
            .fetch_one(&pool)
            .await
        })
        .await
    }

    /// Takes a seat for `user_id`, once: a repeat gives back the same RSVP. A new
    /// RSVP commits with its `rsvp.created` event in the outbox.
    pub async fn rsvp(
        &self,
        event_id: i64,
        user_id: i64,
        correlation_id: &str,
    ) -> Result<(RsvpOutcome, Option<Lsn>), DbError> {
        let correlation_id = correlation_id.to_string();
        self.write(move |pool| async move {
            let mut tx = pool.begin().await?;
            // Writing first: SQLite takes its write lock here (waiting its turn) rather
            // than failing to upgrade a read lock later.
            let seated = crate::sql::query("UPDATE events SET attendees = attendees + 1 WHERE id = $1 AND attendees < capacity")
                .bind(event_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
            if seated {
                let sql = format!(
                    "INSERT INTO rsvps (event_id, user_id, status, created_at) VALUES ($1, $2, 'confirmed', $3)
                     ON CONFLICT (event_id, user_id) DO NOTHING RETURNING {RSVP_COLUMNS}"
                );
                let created: Option<RsvpRow> = crate::sql::query_as(sql)
                    .bind(event_id)
                    .bind(user_id)
                    .bind(now_millis())
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(row) = created {
                    let created = rsvp(row);
                    let event = RsvpCreated {
                        rsvp_id: created.id,
                        event_id,
                        user_id,
                        status: created.status.clone(),
                        created_at: created.created_at,
                    };
                    stage(&mut tx, &event, &correlation_id).await?;
                    tx.commit().await?;
                    return Ok(RsvpOutcome::Created(created));
                }
            }
            // No seat taken or the user already had one: tell which, reading the
            // RSVP while this transaction still holds the class's row (a cancellation
            // takes that row first, so the same user's cancellation cannot remove it
            // in between and turn "already had one" into "full"), then give the seat
            // back (rollback).
            let existing = find_rsvp(&mut *tx, event_id, user_id).await?;
            tx.rollback().await?;
            if let Some(existing) = existing {
                return Ok(RsvpOutcome::Existing(existing));
            }
            let exists: Option<i64> =
                crate::sql::query_scalar("SELECT id FROM events WHERE id = $1").bind(event_id).fetch_optional(&pool).await?;
            Ok(if exists.is_some() { RsvpOutcome::Full } else { RsvpOutcome::NoSuchEvent })
        })
        .await
    }

    /// Gives the seat back (with `rsvp.cancelled` in the outbox); false when there
    /// was no RSVP.
    pub async fn cancel_rsvp(
        &self,
        event_id: i64,
        user_id: i64,
        correlation_id: &str,
    ) -> Result<(bool, Option<Lsn>), DbError> {
        let correlation_id = correlation_id.to_string();
        self.write(move |pool| async move {
            let mut tx = pool.begin().await?;
            // The class's row first, as an RSVP takes it: a cancellation that took
            // its RSVP's row first and the class's second would deadlock with the
            // same user's RSVP (on PostgreSQL and MariaDB; SQLite takes its write
            // lock here rather than failing to upgrade a read lock later).
            crate::sql::query("UPDATE events SET attendees = attendees WHERE id = $1")
                .bind(event_id)
                .execute(&mut *tx)
                .await?;
            let removed: Option<i64> = crate::sql::query_scalar(
                "DELETE FROM rsvps WHERE event_id = $1 AND user_id = $2 RETURNING id",
            )
            .bind(event_id)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(rsvp_id) = removed {
                let event = RsvpCancelled {
                    rsvp_id,
                    event_id,
                    user_id,
                };
                stage(&mut tx, &event, &correlation_id).await?;
                crate::sql::query(
                    "UPDATE events SET attendees = attendees - 1 WHERE id = $1 AND attendees > 0",
                )
                .bind(event_id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(removed.is_some())
        })
        .await
    }

    /// The user's RSVPs, newest first.
    pub async fn rsvps_of(&self, user_id: i64, after: Option<Lsn>) -> Result<Vec<Rsvp>, DbError> {
        let rows = self
            .read(after, async |pool| {
                let sql =
                    format!("SELECT {RSVP_COLUMNS} FROM rsvps WHERE user_id = $1 ORDER BY id DESC");
                crate::sql::query_as::<RsvpRow>(sql)
                    .bind(user_id)
                    .fetch_all(&pool)
                    .await
            })
            .await?;
        Ok(rows.into_iter().map(rsvp).collect())
    }
}

async fn find_rsvp<'c>(
    target: impl crate::sql::Target<'c>,
    event_id: i64,
    user_id: i64,
) -> Result<Option<Rsvp>, sqlx::Error> {
    let sql = format!("SELECT {RSVP_COLUMNS} FROM rsvps WHERE event_id = $1 AND user_id = $2");
    let row: Option<RsvpRow> = crate::sql::query_as(sql)
        .bind(event_id)
        .bind(user_id)
        .fetch_optional(target)
        .await?;
    Ok(row.map(rsvp))
}
