//! Users: creation, lookup by id or name, changes.

use bakery_core::{Profile, User};

use crate::messaging::stage;
use crate::{CachedQuery, Database, DbError, Lsn, now_millis};

/// Booleans are stored as 0 or 1: sqlx's Any driver cannot decode SQLite booleans.
type UserRow = (i64, String, String, i64, i64);

const USER_COLUMNS: &str = "id, username, email, is_admin, email_verified";

fn user((id, username, email, is_admin, email_verified): UserRow) -> User {
    User {
        id,
        username,
        email,
        is_admin: is_admin != 0,
        email_verified: email_verified != 0,
    }
}

/// What a new account needs; the password arrives already hashed.
pub struct NewUser<'a> {
    pub username: &'a str,
    pub email: &'a str,
    pub password_hash: &'a str,
    pub is_admin: bool,
    /// An operator's or the demo's account is verified; a sign-up's is not, and
    /// its verification mail is asked for in the same transaction.
    pub email_verified: bool,
}

/// A change to an account; `None` leaves a field as it is.
#[derive(Default)]
pub struct UserChange<'a> {
    pub username: Option<&'a str>,
    pub email: Option<&'a str>,
    pub password_hash: Option<&'a str>,
}

/// A user after a change, and the products whose cached objects show their old name
/// (empty unless the name changed).
pub struct RenamedUser {
    pub user: User,
    pub reviewed: Vec<i64>,
}

/// A public profile by name, in any case.
pub static PROFILE_BY_NAME: CachedQuery = CachedQuery::new(
    "users.profile_by_name",
    "SELECT id, username, created_at FROM users WHERE lower(username) = lower($1)",
    &["users"],
);

impl Database {
    /// Creates a user; [`DbError::Conflict`] when the name is taken (in any case).
    pub async fn create_user(&self, new: NewUser<'_>) -> Result<(User, Option<Lsn>), DbError> {
        let (row, lsn) = self
            .write(async |pool| {
                let mut tx = pool.begin().await?;
                let sql = format!(
                    "INSERT INTO users (username, email, password_hash, is_admin, email_verified, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     RETURNING {USER_COLUMNS}"
                );
                let row = crate::sql::query_as::<UserRow>(sql)
                    .bind(new.username)
                    .bind(new.email)
                    .bind(new.password_hash)
                    .bind(i64::from(new.is_admin))
                    .bind(i64::from(new.email_verified))
                    .bind(now_millis())
                    .fetch_one(&mut *tx)
                    .await?;
                if !new.email_verified {
                    let event = bakery_events::EmailAdded {
                        user_id: row.0,
                        email: new.email.to_string(),
                    };
                    stage(&mut tx, &event, &bakery_telemetry::correlation_id()).await?;
                }
                tx.commit().await?;
                Ok(row)
            })
            .await?;
        Ok((user(row), lsn))
    }

    /// The user and their password hash, for logging in. Always from the primary:
    /// a password just changed must be the one that counts.
    pub async fn credentials(&self, username: &str) -> Result<Option<(User, String)>, DbError> {
        let row: Option<(i64, String, String, i64, i64, String)> = crate::sql::query_as(
            "SELECT id, username, email, is_admin, email_verified, password_hash FROM users
             WHERE lower(username) = lower($1)",
        )
        .bind(username)
        .fetch_optional(self.primary())
        .await?;
        Ok(row.map(|(id, username, email, is_admin, verified, hash)| {
            (user((id, username, email, is_admin, verified)), hash)
        }))
    }

    /// The user with this id, as seen by a reader whose last write is at `after`.
    pub async fn user_by_id(&self, id: i64, after: Option<Lsn>) -> Result<Option<User>, DbError> {
        let row = self
            .read(after, async |pool| {
                let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
                crate::sql::query_as::<UserRow>(sql)
                    .bind(id)
                    .fetch_optional(&pool)
                    .await
            })
            .await?;
        Ok(row.map(user))
    }

    /// The public profile of the user called `username` (in any case).
    pub async fn profile(
        &self,
        after: Option<Lsn>,
        username: &str,
    ) -> Result<Option<Profile>, DbError> {
        let row = self
            .read(after, async |pool| {
                crate::sql::query_as::<(i64, String, i64)>(PROFILE_BY_NAME.sql())
                    .bind(username)
                    .fetch_optional(&pool)
                    .await
            })
            .await?;
        Ok(row.map(|(id, username, created_at)| Profile {
            id,
            username,
            created_at,
        }))
    }

