//! `bakery email`: the email service. It consumes `email.rsvp` (`rsvp.created`,
//! `rsvp.cancelled`), sends the member a mail — through SMTP (`BAKERY_SMTP_URL`,
//! lettre) or, without a server, as an `.eml` file under `$BAKERY_DATA_DIR/mail/` —
//! and then publishes `email.sent` (through the outbox), which the calendar's
//! follow-up turns into the RSVP's `confirmation_sent_at`.
//!
//! Once per message: the message id is recorded as handled in the same transaction
//! that stages `email.sent`, and checked before sending, so a redelivery of a sent
//! mail is acknowledged without a second mail. (The one window left is a crash
//! between the SMTP server's `250` and that commit; the mail then carries the same
//! `Message-ID` header the second time, so the receiving side can tell.)
//! SMTP 4xx and unreachable servers are retried with backoff; 5xx is permanent and
//! goes to `dead.email.rsvp`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bakery_app::App;
use bakery_broker::{Delivery, Outcome, handler, topology};
use bakery_config::{Config, EmailConfig, Verification};
use bakery_events::{EmailSent, Incoming};
use bakery_service::{Check, Shell};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod mailer;

pub use mailer::{Mailer, SendError};

/// What the mail is about: a seat taken or given back.
struct About {
    rsvp_id: i64,
    event_id: i64,
    user_id: i64,
    cancelled: bool,
}

/// Runs the email service on `listener` (health and metrics) until `shutdown`. It
/// opens the database and the broker only: no session store, no cache.
pub async fn run(
    config: Config,
    id: &str,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mailer = Mailer::from_config(&config)?;
    let app = App::connect_uncached(&config).await?;
    // Consuming is this role's whole job: without its broker it does not start.
    app.broker().check(&config.broker).await?;
    let shell = Shell::new(id, &config.http, consumer_checks(&app))?;
    let stop = CancellationToken::new();
    let room = Arc::new(Mailroom {
        app: app.clone(),
        mailer: mailer.clone(),
        settings: config.email.clone(),
    });
    let rsvps = {
        let room = room.clone();
        handler(move |delivery: Delivery| {
            let room = room.clone();
            async move { mail(&room, delivery).await }
        })
    };
    let accounts = {
        let room = room.clone();
        handler(move |delivery: Delivery| {
            let room = room.clone();
            async move { verification_mail(&room, delivery).await }
        })
    };
    let consumers = [
        app.broker()
            .consume(topology::EMAIL_RSVP, rsvps, stop.clone()),
        app.broker()
            .consume(topology::EMAIL_ACCOUNTS, accounts, stop.clone()),
    ];
    let router = bakery_service::layered(&shell, Router::new());
    tracing::info!(id, addr = %listener.local_addr()?, mailer = mailer.describe(), broker = app.broker().engine(), "email service serving");
    let announced = app.announce("email", listener.local_addr()?);
    bakery_service::serve(&shell, router, listener, shutdown).await?;
    announced.end().await;
    stop.cancel();
    let _ = tokio::time::timeout(
        Duration::from_secs(15),
        futures::future::join_all(consumers),
    )
    .await;
    app.close().await;
    Ok(())
}

/// A consuming role's health: it needs both the database and the broker.
fn consumer_checks(app: &App) -> Vec<Check> {
    vec![
        Check::new("database", true, app.clone(), |app| async move {
            app.database_up().await
        }),
        Check::new("broker", true, app.broker().clone(), |broker| async move {
            broker.is_up().await
        }),
    ]
}

/// What the handlers share.
struct Mailroom {
    app: App,
    mailer: Mailer,
    settings: EmailConfig,
}

