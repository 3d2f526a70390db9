//! Users' notifications: what the push service stored from the events it consumed
//! (`rsvp.*`, `email.sent`, `job.finished`), newest first.

use bakery_db::messaging::Notification;

use crate::{App, Error};

/// How many notifications the list answers.
const LIST_LIMIT: i64 = 50;

impl App {
    pub async fn notifications(&self, user_id: i64) -> Result<Vec<Notification>, Error> {
        Ok(self.db().latest_notifications(user_id, LIST_LIMIT).await?)
    }
}
