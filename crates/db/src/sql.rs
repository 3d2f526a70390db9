//! One text of SQL for three engines. Every statement is written once, as SQLite and
//! PostgreSQL both read it (`$n` placeholders, `ON CONFLICT`, `RETURNING`, `||`),
//! and bound as with sqlx (`query`, `query_as`, `query_scalar`, `.bind`, then
//! `execute`/`fetch_*` on a pool or a connection). Where the connection is MariaDB,
//! the text is rewritten on its way ([`to_mariadb`], once per text) and the bound
//! values put in the order its positional `?` need:
//!
//! - `$n` → `?` (a value named twice is bound twice);
//! - `CAST(x AS BIGINT)` → `CAST(x AS SIGNED)`, `CAST(x AS TEXT)` → `CAST(x AS CHAR)`;
//! - `ON CONFLICT (...) DO NOTHING` → `INSERT IGNORE`;
//! - `ON CONFLICT (...) DO UPDATE SET a = excluded.a` → `ON DUPLICATE KEY UPDATE a = VALUES(a)`.
//!
//! What has no such rewrite (a conditional upsert, `UPDATE ... RETURNING`) is written
//! for MariaDB at its call site, chosen by [`Target::dialect`]; a text that still
//! needs one fails with a message naming it, so a test finds it. `||` concatenates on
//! MariaDB too, and `"` quotes identifiers: its connections run with
//! `PIPES_AS_CONCAT` and `ANSI_QUOTES` (see `lib.rs`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, LazyLock, RwLock};

use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow};
use sqlx::{
    Any, AnyConnection, AnyPool, Arguments, AssertSqlSafe, Encode, FromRow, SqlSafeStr, SqlStr,
    Type,
};

/// The engine on the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    MariaDb,
}

impl Dialect {
    /// From a database URL's scheme.
    pub fn of_scheme(scheme: &str) -> Self {
        match scheme {
            "postgres" | "postgresql" => Self::Postgres,
            "mysql" | "mariadb" => Self::MariaDb,
            _ => Self::Sqlite,
        }
    }

    /// From sqlx's name of a connection's backend.
    pub(crate) fn of_backend(name: &str) -> Self {
        match name {
            "PostgreSQL" => Self::Postgres,
            "MySQL" => Self::MariaDb,
            _ => Self::Sqlite,
        }
    }
}

/// Where a statement runs: a pool or one connection (a transaction's included),
/// which can tell the engine it speaks to.
pub trait Target<'c>: sqlx::Executor<'c, Database = Any> {
    fn dialect(&self) -> Dialect;
}

impl<'c> Target<'c> for &'c AnyPool {
    fn dialect(&self) -> Dialect {
        Dialect::of_scheme(self.connect_options().database_url.scheme())
    }
}

impl<'c> Target<'c> for &'c mut AnyConnection {
    fn dialect(&self) -> Dialect {
        Dialect::of_backend(self.backend_name())
    }
}

/// A statement's text: a literal, or one made at run time.
pub struct Text(Cow<'static, str>);

impl From<&'static str> for Text {
    fn from(text: &'static str) -> Self {
        Self(Cow::Borrowed(text))
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Self(Cow::Owned(text))
    }
}

/// A statement and its bound values.
pub struct Query {
    text: Text,
    args: AnyArguments,
    error: Option<sqlx::error::BoxDynError>,
    /// Kept prepared on the connection (the default), or planned at each execution.
    persistent: bool,
}

pub fn query(text: impl Into<Text>) -> Query {
    Query {
        text: text.into(),
        args: AnyArguments::default(),
        error: None,
        persistent: true,
    }
}

pub fn query_as<O>(text: impl Into<Text>) -> QueryAs<O> {
    QueryAs(query(text), PhantomData)
}

pub fn query_scalar<O>(text: impl Into<Text>) -> QueryScalar<O> {
    QueryScalar(query(text), PhantomData)
}

impl Query {
    pub fn bind<'t, T: Encode<'t, Any> + Type<Any>>(mut self, value: T) -> Self {
        if let Err(error) = self.args.add(value)
            && self.error.is_none()
        {
            self.error = Some(error);
        }
        self
    }

    /// Binds each of `values` in turn, after the values bound so far.
    pub fn bind_all<'t, T: Encode<'t, Any> + Type<Any>>(
        self,
        values: impl IntoIterator<Item = T>,
    ) -> Self {
        values.into_iter().fold(self, Query::bind)
    }

