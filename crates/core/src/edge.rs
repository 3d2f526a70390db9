//! Names the load balancer's edge and the web clones share.

/// The session cookie's name: its presence makes a page personal (the edge sends
/// such requests to a clone).
pub const SESSION_COOKIE: &str = "bakery_session";

/// Sent by the load balancer with a request its edge could have answered but had
/// no page for: the clone serving it asks for the page to be rendered.
pub const MISS_HEADER: &str = "x-bakery-edge-miss";

/// Headers every HTML answer carries, from a clone or from the edge: no type
/// sniffing, a content security policy (our own scripts, styles and images only;
/// never framed), and the older frame header for browsers without `frame-ancestors`.
pub const HTML_HEADERS: [(&str, &str); 3] = [
    ("x-content-type-options", "nosniff"),
    (
        "content-security-policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
         connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; \
         frame-ancestors 'none'",
    ),
    ("x-frame-options", "DENY"),
];

/// The edge path of a product's anonymous page.
pub fn product_path(id: i64) -> String {
    format!("/products/{id}")
}

/// The edge path of a staff page.
pub fn page_path(slug: &str) -> String {
    format!("/pages/{slug}")
}

/// A page's slug: 1–64 characters of `a-z`, `0-9` and `-`, not starting with `-`.
pub fn valid_slug(slug: &str) -> bool {
    (1..=64).contains(&slug.len())
        && !slug.starts_with('-')
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}
