//! `render`: a page made ahead of time for the edge — a staff page from its
//! Markdown, or a product's anonymous page — stored with its compressed copies
//! where every load balancer follows it (`edge_pages`). Reads go to the primary:
//! the render must see the write that asked for it, not a cached or lagging copy.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};

use bakery_app::App;
use bakery_app::pages::RenderTarget;
use bakery_core::edge::{page_path, product_path};
use bakery_db::jobs::Claimed;
use bakery_site::prerender;
use serde_json::json;

use crate::job::{JobError, Progress};

/// Whether this process has seen every asset at the edge (see [`run`]).
static ASSETS_AT_EDGE: AtomicBool = AtomicBool::new(false);

static TEMPLATES: LazyLock<minijinja::Environment<'static>> = LazyLock::new(bakery_site::templates);

pub async fn run(
    app: &App,
    job: &Claimed,
    progress: &Progress,
) -> Result<serde_json::Value, JobError> {
    let target: RenderTarget = serde_json::from_str(&job.payload).map_err(|e| {
        JobError::Permanent(format!(
            "a render payload is {{\"page\": slug}} or {{\"product\": id}}: {e}"
        ))
    })?;
    // The pages link the assets at their content-hashed paths: the edge needs them
    // (each new version of one, too). Once this process has seen them all there,
    // it need not look again: an asset's path names its content, and none is removed.
    if !ASSETS_AT_EDGE.load(Ordering::Relaxed) {
        let mut missing = false;
        for asset in prerender::assets() {
            missing |= !app.edge_has(&asset.path).await.map_err(transient)?;
        }
        if missing {
            let assets = tokio::task::spawn_blocking(prerender::asset_edge_pages)
                .await
                .map_err(|e| JobError::Transient(format!("compression failed: {e}")))?;
            for asset in &assets {
                app.put_edge_page(asset).await.map_err(transient)?;
            }
        }
        ASSETS_AT_EDGE.store(true, Ordering::Relaxed);
    }
    // When the source is read: a product's page is stored only if no render that
    // read later (nor the product's deletion) got there first.
    let read_at = bakery_core::now_millis();
    let (path, html) = match &target {
        RenderTarget::Page(slug) => {
            let page = app
                .page(slug)
                .await
                .map_err(transient)?
                .ok_or_else(|| JobError::Permanent(format!("there is no page {slug:?}")))?;
            let html = prerender::page_html(&TEMPLATES, &page)
                .map_err(|e| JobError::Permanent(format!("template: {e}")))?;
            (page_path(slug), html)
        }
        RenderTarget::Product(id) => {
            let path = product_path(*id);
            let Some(product) = app.product_to_render(*id).await.map_err(transient)? else {
                // Deleted since: the edge must not keep serving it.
                app.invalidate_edge_page(&path, true)
                    .await
                    .map_err(transient)?;
                return Ok(json!({ "path": path, "gone": true }));
            };
            let html = prerender::product_html(&TEMPLATES, &product)
                .map_err(|e| JobError::Permanent(format!("template: {e}")))?;
            (path, html)
        }
    };
    progress.set(50);
    let page = compress(move || {
        prerender::edge_page(path, "text/html; charset=utf-8", html.into_bytes(), false)
    })
    .await?;
    let stored = match &target {
        RenderTarget::Product(id) => app
            .put_product_page(&page, *id, read_at)
            .await
            .map_err(transient)?,
        RenderTarget::Page(_) => {
            app.put_edge_page(&page).await.map_err(transient)?;
            true
        }
    };
    progress.set(100);
    Ok(json!({
        "stored": stored,
        "path": page.path,
        "etag": page.etag,
        "bytes": page.body.len(),
        "gzip_bytes": page.gzip.len(),
        "br_bytes": page.br.len(),
    }))
}

/// Compression at brotli's best takes milliseconds: off the async threads.
async fn compress(
    make: impl FnOnce() -> bakery_db::pages::EdgePage + Send + 'static,
) -> Result<bakery_db::pages::EdgePage, JobError> {
    tokio::task::spawn_blocking(make)
        .await
        .map_err(|e| JobError::Transient(format!("compression failed: {e}")))
}

fn transient(error: impl std::fmt::Display) -> JobError {
    JobError::Transient(error.to_string())
}
