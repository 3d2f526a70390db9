//! Pages and the edge: the staff's Markdown pages, and what the load balancers
//! serve from their own copy (`edge_pages`: rendered pages and assets, with their
//! precompressed bodies). Rows are followed by `updated_at`; the clock is each
//! writer's, so a follower reads back over a margin (see [`FOLLOW_MARGIN_MS`]).

use crate::{Database, DbError, Lsn, now_millis};

/// How far back a follower of `edge_pages` reads beyond what it has seen: a row's
/// `updated_at` is taken before its transaction commits, so a row may become
/// visible after rows stamped later. Commits take far less than this.
pub const FOLLOW_MARGIN_MS: i64 = 5_000;

/// A page as the staff wrote it.
#[derive(Debug, Clone)]
pub struct Page {
    pub slug: String,
    pub title: String,
    pub body_markdown: String,
    pub updated_at: i64,
}

/// Which version of `path` the edge has, without its bodies.
#[derive(Debug, Clone)]
pub struct EdgeVersion {
    pub path: String,
    pub etag: String,
    pub stale: bool,
    /// Its source was deleted: followers drop it.
    pub gone: bool,
    pub updated_at: i64,
}

/// One representation the edge serves at `path`.
#[derive(Debug, Clone)]
pub struct EdgePage {
    pub path: String,
    pub content_type: String,
    pub etag: String,
    pub body: Vec<u8>,
    pub gzip: Vec<u8>,
    pub br: Vec<u8>,
    /// Content-hashed (an asset): cacheable for ever.
    pub immutable: bool,
    /// Its source changed; a new render is on its way.
    pub stale: bool,
    pub updated_at: i64,
}

/// Booleans are 0 or 1: sqlx's Any driver cannot decode SQLite booleans.
type EdgeRow = (
    String,
    String,
    String,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    i64,
    i64,
    i64,
);

fn edge_page(row: EdgeRow) -> EdgePage {
    let (path, content_type, etag, body, gzip, br, immutable, stale, updated_at) = row;
    EdgePage {
        path,
        content_type,
        etag,
        body,
        gzip,
        br,
        immutable: immutable != 0,
        stale: stale != 0,
        updated_at,
    }
}

const EDGE_COLUMNS: &str = "path, content_type, etag, body, gzip, br, immutable, stale, updated_at";

impl Database {
    /// Creates or replaces the page `slug`.
    pub async fn put_page(
        &self,
        slug: &str,
        title: &str,
        body_markdown: &str,
    ) -> Result<Option<Lsn>, DbError> {
        let (slug, title, body) = (
            slug.to_string(),
            title.to_string(),
            body_markdown.to_string(),
        );
        let ((), lsn) = self
            .write(move |pool| async move {
                crate::sql::query(
                    "INSERT INTO pages (slug, title, body_markdown, updated_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (slug) DO UPDATE
                     SET title = excluded.title, body_markdown = excluded.body_markdown,
                         updated_at = excluded.updated_at",
                )
                .bind(&slug)
                .bind(&title)
                .bind(&body)
                .bind(now_millis())
                .execute(&pool)
                .await?;
                Ok(())
            })
            .await?;
        Ok(lsn)
    }

    /// The page `slug` as last written (from the primary: a render must see the
    /// write that asked for it).
    pub async fn page(&self, slug: &str) -> Result<Option<Page>, DbError> {
        let row: Option<(String, String, String, i64)> = crate::sql::query_as(
            "SELECT slug, title, body_markdown, updated_at FROM pages WHERE slug = $1",
        )
        .bind(slug)
        .fetch_optional(self.primary())
        .await?;
        Ok(row.map(|(slug, title, body_markdown, updated_at)| Page {
            slug,
            title,
            body_markdown,
            updated_at,
        }))
    }

    /// Stores what the edge serves at `page.path` (fresh: not stale).
    pub async fn put_edge_page(&self, page: &EdgePage) -> Result<(), DbError> {
        let sql = "INSERT INTO edge_pages (path, content_type, etag, body, gzip, br, immutable, stale, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8)
             ON CONFLICT (path) DO UPDATE
             SET content_type = excluded.content_type, etag = excluded.etag, body = excluded.body,
                 gzip = excluded.gzip, br = excluded.br, immutable = excluded.immutable,
                 stale = 0, gone = 0, updated_at = excluded.updated_at";
        with_page(crate::sql::query(sql), page)
            .bind(now_millis())
            .execute(self.primary())
            .await?;
        Ok(())
    }

