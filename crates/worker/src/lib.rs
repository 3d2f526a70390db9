//! `bakery worker`: runs jobs (contract: "Jobs").
//!
//! A job's message (`{job_id}`, or `{job_ids}` for a bulk enqueue, on `jobs.<kind>`)
//! is only a wake-up: as slots free up, the worker claims the jobs' rows in one
//! statement — a lease of `job_lease_secs` each, counted as an attempt, the attempt
//! number being the fencing token — acknowledges the message once all have started,
//! and runs each job in a task of its own. One heartbeat renews the leases of all the
//! jobs it holds, every third of a lease, in one statement; the ends of jobs are
//! written in batches (`settle`). So a long job holds no broker delivery and no
//! database transaction; a worker killed mid-job loses its leases, and the reaper
//! (in every worker) puts its jobs back on the queue for another; a worker that lost
//! a lease (cancelled, or taken over) notices at its next heartbeat, stops that job,
//! and can no longer finish it (every write is fenced).
//! Failures: transient ones are retried with capped exponential backoff and jitter
//! until `max_attempts`, then the job fails; permanent ones fail it at once. The end
//! of a job someone owns publishes `job.finished` (through the outbox), which the push
//! service turns into a notification for the job's owner.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bakery_app::App;
use bakery_app::pages::RenderTarget;
use bakery_broker::{Delivery, Outcome, Policy, handler, topology};
use bakery_config::Config;
use bakery_db::jobs::{Claimed, Ending};
use bakery_events::Incoming;
use bakery_service::{Check, Shell};
use std::collections::HashSet;
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

mod held;
mod image;
mod job;
pub mod kinds;
mod pool;
mod render;
mod settle;

use held::Held;
use job::{JobError, Progress};
use pool::Pool;
use settle::Settler;

/// Product and document events one worker handles at once (each a few statements:
/// more at once would only wait for the database pool).
const EVENTS_AT_ONCE: u16 = 4;
/// How long running jobs may take to finish when the worker stops; after that their
/// leases run out and other workers take them over.
const STOP_GRACE: Duration = Duration::from_secs(10);

struct Worker {
    app: App,
    id: String,
    /// Slots of the light kinds, and of the CPU-bound ones.
    light: Arc<Pool>,
    cpu: Arc<Pool>,
    lease: Duration,
    retry: Policy,
    running: TaskTracker,
    held: Held,
    settler: Settler,
}

