//! The workers' side of jobs: claiming, heartbeats, ends, the reaper, and the
//! bulk enqueue and end counts of `bakery bench jobs`. Every write that stages a
//! message (a dispatch, `job.finished`) is a unit, so its relay is kicked at once.

use bakery_db::jobs::{Claimed, NewJob, Settle};

use crate::{App, Error};

/// Who is named as the correlation of the reaper's dispatches.
const REAPER: &str = "reaper";

impl App {
    /// Takes those of `ids` that are due and nobody holds, for `worker`, with a
    /// lease of `lease_ms`; each claim counts an attempt (its fencing token).
    pub async fn claim_jobs(
        &self,
        ids: &[i64],
        worker: &str,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>, Error> {
        Ok(self.db().claim_jobs(ids, worker, lease_ms).await?)
    }

    /// Renews the leases of `(id, attempt, progress)`; answers the ids still held.
    pub async fn heartbeat_jobs(
        &self,
        beats: &[(i64, i64, i64)],
        lease_ms: i64,
    ) -> Result<Vec<i64>, Error> {
        Ok(self.db().heartbeat_jobs(beats, lease_ms).await?)
    }

    /// Writes the ends of `endings` in one transaction (with `job.finished` for the
    /// jobs someone owns); answers, per ending, whether its attempt still held it.
    pub async fn settle_jobs(&self, endings: Vec<Settle>) -> Result<Vec<bool>, Error> {
        let app = self.clone();
        self.unit(async move { Ok(app.db().settle_jobs(&endings).await?) })
            .await
    }

    /// Puts jobs whose lease ran out back on the queue and dispatches due jobs
    /// whose message led to no claim within `redispatch_after_ms`; how many.
    pub async fn reap_jobs(&self, redispatch_after_ms: i64) -> Result<usize, Error> {
        let app = self.clone();
        self.unit(async move { Ok(app.db().reap_jobs(redispatch_after_ms, REAPER).await?) })
            .await
    }

    /// Dispatches the queued jobs that are due and have no message; how many.
    pub async fn dispatch_due_jobs(&self, redispatch_after_ms: i64) -> Result<usize, Error> {
        let app = self.clone();
        self.unit(async move {
            let correlation = bakery_telemetry::correlation_id();
            Ok(app
                .db()
                .dispatch_due_jobs(redispatch_after_ms, &correlation)
                .await?)
        })
        .await
    }

    /// Operators' tools (the bench): `payloads.len()` jobs of `kind` nobody owns,
    /// in one transaction with their dispatch messages.
    pub async fn enqueue_jobs(
        &self,
        kind: &str,
        payloads: Vec<serde_json::Value>,
        correlation_id: &str,
    ) -> Result<Vec<i64>, Error> {
        let jobs: Vec<NewJob> = payloads
            .iter()
            .map(|payload| NewJob {
                kind: kind.to_string(),
                owner_id: None,
                payload: payload.to_string(),
                max_attempts: crate::jobs::MAX_ATTEMPTS,
                correlation_id: correlation_id.to_string(),
            })
            .collect();
        let app = self.clone();
        self.unit(async move { Ok(app.db().enqueue_jobs(jobs).await?.0) })
            .await
    }

    /// The first job with an id in `first..=last` that has not ended; every job
    /// before it has (`None`: all have).
    pub async fn first_unended_job(&self, first: i64, last: i64) -> Result<Option<i64>, Error> {
        Ok(self.db().first_unended_job(first, last).await?)
    }

    /// Per ended job with an id in `first..=last`: (created_at, finished_at, state).
    pub async fn job_ends(&self, first: i64, last: i64) -> Result<Vec<(i64, i64, String)>, Error> {
        Ok(self.db().job_ends(first, last).await?)
    }
}
