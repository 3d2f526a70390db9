//! Path 2 of the lesson: de-normalised product documents, "your joins are down in
//! your application code". One row per product (`product_documents`) holds what a
//! product page needs — name, price, description, photos, the rating summary and the
//! newest reviews with their authors' names — so a read is one row, no join.
//!
//! [`Database::assemble_product_document`] is the application-side join: one query
//! per table, in one snapshot, the authors looked up by id and matched in this code.
//! [`Database::store_product_document`] is fenced by the product's `version` (bumped
//! by every write that stages `product.changed`): a late or repeated event can
//! never replace a newer document, and a product deleted meanwhile is never
//! brought back (the foreign key refuses the insert).

use std::collections::HashMap;

use bakery_core::catalog::{Author, Product, Rating, Review};
use sqlx::Acquire;

use crate::catalog::{EMBEDDED_REVIEWS, fetch_description, fetch_images, fetch_price};
use crate::{Database, DbError, Dialect, Lsn, now_millis};

/// A product as the tables say now, and which version of them that is.
#[derive(Debug, Clone)]
pub struct Assembled {
    pub product: Product,
    pub version: i64,
    /// When that version was written (unix ms): the document's lag is measured from it.
    pub changed_at: i64,
}

/// What storing a document did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Stored,
    /// A document of this version or a newer one was there already.
    NotNewer,
    /// The product was deleted meanwhile.
    Gone,
}

/// How far the documents are behind the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Behind {
    /// Products whose document is missing or reflects an older version.
    pub products: i64,
    /// When the oldest change not yet in a document was made (unix ms), if any.
    pub oldest_change_at: Option<i64>,
}

impl Database {
    /// The product document of `id` as the tables hold it now (from the primary, in
    /// one snapshot); `None` when there is no such product. No SQL join: each table
    /// is read on its own and the parts are put together here.
    pub async fn assemble_product_document(&self, id: i64) -> Result<Option<Assembled>, DbError> {
        let dialect = self.dialect();
        let assembled = self
            .read(Some(Lsn::LATEST), move |pool| async move {
                // Every read below sees the same committed state: MariaDB is told
                // before the transaction begins, PostgreSQL as it begins.
                let snapshot = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ";
                let mut conn = pool.acquire().await?;
                if dialect == Dialect::MariaDb {
                    crate::sql::query(snapshot).execute(&mut *conn).await?;
                }
                let mut tx = conn.begin().await?;
                if dialect == Dialect::Postgres {
                    crate::sql::query(snapshot).execute(&mut *tx).await?;
                }
                let Some((name, updated_at, version, changed_at)) =
                    crate::sql::query_as::<(String, i64, i64, i64)>(
                        "SELECT name, updated_at, version, changed_at FROM products WHERE id = $1",
                    )
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                else {
                    return Ok(None);
                };
                let price_cents = fetch_price(&mut *tx, id).await?.unwrap_or_default();
                let description = fetch_description(&mut *tx, id).await?.unwrap_or_default();
                let images = fetch_images(&mut *tx, id).await?;
                // SUM of a BIGINT is NUMERIC on PostgreSQL, which `Any` cannot decode.
                let (total, sum): (i64, i64) = crate::sql::query_as(
                    "SELECT COUNT(*), CAST(COALESCE(SUM(rating), 0) AS BIGINT)
                     FROM reviews WHERE product_id = $1",
                )
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                let newest: Vec<(i64, i64, i64, String, i64)> = crate::sql::query_as(
                    "SELECT id, user_id, rating, body, created_at FROM reviews
                     WHERE product_id = $1 ORDER BY id DESC LIMIT $2",
                )
                .bind(id)
                .bind(EMBEDDED_REVIEWS)
                .fetch_all(&mut *tx)
                .await?;
                let names = usernames(&mut tx, newest.iter().map(|r| r.1)).await?;
                tx.commit().await?;
                // The join: each review gets its author's name, matched by id here.
                let reviews = newest
                    .into_iter()
                    .filter_map(|(review_id, user_id, rating, body, created_at)| {
                        Some(Review {
                            id: review_id,
                            product_id: id,
                            user: Author {
                                id: user_id,
                                username: names.get(&user_id)?.clone(),
                            },
                            rating,
                            body,
                            created_at,
                        })
                    })
                    .collect();
                Ok(Some(Assembled {
                    product: Product {
                        id,
                        name,
                        description,
                        price_cents,
                        images,
                        reviews,
                        reviews_total: total,
                        rating: Rating::from_sum(sum, total),
                        updated_at,
                    },
                    version,
                    changed_at,
                }))
            })
            .await?;
        Ok(assembled)
    }

