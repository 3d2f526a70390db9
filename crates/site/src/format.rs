//! How values are written for people on the site's pages.

/// `$6.50` for 650 cents.
pub fn price(cents: i64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    #[test]
    fn prices_have_two_decimals() {
        assert_eq!(super::price(650), "$6.50");
        assert_eq!(super::price(5), "$0.05");
    }
}
