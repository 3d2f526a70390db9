//! The site itself, in one place: the HTML templates (minijinja, compiled into the
//! binary), the content-hashed assets, how values are written for people
//! ([`format`]), and the pages made ahead of time for the edge ([`prerender`]). The
//! web clones render live pages with it; the workers' render jobs pre-render with the
//! very same templates, so a page looks the same from either.

use minijinja::Environment;

pub mod format;
pub mod prerender;

/// The templates, parsed once per process.
pub fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("../templates/base.html")),
        ("home.html", include_str!("../templates/home.html")),
        ("signup.html", include_str!("../templates/signup.html")),
        ("login.html", include_str!("../templates/login.html")),
        ("account.html", include_str!("../templates/account.html")),
        ("products.html", include_str!("../templates/products.html")),
        ("product.html", include_str!("../templates/product.html")),
        ("events.html", include_str!("../templates/events.html")),
        ("event.html", include_str!("../templates/event.html")),
        ("user.html", include_str!("../templates/user.html")),
        ("page.html", include_str!("../templates/page.html")),
        ("message.html", include_str!("../templates/message.html")),
        ("ops.html", include_str!("../templates/ops.html")),
        ("ops_live.html", include_str!("../templates/ops_live.html")),
    ] {
        env.add_template(name, source)
            .expect("the bundled templates parse");
    }
    // `{{ review.created_at|when }}`: a moment in words, in a `<time>` element.
    env.add_filter("when", |moment: String| {
        minijinja::Value::from_safe_string(format::when(&moment))
    });
    // `{{ rate|decimal }}` and `{{ ratio|percent }}`: figures on the operations page.
    env.add_filter("decimal", |value: f64| format::decimal(value));
    env.add_filter("percent", |ratio: f64| format::percent(ratio));
    env
}
