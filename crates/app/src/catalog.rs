//! The catalog: products (the cached object `Product:{id}`, assembled from its
//! parts), the product list and reviews. Admins change products; users review them.
//!
//! What each write owes the cache: a simple field (name, description, price)
//! rebuilds the object from the primary and stores it in place; a change of
//! structure (a review added or removed, a product deleted) invalidates it; both
//! make the product list stale.

use bakery_config::ReadModel;
use bakery_core::User;
use bakery_core::catalog::{self, Product, ProductSummary, Review, UserReview};
use bakery_db::Lsn;
use bakery_db::catalog::{LIST_PRODUCTS, NewProduct, ProductChange, REVIEWS_BY_USER};
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Deserialize;

use crate::{App, Error, Freshness, Written};

/// The tables a product's own writes change.
const PRODUCT_TABLES: &[&str] = &["products", "product_prices", "product_descriptions"];
/// What deleting a product changes (its parts and reviews go by cascade).
const PRODUCT_AND_PARTS: &[&str] = &[
    "products",
    "product_prices",
    "product_descriptions",
    "product_images",
    "reviews",
];
const REVIEWS: &[&str] = &["reviews"];

pub fn product_key(id: i64) -> String {
    format!("Product:{id}")
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ProductDraft {
    #[schema(min_length = 1)]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 10000)]
    pub description: String,
    #[schema(minimum = 0, maximum = 100000000)]
    pub price_cents: i64,
}

/// A change to a product's simple fields; fields left out stay as they are.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct ProductEdit {
    #[schema(min_length = 1)]
    pub name: Option<String>,
    #[schema(max_length = 10000)]
    pub description: Option<String>,
    #[schema(minimum = 0, maximum = 100000000)]
    pub price_cents: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ReviewDraft {
    #[schema(minimum = 1, maximum = 5)]
    pub rating: i64,
    #[schema(min_length = 1)]
    pub body: String,
}

/// A change to a review; fields left out stay as they are.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct ReviewEdit {
    #[serde(default)]
    #[schema(minimum = 1, maximum = 5)]
    pub rating: Option<i64>,
    #[serde(default)]
    #[schema(min_length = 1)]
    pub body: Option<String>,
}

impl App {
    /// `Product:{id}`, assembled from its parts on a miss. `freshness`: `Near` only
    /// for a reader without a session (see [`Freshness`]).
    pub async fn product(
        &self,
        id: i64,
        reader: Option<Lsn>,
        freshness: Freshness,
    ) -> Result<Option<Product>, Error> {
        let build = self.build_product(id, reader);
        let (product, _) = self
            .0
            .cache
            .object(
                &self.0.inflight,
                &product_key(id),
                self.0.object_ttl,
                freshness,
                build,
            )
            .await?;
        Ok(product)
    }

    /// `Product:{id}` as JSON, straight from the cache on a hit (never decoded).
    pub async fn product_json(
        &self,
        id: i64,
        reader: Option<Lsn>,
        freshness: Freshness,
    ) -> Result<Option<Bytes>, Error> {
        let build = self.build_product(id, reader);
        let (json, _) = self
            .0
            .cache
            .object_json(
                &self.0.inflight,
                &product_key(id),
                self.0.object_ttl,
                freshness,
                build,
            )
            .await?;
        Ok(json)
    }

    /// Makes builds of `Product:{id}` (one per call): from its parts joined by SQL,
    /// or, with the documents read model, from its document (see `documents`).
    fn build_product(
        &self,
        id: i64,
        reader: Option<Lsn>,
    ) -> impl Fn() -> BoxFuture<'static, Result<Option<Product>, Error>> + Send + Sync + 'static
    {
        let db = self.db().clone();
        let at = self.fill_position(reader);
        let documents = self.0.read_model == ReadModel::Documents;
        move || {
            let db = db.clone();
            async move {
                if documents {
                    crate::documents::read_product(&db, id, at).await
                } else {
                    db.product(id, at).await.map_err(Error::from)
                }
            }
            .boxed()
        }
    }