/// Handles one `rsvp.*` event: at most one mail per message, only to a verified
/// address (unless verification is off), and at most the user's hourly budget.
async fn mail(room: &Mailroom, delivery: Delivery) -> Outcome {
    let (app, mailer) = (&room.app, &room.mailer);
    let message = &delivery.message;
    let event = match message.event() {
        Ok(Incoming::RsvpCreated(e)) => About {
            rsvp_id: e.rsvp_id,
            event_id: e.event_id,
            user_id: e.user_id,
            cancelled: false,
        },
        Ok(Incoming::RsvpCancelled(e)) => About {
            rsvp_id: e.rsvp_id,
            event_id: e.event_id,
            user_id: e.user_id,
            cancelled: true,
        },
        Ok(other) => return Outcome::Dead(format!("not an RSVP event: {other:?}")),
        Err(e) => return Outcome::Dead(e.to_string()),
    };
    match app.mail_already_sent(&message.id).await {
        Ok(true) => return Outcome::Ack, // sent before: a redelivery
        Ok(false) => {}
        Err(e) => return Outcome::Retry(e.to_string()),
    }
    let details = match app.rsvp_mail(event.user_id, event.event_id).await {
        Ok(Some(details)) => details,
        Ok(None) => {
            tracing::info!(kind = %message.kind, "the member or the class is gone; nothing to send");
            return Outcome::Ack;
        }
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let bakery_app::mail::RsvpMail {
        username,
        address,
        verified,
        title,
        starts_at,
    } = details;
    // Mail goes only where its owner asked for it, and not without end: the RSVP
    // and its push notification happen either way.
    let why_not = if !verified && room.settings.verification == Verification::Required {
        Some("the address is not verified")
    } else {
        match app
            .reserve_mail(
                &message.id,
                event.user_id,
                room.settings.max_per_user_per_hour,
            )
            .await
        {
            Ok(true) => None,
            Ok(false) => Some("the user's mail budget for the hour is spent"),
            Err(e) => return Outcome::Retry(e.to_string()),
        }
    };
    if let Some(why) = why_not {
        tracing::info!(kind = %message.kind, rsvp_id = event.rsvp_id, why, "no mail");
        return match app.mail_handled(&message.id).await {
            Ok(_) => Outcome::Ack,
            Err(e) => Outcome::Retry(e.to_string()),
        };
    }
    let letter = mailer::Letter {
        message_id: &message.id,
        to_name: &username,
        to_address: &address,
        subject: &subject(event.cancelled, &title),
        body: &body(event.cancelled, &username, &title, starts_at),
    };
    match mailer.send(&letter).await {
        Ok(()) => {}
        Err(SendError::Permanent(reason)) => return Outcome::Dead(reason),
        Err(SendError::Transient(reason)) => return Outcome::Retry(reason),
    }
    tracing::info!(kind = %message.kind, rsvp_id = event.rsvp_id, to = %address, "mail sent");
    let sent = EmailSent {
        about: message.kind.clone(),
        rsvp_id: event.rsvp_id,
        event_id: event.event_id,
        user_id: event.user_id,
        sent_at: bakery_core::now_millis(),
    };
    // The mail is out: recording it must not fail into a redelivery (a second mail),
    // so it is retried here for a while first.
    let mut pause = Duration::from_millis(100);
    for _ in 0..12 {
        match app
            .mail_sent(&message.id, &message.correlation_id, sent.clone())
            .await
        {
            Ok(_) => return Outcome::Ack,
            Err(error) => {
                tracing::warn!(%error, "cannot record a sent mail yet; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
    Outcome::Retry("the mail was sent but could not be recorded".to_string())
}

/// Handles one `account.email_added`: a mail with a link that proves the address
/// (none when verification is off). A redelivery after the mail went sends none.
async fn verification_mail(room: &Mailroom, delivery: Delivery) -> Outcome {
    let (app, message) = (&room.app, &delivery.message);
    let added = match message.event() {
        Ok(Incoming::EmailAdded(added)) => added,
        Ok(other) => return Outcome::Dead(format!("not an account.email_added: {other:?}")),
        Err(e) => return Outcome::Dead(e.to_string()),
    };
    if room.settings.verification == Verification::Off {
        return Outcome::Ack;
    }
    match app.mail_already_sent(&message.id).await {
        Ok(true) => return Outcome::Ack,
        Ok(false) => {}
        Err(e) => return Outcome::Retry(e.to_string()),
    }
    let token = match app
        .issue_email_token(added.user_id, &added.email, room.settings.verification_ttl)
        .await
    {
        Ok(Some(token)) => token,
        Ok(None) => {
            tracing::info!(
                user_id = added.user_id,
                "the address changed since; nothing to verify"
            );
            return Outcome::Ack;
        }
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let link = format!(
        "{}/verify-email?token={token}",
        room.settings
            .public_url
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('/')
    );
    let body = format!(
        "Hello,\n\nplease confirm that this address is yours by opening this link:\n\n{link}\n\nIt works once, for {} hours. If you did not sign up at the bakery, ignore this mail.\n\nThe bakery\n",
        room.settings.verification_ttl.as_secs() / 3600
    );
    let letter = mailer::Letter {
        message_id: &message.id,
        to_name: "",
        to_address: &added.email,
        subject: "Confirm your email address",
        body: &body,
    };
    match room.mailer.send(&letter).await {
        Ok(()) => {}
        Err(SendError::Permanent(reason)) => return Outcome::Dead(reason),
        Err(SendError::Transient(reason)) => return Outcome::Retry(reason),
    }
    tracing::info!(user_id = added.user_id, "verification mail sent");
    match app.mail_handled(&message.id).await {
        Ok(_) => Outcome::Ack,
        Err(e) => Outcome::Retry(e.to_string()),
    }
}

fn subject(cancelled: bool, title: &str) -> String {
    if cancelled {
        format!("Cancelled: {title}")
    } else {
        format!("You're in: {title}")
    }
}

fn body(cancelled: bool, username: &str, title: &str, starts_at: i64) -> String {
    let when = bakery_core::clock::to_rfc3339(starts_at);
    if cancelled {
        format!(
            "Hello {username},\n\nyour seat in \"{title}\" ({when}) is given back. We hope to bake with you another time.\n\nThe bakery\n"
        )
    } else {
        format!(
            "Hello {username},\n\nyou have a seat in \"{title}\", starting {when}. Bring an apron.\n\nThe bakery\n"
        )
    }
}
