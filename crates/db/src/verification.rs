//! Verified addresses: the tokens of verification mails (stored as digests) and
//! the record of transactional mail sent to each user (its per-user budget).

use sha2::{Digest, Sha256};

use crate::{Database, DbError, now_millis};

fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a token verified: the user and the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user_id: i64,
    pub email: String,
}

impl Database {
    /// Keeps `token` (as its digest) as proof of `email` for `user_id` until
    /// `expires_at`; false when the user's address is no longer `email` (a newer
    /// change asked for another mail).
    pub async fn store_email_token(
        &self,
        token: &str,
        user_id: i64,
        email: &str,
        expires_at: i64,
    ) -> Result<bool, DbError> {
        let stored = crate::sql::query(
            "INSERT INTO email_tokens (token_digest, user_id, email, expires_at)
             SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM users WHERE id = $2 AND email = $3)",
        )
        .bind(digest(token))
        .bind(user_id)
        .bind(email)
        .bind(expires_at)
        .execute(self.primary())
        .await?
        .rows_affected();
        Ok(stored > 0)
    }

    /// Uses `token`: once, before it expires, and only for the address the user
    /// has now. `None` for a token that is unknown, used, expired or stale; with
    /// the primary's position after the write.
    pub async fn use_email_token(
        &self,
        token: &str,
    ) -> Result<(Option<Verified>, Option<crate::Lsn>), DbError> {
        let now = now_millis();
        self.write(async |pool| {
            let mut tx = pool.begin().await?;
            // Then read back once it is ours (MariaDB has no UPDATE ... RETURNING).
            let done = crate::sql::query(
                "UPDATE email_tokens SET used_at = $2
                 WHERE token_digest = $1 AND used_at IS NULL AND expires_at > $2",
            )
            .bind(digest(token))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let claimed: Option<(i64, String)> = if done.rows_affected() == 0 {
                None
            } else {
                crate::sql::query_as(
                    "SELECT user_id, email FROM email_tokens WHERE token_digest = $1",
                )
                .bind(digest(token))
                .fetch_optional(&mut *tx)
                .await?
            };
            let Some((user_id, email)) = claimed else {
                return Ok(None);
            };
            let verified = crate::sql::query(
                "UPDATE users SET email_verified = 1 WHERE id = $1 AND email = $2",
            )
            .bind(user_id)
            .bind(&email)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            tx.commit().await?;
            Ok(verified.then_some(Verified { user_id, email }))
        })
        .await
    }

    /// Takes a place in `user_id`'s mail budget for the message `message_id`: at
    /// most `limit` messages since `since` (unix ms). True when the message has
    /// its place (also when it had one before: a redelivery of the same mail).
    /// Atomic across processes: SQLite's one writer, PostgreSQL's advisory lock on the
    /// user, MariaDB's lock on the user's row.
    pub async fn reserve_mail(
        &self,
        message_id: &str,
        user_id: i64,
        since: i64,
        limit: i64,
    ) -> Result<bool, DbError> {
        let dialect = self.dialect();
        let (reserved, _) = self
            .write(async |pool| {
                let mut tx = pool.begin().await?;
                let lock = match dialect {
                    crate::Dialect::Postgres => Some("SELECT pg_advisory_xact_lock($1)"),
                    crate::Dialect::MariaDb => Some("SELECT id FROM users WHERE id = $1 FOR UPDATE"),
                    crate::Dialect::Sqlite => None,
                };
                if let Some(lock) = lock {
                    crate::sql::query(lock).bind(user_id).execute(&mut *tx).await?;
                }
                crate::sql::query(
                    "INSERT INTO mail_sent (message_id, user_id, sent_at)
                     SELECT $1, $2, $3
                     WHERE (SELECT COUNT(*) FROM mail_sent WHERE user_id = $2 AND sent_at >= $4) < $5
                     ON CONFLICT (message_id) DO NOTHING",
                )
                .bind(message_id)
                .bind(user_id)
                .bind(now_millis())
                .bind(since)
                .bind(limit)
                .execute(&mut *tx)
                .await?;
                let reserved: Option<i64> =
                    crate::sql::query_scalar("SELECT 1 FROM mail_sent WHERE message_id = $1")
                        .bind(message_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                tx.commit().await?;
                Ok(reserved.is_some())
            })
            .await?;
        Ok(reserved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens work once, before they expire, for the address they were made for;
    /// the mail budget holds a user to its limit and lets a redelivery through.
    #[tokio::test]
    async fn tokens_are_single_use_and_expire_and_the_budget_holds() {
        let (db, dir) = crate::test_database("verify").await;
        let (user, _) = db
            .create_user(crate::accounts::NewUser {
                username: "verifier",
                email: "v@example.com",
                password_hash: "x",
                is_admin: false,
                email_verified: false,
            })
            .await
            .unwrap();
        assert!(!user.email_verified);
        let now = now_millis();
        assert!(
            !db.store_email_token("other", user.id, "w@example.com", now + 60_000)
                .await
                .unwrap()
        );
        assert!(
            db.store_email_token("expired", user.id, "v@example.com", now - 1)
                .await
                .unwrap()
        );
        assert!(
            db.store_email_token("fresh", user.id, "v@example.com", now + 60_000)
                .await
                .unwrap()
        );
        assert_eq!(db.use_email_token("expired").await.unwrap().0, None);
        assert_eq!(db.use_email_token("unknown").await.unwrap().0, None);
        let verified = db.use_email_token("fresh").await.unwrap().0.unwrap();
        assert_eq!(
            (verified.user_id, verified.email.as_str()),
            (user.id, "v@example.com")
        );
        assert_eq!(
            db.use_email_token("fresh").await.unwrap().0,
            None,
            "used once"
        );
        let again = db.user_by_id(user.id, None).await.unwrap().unwrap();
        assert!(again.email_verified);

        let since = now - 3_600_000;
        for n in 0..3 {
            assert!(
                db.reserve_mail(&format!("m{n}"), user.id, since, 3)
                    .await
                    .unwrap()
            );
        }
        assert!(
            !db.reserve_mail("m3", user.id, since, 3).await.unwrap(),
            "over the budget"
        );
        assert!(
            db.reserve_mail("m1", user.id, since, 3).await.unwrap(),
            "a redelivery keeps its place"
        );
        db.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
