//! One picture of the system, and the rates between two pictures.

use std::collections::BTreeMap;

use bakery_app::App;
use bakery_broker::QueueDepth;
use bakery_db::processes::{HEARTBEAT, Process};
use serde::Serialize;

use crate::scrape::{self, Metrics};

/// Takes pictures of the system for one web clone's `/ops`.
#[derive(Clone)]
pub struct Ops {
    app: App,
    client: reqwest::Client,
}

/// The whole system at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Unix milliseconds (RFC 3339 in JSON).
    #[serde(serialize_with = "bakery_core::clock::serialize_millis")]
    pub at: i64,
    pub processes: Vec<ProcessView>,
    /// The load balancers' pools: each member's health, in-flight and requests
    /// served (the rotation).
    pub pools: Vec<serde_json::Value>,
    pub caches: Vec<CacheView>,
    pub database: DatabaseView,
    pub broker: BrokerView,
    pub jobs: JobsView,
    pub push: PushView,
    pub edge: EdgeView,
    pub documents: DocumentsView,
    /// Counters by name, what the rates are computed from.
    pub totals: BTreeMap<String, f64>,
    /// Per second since the previous picture (empty in the first).
    pub per_second: BTreeMap<String, f64>,
    /// What could not be read (a broker away, a process not answering).
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    #[serde(flatten)]
    pub process: Process,
    /// Answered its metrics now and said it was alive lately.
    pub up: bool,
    /// Requests answered (health checks and metrics scrapes left out).
    pub requests: f64,
    /// Of those, answered 5xx or 429 (failed, refused or shed).
    pub errors: f64,
    pub in_flight: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheView {
    /// `object`, `query`, `session`... (the `cache` label).
    pub cache: String,
    pub hits: f64,
    pub misses: f64,
    pub bypasses: f64,
    /// Hits over hits and misses (0 when there was no lookup).
    pub hit_ratio: f64,
    /// Values rebuilt from the database.
    pub fills: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DatabaseView {
    pub engine: &'static str,
    pub reads_primary: f64,
    pub reads_replica: f64,
    /// Queries answered by replicas over all queries.
    pub replica_share: f64,
    /// Reads sent to the primary because no replica had the reader's own write yet.
    pub fresh_reads: f64,
    pub replicas: Vec<ReplicaView>,
    /// The near cache (in each clone) and its invalidations.
    pub near_hits: f64,
    pub near_misses: f64,
    pub near_invalidations: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaView {
    pub name: String,
    pub up: bool,
    pub lag_bytes: f64,
    pub lag_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BrokerView {
    pub engine: &'static str,
    pub queues: Vec<QueueDepth>,
    pub published: f64,
    pub acked: f64,
    pub retried: f64,
    pub dead: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct JobsView {
    pub counts: Vec<JobCount>,
    /// How long the oldest queued job has waited.
    pub oldest_queued_secs: Option<f64>,
    /// Jobs ended (succeeded, failed, cancelled) as the workers count them.
    pub ended: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobCount {
    pub kind: String,
    pub state: String,
    pub count: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PushView {
    pub streams_open: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EdgeView {
    pub hits: f64,
    pub misses: f64,
    pub stale: f64,
    pub pages: f64,
}

/// The product documents (Path 2): which read model serves, and how far behind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DocumentsView {
    /// `tables` or `documents`.
    pub read_model: &'static str,
    /// Products whose document is missing or older than the tables.
    pub behind: i64,
    /// How long the oldest change not yet in a document has waited.
    pub oldest_behind_secs: Option<f64>,
    /// Product reads answered from a document, and from the tables (a document
    /// not made yet) under the documents read model.
    pub reads_document: f64,
    pub reads_tables: f64,
    /// Documents stored by the consumer, the writers and rebuilds.
    pub stored: f64,
}

/// A process is shown up when it answered and its last heartbeat is this recent.
const ALIVE_WITHIN_MS: i64 = 3 * HEARTBEAT.as_millis() as i64;

impl Ops {
    pub fn new(app: App) -> Self {
        Self {
            app,
            client: reqwest::Client::new(),
        }
    }

    /// A picture of the system now.
    pub async fn snapshot(&self) -> Snapshot {
        let at = bakery_core::now_millis();
        let mut problems = Vec::new();
        let processes = self.app.processes().await.unwrap_or_else(|error| {
            problems.push(format!("the process registry: {error}"));
            Vec::new()
        });
        let (scraped, queues, jobs, behind) = tokio::join!(
            futures::future::join_all(processes.iter().map(|p| self.scrape(p))),
            self.app.queue_depths(),
            self.app.job_counts(),
            self.app.documents_behind(),
        );
        let behind = behind.unwrap_or_else(|error| {
            problems.push(format!("the documents: {error}"));
            Default::default()
        });
        let queues = queues.unwrap_or_else(|error| {
            problems.push(format!("the broker: {error}"));
            Vec::new()
        });
        let jobs = jobs.unwrap_or_else(|error| {
            problems.push(format!("the jobs: {error}"));
            bakery_app::ops::JobCounts::default()
        });

        let mut views = Vec::with_capacity(processes.len());
        let mut all = Vec::new();
        let mut pools = Vec::new();
        for (process, (metrics, members)) in processes.into_iter().zip(scraped) {
            let up = metrics.is_some() && at - process.seen_at <= ALIVE_WITHIN_MS;
            if metrics.is_none() {
                problems.push(format!("{} ({}) does not answer", process.id, process.addr));
            }
            let metrics = metrics.unwrap_or_default();
            let in_flight = match &members {
                // A load balancer: what its members have in flight through it.
                Some(pools) => member_sum(pools, "inflight"),
                None => metrics.sum("bakery_http_in_flight", &[]),
            };
            if let Some(members) = members {
                pools.extend(tag_pools(&process.id, members));
            }
            // What it served, less what watching it cost (health checks, scrapes).
            let requests = metrics.sum("bakery_http_requests_total", &[])
                - ["/healthz", "/metrics"]
                    .iter()
                    .map(|route| metrics.sum("bakery_http_requests_total", &[("route", route)]))
                    .sum::<f64>();
            let errors = metrics.sum_where("bakery_http_requests_total", "status", |status| {
                status.starts_with('5') || status == "429"
            });
            views.push(ProcessView {
                up,
                requests,
                errors,
                in_flight,
                process,
            });
            all.push(metrics);
        }
        let total = |name: &str, labels: &[(&str, &str)]| -> f64 {
            all.iter().map(|m| m.sum(name, labels)).sum()
        };
        let greatest = |name: &str, labels: &[(&str, &str)]| -> f64 {
            all.iter()
                .filter_map(|m| m.max(name, labels))
                .fold(0.0, f64::max)
        };

        let caches: Vec<CacheView> = label_values(&all, "bakery_cache_requests_total", "cache")
            .into_iter()
            .map(|cache| {
                let of = |result: &str| {
                    total(
                        "bakery_cache_requests_total",
                        &[("cache", cache.as_str()), ("result", result)],
                    )
                };
                let (hits, misses) = (of("hit"), of("miss"));
                CacheView {
                    hit_ratio: ratio(hits, hits + misses),
                    bypasses: of("bypass"),
                    fills: total("bakery_cache_fills_total", &[("cache", cache.as_str())]),
                    hits,
                    misses,
                    cache,
                }
            })
            .collect();

        let replicas = label_values(&all, "bakery_db_replica_lag_bytes", "replica")
            .into_iter()
            .map(|name| {
                let labels = [("replica", name.as_str())];
                ReplicaView {
                    up: greatest("bakery_db_replica_up", &labels) > 0.0,
                    lag_bytes: greatest("bakery_db_replica_lag_bytes", &labels),
                    lag_seconds: greatest("bakery_db_replica_lag_seconds", &labels),
                    name,
                }
            })
            .collect();
        let (reads_primary, reads_replica) = (
            total("bakery_db_queries_total", &[("role", "primary")]),
            total("bakery_db_queries_total", &[("role", "replica")]),
        );
        let database = DatabaseView {
            engine: self.app.database_engine(),
            replica_share: ratio(reads_replica, reads_primary + reads_replica),
            reads_primary,
            reads_replica,
            fresh_reads: total("bakery_db_fresh_reads_total", &[]),
            replicas,
            near_hits: total("bakery_cache_near_reads_total", &[("result", "hit")]),
            near_misses: total("bakery_cache_near_reads_total", &[("result", "miss")]),
            near_invalidations: total("bakery_cache_near_invalidations_total", &[]),
        };
        let broker = BrokerView {
            engine: self.app.broker().engine(),
            queues,
            published: total("bakery_broker_published_total", &[]),
            acked: total("bakery_broker_consumed_total", &[("outcome", "ack")]),
            retried: total("bakery_broker_consumed_total", &[("outcome", "retry")]),
            dead: total("bakery_broker_consumed_total", &[("outcome", "dead")]),
        };
        let jobs = JobsView {
            counts: jobs
                .counts
                .into_iter()
                .map(|(kind, state, count)| JobCount { kind, state, count })
                .collect(),
            oldest_queued_secs: jobs
                .oldest_queued_at
                .map(|queued| (at - queued).max(0) as f64 / 1000.0),
            ended: ["succeeded", "failed", "cancelled"]
                .iter()
                .map(|state| total("bakery_jobs_total", &[("state", state)]))
                .sum(),
        };
        let push = PushView {
            streams_open: total("bakery_push_streams_open", &[]),
        };
        let edge = EdgeView {
            hits: total("bakery_edge_requests_total", &[("result", "hit")]),
            misses: total("bakery_edge_requests_total", &[("result", "miss")]),
            stale: total("bakery_edge_requests_total", &[("result", "stale")]),
            pages: greatest("bakery_edge_pages", &[]),
        };
        let documents = DocumentsView {
            read_model: self.app.read_model(),
            behind: behind.products,
            oldest_behind_secs: behind
                .oldest_change_at
                .map(|changed| (at - changed).max(0) as f64 / 1000.0),
            reads_document: total("bakery_documents_reads_total", &[("source", "document")]),
            reads_tables: total("bakery_documents_reads_total", &[("source", "tables")]),
            stored: total("bakery_documents_stored_total", &[("outcome", "stored")]),
        };

        let mut totals = BTreeMap::new();
        for view in &views {
            totals.insert(format!("requests:{}", view.process.id), view.requests);
            totals.insert(format!("errors:{}", view.process.id), view.errors);
        }
        for (name, value) in [
            ("published", broker.published),
            ("acked", broker.acked),
            ("jobs_ended", jobs.ended),
            ("edge_hits", edge.hits),
            ("edge_misses", edge.misses),
            ("reads_primary", database.reads_primary),
            ("reads_replica", database.reads_replica),
        ] {
            totals.insert(name.to_string(), value);
        }
        for view in &caches {
            totals.insert(format!("cache_hits:{}", view.cache), view.hits);
            totals.insert(format!("cache_misses:{}", view.cache), view.misses);
        }
        Snapshot {
            at,
            processes: views,
            pools,
            caches,
            database,
            broker,
            jobs,
            push,
            edge,
            documents,
            totals,
            per_second: BTreeMap::new(),
            problems,
        }
    }

    /// A process's metrics, and a load balancer's pools too.
    async fn scrape(&self, process: &Process) -> (Option<Metrics>, Option<serde_json::Value>) {
        let metrics = scrape::get(&self.client, &process.addr, "/metrics");
        if process.role == "lb" {
            let (metrics, pools) = tokio::join!(
                metrics,
                scrape::get(&self.client, &process.addr, "/lb/backends")
            );
            let pools = pools.and_then(|text| serde_json::from_str(&text).ok());
            (metrics.map(|text| Metrics::parse(&text)), pools)
        } else {
            (metrics.await.map(|text| Metrics::parse(&text)), None)
        }
    }
}

impl Snapshot {
    /// Fills [`Snapshot::per_second`] from `previous`: how much each total grew per
    /// second between the two (a counter that went down — a process restarted —
    /// counts from zero).
    pub fn with_rates_since(mut self, previous: &Snapshot) -> Self {
        let seconds = (self.at - previous.at) as f64 / 1000.0;
        if seconds <= 0.0 {
            return self;
        }
        self.per_second = self
            .totals
            .iter()
            .map(|(name, &now)| {
                let before = previous.totals.get(name).copied().unwrap_or(0.0);
                let grown = if now >= before { now - before } else { now };
                (name.clone(), grown / seconds)
            })
            .collect();
        self
    }
}

/// The values `label` takes in the samples of `name`, over every process, sorted.
fn label_values(all: &[Metrics], name: &str, label: &str) -> std::collections::BTreeSet<String> {
    all.iter()
        .flat_map(|m| m.label_values(name, label))
        .collect()
}

fn ratio(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 0.0 }
}

/// A load balancer's `/lb/backends` pools, each tagged with the balancer's id.
fn tag_pools(lb: &str, members: serde_json::Value) -> Vec<serde_json::Value> {
    let pools = members
        .get("pools")
        .and_then(|p| p.as_array())
        .cloned()
        .unwrap_or_default();
    pools
        .into_iter()
        .map(|mut pool| {
            if let Some(object) = pool.as_object_mut() {
                object.insert("lb".into(), serde_json::Value::from(lb));
            }
            pool
        })
        .collect()
}

/// The sum of one numeric field over every member of every pool.
fn member_sum(members: &serde_json::Value, field: &str) -> f64 {
    members
        .get("pools")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter_map(|pool| pool.get("backends").and_then(|b| b.as_array()))
        .flatten()
        .filter_map(|member| member.get(field).and_then(|v| v.as_f64()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(at: i64, totals: &[(&str, f64)]) -> Snapshot {
        Snapshot {
            at,
            totals: totals.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn rates_are_growth_per_second_and_a_restart_counts_from_zero() {
        let before = picture(
            10_000,
            &[("requests:web-1", 100.0), ("requests:web-2", 50.0)],
        );
        let after = picture(
            12_000,
            &[
                ("requests:web-1", 300.0),
                ("requests:web-2", 10.0),
                ("published", 8.0),
            ],
        )
        .with_rates_since(&before);
        assert_eq!(after.per_second["requests:web-1"], 100.0);
        assert_eq!(
            after.per_second["requests:web-2"], 5.0,
            "restarted: from zero"
        );
        assert_eq!(after.per_second["published"], 4.0, "new: from zero");
        let same_moment = picture(10_000, &[("published", 9.0)]).with_rates_since(&before);
        assert!(same_moment.per_second.is_empty());
    }

    #[test]
    fn pools_are_tagged_and_members_summed() {
        let members = serde_json::json!({"pools": [
            {"name": "web", "backends": [{"id": "web-1", "inflight": 2, "served": 10}, {"id": "web-2", "inflight": 1, "served": 9}]},
            {"name": "push", "backends": [{"id": "push-1", "inflight": 4, "served": 1}]}
        ]});
        assert_eq!(member_sum(&members, "inflight"), 7.0);
        let pools = tag_pools("lb-1", members);
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0]["lb"], "lb-1");
        assert_eq!(ratio(3.0, 4.0), 0.75);
        assert_eq!(ratio(0.0, 0.0), 0.0);
    }
}
