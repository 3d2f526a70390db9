//! `bakery bench compare --scenario S --baseline B`: one scenario against a
//! baseline on the same topology, in alternating rounds, at each connection count:
//! requests/s, p50 and p99 side by side and the ratio S / B. With `ping` as the
//! baseline it says what a route costs beyond HTTP and the load balancer (a cached
//! product read should cost little more than a ping).
//!
//! `--peer nginx-static|varnish` (with `--scenario edge`) measures the edge against
//! another program serving the same page instead — nginx serving it as a file,
//! Varnish caching it from the same clones (1 s TTL, 60 s grace) — and then how
//! fresh each is: after a price change, how long until each serves the new page
//! ([`crate::freshness`]).

use std::path::PathBuf;

use bakery_config::{Config, ConfigError};
use serde_json::json;

use crate::ab::{self, Contender};
use crate::freshness::{self, Freshness};
use crate::html;
use crate::peers::{Peer, PeerKind, Site};
use crate::scenarios::Scenario;
use crate::topology::{Lab, Shape, Topology};

/// `bakery bench compare`'s flags.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// The scenario measured: ping, product, product-page, edge, rsvp, hot-write or browse.
    #[arg(long, default_value = "product")]
    pub scenario: String,
    /// What it is measured against, on the same topology.
    #[arg(long, default_value = "ping")]
    pub baseline: String,
    /// Instead of a baseline scenario, a program serving the same page: nginx-static
    /// or varnish (with `--scenario edge`).
    #[arg(long)]
    pub peer: Option<String>,
    /// Price changes timed for freshness, with `--peer`.
    #[arg(long, default_value_t = 5)]
    pub changes: usize,
    #[arg(long, default_value_t = 2)]
    pub clones: usize,
    /// Cores each clone may use (a cgroup quota).
    #[arg(long)]
    pub cpu_per_clone: Option<f64>,
    /// Cores the load balancer may use.
    #[arg(long)]
    pub cpu_lb: Option<f64>,
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub connections: Vec<usize>,
    #[command(flatten)]
    pub rounds: ab::Rounds,
    /// The `--config` file the bench's processes are started with.
    #[arg(skip)]
    pub config_file: Option<PathBuf>,
}

