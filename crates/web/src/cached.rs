//! The cached read paths and the invalidations that keep them true, in one place:
//! which key or tables each read uses, and what each write must bump.
//!
//! Fills read from the primary ([`Lsn::LATEST`]): a value in the cache is served to
//! everyone, so it must never come from a replica that is behind some writer.

use bakery_core::calendar::EventSummary;
use bakery_core::catalog::{Product, ProductSummary};
use bakery_core::{Profile, User};
use bakery_core::catalog::UserReview;
use bakery_db::{DbError, Lsn, accounts, calendar, catalog};

use crate::AppState;

/// Tables whose generations key the product list.
const PRODUCT_LIST_TABLES: &[&str] = &["products", "product_prices", "reviews"];

/// Tables whose generations key a user's review list.
const REVIEWS_BY_USER_TABLES: &[&str] = &["reviews", "products"];

fn user_key(id: i64) -> String {
    format!("User:{id}")
}

fn product_key(id: i64) -> String {
    format!("Product:{id}")
}

/// A fill's database error. Cloneable (one build answers every concurrent miss, and
/// each gets the error), and still the original error, so "unavailable" stays a 503.
#[derive(Debug, Clone)]
pub struct FillError(std::sync::Arc<DbError>);

impl std::fmt::Display for FillError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<DbError> for FillError {
    fn from(error: DbError) -> Self {
        Self(std::sync::Arc::new(error))
    }
}

/// The cache layer's own failures (a value it cannot encode or decode).
impl From<String> for FillError {
    fn from(message: String) -> Self {
        DbError::Other(bakery_db::SqlxError::Protocol(message)).into()
    }
}

impl From<FillError> for crate::error::ApiError {
    fn from(e: FillError) -> Self {
        (&*e.0).into()
    }
}

impl AppState {
    /// Where a fill reads: the primary when its result will be shared through the
    /// cache; with no cache, wherever the reader's own position allows.
    fn fill_position(&self, reader: Option<Lsn>) -> Option<Lsn> {
        if self.cache.is_none() { reader } else { Some(Lsn::LATEST) }
    }

    /// `Product:{id}`, assembled from its parts on a miss.
    pub async fn product(&self, id: i64, reader: Option<Lsn>) -> Result<Option<Product>, FillError> {
        let db = self.db.clone();
        let at = self.fill_position(reader);
        let build = async move { db.product(id, at).await.map_err(FillError::from) };
        let (product, _) = self.cache.object(&self.inflight, &product_key(id), self.config.cache_object_ttl, build).await?;
        Ok(product)
    }

    /// `Product:{id}` as JSON, straight from the cache on a hit.
    pub async fn product_json(&self, id: i64, reader: Option<Lsn>) -> Result<Option<bytes::Bytes>, FillError> {
        let db = self.db.clone();
        let at = self.fill_position(reader);
        let build = async move { db.product(id, at).await.map_err(FillError::from) };
        let (json, _) = self.cache.object_json(&self.inflight, &product_key(id), self.config.cache_object_ttl, build).await?;
        Ok(json)
    }

    /// A page of the product list.
    pub async fn product_page(&self, cursor: i64, limit: i64, reader: Option<Lsn>) -> Result<Vec<ProductSummary>, DbError> {
        let run = self.db.list_products(self.fill_position(reader), cursor, limit);
        let (items, _) =
            self.cache.query(PRODUCT_LIST_TABLES, catalog::LIST_PRODUCTS, &(cursor, limit), self.config.cache_query_ttl, run).await?;
        Ok(items)
    }

    pub async fn event_list(&self, reader: Option<Lsn>) -> Result<Vec<EventSummary>, DbError> {
        let run = self.db.list_events(self.fill_position(reader));
        let (items, _) = self.cache.query(&["events"], calendar::LIST_EVENTS, &(), self.config.cache_query_ttl, run).await?;
        Ok(items)
    }

    /// The user behind a session, `User:{id}`: every logged-in request needs it, so
    /// with a cache a logged-in page view need not touch the database at all.
    pub async fn user(&self, id: i64, reader: Option<Lsn>) -> Result<Option<User>, FillError> {
        let db = self.db.clone();
        let at = self.fill_position(reader);
        let build = async move { db.user_by_id(id, at).await.map_err(FillError::from) };
        let (user, _) = self.cache.object(&self.inflight, &user_key(id), self.config.cache_object_ttl, build).await?;
        Ok(user)
    }

    /// A user changed their account: `User:{id}` is stored anew (updated in place);
    /// a new name also invalidates everything that shows it.
    pub async fn user_changed(&self, user: &User, renamed: bool) -> Result<(), DbError> {
        self.cache.update_object(&user_key(user.id), user, self.config.cache_object_ttl).await;
        if renamed {
            for product_id in self.db.products_reviewed_by(user.id).await? {
                self.cache.invalidate_object(&product_key(product_id)).await;
            }
            self.cache.invalidate_tables(&["users"]).await;
        }
        Ok(())
    }

    /// A user's public profile by name (any case); `None` when nobody is called that.
    pub async fn profile(&self, username: &str, reader: Option<Lsn>) -> Result<Option<Profile>, DbError> {
        let run = self.db.profile(self.fill_position(reader), username);
        let key = username.to_ascii_lowercase();
        let (profile, _) = self.cache.query(&["users"], accounts::PROFILE_BY_NAME, &key, self.config.cache_query_ttl, run).await?;
        Ok(profile)
    }

    /// A page of a user's reviews, newest first, with ids below `before`. The items
    /// name products, not the author, so a rename leaves them valid.
    pub async fn user_reviews(&self, user_id: i64, before: i64, limit: i64, reader: Option<Lsn>) -> Result<Vec<UserReview>, DbError> {
        let run = self.db.reviews_by_user(self.fill_position(reader), user_id, before, limit);
        let params = (user_id, before, limit);
        let (items, _) =
            self.cache.query(REVIEWS_BY_USER_TABLES, catalog::REVIEWS_BY_USER, &params, self.config.cache_query_ttl, run).await?;
        Ok(items)
    }

    /// A user signed up: cached lookups of their name (which found nobody) are stale.
    pub async fn user_created(&self) {
        self.cache.invalidate_tables(&["users"]).await;
    }

    /// A simple field of a product changed: its object is rebuilt from the primary
    /// and stored in place; the list is invalidated.
    pub async fn product_changed(&self, id: i64) -> Result<Option<Product>, DbError> {
        let product = self.db.product(id, Some(Lsn::LATEST)).await?;
        match &product {
            Some(product) => self.cache.update_object(&product_key(id), product, self.config.cache_object_ttl).await,
            None => self.cache.invalidate_object(&product_key(id)).await,
        }
        self.cache.invalidate_tables(PRODUCT_LIST_TABLES).await;
        Ok(product)
    }

    /// A product's structure changed (reviews added or removed, deleted): its object
    /// and the list are invalidated.
    pub async fn product_restructured(&self, id: i64) {
        self.cache.invalidate_object(&product_key(id)).await;
        self.cache.invalidate_tables(PRODUCT_LIST_TABLES).await;
    }

    /// Events or their seats changed.
    pub async fn events_changed(&self) {
        self.cache.invalidate_tables(&["events"]).await;
    }
}
