//! Accounts: usernames, emails and passwords as the contract defines them.

use serde::{Deserialize, Serialize};

use crate::Invalid;

/// 3–32 ASCII letters, digits, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let ok_chars = raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !(3..=32).contains(&raw.len()) || !ok_chars {
            return Err(Invalid::new(
                "invalid_username",
                "a username is 3 to 32 characters of ASCII letters, digits, '_' and '-'",
            ));
        }
        Ok(Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Something that looks like an address: one `@`, a dotted domain, no spaces,
/// at most 254 characters. Deliverability is the mail server's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let invalid = || Invalid::new("invalid_email", "an email looks like name@example.com");
        if raw.len() > 254 || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        let (local, domain) = raw.split_once('@').ok_or_else(invalid)?;
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '.' || c == '-');
        if local.is_empty() || local.len() > 64 || domain.contains('@') || !domain_ok {
            return Err(invalid());
        }
        Ok(Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A plain password on its way to the hasher: 8 to 1024 characters (the upper bound
/// keeps hashing cost bounded).
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let n = raw.chars().count();
        if n < 8 {
            return Err(Invalid::new(
                "invalid_password",
                "a password is at least 8 characters",
            ));
        }
        if n > 1024 {
            return Err(Invalid::new(
                "invalid_password",
                "a password is at most 1024 characters",
            ));
        }
        Ok(Self(raw.to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A user as the API shows it (and as the cache keeps it, `User:{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub is_admin: bool,
    /// Whether the owner proved the address is theirs (a verification mail's
    /// token); transactional mail goes only to verified addresses.
    #[serde(default)]
    pub email_verified: bool,
}

/// What anybody may see of a user: no email, no role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Profile {
    pub id: i64,
    pub username: String,
    #[serde(
        serialize_with = "crate::clock::serialize_millis",
        deserialize_with = "crate::clock::deserialize_millis"
    )]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_contract() {
        assert!(Username::parse("baker_01-x").is_ok());
        for bad in [
            "ab",
            "a".repeat(33).as_str(),
            "bad name",
            "quote'",
            "nul\0x",
            "<b>tag</b>",
            "ünï",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn emails_must_look_like_one() {
        assert!(Email::parse("ann@example.com").is_ok());
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "a b@example.com",
            "a@b@c.com",
            "ann@.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn passwords_are_at_least_eight_characters() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse(&"x".repeat(2000)).is_err());
        assert_eq!(
            format!("{:?}", Password::parse("secret-pw").unwrap()),
            "Password(***)"
        );
    }
}