pub async fn run(config: &Config, options: Options) -> anyhow::Result<()> {
    let scenario = Scenario::from_flag(&options.scenario)?;
    let baseline = Scenario::from_flag(&options.baseline)?;
    let peer_kind = options
        .peer
        .as_deref()
        .map(|p| PeerKind::from_flag(p, &[PeerKind::NginxStatic, PeerKind::Varnish]))
        .transpose()?;
    if peer_kind.is_some() && scenario != Scenario::Edge {
        return Err(ConfigError::new(
            "--peer",
            "the peers serve the edge's page: use it with --scenario edge",
        )
        .into());
    }
    if peer_kind.is_some() && options.changes == 0 {
        return Err(ConfigError::new("--changes", "at least 1").into());
    }
    if peer_kind.is_none() && scenario.clone_env() != baseline.clone_env() {
        return Err(ConfigError::new(
            "--baseline",
            format!(
                "{} and {} need differently configured clones; compare scenarios that share one topology",
                scenario.name(),
                baseline.name()
            ),
        )
        .into());
    }
    ab::check_connections(&options.connections)?;
    if options.rounds.rounds == 0 || options.clones == 0 {
        return Err(ConfigError::new("--rounds", "--rounds and --clones are at least 1").into());
    }
    crate::cpu_share("--cpu-per-clone", options.cpu_per_clone)?;
    crate::cpu_share("--cpu-lb", options.cpu_lb)?;
    let (duration, warmup) = crate::timing(options.rounds.duration, options.rounds.warmup)?;
    let b = peer_kind.map_or(baseline.name(), PeerKind::name);
    let lab = Lab::open(
        options.config_file.clone(),
        config,
        &format!("compare-{}-{b}", scenario.name()),
        options.cpu_per_clone.is_some() || options.cpu_lb.is_some(),
    )
    .await?;
    let shape = Shape {
        clones: options.clones,
        cpu_per_clone: options.cpu_per_clone,
        cpu_lb: options.cpu_lb,
        clone_env: scenario.clone_env(),
        push: None,
    };
    let topology = Topology::start(&lab, &shape).await?;
    let measured_mix = scenario.prepare(&lab, &topology.base()).await?;
    let a = scenario.name();
    // Both are charged the whole system under test: the load balancer and the
    // clones (a peer: itself and the clones it fetches from).
    let system: Vec<u32> = std::iter::once(topology.lb.pid)
        .chain(topology.clone_pids())
        .collect();
    let (baseline_mix, peer) = match peer_kind {
        None => (baseline.prepare(&lab, &topology.base()).await?, None),
        Some(kind) => {
            let clones = topology.clone_addrs();
            let path = freshness::PAGE;
            let page = reqwest::get(format!("{}{path}", topology.base()))
                .await?
                .bytes()
                .await?;
            let site = Site {
                clones: &clones,
                page: Some((path, &page)),
            };
            let started = Peer::start(kind, &lab, &site, options.cpu_lb).await?;
            (measured_mix.clone(), Some(started))
        }
    };
    let (baseline_addr, baseline_pids) = match &peer {
        None => (topology.addr(), system.clone()),
        Some(peer) => (
            peer.addr,
            peer.pids()
                .into_iter()
                .chain(topology.clone_pids())
                .collect(),
        ),
    };
    let contenders = [
        Contender {
            name: a,
            addr: topology.addr(),
            mix: &measured_mix,
            pids: system,
        },
        Contender {
            name: b,
            addr: baseline_addr,
            mix: &baseline_mix,
            pids: baseline_pids,
        },
    ];
    let runs = ab::alternate(
        &contenders,
        &options.connections,
        options.rounds.rounds,
        warmup,
        duration,
    )
    .await?;
    let fresh = match &peer {
        Some(theirs) => Some(
            freshness::measure(
                &lab,
                &topology.base(),
                // nginx serves a copy made once: only Varnish is read for freshness.
                (
                    b,
                    (peer_kind == Some(PeerKind::Varnish)).then_some(theirs.addr),
                ),
                options.changes,
            )
            .await?,
        ),
        None => None,
    };
    let memory = topology.peak_memory();
    if let Some(peer) = peer {
        peer.stop().await;
    }
    topology.stop().await;

    let points = ab::points(&runs, &options.connections, [a, b]);
    let table = ab::table(&points, [a, b]);
    let mut charts = ab::draw(&lab.dir, &format!("{a} against {b}"), [a, b], &points)?;
    if let Some(fresh) = &fresh {
        charts.push(freshness::draw(&lab.dir, fresh)?);
    }
    std::fs::write(
        lab.dir.join("runs.json"),
        serde_json::to_string_pretty(&runs)?,
    )?;
    let budget = |c: Option<f64>| c.map_or("unlimited".to_string(), |c| format!("{c} core"));
    html::write(
        &lab.dir,
        &format!("bench compare — {a} against {b}"),
        &html::Page {
            summary: vec![
                format!(
                    "{} clone(s) (CPU each: {}) behind the load balancer (CPU: {}); closed model; {} round(s) of {:.0} s (after {:.0} s of warm-up) per scenario and connection count, alternating which goes first. Cache: {}.",
                    options.clones,
                    budget(options.cpu_per_clone),
                    budget(options.cpu_lb),
                    options.rounds.rounds,
                    options.rounds.duration,
                    options.rounds.warmup,
                    lab.config.cache.url.engine(),
                ),
                format!("Peak memory: {}.", crate::megabytes(&memory)),
            ]
            .into_iter()
            .chain(fresh.as_ref().map(Freshness::summary))
            .collect(),
            table,
            charts,
            files: vec!["results.json".into(), "runs.json".into()],
        },
    )?;
    let result = json!({
        "scenario": "compare",
        "measured": a,
        "baseline": b,
        "peer": options.peer,
        "freshness": fresh,
        "clones": options.clones,
        "cache": lab.config.cache.url.engine(),
        "peak_rss_bytes": memory,
        "points": points.iter().map(|(c, x, y)| json!({
            "connections": c,
            "rps": x.rps.round(), "baseline_rps": y.rps.round(),
            "p99_ms": (x.p99_ms * 1000.0).round() / 1000.0,
            "baseline_p99_ms": (y.p99_ms * 1000.0).round() / 1000.0,
            "ratio": ab::ratio(x.rps, y.rps),
            "errors": x.errors, "baseline_errors": y.errors,
            "cpu_us_per_request": (x.cpu_us * 10.0).round() / 10.0,
            "baseline_cpu_us_per_request": (y.cpu_us * 10.0).round() / 10.0,
        })).collect::<Vec<_>>(),
    });
    crate::write_result(&lab.dir, &result)
}