    /// Planned at each execution, for the sizes and values of now. For the
    /// statements on a table that grows from nothing under load (the jobs' batch
    /// statements): PostgreSQL settles on a statement's generic plan after five
    /// executions, and one made while the table was a few pages long scans it all
    /// (2 s a claim with 40,000 jobs on a fresh database), until autovacuum's first
    /// analyze, a minute later, replaces it. Sent unprepared, unless `by_connection`:
    /// the connection plans every execution itself ([`crate::Planning::EachExecution`]),
    /// and keeping the statement prepared saves its parse.
    pub fn planned_each_time(mut self, by_connection: bool) -> Self {
        self.persistent = by_connection;
        self
    }

    /// The text and values as `dialect` needs them.
    fn prepare(self, dialect: Dialect) -> Result<(SqlStr, AnyArguments, bool), sqlx::Error> {
        if let Some(error) = self.error {
            return Err(sqlx::Error::Encode(error));
        }
        if dialect != Dialect::MariaDb {
            return Ok((
                AssertSqlSafe(self.text.0).into_sql_str(),
                self.args,
                self.persistent,
            ));
        }
        let rewritten = to_mariadb_cached(&self.text.0).map_err(sqlx::Error::Protocol)?;
        let mut args = AnyArguments::default();
        for &i in &rewritten.order {
            let value = self.args.values.0.get(i).cloned().ok_or_else(|| {
                sqlx::Error::Protocol(format!(
                    "${} has no bound value in {:?}",
                    i + 1,
                    self.text.0
                ))
            })?;
            args.values.0.push(value);
        }
        Ok((
            AssertSqlSafe(rewritten.text.clone()).into_sql_str(),
            args,
            self.persistent,
        ))
    }

    pub async fn execute<'c>(self, target: impl Target<'c>) -> Result<AnyQueryResult, sqlx::Error> {
        let (text, args, persistent) = self.prepare(target.dialect())?;
        sqlx::query_with(text, args)
            .persistent(persistent)
            .execute(target)
            .await
    }
}

/// A statement whose rows are read as `O`.
pub struct QueryAs<O>(Query, PhantomData<O>);

impl<O> QueryAs<O>
where
    O: for<'r> FromRow<'r, AnyRow> + Send + Unpin,
{
    pub fn bind<'t, T: Encode<'t, Any> + Type<Any>>(self, value: T) -> Self {
        Self(self.0.bind(value), PhantomData)
    }

    /// See [`Query::planned_each_time`].
    pub fn planned_each_time(self, by_connection: bool) -> Self {
        Self(self.0.planned_each_time(by_connection), PhantomData)
    }

    pub fn bind_all<'t, T: Encode<'t, Any> + Type<Any>>(
        self,
        values: impl IntoIterator<Item = T>,
    ) -> Self {
        Self(self.0.bind_all(values), PhantomData)
    }

    pub async fn fetch_one<'c>(self, target: impl Target<'c>) -> Result<O, sqlx::Error> {
        let (text, args, persistent) = self.0.prepare(target.dialect())?;
        sqlx::query_as_with(text, args)
            .persistent(persistent)
            .fetch_one(target)
            .await
    }

    pub async fn fetch_optional<'c>(
        self,
        target: impl Target<'c>,
    ) -> Result<Option<O>, sqlx::Error> {
        let (text, args, persistent) = self.0.prepare(target.dialect())?;
        sqlx::query_as_with(text, args)
            .persistent(persistent)
            .fetch_optional(target)
            .await
    }

    pub async fn fetch_all<'c>(self, target: impl Target<'c>) -> Result<Vec<O>, sqlx::Error> {
        let (text, args, persistent) = self.0.prepare(target.dialect())?;
        sqlx::query_as_with(text, args)
            .persistent(persistent)
            .fetch_all(target)
            .await
    }
}

/// A statement whose rows are one value each, read as `O`.
pub struct QueryScalar<O>(Query, PhantomData<O>);

impl<O> QueryScalar<O>
where
    (O,): for<'r> FromRow<'r, AnyRow>,
    O: Send + Unpin,
{
    pub fn bind<'t, T: Encode<'t, Any> + Type<Any>>(self, value: T) -> Self {
        Self(self.0.bind(value), PhantomData)
    }

    /// See [`Query::planned_each_time`].
    pub fn planned_each_time(self, by_connection: bool) -> Self {
        Self(self.0.planned_each_time(by_connection), PhantomData)
    }

    pub fn bind_all<'t, T: Encode<'t, Any> + Type<Any>>(
        self,
        values: impl IntoIterator<Item = T>,
    ) -> Self {
        Self(self.0.bind_all(values), PhantomData)
    }

    pub async fn fetch_one<'c>(self, target: impl Target<'c>) -> Result<O, sqlx::Error> {
        let (text, args, persistent) = self.0.prepare(target.dialect())?;
        sqlx::query_scalar_with(text, args)
            .persistent(persistent)
            .fetch_one(target)
            .await
    }

    pub async fn fetch_optional<'c>(
        self,
        target: impl Target<'c>,
    ) -> Result<Option<O>, sqlx::Error> {
        let (text, args, persistent) = self.0.prepare(target.dialect())?;
        sqlx::query_scalar_with(text, args)
            .persistent(persistent)
            .fetch_optional(target)
            .await
    }

    pub async fn fetch_all<'c>(self, target: impl Target<'c>) -> Result<Vec<O>, sqlx::Error> {
        let (text, args, persistent) = self.0.prepare(target.dialect())?;
        sqlx::query_scalar_with(text, args)
            .persistent(persistent)
            .fetch_all(target)
            .await
    }
}

