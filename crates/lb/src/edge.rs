//! The static edge: pre-rendered pages and the site's assets, answered by the load
//! balancer from its own copy without touching a web clone (contract: "Pages at the
//! edge").
//!
//! The copy follows the database's `edge_pages` (where render jobs put each page
//! with its gzip and brotli bodies), so a load balancer on another machine, with no
//! shared disk, has the same pages: every [`FOLLOW_EVERY`] it reads which rows
//! changed (path, etag, state — a small indexed read) and fetches the bodies of
//! those it does not have. A page whose source changed is marked stale until its new
//! render lands and is served meanwhile (`x-edge: stale`, as stale-while-revalidate).
//!
//! What is eligible: `GET`/`HEAD` of `/pages/…` and `/assets/…`, and of
//! `/products/{id}` without a session cookie (a logged-in view is personal: it goes
//! to a clone). An eligible path the edge does not have goes to a clone, marked so
//! the clone can ask for it to be rendered (`x-edge: miss`).
//!
//! Paths are canonical ([`respell`]): a product id written other than as its plain
//! decimal number (`/products/01`, `/products/+1`, `/products/%31`) is redirected
//! (301) to `/products/1`, a percent-encoded slug under `/pages/` to its plain
//! spelling, and what cannot be one of ours (a sign, a zero, an overflow, a slug out
//! of the alphabet) is 404 here — none reaches a clone as a miss, so no spelling of
//! a path can bypass the edge and cost a render.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bakery_config::Config;
use bakery_db::Database;
use bakery_db::pages::{EdgePage, EdgeVersion, FOLLOW_MARGIN_MS};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};

use crate::reply::{self, Body};

/// How often the copy catches up with the database: a change reaches the edge
/// within this (plus the render).
const FOLLOW_EVERY: Duration = Duration::from_millis(100);
/// How often the whole list of paths is compared, to drop rows deleted outright.
const RESYNC_EVERY: Duration = Duration::from_secs(30);
pub use bakery_core::edge::MISS_HEADER;
use bakery_core::edge::SESSION_COOKIE;
/// `x-edge: hit|stale|miss` on every eligible answer.
pub const EDGE_HEADER: &str = "x-edge";

const PAGE_CACHE: &str = "public, max-age=5, stale-while-revalidate=60";
const ASSET_CACHE: &str = "public, max-age=31536000, immutable";

/// One page as the edge answers it (headers prepared once).
struct Entry {
    version: (String, bool),
    content_type: HeaderValue,
    etag: HeaderValue,
    cache_control: HeaderValue,
    stale: bool,
    /// HTML carries the site's security headers.
    html: bool,
    body: bytes::Bytes,
    gzip: bytes::Bytes,
    br: bytes::Bytes,
}

impl Entry {
    fn new(page: EdgePage) -> Option<Self> {
        Some(Self {
            version: (page.etag.clone(), page.stale),
            content_type: HeaderValue::from_str(&page.content_type).ok()?,
            etag: HeaderValue::from_str(&format!("\"{}\"", page.etag)).ok()?,
            cache_control: HeaderValue::from_static(if page.immutable {
                ASSET_CACHE
            } else {
                PAGE_CACHE
            }),
            stale: page.stale,
            html: page.content_type.starts_with("text/html"),
            body: page.body.into(),
            gzip: page.gzip.into(),
            br: page.br.into(),
        })
    }
}

/// The load balancer's copy of the edge pages.
#[derive(Default)]
pub struct Edge {
    pages: RwLock<HashMap<String, Arc<Entry>>>,
}

/// Whether a request may be answered at the edge.
pub fn eligible(method: &Method, path: &str, headers: &HeaderMap) -> bool {
    may_serve(method, path) && (!path.starts_with("/products/") || !has_session(headers))
}

/// Whether a request for `path` may be answered here, whoever sends it (a product
/// page only to a visitor without a session).
pub fn may_serve(method: &Method, path: &str) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    path.starts_with("/pages/")
        || path.starts_with("/assets/")
        || path
            .strip_prefix("/products/")
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

/// How a request for an edge path is spelled.
#[derive(Debug, PartialEq, Eq)]
pub enum Spelling {
    /// As the edge keys it (or not an edge path at all).
    Canonical,
    /// Another spelling of this canonical path.
    Respelled(String),
    /// Names no page of ours in any spelling.
    Nothing,
}

/// How `path` is spelled, for a `GET`/`HEAD`.
pub fn spelling(method: &Method, path: &str) -> Spelling {
    if method != Method::GET && method != Method::HEAD {
        return Spelling::Canonical;
    }
    if let Some(id) = path.strip_prefix("/products/") {
        return product_spelling(path, id);
    }
    if let Some(slug) = path.strip_prefix("/pages/") {
        if !slug.contains('%') {
            return if bakery_core::edge::valid_slug(slug) {
                Spelling::Canonical
            } else {
                Spelling::Nothing
            };
        }
        return match percent_decoded(slug) {
            Some(plain) if bakery_core::edge::valid_slug(&plain) => {
                Spelling::Respelled(bakery_core::edge::page_path(&plain))
            }
            _ => Spelling::Nothing,
        };
    }
    Spelling::Canonical
}