    /// Stores `assembled` as its product's document unless a document of a newer
    /// version is there — or of the same version, unless this is a `rebuild` (which
    /// mends a document spoiled without a change of version) — or the product is gone.
    pub async fn store_product_document(
        &self,
        assembled: &Assembled,
        rebuild: bool,
    ) -> Result<Stored, DbError> {
        let body = serde_json::to_string(&assembled.product)
            .map_err(|e| DbError::Other(sqlx::Error::Encode(e.into())))?;
        let (id, version) = (assembled.product.id, assembled.version);
        if self.dialect() == Dialect::MariaDb {
            return self
                .store_product_document_locked(id, version, body, rebuild)
                .await;
        }
        // PostgreSQL stores JSONB; the fence is the upsert's condition.
        let body_value = if self.is_postgres() {
            "CAST($3 AS JSONB)"
        } else {
            "$3"
        };
        let sql = format!(
            "{} WHERE product_documents.version < excluded.version + $5",
            upsert_document(body_value)
        );
        let stored = self
            .write(async move |pool| {
                crate::sql::query(sql)
                    .bind(id)
                    .bind(version)
                    .bind(body)
                    .bind(now_millis())
                    .bind(i64::from(rebuild))
                    .execute(&pool)
                    .await
            })
            .await;
        match stored {
            Ok((done, _)) if done.rows_affected() > 0 => Ok(Stored::Stored),
            Ok(_) => Ok(Stored::NotNewer),
            Err(e) if is_gone(&e) => Ok(Stored::Gone),
            Err(e) => Err(e),
        }
    }

    /// MariaDB's form of the fenced upsert (its `ON DUPLICATE KEY UPDATE` has no
    /// condition): the stored version is read under a lock, then the document is
    /// written or left.
    async fn store_product_document_locked(
        &self,
        id: i64,
        version: i64,
        body: String,
        rebuild: bool,
    ) -> Result<Stored, DbError> {
        let stored = self
            .write(async move |pool| {
                let mut tx = pool.begin().await?;
                let current: Option<i64> = crate::sql::query_scalar(
                    "SELECT version FROM product_documents WHERE product_id = $1 FOR UPDATE",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                if current.is_some_and(|current| current >= version + i64::from(rebuild)) {
                    return Ok(Stored::NotNewer);
                }
                crate::sql::query(upsert_document("$3"))
                    .bind(id)
                    .bind(version)
                    .bind(body)
                    .bind(now_millis())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Stored::Stored)
            })
            .await;
        match stored {
            Ok((stored, _)) => Ok(stored),
            Err(e) if is_gone(&e) => Ok(Stored::Gone),
            Err(e) => Err(e),
        }
    }

    /// The document of product `id`, and the version it reflects: one row, no join
    /// (from a replica that has `after`, like every read).
    pub async fn product_document(
        &self,
        id: i64,
        after: Option<Lsn>,
    ) -> Result<Option<(Product, i64)>, DbError> {
        let row = self
            .read(after, move |pool| async move {
                crate::sql::query_as::<(String, i64)>(
                    "SELECT CAST(body AS TEXT), version FROM product_documents WHERE product_id = $1",
                )
                .bind(id)
                .fetch_optional(&pool)
                .await
            })
            .await?;
        row.map(|(body, version)| {
            serde_json::from_str(&body)
                .map(|product| (product, version))
                .map_err(|e| DbError::Other(sqlx::Error::Decode(e.into())))
        })
        .transpose()
    }

