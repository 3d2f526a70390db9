//! Products and their parts. Each part lives in its own table and is fetched by its
//! own query, concurrently, then assembled into one `Product`.

use bakery_core::catalog::{
    Author, Image, Product, ProductRef, ProductSummary, Rating, Review, UserReview,
};
use sqlx::AnyPool;

use crate::{CachedQuery, Database, DbError, Lsn, now_millis};

/// A new product's parts.
pub struct NewProduct<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub price_cents: i64,
}

/// A change to a product's simple fields; `None` leaves a field as it is.
#[derive(Default)]
pub struct ProductChange<'a> {
    pub name: Option<&'a str>,
    pub description: Option<&'a str>,
    pub price_cents: Option<i64>,
}

type SummaryRow = (i64, String, i64, i64, i64, Option<String>);
type ReviewRow = (i64, i64, i64, String, i64, String, i64);

fn review((id, product_id, user_id, username, rating, body, created_at): ReviewRow) -> Review {
    Review {
        id,
        product_id,
        user: Author {
            id: user_id,
            username,
        },
        rating,
        body,
        created_at,
    }
}

/// A page of the product list (`$1` the cursor, `$2` the limit).
pub static LIST_PRODUCTS: CachedQuery = CachedQuery::new(
    "products.list",
    "SELECT p.id, p.name, pr.price_cents,
        CAST(COALESCE(SUM(r.rating), 0) AS BIGINT), CAST(COUNT(r.id) AS BIGINT),
        (SELECT i.thumb_url FROM product_images i WHERE i.product_id = p.id ORDER BY i.id LIMIT 1)
    FROM products p
    JOIN product_prices pr ON pr.product_id = p.id
    LEFT JOIN reviews r ON r.product_id = p.id
    WHERE p.id > $1
    GROUP BY p.id, p.name, pr.price_cents
    ORDER BY p.id
    LIMIT $2",
    &["products", "product_prices", "reviews", "product_images"],
);

/// A page of one user's reviews, newest first (`$1` the user, `$2` the cursor: ids
/// below it, `$3` the limit).
pub static REVIEWS_BY_USER: CachedQuery = CachedQuery::new(
    "reviews.by_user",
    "SELECT r.id, p.id, p.name, r.rating, r.body, r.created_at
    FROM reviews r
    JOIN products p ON p.id = r.product_id
    WHERE r.user_id = $1 AND r.id < $2
    ORDER BY r.id DESC
    LIMIT $3",
    &["reviews", "products"],
);

/// The newest reviews a product embeds; the rest are paged
/// (`GET /api/products/{id}/reviews`).
pub const EMBEDDED_REVIEWS: i64 = 20;

const REVIEW_COLUMNS: &str = "r.id, r.product_id, u.id, u.username, r.rating, r.body, r.created_at";

