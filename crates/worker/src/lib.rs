//! `bakery worker`: runs jobs (contract: "Jobs").
//!
//! A job's message (`{job_id}` on `jobs.<kind>`) is only a wake-up: the worker claims
//! the job's row — a lease of `job_lease_secs`, counted as an attempt, the attempt
//! number being the fencing token — acknowledges the message at once, and runs the
//! job in a task of its own, renewing the lease every third of it. So a long job
//! holds no broker delivery and no database transaction; a worker killed mid-job
//! loses its lease, and the reaper (in every worker) puts the job back on the queue
//! for another; a worker that lost its lease (cancelled, or taken over) notices at its
//! next heartbeat, stops, and can no longer finish it (every write is fenced).
//! Failures: transient ones are retried with capped exponential backoff and jitter
//! until `max_attempts`, then the job fails; permanent ones fail it at once. The end
//! of a job someone owns publishes `job.finished` (through the outbox), which the push
//! service turns into a notification for the job's owner.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bakery_app::App;
use bakery_broker::{Delivery, Outcome, Policy, handler, topology};
use bakery_config::Config;
use bakery_db::jobs::{Claimed, Ending};
use bakery_web::AppState;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

mod image;
pub mod kinds;

use kinds::{JobError, Progress};

/// The queues a worker consumes.
const QUEUES: &[&str] = &[
    topology::JOBS_IMAGE,
    topology::JOBS_RENDER,
    topology::JOBS_NOOP,
];
/// How long running jobs may take to finish when the worker stops; after that their
/// leases run out and other workers take them over.
const STOP_GRACE: Duration = Duration::from_secs(10);

struct Worker {
    app: App,
    id: String,
    slots: Arc<Semaphore>,
    lease: Duration,
    retry: Policy,
    running: TaskTracker,
}

/// Runs a worker on `listener` (health and metrics) until `shutdown`.
pub async fn run(
    mut config: Config,
    id: &str,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // A worker takes from the broker only what it can start: messages it held while
    // busy would wait for its slots instead of going to an idle worker.
    config.broker_prefetch = config.worker_concurrency.min(u32::from(u16::MAX)) as u16;
    let state = AppState::connect(config.clone(), id).await?;
    state.app.broker().check(&config).await?;
    state.require_broker();
    let worker = Arc::new(Worker {
        app: state.app.clone(),
        id: id.to_string(),
        slots: Arc::new(Semaphore::new(config.worker_concurrency as usize)),
        lease: config.job_lease,
        retry: Policy::from_config(&config),
        running: TaskTracker::new(),
    });
    let stop = CancellationToken::new();
    let consumers: Vec<_> = QUEUES
        .iter()
        .map(|queue| {
            let worker = worker.clone();
            let handler = handler(move |delivery: Delivery| worker.clone().dispatch(delivery));
            state.app.broker().consume(queue, handler, stop.clone())
        })
        .collect();
    let reaper = tokio::spawn(worker.clone().reap(stop.clone()));
    let router = bakery_web::layered(
        state.clone(),
        Router::new().merge(bakery_web::routes::ops::router()),
    );
    tracing::info!(id, addr = %listener.local_addr()?, concurrency = config.worker_concurrency, broker = state.app.broker().engine(), "worker serving");
    bakery_web::serve(state.clone(), router, listener, shutdown).await?;
    stop.cancel();
    for consumer in consumers {
        let _ = consumer.await;
    }
    let _ = reaper.await;
    worker.running.close();
    if tokio::time::timeout(STOP_GRACE, worker.running.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "jobs still running at exit; their leases will run out and another worker takes them over"
        );
    }
    state.app.broker().close().await;
    Ok(())
}

#[derive(Deserialize)]
struct Dispatch {
    /// One job ...
    #[serde(default)]
    job_id: Option<i64>,
    /// ... or a batch of them (a bulk enqueue sends one message for many jobs).
    #[serde(default)]
    job_ids: Vec<i64>,
}

