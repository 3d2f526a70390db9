//! Pages made ahead of time for the edge (the load balancers) with the site's own
//! templates: a staff page from its Markdown, the anonymous view of a product, and
//! the site's stylesheet — each with a strong etag and its gzip and brotli copies,
//! compressed once here rather than per request at the edge.

use std::io::Write;
use std::sync::LazyLock;

use bakery_core::catalog::Product;
use bakery_db::pages::{EdgePage, Page};
use minijinja::value::Serde;
use minijinja::{Environment, context};
use sha2::{Digest, Sha256};

/// A file of the site's own, served at a content-hashed path (`/assets/site.<hash>.css`):
/// a new version is a new path, so every version can be cached for ever.
pub struct Asset {
    pub path: String,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// The site's assets: the stylesheet and the account page's script (scripts live in
/// files, so the content security policy can forbid inline ones).
pub fn assets() -> &'static [Asset] {
    static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
        [
            (
                "site",
                "css",
                "text/css; charset=utf-8",
                include_str!("../assets/site.css"),
            ),
            (
                "notes",
                "js",
                "text/javascript; charset=utf-8",
                include_str!("../assets/notes.js"),
            ),
            (
                "time",
                "js",
                "text/javascript; charset=utf-8",
                include_str!("../assets/time.js"),
            ),
            (
                "ops",
                "js",
                "text/javascript; charset=utf-8",
                include_str!("../assets/ops.js"),
            ),
        ]
        .into_iter()
        .map(|(stem, ext, content_type, body)| Asset {
            path: format!("/assets/{stem}.{}.{ext}", &digest(body.as_bytes())[..12]),
            content_type,
            body,
        })
        .collect()
    });
    &ASSETS
}

/// The asset served at `path`, if any.
pub fn asset(path: &str) -> Option<&'static Asset> {
    assets().iter().find(|asset| asset.path == path)
}

/// The stylesheet's path, as pages link it.
pub fn css_path() -> &'static str {
    &assets()[0].path
}

/// The script that shows a logged-in user's notifications live, on every page.
pub fn notes_js_path() -> &'static str {
    &assets()[1].path
}

/// The script that writes dates in the reader's time zone, on every page.
pub fn time_js_path() -> &'static str {
    &assets()[2].path
}

/// The operations page's script's path.
pub fn ops_js_path() -> &'static str {
    &assets()[3].path
}

/// Who the pages' footer names as having served a pre-rendered page.
const PRE_RENDERED: &str = "the edge (pre-rendered)";

fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Markdown to HTML, inert: raw HTML in the source is dropped (so no `<script>`,
/// no event handlers) and links with dangerous schemes (`javascript:` and the like)
/// are emptied — comrak's safe mode.
pub fn markdown_html(markdown: &str) -> String {
    let mut options = comrak::Options::default();
    options.extension.strikethrough = true;
    options.extension.table = true;
    options.extension.autolink = true;
    options.render.r#unsafe = false;
    comrak::markdown_to_html(markdown, &options)
}

/// A staff page, whole.
pub fn page_html(templates: &Environment<'_>, page: &Page) -> Result<String, minijinja::Error> {
    templates.get_template("page.html")?.render(context! {
        title => &page.title,
        body_html => markdown_html(&page.body_markdown),
        css => css_path(),
        time_js => time_js_path(),
        served_by => PRE_RENDERED,
    })
}

/// A product's page as someone not logged in sees it.
pub fn product_html(
    templates: &Environment<'_>,
    product: &Product,
) -> Result<String, minijinja::Error> {
    templates.get_template("product.html")?.render(context! {
        product => Serde(product),
        price => crate::format::price(product.price_cents),
        css => css_path(),
        time_js => time_js_path(),
        served_by => PRE_RENDERED,
    })
}

/// What the edge stores for `path`: the body, its compressed copies and its etag.
pub fn edge_page(path: String, content_type: &str, body: Vec<u8>, immutable: bool) -> EdgePage {
    let etag = digest(&body)[..32].to_string();
    EdgePage {
        path,
        content_type: content_type.to_string(),
        etag,
        gzip: gzip(&body),
        br: brotli(&body),
        body,
        immutable,
        stale: false,
        updated_at: 0,
    }
}

/// The assets as the edge serves them.
pub fn asset_edge_pages() -> Vec<EdgePage> {
    assets()
        .iter()
        .map(|asset| {
            edge_page(
                asset.path.clone(),
                asset.content_type,
                asset.body.as_bytes().to_vec(),
                true,
            )
        })
        .collect()
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(body);
    encoder.finish().unwrap_or_default()
}

fn brotli(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // The window no larger than the page (the default, 4 MiB, makes quality 11
    // allocate tens of MiB per page: a worker rendering a few at once held ~225 MB).
    let window = (usize::BITS - body.len().max(1).leading_zeros()).clamp(10, 22) as i32;
    let params = brotli::enc::BrotliEncoderParams {
        quality: 11,
        lgwin: window,
        size_hint: body.len(),
        ..Default::default()
    };
    // Reading from a slice and writing to a Vec cannot fail.
    let _ = brotli::BrotliCompress(&mut &body[..], &mut out, &params);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_with_script_renders_inert() {
        let html = markdown_html(
            "# Hi\n\n<script>alert(1)</script>\n\n[x](javascript:alert(1)) <img src=x onerror=alert(1)>",
        );
        assert!(html.contains("<h1>Hi</h1>"), "{html}");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("onerror"), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
    }

    #[test]
    fn compressed_copies_decompress_to_the_body() {
        use std::io::Read;
        let body = "<p>bread</p>".repeat(200).into_bytes();
        let page = edge_page("/pages/x".into(), "text/html", body.clone(), false);
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&page.gzip[..])
            .read_to_end(&mut unzipped)
            .unwrap();
        let mut unbrotli = Vec::new();
        brotli::BrotliDecompress(&mut &page.br[..], &mut unbrotli).unwrap();
        assert!(page.br.len() < body.len() / 10);
        assert_eq!((unzipped, unbrotli), (body.clone(), body));
        assert_eq!(page.etag.len(), 32);
    }
}