    /// Applies a change in one transaction; `None` when the user no longer exists.
    /// With a new name, also the products this user has reviewed (their assembled
    /// objects show the name), read in the same transaction, with a
    /// `product.changed` staged for each (their pre-rendered pages show it too).
    pub async fn update_user(
        &self,
        id: i64,
        change: UserChange<'_>,
    ) -> Result<(Option<RenamedUser>, Option<Lsn>), DbError> {
        let renamed = change.username.is_some();
        self.write(async |pool| {
            let mut tx = pool.begin().await?;
            // A new address is unverified until its owner proves it. The flag is
            // set first: MariaDB's later assignments see the earlier ones' values.
            // Then the row is read back (MariaDB has no UPDATE ... RETURNING).
            let done = crate::sql::query(
                "UPDATE users SET
                     email_verified = CASE WHEN $3 IS NULL OR $3 = email THEN email_verified ELSE 0 END,
                     username = COALESCE($2, username),
                     email = COALESCE($3, email),
                     password_hash = COALESCE($4, password_hash)
                 WHERE id = $1",
            )
            .bind(id)
            .bind(change.username)
            .bind(change.email)
            .bind(change.password_hash)
            .execute(&mut *tx)
            .await?;
            let row = if done.rows_affected() == 0 {
                None
            } else {
                crate::sql::query_as::<UserRow>(format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
            };
            let Some(row) = row else { return Ok(None) };
            // An address given and not verified after the change (a new one, or the
            // same one still unverified: its link is sent again) asks for a mail.
            let (_, _, _, _, verified) = &row;
            if let Some(email) = change.email
                && *verified == 0
            {
                let event = bakery_events::EmailAdded {
                    user_id: id,
                    email: email.to_string(),
                };
                stage(&mut tx, &event, &bakery_telemetry::correlation_id()).await?;
            }
            let reviewed: Vec<i64> = if renamed {
                crate::sql::query_scalar("SELECT DISTINCT product_id FROM reviews WHERE user_id = $1")
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await?
            } else {
                Vec::new()
            };
            // Their pre-rendered pages show the old name (linked to a user page
            // someone else could then claim): each is rendered again.
            for product in &reviewed {
                crate::catalog::product_changed(&mut tx, *product, false).await?;
            }
            tx.commit().await?;
            Ok(Some(RenamedUser {
                user: user(row),
                reviewed,
            }))
        })
        .await
    }

    /// Whether any admin exists yet (first start creates one).
    pub async fn has_admin(&self) -> Result<bool, DbError> {
        let (n,): (i64,) = crate::sql::query_as("SELECT COUNT(*) FROM users WHERE is_admin = 1")
            .fetch_one(self.primary())
            .await?;
        Ok(n > 0)
    }
}

/// What first start did about the `admin` account.
pub enum AdminBootstrap {
    /// An admin already existed; nothing changed.
    Existing,
    /// Created with the configured password.
    Created,
    /// Created with this generated password, to be shown once.
    Generated(String),
}

impl Database {
    /// Creates user `admin` on first start: with `password` when given, otherwise
    /// with a generated one the caller prints once.
    pub async fn ensure_admin(&self, password: Option<&str>) -> Result<AdminBootstrap, DbError> {
        if self.has_admin().await? {
            return Ok(AdminBootstrap::Existing);
        }
        let generated = password.is_none().then(generate_password);
        let chosen = password
            .or(generated.as_deref())
            .unwrap_or_default()
            .to_string();
        let hash = tokio::task::spawn_blocking(move || {
            bakery_core::Password::parse(&chosen).map(|p| bakery_core::hash_password(&p))
        })
        .await
        .map_err(|e| DbError::Other(sqlx::Error::Protocol(e.to_string())))?
        .map_err(|e| DbError::Other(sqlx::Error::Protocol(e.message)))?;
        let new = NewUser {
            username: "admin",
            email: "admin@bakery.localhost",
            password_hash: &hash,
            is_admin: true,
            email_verified: true,
        };
        match self.create_user(new).await.map(|(user, _)| user) {
            Ok(_) => Ok(generated.map_or(AdminBootstrap::Created, AdminBootstrap::Generated)),
            // Another process created it a moment ago.
            Err(DbError::Conflict(_)) => Ok(AdminBootstrap::Existing),
            Err(e) => Err(e),
        }
    }
}

/// 20 characters from an alphabet without look-alikes (no 0/O, 1/l/I).
fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    (0..20)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}