impl Worker {
    fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }

    /// A job's message: claim the row, hand the job to a task, acknowledge.
    /// A job message: for each of its jobs in turn, wait for a free slot, claim the
    /// row and hand the job to a task; acknowledge once all have started. (A batch's
    /// jobs already started are not claimed again if the message comes back: the
    /// claim is conditional.)
    async fn dispatch(self: Arc<Self>, delivery: Delivery) -> Outcome {
        let dispatch: Dispatch = match delivery.message.json() {
            Ok(d) => d,
            Err(e) => return Outcome::Dead(format!("malformed job message: {e}")),
        };
        let ids: Vec<i64> = dispatch
            .job_id
            .into_iter()
            .chain(dispatch.job_ids)
            .collect();
        if ids.is_empty() {
            return Outcome::Dead("a job message names no job".into());
        }
        for id in ids {
            // A free slot first: the message waits (unacknowledged) while all are busy.
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                return Outcome::Retry("the worker is stopping".into());
            };
            let claimed = match self.app.db().claim_job(id, &self.id, self.lease_ms()).await {
                Ok(Some(claimed)) => claimed,
                // Done, cancelled, not due, or another worker's: nothing to do here.
                Ok(None) => continue,
                Err(e) => return Outcome::Retry(e.to_string()),
            };
            let span = tracing::info_span!("job", job_id = claimed.id, kind = %claimed.kind, attempt = claimed.attempt);
            let work = bakery_telemetry::with_correlation(
                delivery.message.correlation_id.clone(),
                self.clone().execute(claimed, slot),
            );
            self.running.spawn(work.instrument(span));
        }
        Outcome::Ack
    }

    /// Runs a claimed job to its end, keeping its lease alive meanwhile.
    async fn execute(self: Arc<Self>, claimed: Claimed, _slot: OwnedSemaphorePermit) {
        let progress = Progress::default();
        let lost = CancellationToken::new();
        let heartbeat = tokio::spawn(self.clone().heartbeat(
            claimed.clone(),
            progress.clone(),
            lost.clone(),
        ));
        tracing::info!("job started");
        let outcome = tokio::select! {
            result = kinds::run(&self.app, &claimed, &progress) => Some(result),
            () = lost.cancelled() => None,
        };
        heartbeat.abort();
        let correlation = bakery_telemetry::correlation_id();
        let db = self.app.db();
        let (state, fenced) = match outcome {
            None => {
                tracing::info!("job no longer ours (cancelled or taken over); stopped");
                return;
            }
            Some(Ok(value)) => (
                "succeeded",
                db.finish_job(&claimed, Ending::Succeeded(&value), &correlation)
                    .await,
            ),
            Some(Err(JobError::Transient(reason))) if claimed.attempt < claimed.max_attempts => {
                let delay = self.retry.delay(claimed.attempt as u32);
                tracing::warn!(%reason, ?delay, "job failed for now; will retry");
                let run_at = bakery_core::now_millis() + delay.as_millis() as i64;
                ("retry", db.retry_job_at(&claimed, &reason, run_at).await)
            }
            Some(Err(JobError::Transient(reason) | JobError::Permanent(reason))) => {
                tracing::warn!(%reason, "job failed");
                (
                    "failed",
                    db.finish_job(&claimed, Ending::Failed(&reason), &correlation)
                        .await,
                )
            }
        };
        match fenced {
            Ok(true) => {
                metrics::counter!("bakery_jobs_total", "kind" => claimed.kind.clone(), "state" => state).increment(1);
                tracing::info!(state, "job settled");
                self.app.events_staged();
            }
            Ok(false) => tracing::info!("job no longer ours at its end; its result is dropped"),
            Err(error) => {
                tracing::warn!(%error, "cannot record the job's end; its lease will run out and it runs again")
            }
        }
    }

    /// Renews the lease every third of it; cancels `lost` when the job is no longer
    /// this attempt's.
    async fn heartbeat(
        self: Arc<Self>,
        claimed: Claimed,
        progress: Progress,
        lost: CancellationToken,
    ) {
        loop {
            tokio::time::sleep(self.lease / 3).await;
            match self
                .app
                .db()
                .heartbeat_job(&claimed, progress.get(), self.lease_ms())
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    lost.cancel();
                    return;
                }
                Err(error) => tracing::warn!(%error, "cannot renew the job's lease"),
            }
        }
    }

    /// Puts jobs whose worker died, and retries that are due, back on the queue.
    async fn reap(self: Arc<Self>, stop: CancellationToken) {
        let every = (self.lease / 4).max(Duration::from_millis(250));
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop.cancelled() => return,
            }
            match self.app.db().reap_jobs(self.lease_ms(), "reaper").await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(dispatched = n, "jobs back on the queue");
                    self.app.events_staged();
                }
                Err(error) => tracing::warn!(%error, "the job reaper could not run"),
            }
        }
    }
}
