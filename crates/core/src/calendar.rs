//! The calendar: baking classes (events) and RSVPs, as the API shows them.

use serde::{Deserialize, Serialize};

use crate::Invalid;
use crate::catalog::text;
use crate::clock::{
    deserialize_millis, deserialize_optional_millis, serialize_millis, serialize_optional_millis,
};

pub fn event_title(raw: &str) -> Result<String, Invalid> {
    text("a title", "invalid_title", raw.trim(), 1, 200)
}

pub fn event_description(raw: &str) -> Result<String, Invalid> {
    text("a description", "invalid_description", raw, 0, 10_000)
}

pub fn capacity(raw: i64) -> Result<i64, Invalid> {
    if !(1..=100_000).contains(&raw) {
        return Err(Invalid::new(
            "invalid_capacity",
            "capacity is a whole number from 1 to 100000",
        ));
    }
    Ok(raw)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventSummary {
    pub id: i64,
    pub title: String,
    #[serde(
        serialize_with = "serialize_millis",
        deserialize_with = "deserialize_millis"
    )]
    #[schema(value_type = String, format = DateTime)]
    pub starts_at: i64,
    pub capacity: i64,
    pub attendees: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub id: i64,
    pub title: String,
    pub description: String,
    #[serde(
        serialize_with = "serialize_millis",
        deserialize_with = "deserialize_millis"
    )]
    #[schema(value_type = String, format = DateTime)]
    pub starts_at: i64,
    pub capacity: i64,
    pub attendees: i64,
    /// The asking user's RSVP, when logged in and there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub my_rsvp: Option<Rsvp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rsvp {
    pub id: i64,
    pub event_id: i64,
    pub status: String,
    #[serde(
        serialize_with = "serialize_millis",
        deserialize_with = "deserialize_millis"
    )]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// Set once the email service has sent the confirmation.
    #[serde(
        serialize_with = "serialize_optional_millis",
        deserialize_with = "deserialize_optional_millis"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub confirmation_sent_at: Option<i64>,
}