    /// Stores a product's rendered page, fenced: only while the product exists, and
    /// only if its data was read (`read_at`) no earlier than that of the page stored
    /// now (or of its tombstone). False when the fence refused it.
    pub async fn put_product_page(
        &self,
        page: &EdgePage,
        product_id: i64,
        read_at: i64,
    ) -> Result<bool, DbError> {
        if self.dialect() == crate::Dialect::MariaDb {
            return self
                .put_product_page_locked(page, product_id, read_at)
                .await;
        }
        let sql = "INSERT INTO edge_pages (path, content_type, etag, body, gzip, br, immutable, stale, updated_at, source_read_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, 0, $8, $9
             WHERE EXISTS (SELECT 1 FROM products WHERE id = $10)
             ON CONFLICT (path) DO UPDATE
             SET content_type = excluded.content_type, etag = excluded.etag, body = excluded.body,
                 gzip = excluded.gzip, br = excluded.br, immutable = excluded.immutable,
                 stale = 0, gone = 0, updated_at = excluded.updated_at,
                 source_read_at = excluded.source_read_at
             WHERE edge_pages.source_read_at <= excluded.source_read_at";
        let stored = with_page(crate::sql::query(sql), page)
            .bind(now_millis())
            .bind(read_at)
            .bind(product_id)
            .execute(self.primary())
            .await?
            .rows_affected();
        Ok(stored > 0)
    }

    /// MariaDB's form of [`Database::put_product_page`] (its upsert has no
    /// condition): the product is locked against deletion and the stored page's
    /// fence read under a lock, then the page is written or left.
    async fn put_product_page_locked(
        &self,
        page: &EdgePage,
        product_id: i64,
        read_at: i64,
    ) -> Result<bool, DbError> {
        let mut tx = self.primary().begin().await?;
        let exists: Option<i64> =
            crate::sql::query_scalar("SELECT 1 FROM products WHERE id = $1 LOCK IN SHARE MODE")
                .bind(product_id)
                .fetch_optional(&mut *tx)
                .await?;
        let fence: Option<i64> = crate::sql::query_scalar(
            "SELECT source_read_at FROM edge_pages WHERE path = $1 FOR UPDATE",
        )
        .bind(&page.path)
        .fetch_optional(&mut *tx)
        .await?;
        if exists.is_none() || fence.is_some_and(|fence| fence > read_at) {
            return Ok(false);
        }
        let sql = "INSERT INTO edge_pages (path, content_type, etag, body, gzip, br, immutable, stale, updated_at, source_read_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9)
             ON CONFLICT (path) DO UPDATE
             SET content_type = excluded.content_type, etag = excluded.etag, body = excluded.body,
                 gzip = excluded.gzip, br = excluded.br, immutable = excluded.immutable,
                 stale = 0, gone = 0, updated_at = excluded.updated_at,
                 source_read_at = excluded.source_read_at";
        with_page(crate::sql::query(sql), page)
            .bind(now_millis())
            .bind(read_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Whether the edge has something at `path` already.
    pub async fn has_edge_page(&self, path: &str) -> Result<bool, DbError> {
        let found: Option<i64> =
            crate::sql::query_scalar("SELECT 1 FROM edge_pages WHERE path = $1 AND gone = 0")
                .bind(path)
                .fetch_optional(self.primary())
                .await?;
        Ok(found.is_some())
    }

    /// Marks the page at `path` stale (its source changed, a new render is on its
    /// way) or, when `gone` (its source was deleted), leaves a tombstone that tells
    /// the followers to drop it.
    pub async fn invalidate_edge_page(&self, path: &str, gone: bool) -> Result<(), DbError> {
        let sql = if gone {
            "UPDATE edge_pages SET gone = 1, body = $3, gzip = $3, br = $3, updated_at = $2,
                    source_read_at = $2
             WHERE path = $1"
        } else {
            "UPDATE edge_pages SET stale = 1, updated_at = $2 WHERE path = $1"
        };
        let mut query = crate::sql::query(sql).bind(path).bind(now_millis());
        if gone {
            query = query.bind(Vec::<u8>::new());
        }
        query.execute(self.primary()).await?;
        Ok(())
    }

    /// What changed at the edge since `since` (unix ms, inclusive), without bodies.
    pub async fn edge_versions_since(&self, since: i64) -> Result<Vec<EdgeVersion>, DbError> {
        let rows: Vec<(String, String, i64, i64, i64)> = crate::sql::query_as(
            "SELECT path, etag, stale, gone, updated_at FROM edge_pages WHERE updated_at >= $1",
        )
        .bind(since)
        .fetch_all(self.primary())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(path, etag, stale, gone, updated_at)| EdgeVersion {
                path,
                etag,
                stale: stale != 0,
                gone: gone != 0,
                updated_at,
            })
            .collect())
    }

