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
    /// Whether the owner proved the address is theirs.
    pub verified: bool,
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
            details.map(|(username, address, verified, title, starts_at)| RsvpMail {
                username,
                address,
                verified: verified != 0,
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

    /// A place for the mail of `message_id` in `user_id`'s budget of `per_hour`
    /// transactional mails an hour (a repeated RSVP and cancel does not send a mail
    /// each time); false when the hour's budget is spent.
    pub async fn reserve_mail(
        &self,
        message_id: &str,
        user_id: i64,
        per_hour: u32,
    ) -> Result<bool, Error> {
        let since = bakery_core::now_millis() - 3_600_000;
        Ok(self
            .db()
            .reserve_mail(message_id, user_id, since, i64::from(per_hour))
            .await?)
    }

    /// Records that the message `message_id` was handled with no mail to follow up
    /// (a verification mail, or a mail skipped); false when it was before.
    pub async fn mail_handled(&self, message_id: &str) -> Result<bool, Error> {
        Ok(self.db().mark_handled(CONSUMER, message_id).await?)
    }

    /// A new verification token for `email` of `user_id`, valid for `ttl`; `None`
    /// when the user's address is no longer `email` (nothing to verify).
    pub async fn issue_email_token(
        &self,
        user_id: i64,
        email: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<String>, Error> {
        let token = new_token();
        let expires_at = bakery_core::now_millis() + ttl.as_millis() as i64;
        let stored = self
            .db()
            .store_email_token(&token, user_id, email, expires_at)
            .await?;
        Ok(stored.then_some(token))
    }
}

/// 256 random bits, base64url without padding: letters, digits, `-` and `_`.
fn new_token() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}
