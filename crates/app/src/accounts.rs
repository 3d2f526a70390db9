//! Accounts: sign up, check credentials, the user behind a session (`User:{id}`),
//! public profiles, and changes to my account.

use std::sync::LazyLock;

use bakery_core::{Email, Invalid, Password, Profile, User, Username};
use bakery_db::accounts::{NewUser, RenamedUser, UserChange};
use bakery_db::{DbError, Lsn};
use serde::Deserialize;

use crate::{App, Error, Freshness, Written};

/// The tables whose generations key lookups of users by name.
const USERS: &[&str] = &["users"];

pub fn user_key(id: i64) -> String {
    format!("User:{id}")
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SignUp {
    #[schema(pattern = "^[A-Za-z0-9_-]{3,32}$")]
    pub username: String,
    #[schema(max_length = 254, pattern = "^[^@]+@[^@]+$")]
    pub email: String,
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// A change to my account; fields left out stay as they are.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct AccountChange {
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{3,32}$")]
    pub username: Option<String>,
    #[serde(default)]
    #[schema(max_length = 254, pattern = "^[^@]+@[^@]+$")]
    pub email: Option<String>,
    #[serde(default)]
    #[schema(min_length = 8, max_length = 1024)]
    pub password: Option<String>,
    /// Needed to change the password or the email (whoever holds a stolen session
    /// cannot take the account over).
    #[serde(default)]
    pub current_password: Option<String>,
}

impl AccountChange {
    /// Whether the change takes the account's current password.
    pub fn needs_current_password(&self) -> bool {
        self.password.is_some() || self.email.is_some()
    }
}

fn username_taken(error: DbError) -> Error {
    match error {
        DbError::Conflict(_) => Error::Conflict {
            code: "username_taken",
            message: "that username is taken",
        },
        other => other.into(),
    }
}

/// argon2id is deliberately slow: off the async threads.
/// Hashes (19 MiB and tens of ms of a core each) a process runs at once: a flood of
/// logins gets a quick 503 instead of a queue of blocking threads and memory.
fn hash_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: LazyLock<tokio::sync::Semaphore> = LazyLock::new(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores * 2)
    });
    &SLOTS
}

/// How long a hash waits for a slot before the request is turned away.
const HASH_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs `work` (a password hash or check) on the blocking pool, under a slot.
async fn hashing<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    let _slot = tokio::time::timeout(HASH_WAIT, hash_slots().acquire())
        .await
        .map_err(|_| Error::Busy("too many logins at once; try again in a moment"))?
        .map_err(|_| Error::Internal("the hashing slots are closed".into()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("hashing failed: {e}")))
}

async fn hash(password: Password) -> Result<String, Error> {
    hashing(move || bakery_core::hash_password(&password)).await
}

/// An argon2id hash of a random password nobody knows, made once per process.
static DECOY_HASH: LazyLock<String> = LazyLock::new(|| {
    let secret = format!("{:032x}", rand::random::<u128>());
    bakery_core::hash_password(
        &Password::parse(&secret).expect("32 hex digits are a valid password"),
    )
});

impl App {
    /// After a write to a user: `User:{id}` is read again from the primary and
    /// stored in place (see `Cache::update_object` for why it is read, not taken
    /// from the write). Answers the user as read.
    async fn refresh_user(&self, id: i64) -> Result<Option<User>, Error> {
        let read = self.db().user_by_id(id, Some(Lsn::LATEST));
        Ok(self
            .0
            .cache
            .update_object(&user_key(id), self.0.object_ttl, read)
            .await?)
    }

    /// Creates an account (not an admin). Lookups of the name, which found nobody
    /// until now, are invalidated.
    pub async fn sign_up(&self, input: SignUp) -> Result<Written<User>, Error> {
        let username = Username::parse(&input.username)?;
        let email = Email::parse(&input.email)?;
        let password_hash = hash(Password::parse(&input.password)?).await?;
        let app = self.clone();
        self.unit(async move {
            // Unverified: the verification mail is asked for in the same commit.
            let new = NewUser {
                username: username.as_str(),
                email: email.as_str(),
                password_hash: &password_hash,
                is_admin: false,
                email_verified: false,
            };
            let (user, lsn) = app.db().create_user(new).await.map_err(username_taken)?;
            app.tables_changed(USERS).await;
            Ok(Written { value: user, lsn })
        })
        .await
    }