    /// A page of the product list: `limit` products with ids above `cursor`.
    pub async fn product_page(
        &self,
        cursor: i64,
        limit: i64,
        reader: Option<Lsn>,
    ) -> Result<Vec<ProductSummary>, Error> {
        let run = self
            .db()
            .list_products(self.fill_position(reader), cursor, limit);
        self.cached_query(&LIST_PRODUCTS, &(cursor, limit), run)
            .await
    }

    /// A page of a user's reviews, newest first, with ids below `before`. The items
    /// name products, not the author, so a rename leaves them valid.
    pub async fn user_reviews(
        &self,
        user_id: i64,
        before: i64,
        limit: i64,
        reader: Option<Lsn>,
    ) -> Result<Vec<UserReview>, Error> {
        let run = self
            .db()
            .reviews_by_user(self.fill_position(reader), user_id, before, limit);
        self.cached_query(&REVIEWS_BY_USER, &(user_id, before, limit), run)
            .await
    }

    pub async fn create_product(
        &self,
        actor: &User,
        draft: ProductDraft,
    ) -> Result<Written<Product>, Error> {
        self.require_admin(actor).await?;
        self.create_product_as_operator(draft).await
    }

    /// Operators' tools (the bench, which has no session): a product, with no actor
    /// to check. The same unit as [`App::create_product`] otherwise.
    pub async fn create_product_as_operator(
        &self,
        draft: ProductDraft,
    ) -> Result<Written<Product>, Error> {
        let name = catalog::product_name(&draft.name)?;
        let description = catalog::product_description(&draft.description)?;
        let price_cents = catalog::price_cents(draft.price_cents)?;
        let app = self.clone();
        self.unit(async move {
            let new = NewProduct {
                name: &name,
                description: &description,
                price_cents,
            };
            let (id, lsn) = app.db().create_product(new).await?;
            let product = app.product_changed(id).await?;
            Ok(Written {
                value: product.ok_or(Error::NotFound)?,
                lsn,
            })
        })
        .await
    }

    pub async fn change_product(
        &self,
        actor: &User,
        id: i64,
        edit: ProductEdit,
    ) -> Result<Written<Product>, Error> {
        self.require_admin(actor).await?;
        let name = edit
            .name
            .as_deref()
            .map(catalog::product_name)
            .transpose()?;
        let description = edit
            .description
            .as_deref()
            .map(catalog::product_description)
            .transpose()?;
        let price_cents = edit.price_cents.map(catalog::price_cents).transpose()?;
        let app = self.clone();
        self.unit(async move {
            let change = ProductChange {
                name: name.as_deref(),
                description: description.as_deref(),
                price_cents,
            };
            let (found, lsn) = app.db().update_product(id, change).await?;
            if !found {
                return Err(Error::NotFound);
            }
            let product = app.product_changed(id).await?;
            Ok(Written {
                value: product.ok_or(Error::NotFound)?,
                lsn,
            })
        })
        .await
    }

    pub async fn delete_product(&self, actor: &User, id: i64) -> Result<Written<()>, Error> {
        self.require_admin(actor).await?;
        let app = self.clone();
        self.unit(async move {
            let (found, lsn) = app.db().delete_product(id).await?;
            app.product_restructured(id, PRODUCT_AND_PARTS).await;
            if found {
                Ok(Written { value: (), lsn })
            } else {
                Err(Error::NotFound)
            }
        })
        .await
    }

    pub async fn add_review(
        &self,
        actor: &User,
        product_id: i64,
        draft: ReviewDraft,
    ) -> Result<Written<Review>, Error> {
        let rating = catalog::rating(draft.rating)?;
        let body = catalog::review_body(&draft.body)?;
        let (app, author) = (self.clone(), actor.id);
        self.unit(async move {
            let (review, lsn) = app
                .db()
                .create_review(product_id, author, rating, &body)
                .await
                .map_err(|e| match e {
                    bakery_db::DbError::Conflict(_) => Error::Conflict {
                        code: "already_reviewed",
                        message: "you have reviewed this product already; edit that review instead",
                    },
                    other => other.into(),
                })?;
            let review = review.ok_or(Error::NotFound)?;
            app.product_restructured(product_id, REVIEWS).await;
            Ok(Written { value: review, lsn })
        })
        .await
    }

