//! Jobs: the row is the job's truth. Enqueueing commits the row with its dispatch
//! message in the outbox; a worker claims the row (a lease, renewed by heartbeats)
//! and every later change is fenced by the attempt number it claimed, so a worker
//! that lost its lease (killed, paused, cancelled) changes nothing. The reaper puts
//! jobs whose lease ran out, or whose retry is due, back on the queue.

use bakery_core::job::{Job, JobState};
use serde_json::json;

use crate::messaging::stage;
use crate::{Database, DbError, Lsn, now_millis};

/// The direct exchange of jobs (the contract's `bakery.jobs`); the routing key is the kind.
pub const JOBS_EXCHANGE: &str = "bakery.jobs";
/// Where `job.finished` goes.
const EVENTS_EXCHANGE: &str = crate::calendar::EVENTS_EXCHANGE;

/// A job a worker holds: its fencing token is `attempt`.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub kind: String,
    pub payload: String,
    pub attempt: i64,
    pub max_attempts: i64,
    pub owner_id: Option<i64>,
}

/// How a job ended.
pub enum Ending<'a> {
    Succeeded(&'a serde_json::Value),
    Failed(&'a str),
}

const COLUMNS: &str =
    "id, kind, state, progress, attempts, result, error, created_at, finished_at, owner_id, worker";
type JobRow = (
    i64,
    String,
    String,
    i64,
    i64,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

fn job(row: JobRow) -> Job {
    let (
        id,
        kind,
        state,
        progress,
        attempts,
        result,
        error,
        created_at,
        finished_at,
        owner_id,
        worker,
    ) = row;
    Job {
        id,
        kind,
        state: JobState::parse(&state).unwrap_or(JobState::Failed),
        progress,
        attempts,
        result: result.and_then(|r| serde_json::from_str(&r).ok()),
        error,
        created_at,
        finished_at,
        owner_id,
        worker,
    }
}

impl Database {
    /// A new job, queued, with its dispatch message staged in the same transaction.
    pub async fn enqueue_job(
        &self,
        kind: &str,
        owner_id: Option<i64>,
        payload: &serde_json::Value,
        max_attempts: i64,
        correlation_id: &str,
    ) -> Result<(i64, Option<Lsn>), DbError> {
        let (kind, payload, correlation_id) = (
            kind.to_string(),
            payload.to_string(),
            correlation_id.to_string(),
        );
        self.write(move |pool| async move {
            let mut tx = pool.begin().await?;
            let now = now_millis();
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO jobs (kind, owner_id, payload, max_attempts, run_at, dispatched_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $5, $5) RETURNING id",
            )
            .bind(&kind)
            .bind(owner_id)
            .bind(&payload)
            .bind(max_attempts)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            stage(&mut tx, JOBS_EXCHANGE, &kind, &correlation_id, &json!({ "job_id": id })).await?;
            tx.commit().await?;
            Ok(id)
        })
        .await
    }

    /// Many jobs of one kind at once: one transaction for all the rows and one
    /// dispatch message naming them all (what a bulk producer, or the benchmark,
    /// wants). Should that message be lost to a dead consumer, the reaper dispatches
    /// the jobs still queued one by one.
    pub async fn enqueue_jobs(
        &self,
        kind: &str,
        payloads: &[serde_json::Value],
        max_attempts: i64,
        correlation_id: &str,
    ) -> Result<Vec<i64>, DbError> {
        let mut tx = self.primary().begin().await?;
        let now = now_millis();
        let mut ids = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO jobs (kind, payload, max_attempts, run_at, dispatched_at, created_at)
                 VALUES ($1, $2, $3, $4, $4, $4) RETURNING id",
            )
            .bind(kind)
            .bind(payload.to_string())
            .bind(max_attempts)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            stage(
                &mut tx,
                JOBS_EXCHANGE,
                kind,
                correlation_id,
                &json!({ "job_id": id }),
            )
            .await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Per job of `ids` that has ended: (created_at, finished_at, state).
    pub async fn job_ends(
        &self,
        first: i64,
        last: i64,
    ) -> Result<Vec<(i64, i64, String)>, DbError> {
        Ok(sqlx::query_as(
            "SELECT created_at, finished_at, state FROM jobs
             WHERE id BETWEEN $1 AND $2 AND finished_at IS NOT NULL",
        )
        .bind(first)
        .bind(last)
        .fetch_all(self.primary())
        .await?)
    }

    pub async fn job(&self, id: i64, after: Option<Lsn>) -> Result<Option<Job>, DbError> {
        let row: Option<JobRow> = self
            .read(after, async |pool| {
                let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1");
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(&pool)
                    .await
            })
            .await?;
        Ok(row.map(job))
    }

    /// Jobs newest first, in `state` if given.
    pub async fn jobs(&self, state: Option<JobState>, limit: i64) -> Result<Vec<Job>, DbError> {
        let state = state.map(JobState::as_str).unwrap_or("");
        let sql = format!(
            "SELECT {COLUMNS} FROM jobs WHERE ($1 = '' OR state = $1) ORDER BY id DESC LIMIT $2"
        );
        let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(state)
            .bind(limit)
            .fetch_all(self.primary())
            .await?;
        Ok(rows.into_iter().map(job).collect())
    }

    /// Takes the job for `worker` for `lease_ms` if it is due and nobody holds it;
    /// counts an attempt (the new fencing token).
    pub async fn claim_job(
        &self,
        id: i64,
        worker: &str,
        lease_ms: i64,
    ) -> Result<Option<Claimed>, DbError> {
        let now = now_millis();
        let row: Option<(String, String, i64, i64, Option<i64>)> = sqlx::query_as(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = $3,
                    worker = $2, started_at = COALESCE(started_at, $4)
             WHERE id = $1 AND state = 'queued' AND run_at <= $4
             RETURNING kind, payload, attempts, max_attempts, owner_id",
        )
        .bind(id)
        .bind(worker)
        .bind(now + lease_ms)
        .bind(now)
        .fetch_optional(self.primary())
        .await?;
        Ok(
            row.map(|(kind, payload, attempt, max_attempts, owner_id)| Claimed {
                id,
                kind,
                payload,
                attempt,
                max_attempts,
                owner_id,
            }),
        )
    }

    /// Keeps the lease alive and records progress; false when the job is no longer
    /// this attempt's (cancelled, or taken over after the lease ran out).
    pub async fn heartbeat_job(
        &self,
        claimed: &Claimed,
        progress: i64,
        lease_ms: i64,
    ) -> Result<bool, DbError> {
        Ok(sqlx::query(
            "UPDATE jobs SET lease_until = $3, progress = $4
             WHERE id = $1 AND attempts = $2 AND state = 'running'",
        )
        .bind(claimed.id)
        .bind(claimed.attempt)
        .bind(now_millis() + lease_ms)
        .bind(progress.clamp(0, 100))
        .execute(self.primary())
        .await?
        .rows_affected()
            > 0)
    }

    /// Ends the job (fenced) and stages `job.finished` in the same transaction;
    /// false when this attempt no longer holds it.
    pub async fn finish_job(
        &self,
        claimed: &Claimed,
        ending: Ending<'_>,
        correlation_id: &str,
    ) -> Result<bool, DbError> {
        let (state, result, error) = match ending {
            Ending::Succeeded(value) => ("succeeded", Some(value.to_string()), None),
            Ending::Failed(reason) => ("failed", None, Some(reason.to_string())),
        };
        let mut tx = self.primary().begin().await?;
        let now = now_millis();
        let done = sqlx::query(
            "UPDATE jobs SET state = $3, result = $4, error = $5, finished_at = $6, lease_until = 0,
                    progress = CASE WHEN $3 = 'succeeded' THEN 100 ELSE progress END
             WHERE id = $1 AND attempts = $2 AND state = 'running'",
        )
        .bind(claimed.id)
        .bind(claimed.attempt)
        .bind(state)
        .bind(result)
        .bind(error)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        // Nobody to tell about a job nobody owns (an operator's, a benchmark's).
        if done && claimed.owner_id.is_some() {
            let event = json!({
                "job_id": claimed.id,
                "kind": claimed.kind,
                "state": state,
                "user_id": claimed.owner_id,
            });
            stage(
                &mut tx,
                EVENTS_EXCHANGE,
                "job.finished",
                correlation_id,
                &event,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Puts the job back in the queue to run again at `run_at` (a retry's backoff);
    /// the reaper dispatches it then. False when this attempt no longer holds it.
    pub async fn retry_job_at(
        &self,
        claimed: &Claimed,
        error: &str,
        run_at: i64,
    ) -> Result<bool, DbError> {
        Ok(sqlx::query(
            "UPDATE jobs SET state = 'queued', error = $3, run_at = $4, dispatched_at = NULL, lease_until = 0
             WHERE id = $1 AND attempts = $2 AND state = 'running'",
        )
        .bind(claimed.id)
        .bind(claimed.attempt)
        .bind(error)
        .bind(run_at)
        .execute(self.primary())
        .await?
        .rows_affected()
            > 0)
    }

    /// Cancels a queued or running job; answers its state afterwards (`None`: no
    /// such job). A running job's worker sees it at its next heartbeat and stops.
    pub async fn cancel_job(&self, id: i64) -> Result<Option<JobState>, DbError> {
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = $2, lease_until = 0
             WHERE id = $1 AND state IN ('queued', 'running')",
        )
        .bind(id)
        .bind(now_millis())
        .execute(self.primary())
        .await?;
        Ok(self.job(id, Some(Lsn::LATEST)).await?.map(|j| j.state))
    }

    /// Queues a failed or cancelled job again, attempts reset; false when it is not
    /// in one of those states.
    pub async fn requeue_job(&self, id: i64, correlation_id: &str) -> Result<bool, DbError> {
        let mut tx = self.primary().begin().await?;
        let now = now_millis();
        let kind: Option<String> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'queued', attempts = 0, progress = 0, error = NULL, result = NULL,
                    run_at = $2, dispatched_at = $2, finished_at = NULL
             WHERE id = $1 AND state IN ('failed', 'cancelled') RETURNING kind",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(kind) = kind else {
            return Ok(false);
        };
        stage(
            &mut tx,
            JOBS_EXCHANGE,
            &kind,
            correlation_id,
            &json!({ "job_id": id }),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The reaper's pass: jobs whose lease ran out (their worker died) go back to
    /// the queue, and queued jobs that are due get a dispatch message when they have
    /// none, or when theirs led to no claim within `redispatch_after_ms` (it may sit
    /// with a dead consumer until the broker gives it to another; a second message
    /// is harmless, the claim is conditional). Answers how many were dispatched.
    pub async fn reap_jobs(
        &self,
        redispatch_after_ms: i64,
        correlation_id: &str,
    ) -> Result<usize, DbError> {
        let now = now_millis();
        let mut tx = self.primary().begin().await?;
        sqlx::query(
            "UPDATE jobs SET state = 'queued', run_at = $1, dispatched_at = NULL, lease_until = 0
             WHERE state = 'running' AND lease_until < $1",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let due: Vec<(i64, String)> = sqlx::query_as(
            "UPDATE jobs SET dispatched_at = $1
             WHERE state = 'queued' AND run_at <= $1 AND (dispatched_at IS NULL OR dispatched_at < $2)
             RETURNING id, kind",
        )
        .bind(now)
        .bind(now - redispatch_after_ms)
        .fetch_all(&mut *tx)
        .await?;
        for (id, kind) in &due {
            stage(
                &mut tx,
                JOBS_EXCHANGE,
                kind,
                correlation_id,
                &json!({ "job_id": id }),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(due.len())
    }
}