fn product_spelling(path: &str, id: &str) -> Spelling {
    // `/products/{id}/reviews` and the like are a clone's routes, not edge pages.
    if id.is_empty() || id.contains('/') {
        return Spelling::Canonical;
    }
    // The common case, on every request for a product page: already canonical.
    if !id.starts_with('0') && id.len() <= 18 && id.bytes().all(|b| b.is_ascii_digit()) {
        return Spelling::Canonical;
    }
    let Some(plain) = percent_decoded(id) else {
        return Spelling::Nothing;
    };
    let unsigned = plain.strip_prefix('+').unwrap_or(&plain);
    let numeric = !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit());
    if !numeric {
        // A name that is no number at all is the clone's to refuse (400), unless
        // it hid behind percent-encoding or a sign.
        return if plain == id && !plain.starts_with('-') {
            Spelling::Canonical
        } else {
            Spelling::Nothing
        };
    }
    match unsigned.parse::<i64>() {
        Ok(n) if n > 0 => {
            let canonical = bakery_core::edge::product_path(n);
            if canonical == path {
                Spelling::Canonical
            } else {
                Spelling::Respelled(canonical)
            }
        }
        _ => Spelling::Nothing,
    }
}

/// `text` with its `%XX` escapes decoded; `None` when one is malformed or the
/// result is not UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The answer to a request for an edge path spelled otherwise: 301 to the
/// canonical path (the query kept), or 404; `None` for a canonical path.
pub fn respell(method: &Method, path: &str, query: Option<&str>) -> Option<Response<Body>> {
    match spelling(method, path) {
        Spelling::Canonical => None,
        Spelling::Nothing => Some(reply::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "there is nothing here",
        )),
        Spelling::Respelled(canonical) => {
            let location = match query {
                Some(query) => format!("{canonical}?{query}"),
                None => canonical,
            };
            let mut response = Response::new(reply::full(bytes::Bytes::new()));
            *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
            let headers = response.headers_mut();
            if let Ok(location) = HeaderValue::from_str(&location) {
                headers.insert(header::LOCATION, location);
            }
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            Some(response)
        }
    }
}

fn has_session(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|pair| {
            pair.trim_start()
                .strip_prefix(SESSION_COOKIE)
                .is_some_and(|rest| rest.starts_with('='))
        })
}

/// The encodings a client accepts, by preference of ours: brotli, then gzip.
fn encoding(headers: &HeaderMap) -> Option<&'static str> {
    let accepted: Vec<(String, f32)> = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (name, q)
        })
        .collect();
    let wants = |coding: &str| {
        accepted
            .iter()
            .find(|(name, _)| name == coding)
            .or_else(|| accepted.iter().find(|(name, _)| name == "*"))
            .is_some_and(|(_, q)| *q > 0.0)
    };
    ["br", "gzip"].into_iter().find(|coding| wants(coding))
}

