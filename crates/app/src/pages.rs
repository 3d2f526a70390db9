//! Staff pages and the edge: a page is written in Markdown and rendered by a
//! `render` job into what the load balancers serve; product pages are rendered
//! the same way, when a product changes or when the edge missed one.

use bakery_core::catalog::Product;
use bakery_core::edge::valid_slug;
use bakery_core::{Invalid, User};
use bakery_db::Lsn;
use bakery_db::pages::{EdgePage, Page};
use serde::Deserialize;
use serde_json::json;

use bakery_events::topology::job_kind;

use crate::{App, Error, Written};

/// The longest page body accepted, in bytes of Markdown.
pub const MAX_MARKDOWN: usize = 200_000;
/// A product's page is rendered this long after the change that asks for it, so
/// that a burst of changes renders once.
pub const PRODUCT_RENDER_DELAY_MS: i64 = 250;

/// A page the edge missed is queued for rendering at most once per this, per
/// process, whatever the rate of requests for it.
pub const MISS_RENDER_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Which targets had a render queued for a miss lately (see [`App::render_missed`]).
#[derive(Default)]
pub(crate) struct Missed(std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>);

impl Missed {
    /// Whether `key` may have a render now (and, if so, it is taken).
    fn admit(&self, key: String, now: std::time::Instant) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 10_000 {
            seen.retain(|_, at| now.duration_since(*at) < MISS_RENDER_INTERVAL);
        }
        match seen.get(&key) {
            Some(at) if now.duration_since(*at) < MISS_RENDER_INTERVAL => false,
            _ => {
                seen.insert(key, now);
                true
            }
        }
    }
}

/// A page as the staff send it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PageDraft {
    pub title: String,
    pub body_markdown: String,
}

/// What a `render` job renders (its payload).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RenderTarget {
    Page(String),
    Product(i64),
}

impl RenderTarget {
    /// The job's dedupe key: one queued render per target.
    fn key(&self) -> String {
        match self {
            Self::Page(slug) => format!("render:page:{slug}"),
            Self::Product(id) => format!("render:product:{id}"),
        }
    }
}

impl App {
    /// Writes the page `slug` and queues its render (the job is the caller's, who
    /// is told by `job.finished`); answers the job's id.
    pub async fn put_page(
        &self,
        actor: &User,
        slug: &str,
        draft: PageDraft,
    ) -> Result<Written<i64>, Error> {
        self.require_admin(actor).await?;
        if !valid_slug(slug) {
            return Err(Invalid::new(
                "bad_slug",
                "a page's slug is 1 to 64 characters of a-z, 0-9 and -",
            )
            .into());
        }
        let title = draft.title.trim().to_string();
        if title.is_empty() || title.chars().count() > 200 {
            return Err(Invalid::new("bad_title", "a title is 1 to 200 characters").into());
        }
        if draft.body_markdown.len() > MAX_MARKDOWN {
            return Err(Invalid::new(
                "body_too_long",
                format!("a page's Markdown is at most {MAX_MARKDOWN} bytes"),
            )
            .into());
        }
        let (app, slug, actor) = (self.clone(), slug.to_string(), actor.clone());
        self.unit(async move {
            app.db()
                .put_page(&slug, &title, &draft.body_markdown)
                .await?;
            let target = json!(RenderTarget::Page(slug));
            let job = app
                .enqueue_job(job_kind::RENDER, Some(&actor), target)
                .await?;
            Ok(job)
        })
        .await
    }

    /// The edge had no page for `target`: queues its render, at most once per
    /// [`MISS_RENDER_INTERVAL`] in this process (a flood of requests for a page the
    /// edge lacks costs one render, not one each).
    pub async fn render_missed(&self, target: RenderTarget) -> Result<Option<i64>, Error> {
        if !self.0.missed.admit(target.key(), std::time::Instant::now()) {
            return Ok(None);
        }
        self.render_soon(target, 0).await
    }

    /// Queues a render of `target` in `delay_ms`, unless one is queued already;
    /// answers the new job's id, if any. A delayed render is dispatched by
    /// whoever queued it, when due (`Database::dispatch_due_jobs`), or else by the
    /// workers' reaper.
    pub async fn render_soon(
        &self,
        target: RenderTarget,
        delay_ms: i64,
    ) -> Result<Option<i64>, Error> {
        let app = self.clone();
        self.unit(async move {
            let correlation = bakery_telemetry::correlation_id();
            let id = app
                .db()
                .enqueue_keyed_job(
                    job_kind::RENDER,
                    &target.key(),
                    &json!(target),
                    crate::jobs::MAX_ATTEMPTS,
                    delay_ms,
                    &correlation,
                )
                .await?;
            if id.is_some() {
                metrics::counter!("bakery_jobs_total", "kind" => job_kind::RENDER, "state" => "queued")
                    .increment(1);
            }
            Ok(id)
        })
        .await
    }
}

/// What a render job reads and writes: the pages and products it renders, and
/// the edge's table.
impl App {
    /// The staff page `slug`, from the primary.
    pub async fn page(&self, slug: &str) -> Result<Option<Page>, Error> {
        Ok(self.db().page(slug).await?)
    }

    /// A product as it is now on the primary (a render must not see an older one).
    pub async fn product_to_render(&self, id: i64) -> Result<Option<Product>, Error> {
        Ok(self.db().product(id, Some(Lsn::LATEST)).await?)
    }

    /// Stores a product's rendered page, fenced by when its data was read (see
    /// `Database::put_product_page`); false when a newer render or the product's
    /// deletion got there first.
    pub async fn put_product_page(
        &self,
        page: &EdgePage,
        product_id: i64,
        read_at: i64,
    ) -> Result<bool, Error> {
        Ok(self
            .db()
            .put_product_page(page, product_id, read_at)
            .await?)
    }

    /// Whether the edge has a page at `path`.
    pub async fn edge_has(&self, path: &str) -> Result<bool, Error> {
        Ok(self.db().has_edge_page(path).await?)
    }

    /// Stores a rendered page for every load balancer's edge.
    pub async fn put_edge_page(&self, page: &EdgePage) -> Result<(), Error> {
        Ok(self.db().put_edge_page(page).await?)
    }

    /// Marks the edge's page at `path` stale (served while re-rendered), or, `gone`,
    /// drops it.
    pub async fn invalidate_edge_page(&self, path: &str, gone: bool) -> Result<(), Error> {
        Ok(self.db().invalidate_edge_page(path, gone).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_page_is_admitted_once_per_interval() {
        let missed = Missed::default();
        let now = std::time::Instant::now();
        let key = RenderTarget::Product(7).key();
        assert!(missed.admit(key.clone(), now));
        assert!(!missed.admit(key.clone(), now + std::time::Duration::from_secs(1)));
        assert!(missed.admit(RenderTarget::Product(8).key(), now));
        assert!(missed.admit(key, now + MISS_RENDER_INTERVAL));
    }
}
