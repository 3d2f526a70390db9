//! Password hashing with argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes),
//! the current OWASP recommendation. CPU-bound: callers run it off the async threads.

use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};

use crate::Password;

/// A PHC string (`$argon2id$v=19$...`) with its own random salt.
pub fn hash_password(password: &Password) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|hash| hash.to_string())
        // Only fails for parameters out of range; the defaults are in range.
        .expect("argon2 default parameters are valid")
}

/// Whether `candidate` matches `phc`; a malformed stored hash never matches.
pub fn verify_password(candidate: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(candidate.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_and_nothing_else() {
        let hash = hash_password(&Password::parse("correct horse").unwrap());
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
    }
}