    /// The user these credentials belong to. Read from the primary (a password just
    /// changed is the one that counts); without such a user a fixed hash is still
    /// checked, so the answer takes as long and does not reveal which names exist.
    pub async fn authenticate(&self, input: &Credentials) -> Result<User, Error> {
        let found = self.db().credentials(&input.username).await?;
        let candidate = input.password.clone();
        let stored = found
            .as_ref()
            .map(|(_, hash)| hash.clone())
            .unwrap_or_else(|| DECOY_HASH.clone());
        let matches = hashing(move || bakery_core::verify_password(&candidate, &stored)).await?;
        match found {
            Some((user, _)) if matches => Ok(user),
            _ => Err(Error::InvalidCredentials),
        }
    }

    /// The user behind a session, `User:{id}`: every logged-in request needs it, so
    /// with a cache a logged-in page view need not touch the database at all.
    pub async fn user(&self, id: i64, reader: Option<Lsn>) -> Result<Option<User>, Error> {
        let db = self.db().clone();
        let at = self.fill_position(reader);
        let build = move || {
            let db = db.clone();
            async move { db.user_by_id(id, at).await.map_err(Error::from) }
        };
        let (user, _) = self
            .0
            .cache
            // A user reads their own account: never a near copy.
            .object(
                &self.0.inflight,
                &user_key(id),
                self.0.object_ttl,
                Freshness::Current,
                build,
            )
            .await?;
        Ok(user)
    }

    /// Applies a change to `actor`'s account. A new password or email needs the
    /// current password (`WrongPassword` otherwise). `User:{id}` is stored anew
    /// (updated in place); a new name also invalidates everything that shows it.
    pub async fn change_account(
        &self,
        actor: &User,
        input: AccountChange,
    ) -> Result<Written<User>, Error> {
        let user_id = actor.id;
        if input.needs_current_password() {
            let current = input.current_password.clone().unwrap_or_default();
            let credentials = Credentials {
                username: actor.username.clone(),
                password: current,
            };
            match self.authenticate(&credentials).await {
                Ok(user) if user.id == user_id => {}
                Ok(_) | Err(Error::InvalidCredentials) => return Err(Error::WrongPassword),
                Err(other) => return Err(other),
            }
        }
        let username = input.username.as_deref().map(Username::parse).transpose()?;
        let email = input.email.as_deref().map(Email::parse).transpose()?;
        let password_hash = match input.password.as_deref().map(Password::parse).transpose()? {
            Some(password) => Some(hash(password).await?),
            None => None,
        };
        let app = self.clone();
        self.unit(async move {
            let change = UserChange {
                username: username.as_ref().map(Username::as_str),
                email: email.as_ref().map(Email::as_str),
                password_hash: password_hash.as_deref(),
            };
            let (changed, lsn) = app
                .db()
                .update_user(user_id, change)
                .await
                .map_err(username_taken)?;
            let RenamedUser { user, reviewed } = changed.ok_or(Error::NoSuchAccount)?;
            // Committed: a failed read only leaves `User:{id}` invalidated.
            let _ = app.refresh_user(user.id).await;
            if username.is_some() {
                for product_id in reviewed {
                    app.product_restructured(product_id, &[]).await;
                }
                app.tables_changed(USERS).await;
            }
            Ok(Written { value: user, lsn })
        })
        .await
    }

    /// Verifies the address a verification mail's `token` was sent for: once,
    /// before it expires, and only while it is still the account's address; a bad,
    /// used, expired or stale token is `invalid_token`. `User:{id}` is refreshed.
    pub async fn verify_email(&self, token: &str) -> Result<Written<User>, Error> {
        let invalid = || {
            Error::Invalid(Invalid::new(
                "invalid_token",
                "that link is not valid (used, expired, or for an address changed since)",
            ))
        };
        let plain = (16..=128).contains(&token.len())
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !plain {
            return Err(invalid());
        }
        let (app, token) = (self.clone(), token.to_string());
        self.unit(async move {
            let (verified, lsn) = app.db().use_email_token(&token).await?;
            let verified = verified.ok_or_else(invalid)?;
            let user = app
                .refresh_user(verified.user_id)
                .await?
                .ok_or(Error::NoSuchAccount)?;
            Ok(Written { value: user, lsn })
        })
        .await
    }

    /// A user's public profile by name (any case); `None` when nobody is called that,
    /// or the name cannot be one.
    pub async fn profile(
        &self,
        username: &str,
        reader: Option<Lsn>,
    ) -> Result<Option<Profile>, Error> {
        if Username::parse(username).is_err() {
            return Ok(None);
        }
        let run = self.db().profile(self.fill_position(reader), username);
        let key = username.to_ascii_lowercase();
        self.cached_query(&bakery_db::accounts::PROFILE_BY_NAME, &key, run)
            .await
    }
}