    /// Edits a review: only its author may.
    pub async fn edit_review(
        &self,
        actor: &User,
        id: i64,
        edit: ReviewEdit,
    ) -> Result<Written<Review>, Error> {
        let rating = edit.rating.map(catalog::rating).transpose()?;
        let body = edit.body.as_deref().map(catalog::review_body).transpose()?;
        let (product_id, author) = self.db().review_owner(id).await?.ok_or(Error::NotFound)?;
        if author != actor.id {
            return Err(Error::Forbidden("only its author may edit a review"));
        }
        let app = self.clone();
        self.unit(async move {
            let (review, lsn) = app.db().update_review(id, rating, body).await?;
            app.product_restructured(product_id, REVIEWS).await;
            let review = review.ok_or(Error::NotFound)?;
            Ok(Written { value: review, lsn })
        })
        .await
    }

    /// A page of a product's reviews, newest first, with ids below `before` (not
    /// cached: the product object embeds the newest, which most readers want).
    pub async fn reviews_of(
        &self,
        product_id: i64,
        before: i64,
        limit: i64,
        reader: Option<Lsn>,
    ) -> Result<Vec<Review>, Error> {
        self.db()
            .reviews_of(reader, product_id, before, limit)
            .await?
            .ok_or(Error::NotFound)
    }

    /// Deletes a review: its author or an admin may.
    pub async fn delete_review(&self, actor: &User, id: i64) -> Result<Written<()>, Error> {
        let (product_id, author) = self.db().review_owner(id).await?.ok_or(Error::NotFound)?;
        if author != actor.id && self.require_admin(actor).await.is_err() {
            return Err(Error::Forbidden(
                "only its author or an admin may delete a review",
            ));
        }
        let app = self.clone();
        self.unit(async move {
            let (_, lsn) = app.db().delete_review(id).await?;
            app.product_restructured(product_id, REVIEWS).await;
            Ok(Written { value: (), lsn })
        })
        .await
    }

    /// A simple field of a product changed: its object is rebuilt from the primary
    /// and stored in place (invalidated when it is gone or the rebuild failed); the
    /// list is stale.
    ///
    /// With the documents read model the rebuild is the product's document, made
    /// and stored now (the consumer of `product.changed` would make it a moment
    /// later): the writer's next read, cached or not, shows the write.
    async fn product_changed(&self, id: i64) -> Result<Option<Product>, Error> {
        self.tables_changed(PRODUCT_TABLES).await;
        let key = product_key(id);
        let ttl = self.0.object_ttl;
        match self.0.read_model {
            ReadModel::Tables => {
                let rebuilt = self.db().product(id, Some(Lsn::LATEST));
                Ok(self.0.cache.update_object(&key, ttl, rebuilt).await?)
            }
            ReadModel::Documents => {
                let rebuilt = self.refresh_document(id);
                self.0.cache.update_object(&key, ttl, rebuilt).await
            }
        }
    }

    /// A product's structure changed (`tables` were written): its object is
    /// invalidated. With the documents read model its document is made again first
    /// (so that the writer's next read, which misses, finds the write in it).
    pub(crate) async fn product_restructured(&self, id: i64, tables: &[&str]) {
        if self.0.read_model == ReadModel::Documents
            && let Err(error) = self.refresh_document(id).await
        {
            // The consumer of `product.changed` makes it a moment later.
            tracing::warn!(%error, product = id, "could not make the product's document now");
        }
        self.0.cache.invalidate_object(&product_key(id)).await;
        self.tables_changed(tables).await;
    }
}
