//! Reads whose results may be shared through the query cache, each declared once,
//! here, beside its SQL: a name, the SQL, and the tables it reads. Crates above `db`
//! see only the name and the tables (the cache keys on them and the parameters,
//! and a write to one of the tables moves every such key to a new generation).

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

pub struct CachedQuery {
    name: &'static str,
    sql: &'static str,
    tables: &'static [&'static str],
    /// `name@` and the first 16 hex digits of the SHA-256 of the normalised SQL: a
    /// release that changes the SQL (and maybe the shape of its rows) gets new keys.
    id: OnceLock<String>,
}

impl CachedQuery {
    pub const fn new(
        name: &'static str,
        sql: &'static str,
        tables: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            sql,
            tables,
            id: OnceLock::new(),
        }
    }

    /// The name the cache keys on, changing with the SQL.
    pub fn id(&self) -> &str {
        self.id.get_or_init(|| {
            let normalised = self.sql.split_whitespace().collect::<Vec<_>>().join(" ");
            let digest = Sha256::digest(normalised.as_bytes());
            let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
            format!("{}@{hex}", self.name)
        })
    }

    /// The tables whose writes make a cached result stale.
    pub fn tables(&self) -> &'static [&'static str] {
        self.tables
    }

    pub(crate) fn sql(&self) -> &'static str {
        self.sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_names_the_query_and_changes_with_its_sql_not_its_layout() {
        let a = CachedQuery::new("q", "SELECT 1\n   FROM t", &["t"]);
        let b = CachedQuery::new("q", "SELECT 1 FROM t", &["t"]);
        let c = CachedQuery::new("q", "SELECT 2 FROM t", &["t"]);
        assert!(a.id().starts_with("q@"));
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
    }
}