/// Runs a worker on `listener` (health and metrics) until `shutdown`.
pub async fn run(
    mut config: Config,
    id: &str,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The database, the cache (image jobs refresh `Product:{id}`; renders read
    // through it) and the broker; no session store. Its statements are batches over
    // `jobs`, which grows from nothing under load: PostgreSQL plans each execution.
    config.database.plan_each_execution = true;
    let app = App::connect(&config).await?;
    app.broker().check(&config.broker).await?;
    let checks = vec![
        Check::new("database", true, app.clone(), |app| async move {
            app.database_up().await
        }),
        Check::new("broker", true, app.broker().clone(), |broker| async move {
            broker.is_up().await
        }),
        // Reported only: without it, renders read the database.
        Check::new("cache", false, app.clone(), |app| async move {
            app.cache_up().await
        }),
    ];
    let shell = Shell::new(id, &config.http, checks)?;
    let worker = Arc::new(Worker {
        app: app.clone(),
        id: id.to_string(),
        light: Arc::new(Pool::new(config.worker.concurrency as usize)),
        cpu: Arc::new(Pool::new(config.worker.cpu_slots())),
        lease: config.worker.job_lease,
        retry: Policy::from_config(&config.broker),
        running: TaskTracker::new(),
        held: Held::default(),
        settler: Settler::start(app.clone()),
    });
    let stop = CancellationToken::new();
    // A worker takes from the broker only what it can start: messages it held while
    // busy would wait for its slots instead of going to an idle worker.
    let mut consumers: Vec<_> = topology::job_kind::ALL
        .iter()
        .filter_map(|kind| Some((topology::job_queue(kind)?, kind)))
        .map(|(queue, kind)| {
            let pool = if kinds::cpu_bound(kind) {
                worker.cpu.clone()
            } else {
                worker.light.clone()
            };
            let prefetch = pool.size().min(usize::from(u16::MAX)) as u16;
            let worker = worker.clone();
            let handler =
                handler(move |delivery: Delivery| worker.clone().dispatch(delivery, pool.clone()));
            app.broker()
                .consume_at_most(queue, prefetch, handler, stop.clone())
        })
        .collect();
    consumers.push({
        let worker = worker.clone();
        let handler = handler(move |delivery: Delivery| worker.clone().product_changed(delivery));
        app.broker().consume_at_most(
            topology::RENDER_PRODUCTS,
            EVENTS_AT_ONCE,
            handler,
            stop.clone(),
        )
    });
    consumers.push({
        let worker = worker.clone();
        let handler = handler(move |delivery: Delivery| worker.clone().document_changed(delivery));
        app.broker().consume_at_most(
            topology::DOCUMENTS_PRODUCTS,
            EVENTS_AT_ONCE,
            handler,
            stop.clone(),
        )
    });
    let reaper = tokio::spawn(worker.clone().reap(stop.clone()));
    // Heartbeats go on until the running jobs have finished, after the consumers stop.
    let beating = CancellationToken::new();
    let heartbeat = tokio::spawn(worker.clone().heartbeat(beating.clone()));
    let router = bakery_service::layered(&shell, Router::new());
    tracing::info!(id, addr = %listener.local_addr()?, concurrency = worker.light.size(), cpu_concurrency = worker.cpu.size(), broker = app.broker().engine(), "worker serving");
    let announced = app.announce("worker", listener.local_addr()?);
    bakery_service::serve(&shell, router, listener, shutdown).await?;
    announced.end().await;
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
    beating.cancel();
    let _ = heartbeat.await;
    app.close().await;
    Ok(())
}

impl Worker {
    fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }

    /// A job message: its jobs start as slots free up — as many as are free are
    /// claimed in one statement and each handed to a task; the message is
    /// acknowledged once all have started. (Jobs of a batch already started are not
    /// claimed again if the message comes back: the claim is conditional.)
    async fn dispatch(self: Arc<Self>, delivery: Delivery, pool: Arc<Pool>) -> Outcome {
        let ids = match delivery.message.event() {
            Ok(Incoming::JobsReady(ready)) => ready.ids(),
            Ok(other) => return Outcome::Dead(format!("not a job message: {other:?}")),
            Err(e) => return Outcome::Dead(e.to_string()),
        };
        if ids.is_empty() {
            return Outcome::Dead("a job message names no job".into());
        }
        let mut waiting = ids.as_slice();
        while !waiting.is_empty() {
            // A free slot first: the message waits (unacknowledged) while all are busy.
            let slots = pool.take(waiting.len()).await;
            if slots.is_empty() {
                return Outcome::Retry("the worker is stopping".into());
            }
            let (now, later) = waiting.split_at(slots.len());
            waiting = later;
            // Done, cancelled, not due or another worker's: not claimed, nothing to do.
            let claimed = match self.app.claim_jobs(now, &self.id, self.lease_ms()).await {
                Ok(claimed) => claimed,
                Err(e) => return Outcome::Retry(e.to_string()),
            };
            for (claimed, slot) in claimed.into_iter().zip(slots) {
                let span = tracing::info_span!("job", job_id = claimed.id, kind = %claimed.kind, attempt = claimed.attempt);
                // The job runs, and ends, under the request that queued it (the
                // message may have woken it with other requests' jobs).
                let correlation = claimed
                    .correlation_id
                    .clone()
                    .unwrap_or_else(|| delivery.message.correlation_id.clone());
                let work = bakery_telemetry::with_correlation(
                    correlation,
                    self.clone().execute(claimed, slot),
                );
                self.running.spawn(work.instrument(span));
            }
        }
        Outcome::Ack
    }

    /// Runs a claimed job to its end; the heartbeat keeps its lease alive meanwhile.
    async fn execute(self: Arc<Self>, claimed: Claimed, _slot: OwnedSemaphorePermit) {
        let progress = Progress::default();
        let lost = self.held.hold(&claimed, progress.clone());
        tracing::debug!("job started");
        let outcome = tokio::select! {
            result = kinds::run(&self.app, &claimed, &progress) => Some(result),
            () = lost.cancelled() => None,
        };
        // Settling is quick; were it to fail, the lease runs out and the job runs again.
        self.held.release(claimed.id);
        let ending = match outcome {
            None => {
                tracing::info!("job no longer ours (cancelled or taken over); stopped");
                return;
            }
            Some(Ok(value)) => Ending::Succeeded(value),
            Some(Err(JobError::Transient(reason))) if claimed.attempt < claimed.max_attempts => {
                let delay = self.retry.delay(claimed.attempt as u32);
                tracing::warn!(%reason, ?delay, "job failed for now; will retry");
                let run_at = bakery_core::now_millis() + delay.as_millis() as i64;
                Ending::RetryAt {
                    error: reason,
                    run_at,
                }
            }
            Some(Err(JobError::Transient(reason) | JobError::Permanent(reason))) => {
                tracing::warn!(%reason, "job failed");
                Ending::Failed(reason)
            }
        };
        let state = match ending {
            Ending::Succeeded(_) => "succeeded",
            Ending::Failed(_) => "failed",
            Ending::RetryAt { .. } => "retry",
        };
        let kind = claimed.kind.clone();
        let settled = self.settler.settle(claimed, ending).await;
        match settled {
            Ok(true) => {
                metrics::counter!("bakery_jobs_total", "kind" => kind, "state" => state)
                    .increment(1);
                tracing::debug!(state, "job settled");
            }
            Ok(false) => tracing::info!("job no longer ours at its end; its result is dropped"),
            Err(error) => {
                tracing::warn!(%error, "cannot record the job's end; its lease will run out and it runs again")
            }
        }
    }

    /// Renews the leases of every job this worker holds, a third of a lease apart,
    /// in one statement; a job that is no longer its attempt's is told to stop.
    async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.lease / 3) => {}
                () = stop.cancelled() => return,
            }
            let held = self.held.snapshot();
            if held.is_empty() {
                continue;
            }
            let beats: Vec<_> = held
                .iter()
                .map(|job| (job.id, job.attempt, job.progress.get()))
                .collect();
            match self.app.heartbeat_jobs(&beats, self.lease_ms()).await {
                Ok(still) => {
                    let still: HashSet<i64> = still.into_iter().collect();
                    for job in held.iter().filter(|job| !still.contains(&job.id)) {
                        job.lost.cancel();
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot renew the jobs' leases"),
            }
        }
    }

    /// `product.changed`: the product's page at the edge is marked stale (or, the
    /// product deleted, dropped) and its render queued a moment later, so that a
    /// burst of changes renders once. Redelivery is harmless: the render is
    /// deduplicated while queued, and rendering again changes nothing.
    async fn product_changed(self: Arc<Self>, delivery: Delivery) -> Outcome {
        let changed = match delivery.message.event() {
            Ok(Incoming::ProductChanged(changed)) => changed,
            Ok(other) => return Outcome::Dead(format!("not a product.changed: {other:?}")),
            Err(e) => return Outcome::Dead(e.to_string()),
        };
        let path = bakery_core::edge::product_path(changed.product_id);
        if let Err(e) = self.app.invalidate_edge_page(&path, changed.deleted).await {
            return Outcome::Retry(e.to_string());
        }
        if changed.deleted {
            return Outcome::Ack;
        }
        let delay = bakery_app::pages::PRODUCT_RENDER_DELAY_MS;
        match self
            .app
            .render_soon(RenderTarget::Product(changed.product_id), delay)
            .await
        {
            Ok(Some(_)) => {
                // Dispatch it when due (the reaper would, later).
                let worker = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay as u64)).await;
                    match worker.app.dispatch_due_jobs(worker.lease_ms()).await {
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%error, "cannot dispatch due jobs; the reaper will")
                        }
                    }
                });
                Outcome::Ack
            }
            // A render of it is queued already: that one will see this change.
            Ok(None) => Outcome::Ack,
            Err(e) => Outcome::Retry(e.to_string()),
        }
    }

    /// `product.changed` on `documents.products`: the product's document is made
    /// again from the tables (the joins in this code's `assemble_product_document`).
    /// Idempotent and order-proof: a redelivered or late event rebuilds from what the
    /// tables hold now, and the store is fenced by the product's version.
    async fn document_changed(self: Arc<Self>, delivery: Delivery) -> Outcome {
        let changed = match delivery.message.event() {
            Ok(Incoming::ProductChanged(changed)) => changed,
            Ok(other) => return Outcome::Dead(format!("not a product.changed: {other:?}")),
            Err(e) => return Outcome::Dead(e.to_string()),
        };
        match self.app.document_changed(changed.product_id).await {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::Retry(e.to_string()),
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
            match self.app.reap_jobs(self.lease_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(dispatched = n, "jobs back on the queue"),
                Err(error) => tracing::warn!(%error, "the job reaper could not run"),
            }
        }
    }
}
