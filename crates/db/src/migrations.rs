//! The schema of each engine, embedded in the binary.
//!
//! Each migration keeps the version, description and checksum sqlx's `migrate!` gave
//! it (from the file's name and text), so databases migrated by earlier builds carry
//! on. Listed here rather than found by that macro: it builds all three database
//! drivers, SQLite's C included, a second time for the compiler's own use, about a
//! tenth of a first build. A test checks the lists against the directories.

use std::borrow::Cow;
use std::sync::LazyLock;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::Dialect;

/// `(file name, text)` of each file of `migrations/<dir>`, in order.
macro_rules! embedded {
    ($dir:literal: $($file:literal),+ $(,)?) => {
        &[$(($file, include_str!(concat!("../migrations/", $dir, "/", $file)))),+]
    };
}

type Files = &'static [(&'static str, &'static str)];

const SQLITE: Files = embedded!("sqlite":
        "0001_accounts.sql",
        "0002_catalog_calendar.sql",
        "0003_instance.sql",
        "0004_drop_unused_pages.sql",
        "0005_messaging.sql",
        "0006_jobs.sql",
        "0007_pages.sql",
        "0008_one_review_each.sql",
        "0009_edge_fence.sql",
        "0010_email_verification.sql",
        "0011_edge_role.sql",
        "0012_operations.sql",
        "0013_product_documents.sql",
        "0014_reviews_newest.sql",
        "0015_job_correlation.sql",
);
const POSTGRES: Files = embedded!("postgres":
        "0001_accounts.sql",
        "0002_catalog_calendar.sql",
        "0003_instance.sql",
        "0004_drop_unused_pages.sql",
        "0005_messaging.sql",
        "0006_jobs.sql",
        "0007_pages.sql",
        "0008_one_review_each.sql",
        "0009_edge_fence.sql",
        "0010_email_verification.sql",
        "0011_edge_role.sql",
        "0012_operations.sql",
        "0013_product_documents.sql",
        "0014_reviews_newest.sql",
        "0015_job_correlation.sql",
        "0016_jobs_partial_indexes.sql",
);
const MARIADB: Files = embedded!("mariadb":
        "0001_schema.sql",
        "0002_reviews_newest.sql",
        "0003_job_correlation.sql",
);

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
