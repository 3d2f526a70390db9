//! A large catalog made in bulk, for the benchmark of the two read paths ("soon
//! your requests will get slow after a large dataset"): products named
//! `Bench loaf N`, each with a price, a description and as many reviews as there
//! are bench reviewers. Made by set-based statements on the server (a recursive
//! series, then `INSERT ... SELECT`), a slice of products per statement, so a
//! million reviews take seconds, not an hour of round trips.

use crate::{Database, DbError, now_millis};

/// Products per statement of reviews (and per progress step).
const SLICE: i64 = 5_000;

/// What the catalog holds of the bench's dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dataset {
    pub products: i64,
    pub reviews: i64,
}

impl Database {
    /// Makes the bench's catalog up to `products` products with
    /// `reviews_per_product` reviews each (what exists already is kept); `progress`
    /// is told the products done so far. Answers what the catalog then holds.
    pub async fn load_bench_catalog(
        &self,
        products: i64,
        reviews_per_product: i64,
        progress: impl Fn(i64),
    ) -> Result<Dataset, DbError> {
        let now = now_millis();
        let have = self.bench_products().await?;
        // Reviewers first: review i of a product is by reviewer i (one review each).
        self.series_insert(
            "INSERT INTO users (username, email, password_hash, is_admin, email_verified, created_at)
             SELECT 'bench-reviewer-' || x, 'bench-reviewer-' || x || '@example.com', '!', 0, 1, $3
             FROM g WHERE NOT EXISTS
                 (SELECT 1 FROM users WHERE lower(username) = 'bench-reviewer-' || x)",
            1,
            reviews_per_product,
            now,
        )
        .await?;
        if have < products {
            self.series_insert(
                "INSERT INTO products (name, created_at, updated_at)
                 SELECT 'Bench loaf ' || x, $3, $3 FROM g",
                have + 1,
                products,
                now,
            )
            .await?;
        }
        let (first, last): (i64, i64) = crate::sql::query_as(
            "SELECT COALESCE(MIN(id), 0), COALESCE(MAX(id), -1) FROM products WHERE name LIKE 'Bench loaf %'",
        )
        .fetch_one(self.primary())
        .await?;
        let mut from = first;
        while from <= last {
            let to = from + SLICE - 1;
            for sql in [
                "INSERT INTO product_prices (product_id, price_cents, updated_at)
                 SELECT id, 100 + id % 900, $3 FROM products p
                 WHERE id BETWEEN $1 AND $2 AND name LIKE 'Bench loaf %'
                   AND NOT EXISTS (SELECT 1 FROM product_prices x WHERE x.product_id = p.id)",
                "INSERT INTO product_descriptions (product_id, description, updated_at)
                 SELECT id, 'A loaf of the benchmark, number ' || id || '.', $3 FROM products p
                 WHERE id BETWEEN $1 AND $2 AND name LIKE 'Bench loaf %'
                   AND NOT EXISTS (SELECT 1 FROM product_descriptions x WHERE x.product_id = p.id)",
                "INSERT INTO reviews (product_id, user_id, rating, body, created_at)
                 SELECT p.id, u.id, 1 + (p.id + u.id) % 5, 'Review of bench loaf ' || p.id || '.', $3
                 FROM products p JOIN users u ON u.username LIKE 'bench-reviewer-%'
                 WHERE p.id BETWEEN $1 AND $2 AND p.name LIKE 'Bench loaf %'
                   AND NOT EXISTS (SELECT 1 FROM reviews x WHERE x.product_id = p.id)",
            ] {
                crate::sql::query(sql)
                    .bind(from)
                    .bind(to)
                    .bind(now)
                    .execute(self.primary())
                    .await?;
            }
            progress((to.min(last) - first + 1).max(0));
            from = to + 1;
        }
        // Fresh statistics for the planner: rows made in bulk are not yet counted.
        let analyze = match self.dialect() {
            crate::Dialect::MariaDb => {
                "ANALYZE TABLE users, products, product_prices, product_descriptions, reviews"
            }
            _ => "ANALYZE",
        };
        crate::sql::query(analyze).execute(self.primary()).await?;
        let reviews: i64 = crate::sql::query_scalar(
            "SELECT COUNT(*) FROM reviews r JOIN products p ON p.id = r.product_id
             WHERE p.name LIKE 'Bench loaf %'",
        )
        .fetch_one(self.primary())
        .await?;
        Ok(Dataset {
            products: self.bench_products().await?,
            reviews,
        })
    }

    /// How many of the bench's products there are.
    pub async fn bench_products(&self) -> Result<i64, DbError> {
        Ok(
            crate::sql::query_scalar(
                "SELECT COUNT(*) FROM products WHERE name LIKE 'Bench loaf %'",
            )
            .fetch_one(self.primary())
            .await?,
        )
    }

    /// The ids of the bench's products.
    pub async fn bench_product_ids(&self) -> Result<Vec<i64>, DbError> {
        Ok(crate::sql::query_scalar(
            "SELECT id FROM products WHERE name LIKE 'Bench loaf %' ORDER BY id",
        )
        .fetch_all(self.primary())
        .await?)
    }

    /// Runs `insert` (which selects from a series `g(x)`, `$1` to `$2`, with `$3`
    /// the time) in slices of [`SLICE`] (fewer on MariaDB), each statement short.
    async fn series_insert(
        &self,
        insert: &str,
        from: i64,
        to: i64,
        now: i64,
    ) -> Result<(), DbError> {
        // MariaDB stops a recursive query at 1,000 iterations (`max_recursive_iterations`).
        let slice = match self.dialect() {
            crate::Dialect::MariaDb => 1_000,
            _ => SLICE,
        };
        let mut start = from;
        while start <= to {
            let end = (start + slice - 1).min(to);
            let series = "WITH RECURSIVE g(x) AS (SELECT CAST($1 AS BIGINT) UNION ALL SELECT x + 1 FROM g WHERE x < $2)";
            // MariaDB puts the series after `INSERT INTO t (...)`, the others before it.
            let sql = match (self.dialect(), insert.split_once(" SELECT ")) {
                (crate::Dialect::MariaDb, Some((into, select))) => {
                    format!("{into} {series} SELECT {select}")
                }
                _ => format!("{series} {insert}"),
            };
            crate::sql::query(sql)
                .bind(start)
                .bind(end)
                .bind(now)
                .execute(self.primary())
                .await?;
            start = end + 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// The catalog is made once, with its reviews, and made again adds nothing;
    /// its products read alike from the tables and from their documents.
    #[tokio::test]
    async fn a_bench_catalog_is_made_in_bulk_and_only_once() {
        let (db, dir) = crate::test_database("dataset").await;
        let made = db.load_bench_catalog(12, 3, |_| {}).await.unwrap();
        assert_eq!((made.products, made.reviews), (12, 36));
        let again = db.load_bench_catalog(12, 3, |_| {}).await.unwrap();
        assert_eq!(again, made);
        let ids = db.bench_product_ids().await.unwrap();
        assert_eq!(ids.len(), 12);
        let product = db
            .product(ids[4], Some(crate::Lsn::LATEST))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(product.name, format!("Bench loaf {}", 5));
        assert_eq!(product.reviews.len(), 3);
        assert!(product.price_cents >= 100);
        let assembled = db.assemble_product_document(ids[4]).await.unwrap().unwrap();
        assert_eq!(assembled.product, product);
        db.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
