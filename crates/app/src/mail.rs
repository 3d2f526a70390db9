//! What the email service asks of the application: whether a message was mailed
//! already, what a mail about an RSVP needs, and the record of a sent mail with its
//! `email.sent` follow-up (one unit: the relay is kicked for it at once).

use bakery_events::EmailSent;

use crate::{App, Error};

/// The email service's name in `handled_messages`.
const CONSUMER: &str = "email";

/// What a mail about a class needs to say.
pub struct RsvpMail {
    pub username: String,
    pub address: String,
    pub title: String,
    pub starts_at: i64,
}

impl App {
    /// Whether the mail for `message_id` was sent (and recorded) before.
    pub async fn mail_already_sent(&self, message_id: &str) -> Result<bool, Error> {
        Ok(self.db().handled(CONSUMER, message_id).await?)
    }

    /// The member and the class a mail is about; `None` when either is gone.
    pub async fn rsvp_mail(&self, user_id: i64, event_id: i64) -> Result<Option<RsvpMail>, Error> {
        let details = self.db().mail_details(user_id, event_id).await?;
        Ok(
            details.map(|(username, address, title, starts_at)| RsvpMail {
                username,
                address,
                title,
                starts_at,
            }),
        )
    }

    /// Records that the mail for `message_id` was sent, with its `email.sent`
    /// follow-up, in one transaction; false when it was recorded before.
    pub async fn mail_sent(
        &self,
        message_id: &str,
        correlation_id: &str,
        sent: EmailSent,
    ) -> Result<bool, Error> {
        let (app, message_id, correlation_id) = (
            self.clone(),
            message_id.to_string(),
            correlation_id.to_string(),
        );
        self.unit(async move {
            Ok(app
                .db()
                .handled_with_follow_up(CONSUMER, &message_id, &correlation_id, &sent)
                .await?)
        })
        .await
    }
}
