//! The calendar: baking classes and RSVPs. Capacity is kept by the database (see
//! `db::calendar`); the class list is a cached query, stale after any seat changes.

use bakery_broker::{Delivery, Outcome, handler, topology};
use bakery_core::User;
use bakery_core::calendar::{self, Event, EventSummary, Rsvp};
use bakery_db::Lsn;
use bakery_db::calendar::{LIST_EVENTS, NewEvent, RsvpOutcome};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{App, Error, Written};

const EVENTS: &[&str] = &["events"];

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EventDraft {
    #[schema(min_length = 1)]
    pub title: String,
    #[serde(default)]
    #[schema(max_length = 10000)]
    pub description: String,
    #[schema(format = DateTime)]
    pub starts_at: String,
    #[schema(minimum = 1, maximum = 100000)]
    pub capacity: i64,
}

/// An RSVP taken now, or the one the user already had.
#[derive(Debug)]
pub enum Rsvped {
    Created(Rsvp),
    Existing(Rsvp),
}

impl App {
    pub async fn events(&self, reader: Option<Lsn>) -> Result<Vec<EventSummary>, Error> {
        let run = self.db().list_events(self.fill_position(reader));
        self.cached_query(&LIST_EVENTS, &(), run).await
    }

    /// One event, with `viewer`'s RSVP when given.
    pub async fn event(
        &self,
        id: i64,
        viewer: Option<i64>,
        reader: Option<Lsn>,
    ) -> Result<Event, Error> {
        self.db()
            .event(id, viewer, reader)
            .await?
            .ok_or(Error::NotFound)
    }

    pub async fn rsvps_of(&self, user_id: i64, reader: Option<Lsn>) -> Result<Vec<Rsvp>, Error> {
        Ok(self.db().rsvps_of(user_id, reader).await?)
    }

    pub async fn create_event(
        &self,
        actor: &User,
        draft: EventDraft,
    ) -> Result<Written<Event>, Error> {
        self.require_admin(actor).await?;
        let title = calendar::event_title(&draft.title)?;
        let description = calendar::event_description(&draft.description)?;
        let starts_at = bakery_core::clock::parse_rfc3339(&draft.starts_at)?;
        let capacity = calendar::capacity(draft.capacity)?;
        let app = self.clone();
        self.unit(async move {
            let new = NewEvent {
                title: &title,
                description: &description,
                starts_at,
                capacity,
            };
            let (id, lsn) = app.db().create_event(new).await?;
            app.tables_changed(EVENTS).await;
            let event = app.event(id, None, Some(Lsn::LATEST)).await?;
            Ok(Written { value: event, lsn })
        })
        .await
    }

    /// Takes a seat for `actor`, once: a repeat gives back the same RSVP.
    pub async fn rsvp(&self, actor: &User, event_id: i64) -> Result<Written<Rsvped>, Error> {
        let (app, user_id) = (self.clone(), actor.id);
        self.unit(async move {
            let correlation = bakery_telemetry::correlation_id();
            let (outcome, lsn) = app.db().rsvp(event_id, user_id, &correlation).await?;
            let value = match outcome {
                RsvpOutcome::Created(rsvp) => {
                    app.tables_changed(EVENTS).await;
                    Rsvped::Created(rsvp)
                }
                RsvpOutcome::Existing(rsvp) => Rsvped::Existing(rsvp),
                RsvpOutcome::Full => {
                    return Err(Error::Conflict {
                        code: "event_full",
                        message: "every seat of this class is taken",
                    });
                }
                RsvpOutcome::NoSuchEvent => return Err(Error::NotFound),
            };
            Ok(Written { value, lsn })
        })
        .await
    }

    /// Gives `actor`'s seat back; `false` when they had none (nothing changes then).
    pub async fn cancel_rsvp(&self, actor: &User, event_id: i64) -> Result<Written<bool>, Error> {
        let (app, user_id) = (self.clone(), actor.id);
        self.unit(async move {
            let correlation = bakery_telemetry::correlation_id();
            let (cancelled, lsn) = app
                .db()
                .cancel_rsvp(event_id, user_id, &correlation)
                .await?;
            if cancelled {
                app.tables_changed(EVENTS).await;
            }
            Ok(Written {
                value: cancelled,
                lsn,
            })
        })
        .await
    }
}

/// The follow-up consumer's name in `handled_messages`.
const FOLLOWUPS: &str = "calendar.followups";

impl App {
    /// Consumes `calendar.followups`: an `email.sent` about an `rsvp.created` sets
    /// the RSVP's `confirmation_sent_at`, once per message.
    pub fn follow_up_emails(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let app = self.clone();
        let handler = handler(move |delivery: Delivery| {
            let app = app.clone();
            async move { app.follow_up(delivery).await }
        });
        self.broker()
            .consume(topology::CALENDAR_FOLLOWUPS, handler, stop)
    }

    async fn follow_up(&self, delivery: Delivery) -> Outcome {
        let message = &delivery.message;
        let sent = match message.event() {
            Ok(bakery_events::Incoming::EmailSent(sent)) => sent,
            Ok(other) => return Outcome::Dead(format!("not an email.sent: {other:?}")),
            Err(e) => return Outcome::Dead(e.to_string()),
        };
        if !sent.confirms_a_seat() {
            return Outcome::Ack;
        }
        match self
            .db()
            .confirmation_sent(FOLLOWUPS, &message.id, sent.rsvp_id, sent.sent_at)
            .await
        {
            Ok(first) => {
                tracing::info!(rsvp_id = sent.rsvp_id, first, "confirmation recorded");
                Outcome::Ack
            }
            Err(e) => Outcome::Retry(e.to_string()),
        }
    }
}