/// `$first, $first + 1, ...` for `count` values: the list inside `IN (...)`, its
/// values bound with [`Query::bind_all`]. (Values are never written into a text: a
/// text per batch would be rewritten, and remembered, once per batch on MariaDB.)
pub fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `count` rows of a multi-row `VALUES`, each `width` values of its own numbered on
/// from `$first`, then `shared` (values every row repeats, as `", $1"`).
pub fn value_rows(count: usize, first: usize, width: usize, shared: &str) -> String {
    (0..count)
        .map(|i| format!("({}{shared})", placeholders(first + i * width, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Data-modifying statements as one (PostgreSQL: each but the last a `WITH` part):
/// they all happen, atomically, in one round trip, even outside a transaction.
pub fn one_statement(mut texts: Vec<String>) -> String {
    let Some(last) = texts.pop() else {
        return String::new();
    };
    if texts.is_empty() {
        return last;
    }
    let parts: Vec<String> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| format!("w{i} AS ({text})"))
        .collect();
    format!("WITH {} {last}", parts.join(", "))
}

/// A text as MariaDB takes it, and which bound value each `?` takes (0-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// Shared, so a statement run again takes the remembered text without a copy.
    pub text: Arc<str>,
    pub order: Vec<usize>,
}

/// Texts rewritten so far, by text: the statements are few (their texts are fixed,
/// or made from a few shapes), so each is rewritten once. Bounded all the same.
static REWRITTEN: LazyLock<RwLock<HashMap<String, Arc<Rewritten>>>> =
    LazyLock::new(Default::default);
const MAX_REMEMBERED: usize = 4096;

fn to_mariadb_cached(text: &str) -> Result<Arc<Rewritten>, String> {
    if let Some(done) = REWRITTEN
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(text)
    {
        return Ok(done.clone());
    }
    let done = Arc::new(to_mariadb(text)?);
    let mut all = REWRITTEN.write().unwrap_or_else(|p| p.into_inner());
    if all.len() < MAX_REMEMBERED {
        all.insert(text.to_string(), done.clone());
    }
    Ok(done)
}

/// `text` as MariaDB takes it (see the module's comment).
pub fn to_mariadb(text: &str) -> Result<Rewritten, String> {
    let mut out = String::with_capacity(text.len());
    let mut order = Vec::new();
    let mut chars = text.char_indices().peekable();
    let mut quote: Option<char> = None;
    while let Some((_, c)) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (Some(_), c) => out.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (None, '$') if chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) => {
                let mut n = 0usize;
                while let Some((_, d)) = chars.peek().copied().filter(|(_, d)| d.is_ascii_digit()) {
                    n = n * 10 + (d as usize - '0' as usize);
                    chars.next();
                }
                if n == 0 {
                    return Err(format!("$0 is not a placeholder, in {text:?}"));
                }
                order.push(n - 1);
                out.push('?');
            }
            (None, c) => out.push(c),
        }
    }
    let mut text = out
        .replace(" AS BIGINT)", " AS SIGNED)")
        .replace(" AS TEXT)", " AS CHAR)");
    text = upsert(&text)?;
    Ok(Rewritten {
        text: text.into(),
        order,
    })
}

/// `ON CONFLICT` in MariaDB's words.
fn upsert(text: &str) -> Result<String, String> {
    let Some(at) = text.find("ON CONFLICT") else {
        return Ok(text.to_string());
    };
    let (head, rest) = text.split_at(at);
    let Some(action) = rest.find("DO ") else {
        return Err(format!("ON CONFLICT without an action: {text:?}"));
    };
    let action = rest[action + "DO ".len()..].trim_start();
    if let Some(after) = action.strip_prefix("NOTHING") {
        let head = head.replacen("INSERT INTO", "INSERT IGNORE INTO", 1);
        return Ok(format!("{}{}", head.trim_end(), after));
    }
    let Some(sets) = action
        .strip_prefix("UPDATE")
        .and_then(|update| update.trim_start().strip_prefix("SET"))
    else {
        return Err(format!(
            "an ON CONFLICT action MariaDB has no form for: {text:?}"
        ));
    };
    if sets.contains(" WHERE ") || sets.contains("\nWHERE") || sets.contains("RETURNING") {
        return Err(format!(
            "a conditional upsert needs a MariaDB text of its own: {text:?}"
        ));
    }
    Ok(format!(
        "{}ON DUPLICATE KEY UPDATE{}",
        head,
        values_of_excluded(sets)
    ))
}