impl Edge {
    /// The answer for an eligible request, or `None` when the edge has no page for
    /// `path` (the request goes to a clone).
    pub fn answer(&self, path: &str, headers: &HeaderMap) -> Option<Response<Body>> {
        let entry = self.pages.read().ok()?.get(path).cloned()?;
        let state = if entry.stale { "stale" } else { "hit" };
        metrics::counter!("bakery_edge_requests_total", "result" => state).increment(1);
        let not_modified = headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| {
                let tag = tag.trim();
                tag == "*" || tag.trim_start_matches("W/") == entry.etag.to_str().unwrap_or("")
            });
        let mut response = if not_modified {
            let mut response = Response::new(reply::full(bytes::Bytes::new()));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            let (body, coding) = match encoding(headers) {
                Some("br") => (entry.br.clone(), Some("br")),
                Some(_) => (entry.gzip.clone(), Some("gzip")),
                None => (entry.body.clone(), None),
            };
            metrics::counter!("bakery_edge_bytes_total").increment(body.len() as u64);
            let mut response = Response::new(reply::full(body));
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, entry.content_type.clone());
            if let Some(coding) = coding {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
            }
            if entry.html {
                for (name, value) in bakery_core::edge::HTML_HEADERS {
                    headers.insert(name, HeaderValue::from_static(value));
                }
            } else {
                // A stylesheet or a script is what its type says, too.
                headers.insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
            }
            response
        };
        let out = response.headers_mut();
        out.insert(header::ETAG, entry.etag.clone());
        out.insert(header::CACHE_CONTROL, entry.cache_control.clone());
        out.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        out.insert(EDGE_HEADER, HeaderValue::from_static(state));
        Some(response)
    }

    /// Keeps the copy following `db` until aborted. A database not migrated yet is
    /// tried again; meanwhile every eligible request is a miss.
    pub fn spawn_follower(self: Arc<Self>, db: Database) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut seen = 0i64;
            let mut last_resync = tokio::time::Instant::now();
            loop {
                match self.catch_up(&db, seen).await {
                    Ok(latest) => seen = seen.max(latest),
                    Err(error) => tracing::debug!(%error, "edge follow failed; trying again"),
                }
                if last_resync.elapsed() >= RESYNC_EVERY {
                    last_resync = tokio::time::Instant::now();
                    if let Ok(paths) = db.edge_paths().await {
                        self.keep_only(&paths);
                    }
                }
                tokio::time::sleep(FOLLOW_EVERY).await;
            }
        })
    }

    /// Fetches what changed since `seen` (over the commit margin); the newest
    /// `updated_at` read.
    async fn catch_up(&self, db: &Database, seen: i64) -> Result<i64, bakery_db::DbError> {
        let since = if seen == 0 {
            0
        } else {
            seen - FOLLOW_MARGIN_MS
        };
        let versions = db.edge_versions_since(since).await?;
        let latest = versions.iter().map(|v| v.updated_at).max().unwrap_or(seen);
        let (gone, live): (Vec<EdgeVersion>, Vec<EdgeVersion>) =
            versions.into_iter().partition(|v| v.gone);
        let wanted: Vec<String> = {
            let pages = self.pages.read().map_err(|_| poisoned())?;
            live.into_iter()
                .filter(|v| {
                    pages
                        .get(&v.path)
                        .is_none_or(|entry| entry.version != (v.etag.clone(), v.stale))
                })
                .map(|v| v.path)
                .collect()
        };
        let fetched = if wanted.is_empty() {
            Vec::new()
        } else {
            db.edge_pages(&wanted).await?
        };
        let mut pages = self.pages.write().map_err(|_| poisoned())?;
        for version in gone {
            pages.remove(&version.path);
        }
        for page in fetched {
            let path = page.path.clone();
            if let Some(entry) = Entry::new(page) {
                pages.insert(path, Arc::new(entry));
            }
        }
        metrics::gauge!("bakery_edge_pages").set(pages.len() as f64);
        Ok(latest)
    }

    fn keep_only(&self, paths: &[String]) {
        if let Ok(mut pages) = self.pages.write() {
            let keep: std::collections::HashSet<&String> = paths.iter().collect();
            pages.retain(|path, _| keep.contains(path));
        }
    }
}

fn poisoned() -> bakery_db::DbError {
    bakery_db::DbError::Other(bakery_db::SqlxError::Protocol(
        "the edge's page map was poisoned".into(),
    ))
}

/// The database as a load balancer sees it: the primary only, as its own login
/// when it has one (least privilege: the edge's pages and its registry row), one
/// connection; waits until it answers.
pub async fn database(config: &Config) -> Database {
    let mut config = config.clone();
    config.database.pool_size = 1;
    config.database.replica_urls.clear();
    if let Some(url) = config.lb.database_url.clone() {
        config.database.url = url;
    }
    loop {
        match Database::connect_configured(&config).await {
            Ok(db) => return db,
            Err(error) => {
                tracing::warn!(%error, "the load balancer cannot reach the database yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_paths_have_one_spelling() {
        use super::Spelling::{Canonical, Nothing, Respelled};
        let get = Method::GET;
        let respelled = |p: &str| Respelled(p.to_string());
        assert_eq!(spelling(&get, "/products/12"), Canonical);
        assert_eq!(spelling(&get, "/products/012"), respelled("/products/12"));
        assert_eq!(spelling(&get, "/products/+12"), respelled("/products/12"));
        assert_eq!(
            spelling(&get, "/products/%31%32"),
            respelled("/products/12")
        );
        assert_eq!(spelling(&get, "/products/-12"), Nothing);
        assert_eq!(spelling(&get, "/products/0"), Nothing);
        assert_eq!(spelling(&get, "/products/000"), Nothing);
        assert_eq!(spelling(&get, "/products/99999999999999999999"), Nothing);
        assert_eq!(spelling(&get, "/products/%zz"), Nothing);
        assert_eq!(spelling(&get, "/products/%61bc"), Nothing);
        assert_eq!(
            spelling(&get, "/products/abc"),
            Canonical,
            "the clone's 400"
        );
        assert_eq!(spelling(&get, "/products/12/reviews"), Canonical);
        assert_eq!(spelling(&Method::POST, "/products/012"), Canonical);
        assert_eq!(spelling(&get, "/pages/about"), Canonical);
        assert_eq!(spelling(&get, "/pages/%61bout"), respelled("/pages/about"));
        assert_eq!(spelling(&get, "/pages/About"), Nothing);
        assert_eq!(spelling(&get, "/pages/%2e%2e"), Nothing);
        assert_eq!(spelling(&get, "/pages/a%2Fb"), Nothing);
        assert_eq!(spelling(&get, "/assets/site.css"), Canonical);
    }
}
