//! The journey of a request: what it caused across processes, one hop per step
//! (its write and the outbox row, each publish, each delivery and its outcome, the
//! mail, the push), recorded by the process that took the step under the request's
//! correlation id, so `/ops` can draw the path of any `x-request-id`.
//!
//! The write's hop commits with the write (the same transaction as the outbox row);
//! the others are noted through `bakery_telemetry::journey` and written here in
//! batches, off the hot path. The journal is observability, not data: a hop of a
//! process that crashes before its batch is written is lost with it.

use std::time::Duration;

use bakery_telemetry::journey::Noted;
use serde::Serialize;
use sqlx::AnyConnection;

use crate::{Database, DbError};

/// How long hops are kept.
pub const KEPT: Duration = Duration::from_secs(3600);
/// Hops written per statement at most.
const BATCH: usize = 200;
/// How long hops gather between two statements that were not full (a journey is
/// read by a person: a tenth of a second late is not late).
const GATHER: Duration = Duration::from_millis(100);

/// One step of a request's journey.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Hop {
    /// Unix milliseconds.
    #[serde(serialize_with = "bakery_core::clock::serialize_millis")]
    pub at: i64,
    /// The process that took the step (`web-2`, `email-1`).
    pub process: String,
    pub what: String,
    /// The step's particulars (message id, kind, queue, outcome, attempt...).
    #[serde(flatten)]
    pub detail: serde_json::Map<String, serde_json::Value>,
}

/// Starts this process's journal writer (once; later calls do nothing): it drains
/// the hops noted through [`bakery_telemetry::journey::note`] into the table.
pub fn start_journal(db: Database) {
    let Some(mut receiver) = bakery_telemetry::journey::take_journal() else {
        return;
    };
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        while receiver.recv_many(&mut batch, BATCH).await > 0 {
            let full = batch.len() == BATCH;
            if let Err(error) = db.write_hops(&batch).await {
                tracing::debug!(%error, hops = batch.len(), "journey hops not recorded");
            }
            batch.clear();
            // Unless more are waiting, let them gather: one statement per hop or two,
            // under load, cost the database as much as the work they describe.
            if !full {
                tokio::time::sleep(GATHER).await;
            }
        }
    });
}

/// The hops of `correlation_ids`, each noting `what` and `detail`, taken now.
pub(crate) fn hops(correlation_ids: &[&str], what: &str, detail: &serde_json::Value) -> Vec<Noted> {
    correlation_ids
        .iter()
        .map(|id| Noted::now(id, what.to_string(), detail.clone()))
        .collect()
}

/// Records `hops` inside the caller's transaction: they commit with the write.
pub(crate) async fn note_in(conn: &mut AnyConnection, hops: &[Noted]) -> Result<(), sqlx::Error> {
    if hops.is_empty() {
        return Ok(());
    }
    bind(crate::sql::query(insert_text(hops.len(), 1)), hops)
        .execute(conn)
        .await?;
    Ok(())
}

/// `INSERT` of `count` hops, their values numbered from `$first` (five each).
pub(crate) fn insert_text(count: usize, first: usize) -> String {
    format!(
        "INSERT INTO journey (correlation_id, at, process, what, detail) VALUES {}",
        crate::sql::value_rows(count, first, 5, "")
    )
}

/// Binds the values of `hops`, in [`insert_text`]'s order, after those bound so far.
pub(crate) fn bind(query: crate::sql::Query, hops: &[Noted]) -> crate::sql::Query {
    hops.iter().fold(query, |query, noted| {
        query
            .bind(noted.correlation_id.clone())
            .bind(noted.at)
            .bind(noted.process.clone())
            .bind(noted.what.clone())
            .bind(noted.detail.to_string())
    })
}

type HopTuple = (i64, String, String, String);

impl Database {
    async fn write_hops(&self, hops: &[Noted]) -> Result<(), DbError> {
        if hops.is_empty() {
            return Ok(());
        }
        bind(crate::sql::query(insert_text(hops.len(), 1)), hops)
            .execute(self.primary())
            .await?;
        Ok(())
    }

    /// The hops recorded for `correlation_id`, in time order.
    pub async fn journey(&self, correlation_id: &str) -> Result<Vec<Hop>, DbError> {
        let rows: Vec<HopTuple> = crate::sql::query_as(
            "SELECT at, process, what, detail FROM journey
             WHERE correlation_id = $1 ORDER BY at, id",
        )
        .bind(correlation_id)
        .fetch_all(self.primary())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(at, process, what, detail)| Hop {
                at,
                process,
                what,
                detail: serde_json::from_str(&detail).unwrap_or_default(),
            })
            .collect())
    }

    /// Deletes the hops older than `before` (Unix milliseconds).
    pub async fn prune_journey(&self, before: i64) -> Result<u64, DbError> {
        Ok(crate::sql::query("DELETE FROM journey WHERE at < $1")
            .bind(before)
            .execute(self.primary())
            .await?
            .rows_affected())
    }
}
