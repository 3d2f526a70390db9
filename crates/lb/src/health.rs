//! Active health checks: every interval, `GET /healthz` on every member of every
//! pool, fed into each member's hysteresis. Also refills the retry budget.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;

use crate::Lb;
use crate::backend::{Backend, Probe};
use crate::proxy::probe_timeout;

/// Starts the checker and the budget refill; abort the handle to stop both.
pub fn spawn(lb: Arc<Lb>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(lb.config.connect_timeout));
        // Probes use their own client, so they never wait behind proxied traffic.
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let mut tick = tokio::time::interval(lb.config.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            tick.tick().await;
            ticks += 1;
            let every_second = (1000 / lb.config.health_interval.as_millis().max(1)).max(1) as u64;
            if ticks.is_multiple_of(every_second) {
                lb.budget.refill();
            }
            let checks = lb.pools.values().flat_map(|pool| {
                pool.members()
                    .iter()
                    .cloned()
                    .map(|b| (pool.name.clone(), b))
                    .collect::<Vec<_>>()
            });
            let results = futures::future::join_all(checks.map(|(pool, backend)| {
                let client = client.clone();
                let lb = lb.clone();
                async move {
                    let probe = probe(&client, &backend, &lb).await;
                    let changed = backend.record_probe(probe, lb.config.healthy_after, lb.config.unhealthy_after);
                    if changed {
                        let healthy = backend.is_healthy();
                        tracing::info!(pool, backend = %backend.id, addr = %backend.addr, healthy, ?probe, "health changed");
                        if !healthy {
                            metrics::counter!("bakery_lb_ejections_total", "reason" => "health_check").increment(1);
                        }
                    }
                }
            }));
            results.await;
        }
    })
}

async fn probe(client: &Client<HttpConnector, Empty<Bytes>>, backend: &Backend, lb: &Lb) -> Probe {
    let Ok(request) = Request::get(format!("{}/healthz", backend.origin)).body(Empty::new()) else {
        return Probe::Fail;
    };
    let answer = tokio::time::timeout(probe_timeout(lb.config.health_interval), async {
        let response = client.request(request).await.ok()?;
        let status = response.status();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    })
    .await;
    match answer {
        Ok(Some((StatusCode::OK, _))) => Probe::Pass,
        Ok(Some((StatusCode::SERVICE_UNAVAILABLE, body))) if contains(&body, b"draining") => {
            Probe::Draining
        }
        _ => Probe::Fail,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
