//! How fresh a cached page is: after a price change, how long until each server
//! answers the new page. The edge learns of a change from the change itself (the
//! event renders the page, the balancer follows `edge_pages`); a cache with a TTL
//! learns nothing and serves its copy until it expires. Each change is timed from
//! the moment the write was answered, by reading the page every 10 ms from each
//! server side by side, as visitors would.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::plot::{self, Chart, Series, Style};
use crate::topology::{ADMIN_PASSWORD, Lab, log_in};

/// The page timed: the demo's first product, as a visitor sees it.
pub const PAGE: &str = "/products/1";
/// How often each server is read while waiting.
const POLL: Duration = Duration::from_millis(10);
/// A server not fresh after this has "not within" as its figure.
const GIVE_UP: Duration = Duration::from_secs(15);

/// What one side of the comparison showed, change by change.
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    pub name: String,
    /// Milliseconds from the write's answer to the first new page, per change
    /// (`None`: not within [`GIVE_UP`]; no entries: it is never refreshed).
    pub ms: Vec<Option<f64>>,
    pub p50_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Freshness {
    pub page: &'static str,
    pub changes: usize,
    pub ours: Side,
    pub peer: Side,
}

/// Makes `changes` price changes through `base` (ours) and times each until ours
/// and the peer (`None`: a copy that is never refreshed, like nginx's file) serve
/// the new page. A worker of the lab renders ours meanwhile.
pub async fn measure(
    lab: &Lab,
    base: &str,
    (peer_name, peer): (&str, Option<SocketAddr>),
    changes: usize,
) -> anyhow::Result<Freshness> {
    let admin = log_in(base, "admin", ADMIN_PASSWORD).await?;
    let http = reqwest::Client::new();
    let mut worker = lab.start_worker().await?;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let outcome: anyhow::Result<()> = async {
        for change in 1..=changes {
            let name = format!("Bench loaf {change} {}", bakery_core::now_millis());
            // Visitors keep reading both, before the change as after it (a cache
            // with a TTL refreshes only when read), and the change lands at a
            // different point of a TTL each time.
            let readers: Vec<_> = std::iter::once(format!("{base}{PAGE}"))
                .chain(peer.map(|addr| format!("http://{addr}{PAGE}")))
                .map(|url| tokio::spawn(until_shown(http.clone(), url, name.clone())))
                .collect();
            tokio::time::sleep(Duration::from_millis(1200 + 370 * change as u64 % 1000)).await;
            let patch = http
                .patch(format!("{base}/api/products/1"))
                .header("cookie", &admin)
                .json(&json!({"name": name, "price_cents": 400 + change}))
                .send()
                .await?;
            anyhow::ensure!(
                patch.status().is_success(),
                "PATCH /api/products/1: {}",
                patch.status()
            );
            let written = Instant::now();
            let mut seen = Vec::new();
            for reader in readers {
                seen.push(
                    reader
                        .await?
                        .map(|at| at.saturating_duration_since(written).as_secs_f64() * 1000.0),
                );
            }
            ours.push(seen[0]);
            if let Some(b) = seen.get(1) {
                theirs.push(*b);
            }
        }
        Ok(())
    }
    .await;
    worker.stop(Duration::from_secs(10)).await;
    outcome?;
    Ok(Freshness {
        page: PAGE,
        changes,
        ours: side("bakery edge", ours),
        peer: side(peer_name, theirs),
    })
}

/// When `url` first answered a page naming `name`, read every [`POLL`] (`None`:
/// not within [`GIVE_UP`]).
async fn until_shown(http: reqwest::Client, url: String, name: String) -> Option<Instant> {
    let started = Instant::now();
    while started.elapsed() < GIVE_UP {
        if let Ok(answer) = http.get(&url).send().await
            && let Ok(body) = answer.text().await
            && body.contains(&name)
        {
            return Some(Instant::now());
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

fn side(name: &str, ms: Vec<Option<f64>>) -> Side {
    let shown: Vec<f64> = ms.iter().flatten().copied().collect();
    let all_shown = !ms.is_empty() && shown.len() == ms.len();
    Side {
        name: name.to_string(),
        p50_ms: all_shown.then(|| crate::median(shown.clone())),
        max_ms: all_shown.then(|| shown.iter().copied().fold(0.0, f64::max)),
        ms,
    }
}

impl Freshness {
    /// One sentence for the report.
    pub fn summary(&self) -> String {
        let said = |side: &Side| match (side.p50_ms, side.max_ms) {
            (Some(p50), Some(max)) => {
                format!("{}: median {p50:.0} ms, at most {max:.0} ms", side.name)
            }
            _ if side.ms.is_empty() => format!("{}: never (a copy made once)", side.name),
            _ => format!("{}: not always within {} s", side.name, GIVE_UP.as_secs()),
        };
        format!(
            "Freshness, {} price changes of {}, each timed from the write's answer to the first new page (read every {} ms): {}; {}.",
            self.changes,
            self.page,
            POLL.as_millis(),
            said(&self.ours),
            said(&self.peer)
        )
    }
}

/// Each change's delay, side by side.
pub fn draw(dir: &Path, fresh: &Freshness) -> anyhow::Result<String> {
    let series = |side: &Side| Series {
        name: side.name.clone(),
        points: side
            .ms
            .iter()
            .enumerate()
            .filter_map(|(i, ms)| Some(((i + 1) as f64, (*ms)?)))
            .collect(),
        style: Style::LineAndPoints,
    };
    plot::draw(
        dir,
        "freshness",
        &Chart {
            title: "after a price change: until the new page is served",
            x: "change",
            y: "ms",
            series: vec![series(&fresh.ours), series(&fresh.peer)],
            log_y: false,
        },
    )?;
    Ok("freshness".into())
}
