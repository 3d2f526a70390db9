//! The schema of each engine, embedded in the binary.
//!
//! Each migration keeps the version, description and checksum sqlx's `migrate!` gave
//! it (from the file's name and text), so databases migrated by earlier builds carry
//! on. Listed by this crate's build script rather than found by that macro: the
//! macro builds all three database drivers, SQLite's C included, a second time for
//! the compiler's own use, about a tenth of a first build. A test checks the
//! migrations against sqlx's own reading of the directories.

use std::borrow::Cow;
use std::sync::LazyLock;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::Dialect;

/// `(file name, text)` of each file of `migrations/<dir>`, in order.
type Files = &'static [(&'static str, &'static str)];

// SQLITE, POSTGRES and MARIADB, listed by build.rs from the directories.
include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The migrations of `dialect`, ready to run.
pub(crate) fn migrator(dialect: Dialect) -> &'static Migrator {
    static SQLITE_MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| migrator_of(SQLITE));
    static POSTGRES_MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| migrator_of(POSTGRES));
    static MARIADB_MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| migrator_of(MARIADB));
    match dialect {
        Dialect::Sqlite => &SQLITE_MIGRATOR,
        Dialect::Postgres => &POSTGRES_MIGRATOR,
        Dialect::MariaDb => &MARIADB_MIGRATOR,
    }
}

fn migrator_of(files: Files) -> Migrator {
    Migrator::with_migrations(
        files
            .iter()
            .map(|&(file, sql)| migration(file, sql))
            .collect(),
    )
}

/// A migration as sqlx names one: `0007_pages.sql` is version 7, "pages".
fn migration(file: &str, sql: &'static str) -> Migration {
    let (version, name) = file
        .split_once('_')
        .and_then(|(version, name)| Some((version.parse().ok()?, name.strip_suffix(".sql")?)))
        .unwrap_or_else(|| panic!("migration {file} is not named <version>_<description>.sql"));
    Migration::new(
        version,
        Cow::Owned(name.replace('_', " ")),
        MigrationType::Simple,
        sql.into_sql_str(),
        sql.starts_with("-- no-transaction"),
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every file of each directory is embedded, with exactly what sqlx's own reading
    /// of the directory gives: a database migrated before keeps its checksums.
    #[tokio::test]
    async fn the_embedded_migrations_are_the_directories_as_sqlx_reads_them() {
        for (dir, dialect) in [
            ("sqlite", Dialect::Sqlite),
            ("postgres", Dialect::Postgres),
            ("mariadb", Dialect::MariaDb),
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dir);
            let read = Migrator::new(path).await.expect("sqlx reads the directory");
            let embedded = migrator(dialect);
            let summary = |m: &Migrator| {
                m.iter()
                    .map(|m| {
                        (
                            m.version,
                            m.description.to_string(),
                            m.checksum.to_vec(),
                            m.no_tx,
                        )
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(summary(embedded), summary(&read), "{dir}");
            assert!(!summary(embedded).is_empty());
        }
    }
}
