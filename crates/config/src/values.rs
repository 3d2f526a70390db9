//! How values are read. The environment gives every value as text and a file gives
//! typed TOML, so each reader takes both (`"250"` and `250`).

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// A value written as text or as itself.
#[derive(Deserialize)]
#[serde(untagged)]
enum TextOr<T> {
    Value(T),
    Text(String),
}

fn parsed<'de, D, T>(deserializer: D, expected: &str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Deserialize<'de>,
    T::Err: Display,
{
    match TextOr::<T>::deserialize(deserializer)? {
        TextOr::Value(value) => Ok(value),
        TextOr::Text(text) => text
            .trim()
            .parse()
            .map_err(|_| D::Error::custom(format!("expected {expected}, got {text:?}"))),
    }
}

/// A whole number of seconds.
pub fn secs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    parsed::<D, u64>(deserializer, "a whole number of seconds").map(Duration::from_secs)
}

/// A whole number of milliseconds.
pub fn millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    parsed::<D, u64>(deserializer, "a whole number of milliseconds").map(Duration::from_millis)
}

/// A whole number (the fields' own type).
pub fn number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Deserialize<'de>,
    T::Err: Display,
{
    parsed(deserializer, "a whole number")
}

/// A percentage, 0 to 100.
pub fn percent<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let n: u32 = parsed(deserializer, "a percentage from 0 to 100")?;
    if n > 100 {
        return Err(D::Error::custom(format!(
            "expected a percentage from 0 to 100, got {n}"
        )));
    }
    Ok(n)
}

/// On or off: `1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off`.
pub fn flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Number(u64),
        Text(String),
    }
    match Flag::deserialize(deserializer)? {
        Flag::Bool(b) => Ok(b),
        Flag::Number(0) => Ok(false),
        Flag::Number(1) => Ok(true),
        Flag::Text(text) => match text.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(D::Error::custom(format!("expected 1 or 0, got {text:?}"))),
        },
        Flag::Number(n) => Err(D::Error::custom(format!("expected 1 or 0, got {n}"))),
    }
}

/// A list: comma-separated text, or a TOML array.
pub fn list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Deserialize<'de>,
    T::Err: Display,
{
    match TextOr::<Vec<T>>::deserialize(deserializer)? {
        TextOr::Value(items) => Ok(items),
        TextOr::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse()
                    .map_err(|e: T::Err| D::Error::custom(e.to_string()))
            })
            .collect(),
    }
}
