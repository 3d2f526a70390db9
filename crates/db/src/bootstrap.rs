//! First start of a database: migrations, the `admin` account, the demo bakery.
//! `bakery migrate` and `bakery up` both begin here; neither needs the other.

use bakery_config::{Config, ConfigError, ExposeSecret};

use crate::Database;
use crate::accounts::AdminBootstrap;

/// What bootstrapping did, for the caller to tell the operator.
pub struct Bootstrapped {
    pub admin: AdminBootstrap,
    /// The demo bakery was loaded into an empty catalog.
    pub demo_loaded: bool,
}

/// Applies migrations, creates the admin account on first start, and (with `demo`)
/// loads the demo bakery into an empty catalog. Safe to run from several processes
/// at once. A database that cannot be prepared is a [`ConfigError`] naming
/// `BAKERY_DATABASE_URL`: nothing else can start on it.
pub async fn bootstrap(config: &Config, demo: bool) -> Result<Bootstrapped, ConfigError> {
    let db = Database::connect_configured(config).await?;
    let failed = |what: &str, e: crate::DbError| {
        ConfigError::new(
            "BAKERY_DATABASE_URL",
            format!("{what} on {}: {e}", config.database.url.redacted()),
        )
    };
    db.migrate()
        .await
        .map_err(|e| failed("cannot apply migrations", e))?;
    let admin = db
        .ensure_admin(config.admin_password.as_ref().map(|p| p.expose_secret()))
        .await
        .map_err(|e| failed("cannot create the admin account", e))?;
    let demo_loaded = demo
        && db
            .load_demo()
            .await
            .map_err(|e| failed("cannot load the demo bakery", e))?;
    db.close().await;
    Ok(Bootstrapped { admin, demo_loaded })
}