/// `excluded.col` → `VALUES(col)`.
fn values_of_excluded(sets: &str) -> String {
    let mut out = String::with_capacity(sets.len());
    let mut rest = sets;
    while let Some(at) = rest.find("excluded.") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "excluded.".len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        out.push_str(&format!("VALUES({})", &after[..end]));
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_positional_and_repeat_their_values() {
        let done =
            to_mariadb("INSERT INTO t (a, b, c) VALUES ($1, $2, $2) WHERE x = '$3'").unwrap();
        assert_eq!(
            &*done.text,
            "INSERT INTO t (a, b, c) VALUES (?, ?, ?) WHERE x = '$3'"
        );
        assert_eq!(done.order, vec![0, 1, 1]);
        let done = to_mariadb("SELECT $10, $2").unwrap();
        assert_eq!((&*done.text, done.order), ("SELECT ?, ?", vec![9, 1]));
        assert!(to_mariadb("SELECT $0").is_err());
    }

    #[test]
    fn value_rows_number_on_and_repeat_the_shared_values() {
        assert_eq!(
            value_rows(2, 2, 3, ", $1"),
            "($2, $3, $4, $1), ($5, $6, $7, $1)"
        );
        assert_eq!(value_rows(1, 7, 2, ""), "($7, $8)");
        assert_eq!(value_rows(0, 1, 5, ""), "");
    }

    #[test]
    fn statements_join_as_with_parts_before_the_last() {
        assert_eq!(one_statement(vec![]), "");
        assert_eq!(
            one_statement(vec!["INSERT INTO a VALUES ($1)".into()]),
            "INSERT INTO a VALUES ($1)"
        );
        assert_eq!(
            one_statement(vec![
                "INSERT INTO a VALUES ($1)".into(),
                "INSERT INTO b VALUES ($2)".into(),
                "INSERT INTO c VALUES ($3)".into(),
            ]),
            "WITH w0 AS (INSERT INTO a VALUES ($1)), w1 AS (INSERT INTO b VALUES ($2)) INSERT INTO c VALUES ($3)"
        );
    }

    #[test]
    fn casts_and_upserts_are_said_as_mariadb_says_them() {
        assert_eq!(
            to_mariadb("SELECT CAST(SUM(x) AS BIGINT), CAST(b AS TEXT), '$1 AS BIGINT' FROM t")
                .unwrap()
                .text
                .as_ref(),
            "SELECT CAST(SUM(x) AS SIGNED), CAST(b AS CHAR), '$1 AS BIGINT' FROM t"
        );
        assert_eq!(
            to_mariadb("INSERT INTO t (a) VALUES ($1) ON CONFLICT (a) DO NOTHING")
                .unwrap()
                .text
                .as_ref(),
            "INSERT IGNORE INTO t (a) VALUES (?)"
        );
        assert_eq!(
            to_mariadb(
                "INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT (a) DO NOTHING RETURNING id"
            )
            .unwrap()
            .text
            .as_ref(),
            "INSERT IGNORE INTO t (a, b) VALUES (?, ?) RETURNING id"
        );
        assert_eq!(
            to_mariadb(
                "INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT (a) DO UPDATE SET b = excluded.b, c = excluded.c_2"
            )
            .unwrap().text.as_ref(),
            "INSERT INTO t (a, b) VALUES (?, ?) ON DUPLICATE KEY UPDATE b = VALUES(b), c = VALUES(c_2)"
        );
        assert_eq!(
            to_mariadb(
                "INSERT INTO t (a) VALUES ($1)\n ON CONFLICT (a) DO UPDATE\n SET b = excluded.b"
            )
            .unwrap()
            .text
            .as_ref(),
            "INSERT INTO t (a) VALUES (?)\n ON DUPLICATE KEY UPDATE b = VALUES(b)"
        );
        assert!(
            to_mariadb("INSERT INTO t (a) VALUES ($1) ON CONFLICT (a) DO UPDATE SET b = excluded.b WHERE t.v < excluded.v")
                .is_err(),
            "a conditional upsert is written by hand"
        );
    }
}
