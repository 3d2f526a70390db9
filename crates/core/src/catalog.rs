//! The catalog: products, their images and reviews, as the API shows them.

use serde::{Deserialize, Serialize};

use crate::Invalid;
use crate::clock::{deserialize_millis, serialize_millis};

/// Checks free text: a length range in characters and no control characters
/// other than newlines and tabs.
pub fn text(
    field: &'static str,
    code: &'static str,
    raw: &str,
    min: usize,
    max: usize,
) -> Result<String, Invalid> {
    let n = raw.chars().count();
    if n < min || n > max {
        return Err(Invalid::new(
            code,
            format!("{field} must be {min} to {max} characters"),
        ));
    }
    if raw
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(Invalid::new(
            code,
            format!("{field} may not contain control characters"),
        ));
    }
    Ok(raw.to_string())
}

pub fn product_name(raw: &str) -> Result<String, Invalid> {
    text("a product name", "invalid_name", raw.trim(), 1, 200)
}

pub fn product_description(raw: &str) -> Result<String, Invalid> {
    text("a description", "invalid_description", raw, 0, 10_000)
}

/// A price in cents: 0 to 1,000,000.00.
pub fn price_cents(raw: i64) -> Result<i64, Invalid> {
    if !(0..=100_000_000).contains(&raw) {
        return Err(Invalid::new(
            "invalid_price",
            "price_cents is a whole number from 0 to 100000000",
        ));
    }
    Ok(raw)
}

pub fn rating(raw: i64) -> Result<i64, Invalid> {
    if !(1..=5).contains(&raw) {
        return Err(Invalid::new(
            "invalid_rating",
            "rating is a whole number from 1 to 5",
        ));
    }
    Ok(raw)
}

pub fn review_body(raw: &str) -> Result<String, Invalid> {
    text("a review", "invalid_body", raw.trim(), 1, 5_000)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rating {
    pub average: f64,
    pub count: i64,
}

impl Rating {
    /// From the sum and count of ratings, the average rounded to two decimals.
    pub fn from_sum(sum: i64, count: i64) -> Self {
        let average = if count == 0 {
            0.0
        } else {
            (sum as f64 / count as f64 * 100.0).round() / 100.0
        };
        Self { average, count }
    }
}

/// A product in a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProductSummary {
    pub id: i64,
    pub name: String,
    pub price_cents: i64,
    pub rating: Rating,
    /// The first photo's thumbnail, when the product has a photo.
    #[serde(default)]
    pub thumb_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Image {
    pub id: i64,
    pub url: String,
    pub thumb_url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Author {
    pub id: i64,
    pub username: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Review {
    pub id: i64,
    pub product_id: i64,
    pub user: Author,
    pub rating: i64,
    pub body: String,
    #[serde(
        serialize_with = "serialize_millis",
        deserialize_with = "deserialize_millis"
    )]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

/// A product as named beside something else (a review on its author's page).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProductRef {
    pub id: i64,
    pub name: String,
}

/// A review as its author's page lists it: with the product it is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserReview {
    pub id: i64,
    pub product: ProductRef,
    pub rating: i64,
    pub body: String,
    #[serde(
        serialize_with = "serialize_millis",
        deserialize_with = "deserialize_millis"
    )]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

/// A whole product, assembled from its parts (name, price, description, images,
/// reviews): the object the cache keeps as `Product:{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub images: Vec<Image>,
    /// The newest reviews (at most 20); `reviews_total` counts them all.
    pub reviews: Vec<Review>,
    #[serde(default)]
    pub reviews_total: i64,
    pub rating: Rating,
    #[serde(
        serialize_with = "serialize_millis",
        deserialize_with = "deserialize_millis"
    )]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_at_the_edge() {
        assert!(price_cents(-1).is_err());
        assert!(price_cents(0).is_ok());
        assert!(rating(0).is_err() && rating(6).is_err() && rating(5).is_ok());
        assert!(product_name("   ").is_err());
        assert!(product_name(&"x".repeat(201)).is_err());
        assert!(product_name("Rye\0bread").is_err());
        assert!(review_body("Lovely crust.\nWould buy again.").is_ok());
        assert_eq!(Rating::from_sum(14, 3).average, 4.67);
        assert_eq!(Rating::from_sum(0, 0).average, 0.0);
    }
}