    /// Product ids after `cursor`, in order, at most `limit` (rebuilds and checks
    /// walk the catalog with it).
    pub async fn product_ids(&self, cursor: i64, limit: i64) -> Result<Vec<i64>, DbError> {
        self.read(Some(Lsn::LATEST), move |pool| async move {
            crate::sql::query_scalar("SELECT id FROM products WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(cursor)
                .bind(limit)
                .fetch_all(&pool)
                .await
        })
        .await
    }

    /// How many products' documents are missing or older than the tables, and since
    /// when the oldest of those changes waits (`/ops` and the lag metric).
    pub async fn documents_behind(&self) -> Result<Behind, DbError> {
        let (products, oldest) = self
            .read(Some(Lsn::LATEST), async |pool| {
                crate::sql::query_as::<(i64, i64)>(
                    "SELECT COUNT(*), COALESCE(MIN(p.changed_at), 0) FROM products p
                     LEFT JOIN product_documents d ON d.product_id = p.id
                     WHERE d.version IS NULL OR d.version < p.version",
                )
                .fetch_one(&pool)
                .await
            })
            .await?;
        Ok(Behind {
            products,
            oldest_change_at: (products > 0 && oldest > 0).then_some(oldest),
        })
    }
}

/// The statement that writes a document (`$1` product, `$2` version, `body_value`,
/// `$4` when), replacing the one there.
fn upsert_document(body_value: &str) -> String {
    format!(
        "INSERT INTO product_documents (product_id, version, body, stored_at)
         VALUES ($1, $2, {body_value}, $4)
         ON CONFLICT (product_id) DO UPDATE
         SET version = excluded.version, body = excluded.body, stored_at = excluded.stored_at"
    )
}

/// The product is gone: the document's foreign key refused it.
fn is_gone(error: &DbError) -> bool {
    matches!(error, DbError::Other(sqlx::Error::Database(e)) if e.is_foreign_key_violation())
}

/// The names of the users `ids` (each asked once), by id.
async fn usernames(
    conn: &mut sqlx::AnyConnection,
    ids: impl Iterator<Item = i64>,
) -> Result<HashMap<i64, String>, sqlx::Error> {
    let mut ids: Vec<i64> = ids.collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT id, username FROM users WHERE id IN ({})",
        crate::sql::placeholders(1, ids.len())
    );
    Ok(crate::sql::query_as::<(i64, String)>(sql)
        .bind_all(&ids)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{NewUser, UserChange};
    use crate::catalog::{NewProduct, ProductChange};

    /// The document assembled in code equals the product the SQL join reads; the
    /// version fences older documents out, and a deleted product's stays gone.
    #[tokio::test]
    async fn documents_equal_the_joined_tables_and_only_a_newer_version_replaces_one() {
        let (db, dir) = crate::test_database("documents").await;
        let (id, _) = db
            .create_product(NewProduct {
                name: "Document loaf",
                description: "Kept whole.",
                price_cents: 300,
            })
            .await
            .unwrap();
        let (author, _) = db
            .create_user(NewUser {
                username: "reader",
                email: "reader@example.com",
                password_hash: "x",
                is_admin: false,
                email_verified: true,
            })
            .await
            .unwrap();
        db.create_review(id, author.id, 4, "Good crumb.")
            .await
            .unwrap();
        let first = db.assemble_product_document(id).await.unwrap().unwrap();
        let joined = db.product(id, Some(Lsn::LATEST)).await.unwrap().unwrap();
        assert_eq!(first.product, joined, "the same product, joined in code");
        assert_eq!(first.product.reviews[0].user.username, "reader");
        assert_eq!(
            db.store_product_document(&first, false).await.unwrap(),
            Stored::Stored
        );
        assert_eq!(
            db.store_product_document(&first, false).await.unwrap(),
            Stored::NotNewer,
            "the same version again changes nothing"
        );

        // A rename and a price change move the version on.
        db.update_user(
            author.id,
            UserChange {
                username: Some("baker"),
                ..UserChange::default()
            },
        )
        .await
        .unwrap();
        db.update_product(
            id,
            ProductChange {
                price_cents: Some(350),
                ..ProductChange::default()
            },
        )
        .await
        .unwrap();
        let newer = db.assemble_product_document(id).await.unwrap().unwrap();
        assert!(newer.version > first.version);
        assert_eq!(newer.product.reviews[0].user.username, "baker");
        assert_eq!(newer.product.price_cents, 350);
        assert_eq!(
            db.store_product_document(&newer, false).await.unwrap(),
            Stored::Stored
        );
        // The older assembly arriving late is refused, even by a rebuild; a rebuild
        // replaces a document of the same version (one spoiled by hand).
        assert_eq!(
            db.store_product_document(&first, false).await.unwrap(),
            Stored::NotNewer
        );
        assert_eq!(
            db.store_product_document(&first, true).await.unwrap(),
            Stored::NotNewer
        );
        assert_eq!(
            db.store_product_document(&newer, false).await.unwrap(),
            Stored::NotNewer
        );
        assert_eq!(
            db.store_product_document(&newer, true).await.unwrap(),
            Stored::Stored
        );
        let (stored, version) = db.product_document(id, None).await.unwrap().unwrap();
        assert_eq!((stored, version), (newer.product.clone(), newer.version));
        assert_eq!(db.documents_behind().await.unwrap(), Behind::default());

        // Deleted: the document goes with it, and a late store cannot bring it back.
        db.delete_product(id).await.unwrap();
        assert!(db.product_document(id, None).await.unwrap().is_none());
        let mut later = newer.clone();
        later.version += 1;
        assert_eq!(
            db.store_product_document(&later, false).await.unwrap(),
            Stored::Gone
        );
        assert!(db.product_document(id, None).await.unwrap().is_none());
        db.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
