//! How values are written for people on the site's pages.

/// `$6.50` for 650 cents.
pub fn price(cents: i64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

/// A figure with one decimal (`12.3`), as the operations page shows rates; what
/// is not a finite number shows as a dash.
pub fn decimal(value: f64) -> String {
    if value.is_finite() {
        // `+ 0.0` turns a negative zero into a zero.
        format!("{:.1}", value + 0.0)
    } else {
        "—".to_string()
    }
}

/// A ratio as a percentage with one decimal (`75.0 %`).
pub fn percent(ratio: f64) -> String {
    format!("{} %", decimal(ratio * 100.0))
}

/// A moment (RFC 3339, as the API writes it) as a page shows it: a `<time>` element
/// whose text reads "4 Dec 2026, 21:23 UTC" (the pages' script rewrites it in the
/// reader's own time zone) and whose `datetime` keeps the exact moment.
pub fn when(moment: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    let readable = time::OffsetDateTime::parse(moment, &Rfc3339)
        .ok()
        .and_then(|t| {
            let format = time::macros::format_description!(
                "[day padding:none] [month repr:short] [year], [hour]:[minute] UTC"
            );
            t.to_offset(time::UtcOffset::UTC).format(&format).ok()
        })
        .unwrap_or_else(|| moment.to_string());
    format!(
        "<time datetime=\"{}\">{}</time>",
        bakery_core::html::escape(moment),
        bakery_core::html::escape(&readable)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn prices_have_two_decimals() {
        assert_eq!(super::price(650), "$6.50");
        assert_eq!(super::price(5), "$0.05");
    }

    #[test]
    fn figures_have_one_decimal() {
        assert_eq!(super::decimal(12.345), "12.3");
        assert_eq!(super::decimal(-0.0), "0.0");
        assert_eq!(super::decimal(f64::NAN), "—");
        assert_eq!(super::percent(0.75), "75.0 %");
        assert_eq!(super::percent(0.0), "0.0 %");
    }

    #[test]
    fn moments_read_as_words_and_keep_their_exact_time() {
        assert_eq!(
            super::when("2026-12-04T21:23:10.602Z"),
            "<time datetime=\"2026-12-04T21:23:10.602Z\">4 Dec 2026, 21:23 UTC</time>"
        );
        assert_eq!(
            super::when("<b>"),
            "<time datetime=\"&lt;b&gt;\">&lt;b&gt;</time>"
        );
    }
}
