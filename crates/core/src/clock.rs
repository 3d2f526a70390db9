//! Time as the stores keep it (unix milliseconds) and as the API shows it (RFC 3339).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Invalid;

/// Now, in unix milliseconds (0 if the clock is before 1970).
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `2026-11-28T17:49:36.123Z` for unix milliseconds.
pub fn to_rfc3339(millis: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(millis as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Unix milliseconds of an RFC 3339 time such as `2026-12-24T09:00:00Z`.
pub fn parse_rfc3339(text: &str) -> Result<i64, Invalid> {
    let invalid = || {
        Invalid::new(
            "invalid_time",
            "a time looks like 2026-12-24T09:00:00Z (RFC 3339)",
        )
    };
    if text.len() > 64 {
        return Err(invalid());
    }
    let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| invalid())?;
    Ok((parsed.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Serializes unix milliseconds as RFC 3339 (`#[serde(serialize_with = ...)]`).
pub fn serialize_millis<S: serde::Serializer>(
    millis: &i64,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&to_rfc3339(*millis))
}

/// The same for an optional time (`null` when absent).
pub fn serialize_optional_millis<S: serde::Serializer>(
    millis: &Option<i64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match millis {
        Some(m) => serializer.serialize_str(&to_rfc3339(*m)),
        None => serializer.serialize_none(),
    }
}

/// The reverse of [`serialize_millis`] (`#[serde(deserialize_with = ...)]`), for
/// values read back from a cache.
pub fn deserialize_millis<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<i64, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    parse_rfc3339(&text).map_err(serde::de::Error::custom)
}

pub fn deserialize_optional_millis<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    let text = <Option<String> as serde::Deserialize>::deserialize(deserializer)?;
    text.map(|t| parse_rfc3339(&t).map_err(serde::de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_rfc3339() {
        let millis = parse_rfc3339("2026-12-24T09:00:00Z").unwrap();
        assert_eq!(to_rfc3339(millis), "2026-12-24T09:00:00Z");
        assert_eq!(parse_rfc3339("2026-12-24T10:00:00+01:00").unwrap(), millis);
        for bad in ["tomorrow", "2026-13-01T00:00:00Z", "", "2026-12-24"] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }
}
