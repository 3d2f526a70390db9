//! Jobs as the application offers them: enqueued by a user (or an operator), read
//! and cancelled by their owner or an admin. The work itself is `bakery worker`'s.

use bakery_core::User;
use bakery_core::job::{Job, JobState};
use bakery_db::Lsn;
use bakery_db::jobs::NewJob;

use crate::{App, Error, Written};

/// Kinds a worker knows.
pub const KINDS: &[&str] = bakery_events::topology::job_kind::ALL;
/// Attempts before a job fails for good.
pub const MAX_ATTEMPTS: i64 = 5;

impl App {
    /// Queues a job of `kind` for `owner`; its message commits with it.
    pub async fn enqueue_job(
        &self,
        kind: &str,
        owner: Option<&User>,
        payload: serde_json::Value,
    ) -> Result<Written<i64>, Error> {
        if !KINDS.contains(&kind) {
            return Err(Error::Invalid(bakery_core::Invalid::new(
                "unknown_kind",
                format!("no job kind {kind:?}; the kinds are {}", KINDS.join(", ")),
            )));
        }
        // An image job reads a file: only ever one of the uploaded originals.
        if kind == bakery_events::topology::job_kind::IMAGE {
            let spec: Option<crate::media::ImageJob> = serde_json::from_value(payload.clone()).ok();
            if spec.is_none_or(|spec| spec.original_in(self.media_dir()).is_none()) {
                return Err(Error::Invalid(bakery_core::Invalid::new(
                    "bad_payload",
                    "an image job is {\"product_id\": id, \"original\": \"originals/<file>\"}",
                )));
            }
        }
        let job = NewJob {
            kind: kind.to_string(),
            owner_id: owner.map(|u| u.id),
            payload: payload.to_string(),
            max_attempts: MAX_ATTEMPTS,
            correlation_id: bakery_telemetry::correlation_id(),
        };
        // Written with the jobs other requests ask for meanwhile (the enqueuer's
        // group commit), on the primary: the request's `x-db` says so.
        let (id, lsn) = self.0.enqueuer.enqueue(job).await.map_err(Error::Store)?;
        bakery_db::replica::note(bakery_db::Role::Primary);
        metrics::counter!("bakery_jobs_total", "kind" => kind.to_string(), "state" => "queued")
            .increment(1);
        Ok(Written { value: id, lsn })
    }

    /// A job, for its owner or an admin (others get 404: its existence is not theirs
    /// to know).
    pub async fn job(&self, viewer: &User, id: i64, reader: Option<Lsn>) -> Result<Job, Error> {
        let job = self.db().job(id, reader).await?.ok_or(Error::NotFound)?;
        // Whether the viewer is an admin is asked of the primary, never taken from
        // the cached user the request came with.
        if job.owner_id == Some(viewer.id) || self.is_admin(viewer).await? {
            Ok(job)
        } else {
            Err(Error::NotFound)
        }
    }

    /// Cancels a queued or running job of `viewer`'s (or any, for an admin); a job
    /// already over is a conflict.
    pub async fn cancel_job(&self, viewer: &User, id: i64) -> Result<(), Error> {
        let job = self.job(viewer, id, Some(Lsn::LATEST)).await?;
        if job.state.is_final() {
            return Err(Error::Conflict {
                code: "job_finished",
                message: "the job is already over",
            });
        }
        match self.db().cancel_job(id).await? {
            Some(JobState::Cancelled) => {
                metrics::counter!("bakery_jobs_total", "kind" => job.kind, "state" => "cancelled")
                    .increment(1);
                Ok(())
            }
            Some(_) => Err(Error::Conflict {
                code: "job_finished",
                message: "the job ended before it could be cancelled",
            }),
            None => Err(Error::NotFound),
        }
    }

    /// Operators: jobs, newest first.
    pub async fn jobs(&self, state: Option<JobState>, limit: i64) -> Result<Vec<Job>, Error> {
        Ok(self.db().jobs(state, limit).await?)
    }

    /// Operators: queues a failed or cancelled job again; false when it is neither.
    pub async fn retry_job(&self, id: i64) -> Result<bool, Error> {
        let app = self.clone();
        self.unit(async move {
            let correlation = bakery_telemetry::correlation_id();
            Ok(app.db().requeue_job(id, &correlation).await?)
        })
        .await
    }
}