    /// The edge pages at `paths` (those there are, not gone).
    pub async fn edge_pages(&self, paths: &[String]) -> Result<Vec<EdgePage>, DbError> {
        let mut pages = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(500) {
            let sql = format!(
                "SELECT {EDGE_COLUMNS} FROM edge_pages WHERE gone = 0 AND path IN ({})",
                crate::sql::placeholders(1, chunk.len())
            );
            let query = crate::sql::query_as::<EdgeRow>(sql).bind_all(chunk);
            pages.extend(
                query
                    .fetch_all(self.primary())
                    .await?
                    .into_iter()
                    .map(edge_page),
            );
        }
        Ok(pages)
    }

    /// Every path the edge serves, for a follower to drop rows deleted outright.
    pub async fn edge_paths(&self) -> Result<Vec<String>, DbError> {
        Ok(
            crate::sql::query_scalar("SELECT path FROM edge_pages WHERE gone = 0")
                .fetch_all(self.primary())
                .await?,
        )
    }
}

/// `query` with a page's columns bound as `$1` to `$7`: path, content type, etag,
/// body, gzip, br, immutable.
fn with_page(query: crate::sql::Query, page: &EdgePage) -> crate::sql::Query {
    query
        .bind(&page.path)
        .bind(&page.content_type)
        .bind(&page.etag)
        .bind(&page.body)
        .bind(&page.gzip)
        .bind(&page.br)
        .bind(i64::from(page.immutable))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(path: &str, body: &str) -> EdgePage {
        EdgePage {
            path: path.to_string(),
            content_type: "text/html; charset=utf-8".into(),
            etag: body.to_string(),
            body: body.as_bytes().to_vec(),
            gzip: Vec::new(),
            br: Vec::new(),
            immutable: false,
            stale: false,
            updated_at: 0,
        }
    }

    async fn stored_body(db: &Database, path: &str) -> Option<Vec<u8>> {
        db.edge_pages(&[path.to_string()])
            .await
            .unwrap()
            .into_iter()
            .next()
            .map(|p| p.body)
    }

    /// Issue 25, 10: a slower render of older data, or one that read a product just
    /// before its deletion, cannot overwrite the page or bring it back.
    #[tokio::test]
    async fn renders_are_fenced_by_when_they_read_their_product() {
        let (db, dir) = crate::test_database("fence").await;
        let (id, _) = db
            .create_product(crate::catalog::NewProduct {
                name: "Fenced loaf",
                description: "",
                price_cents: 100,
            })
            .await
            .unwrap();
        let path = bakery_core::edge::product_path(id);
        assert!(
            db.put_product_page(&page(&path, "v2"), id, 2_000)
                .await
                .unwrap()
        );
        // A render that read before the stored one: refused.
        assert!(
            !db.put_product_page(&page(&path, "v1"), id, 1_000)
                .await
                .unwrap()
        );
        assert_eq!(stored_body(&db, &path).await, Some(b"v2".to_vec()));
        assert!(
            db.put_product_page(&page(&path, "v3"), id, 3_000)
                .await
                .unwrap()
        );
        // Deleted: the tombstone holds against a render that read before it...
        db.delete_product(id).await.unwrap();
        db.invalidate_edge_page(&path, true).await.unwrap();
        let before = now_millis() - 1;
        assert!(
            !db.put_product_page(&page(&path, "v4"), id, before)
                .await
                .unwrap()
        );
        // ... and against any later one too: the product is gone.
        let later = now_millis() + 1_000;
        assert!(
            !db.put_product_page(&page(&path, "v5"), id, later)
                .await
                .unwrap()
        );
        assert_eq!(stored_body(&db, &path).await, None, "the page stays gone");
        db.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