impl Database {
    /// A page of products in id order, after `cursor` (the last id of the previous page).
    pub async fn list_products(
        &self,
        after: Option<Lsn>,
        cursor: i64,
        limit: i64,
    ) -> Result<Vec<ProductSummary>, DbError> {
        let rows = self
            .read(after, async |pool| {
                crate::sql::query_as::<SummaryRow>(LIST_PRODUCTS.sql())
                    .bind(cursor)
                    .bind(limit)
                    .fetch_all(&pool)
                    .await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, name, price_cents, sum, count, thumb_url)| ProductSummary {
                    id,
                    name,
                    price_cents,
                    rating: Rating::from_sum(sum, count),
                    thumb_url,
                },
            )
            .collect())
    }

    /// The whole product, its parts fetched concurrently; `None` if there is none.
    pub async fn product(&self, id: i64, after: Option<Lsn>) -> Result<Option<Product>, DbError> {
        let (base, price, description, images, reviews, (total, sum)) = tokio::try_join!(
            self.read(after, move |pool| async move {
                crate::sql::query_as::<(String, i64)>(
                    "SELECT name, updated_at FROM products WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&pool)
                .await
            }),
            self.read(
                after,
                move |pool| async move { fetch_price(&pool, id).await }
            ),
            self.read(after, move |pool| async move {
                fetch_description(&pool, id).await
            }),
            self.read(
                after,
                move |pool| async move { fetch_images(&pool, id).await }
            ),
            self.read(after, move |pool| async move {
                fetch_reviews(&pool, id, i64::MAX, EMBEDDED_REVIEWS).await
            }),
            self.read(after, move |pool| async move {
                // SUM of a BIGINT is NUMERIC on PostgreSQL, which `Any` cannot decode.
                crate::sql::query_as::<(i64, i64)>(
                    "SELECT COUNT(*), CAST(COALESCE(SUM(rating), 0) AS BIGINT)
                     FROM reviews WHERE product_id = $1",
                )
                .bind(id)
                .fetch_one(&pool)
                .await
            }),
        )?;
        let Some((name, updated_at)) = base else {
            return Ok(None);
        };
        let rating = Rating::from_sum(sum, total);
        Ok(Some(Product {
            id,
            name,
            description: description.unwrap_or_default(),
            price_cents: price.unwrap_or_default(),
            images,
            reviews,
            reviews_total: total,
            rating,
            updated_at,
        }))
    }

    /// Creates a product with its parts, in one transaction; returns its id.
    pub async fn create_product(&self, new: NewProduct<'_>) -> Result<(i64, Option<Lsn>), DbError> {
        self.write(move |pool| async move {
            let now = now_millis();
            let mut tx = pool.begin().await?;
            let id: i64 = crate::sql::query_scalar("INSERT INTO products (name, created_at, updated_at) VALUES ($1, $2, $2) RETURNING id")
                .bind(new.name)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
            crate::sql::query("INSERT INTO product_prices (product_id, price_cents, updated_at) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(new.price_cents)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            crate::sql::query("INSERT INTO product_descriptions (product_id, description, updated_at) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(new.description)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            product_changed(&mut tx, id, false).await?;
            tx.commit().await?;
            Ok(id)
        })
        .await
    }

    /// Changes the given parts in one transaction; false when there is no such product.
    pub async fn update_product(
        &self,
        id: i64,
        change: ProductChange<'_>,
    ) -> Result<(bool, Option<Lsn>), DbError> {
        self.write(move |pool| async move {
            let now = now_millis();
            let mut tx = pool.begin().await?;
            // The first statement writes, so SQLite takes its write lock at once.
            let found = crate::sql::query("UPDATE products SET name = COALESCE($2, name), updated_at = $3 WHERE id = $1")
                .bind(id)
                .bind(change.name)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
            if !found {
                return Ok(false);
            }
            if let Some(price) = change.price_cents {
                crate::sql::query("UPDATE product_prices SET price_cents = $2, updated_at = $3 WHERE product_id = $1")
                    .bind(id)
                    .bind(price)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(description) = change.description {
                crate::sql::query("UPDATE product_descriptions SET description = $2, updated_at = $3 WHERE product_id = $1")
                    .bind(id)
                    .bind(description)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            product_changed(&mut tx, id, false).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// Deletes a product and (by cascade) its price, description, images and reviews.
    pub async fn delete_product(&self, id: i64) -> Result<(bool, Option<Lsn>), DbError> {
        self.write(move |pool| async move {
            let mut tx = pool.begin().await?;
            let found = crate::sql::query("DELETE FROM products WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
            if found {
                product_changed(&mut tx, id, true).await?;
            }
            tx.commit().await?;
            Ok(found)
        })
        .await
    }

    /// Adds a review; `None` when the product does not exist.
    pub async fn create_review(
        &self,
        product_id: i64,
        user_id: i64,
        rating: i64,
        body: &str,
    ) -> Result<(Option<Review>, Option<Lsn>), DbError> {
        self.write(move |pool| async move {
            let mut tx = pool.begin().await?;
            let inserted: Option<i64> = crate::sql::query_scalar(
                "INSERT INTO reviews (product_id, user_id, rating, body, created_at)
                 SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM products WHERE id = $1)
                 RETURNING id",
            )
            .bind(product_id)
            .bind(user_id)
            .bind(rating)
            .bind(body)
            .bind(now_millis())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(id) = inserted else { return Ok(None) };
            let sql = format!("SELECT {REVIEW_COLUMNS} FROM reviews r JOIN users u ON u.id = r.user_id WHERE r.id = $1");
            let row: ReviewRow = crate::sql::query_as(sql).bind(id).fetch_one(&mut *tx).await?;
            product_changed(&mut tx, product_id, false).await?;
            tx.commit().await?;
            Ok(Some(review(row)))
        })
        .await
    }

    /// A page of a product's reviews, newest first, with ids below `before`; `None`
    /// when there is no such product.
    pub async fn reviews_of(
        &self,
        after: Option<Lsn>,
        product_id: i64,
        before: i64,
        limit: i64,
    ) -> Result<Option<Vec<Review>>, DbError> {
        self.read(after, move |pool| async move {
            let exists: Option<i64> =
                crate::sql::query_scalar("SELECT id FROM products WHERE id = $1")
                    .bind(product_id)
                    .fetch_optional(&pool)
                    .await?;
            if exists.is_none() {
                return Ok(None);
            }
            fetch_reviews(&pool, product_id, before, limit)
                .await
                .map(Some)
        })
        .await
    }

    /// Changes a review's rating and/or body; the review as it is now (`None`: gone).
    pub async fn update_review(
        &self,
        id: i64,
        rating: Option<i64>,
        body: Option<String>,
    ) -> Result<(Option<Review>, Option<Lsn>), DbError> {
        self.write(move |pool| async move {
            let mut tx = pool.begin().await?;
            // Then read back: MariaDB has no UPDATE ... RETURNING.
            let done = crate::sql::query(
                "UPDATE reviews SET rating = COALESCE($2, rating), body = COALESCE($3, body)
                 WHERE id = $1",
            )
            .bind(id)
            .bind(rating)
            .bind(body)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Ok(None);
            }
            let product: i64 = crate::sql::query_scalar("SELECT product_id FROM reviews WHERE id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            let sql = format!("SELECT {REVIEW_COLUMNS} FROM reviews r JOIN users u ON u.id = r.user_id WHERE r.id = $1");
            let row: ReviewRow = crate::sql::query_as(sql).bind(id).fetch_one(&mut *tx).await?;
            product_changed(&mut tx, product, false).await?;
            tx.commit().await?;
            Ok(Some(review(row)))
        })
        .await
    }

    /// The review's product and author, for permission checks (from the primary).
    pub async fn review_owner(&self, id: i64) -> Result<Option<(i64, i64)>, DbError> {
        Ok(crate::sql::query_as::<(i64, i64)>(
            "SELECT product_id, user_id FROM reviews WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.primary())
        .await?)
    }

    pub async fn delete_review(&self, id: i64) -> Result<(bool, Option<Lsn>), DbError> {
        self.write(move |pool| async move {
            let mut tx = pool.begin().await?;
            let product: Option<i64> =
                crate::sql::query_scalar("DELETE FROM reviews WHERE id = $1 RETURNING product_id")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(product) = product {
                product_changed(&mut tx, product, false).await?;
            }
            tx.commit().await?;
            Ok(product.is_some())
        })
        .await
    }

    /// A page of `user_id`'s reviews, newest first, with ids below `before`.
    pub async fn reviews_by_user(
        &self,
        after: Option<Lsn>,
        user_id: i64,
        before: i64,
        limit: i64,
    ) -> Result<Vec<UserReview>, DbError> {
        let rows = self
            .read(after, async |pool| {
                crate::sql::query_as::<(i64, i64, String, i64, String, i64)>(REVIEWS_BY_USER.sql())
                    .bind(user_id)
                    .bind(before)
                    .bind(limit)
                    .fetch_all(&pool)
                    .await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, product_id, name, rating, body, created_at)| UserReview {
                    id,
                    product: ProductRef {
                        id: product_id,
                        name,
                    },
                    rating,
                    body,
                    created_at,
                },
            )
            .collect())
    }

    /// Whether any product exists (first start loads a demo bakery when none does).
    pub async fn has_products(&self) -> Result<bool, DbError> {
        Ok(self.product_count().await? > 0)
    }

    /// How many products there are (on the primary).
    pub async fn product_count(&self) -> Result<i64, DbError> {
        Ok(crate::sql::query_scalar("SELECT COUNT(*) FROM products")
            .fetch_one(self.primary())
            .await?)
    }
}

pub(crate) async fn fetch_price<'e>(
    pool: impl crate::sql::Target<'e>,
    id: i64,
) -> Result<Option<i64>, sqlx::Error> {
    crate::sql::query_scalar("SELECT price_cents FROM product_prices WHERE product_id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub(crate) async fn fetch_description<'e>(
    pool: impl crate::sql::Target<'e>,
    id: i64,
) -> Result<Option<String>, sqlx::Error> {
    crate::sql::query_scalar("SELECT description FROM product_descriptions WHERE product_id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub(crate) async fn fetch_images<'e>(
    pool: impl crate::sql::Target<'e>,
    id: i64,
) -> Result<Vec<Image>, sqlx::Error> {
    let rows: Vec<(i64, String, String)> = crate::sql::query_as(
        "SELECT id, url, thumb_url FROM product_images WHERE product_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, url, thumb_url)| Image { id, url, thumb_url })
        .collect())
}

async fn fetch_reviews(
    pool: &AnyPool,
    id: i64,
    before: i64,
    limit: i64,
) -> Result<Vec<Review>, sqlx::Error> {
    let sql = format!(
        "SELECT {REVIEW_COLUMNS} FROM reviews r JOIN users u ON u.id = r.user_id
         WHERE r.product_id = $1 AND r.id < $2 ORDER BY r.id DESC LIMIT $3"
    );
    let rows: Vec<ReviewRow> = crate::sql::query_as(sql)
        .bind(id)
        .bind(before)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(review).collect())
}

impl Database {
    /// Attaches a processed image to a product, once per job (a second attempt of the
    /// same job attaches nothing). False when the product is gone.
    pub async fn attach_image(
        &self,
        product_id: i64,
        job_id: i64,
        url: &str,
        thumb_url: &str,
    ) -> Result<(bool, Option<Lsn>), DbError> {
        let (url, thumb_url) = (url.to_string(), thumb_url.to_string());
        self.write(move |pool| async move {
            let mut tx = pool.begin().await?;
            let attached = crate::sql::query(
                "INSERT INTO product_images (product_id, url, thumb_url, created_at, job_id)
                 SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM products WHERE id = $1)
                 ON CONFLICT (job_id) DO NOTHING",
            )
            .bind(product_id)
            .bind(&url)
            .bind(&thumb_url)
            .bind(now_millis())
            .bind(job_id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if attached {
                product_changed(&mut tx, product_id, false).await?;
            }
            let exists: Option<i64> =
                crate::sql::query_scalar("SELECT id FROM products WHERE id = $1")
                    .bind(product_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok(exists.is_some())
        })
        .await
    }
}

/// Stages `product.changed` in the write's transaction: the product's pre-rendered
/// page is re-rendered (or, `deleted`, dropped from the edge) and its document
/// rebuilt. The product's `version` moves on in the same transaction: a document
/// reflects one version, and an older one never replaces a newer (`documents`).
pub(crate) async fn product_changed(
    conn: &mut sqlx::AnyConnection,
    id: i64,
    deleted: bool,
) -> Result<(), sqlx::Error> {
    if !deleted {
        crate::sql::query(
            "UPDATE products SET version = version + 1, changed_at = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(now_millis())
        .execute(&mut *conn)
        .await?;
    }
    let event = bakery_events::ProductChanged {
        product_id: id,
        deleted,
    };
    crate::messaging::stage(conn, &event, &bakery_telemetry::correlation_id()).await
}
