//! `bakery bench lb [--peer nginx|haproxy] --connections 16,64,256 [--cpu-lb C]`:
//! our load balancer against a peer (nginx or HAProxy, installed from Debian when
//! missing), in front of the same clones, on the same scenario (`ping` by default:
//! the cheapest proxied route, so the balancer's own cost shows). Rounds alternate
//! which goes first; with `--cpu-lb` both get the same CPU budget and as many
//! workers (nginx's processes, HAProxy's threads, our threads) as its cores.

use std::path::PathBuf;

use bakery_config::{Config, ConfigError};
use serde_json::json;

use crate::ab::{self, Contender};
use crate::html;
use crate::peers::{Peer, PeerKind, Site};
use crate::scenarios::Scenario;
use crate::topology::{Lab, Shape, Topology};

/// `bakery bench lb`'s flags.
#[derive(clap::Args, Debug)]
pub struct Options {
    #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
    pub connections: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    pub clones: usize,
    /// Cores each balancer may use (and its workers: one per core of it).
    #[arg(long)]
    pub cpu_lb: Option<f64>,
    /// ping, product, product-uncached, product-page, edge, rsvp, hot-write or browse.
    #[arg(long, default_value = "ping")]
    pub scenario: String,
    /// The balancer ours is measured against: nginx or haproxy.
    #[arg(long, default_value = "nginx")]
    pub peer: String,
    #[command(flatten)]
    pub rounds: ab::Rounds,
    /// The `--config` file the bench's processes are started with.
    #[arg(skip)]
    pub config_file: Option<PathBuf>,
}

pub async fn run(config: &Config, options: Options) -> anyhow::Result<()> {
    let scenario = Scenario::from_flag(&options.scenario)?;
    ab::check_connections(&options.connections)?;
    crate::cpu_share("--cpu-lb", options.cpu_lb)?;
    if options.rounds.rounds == 0 || options.clones == 0 {
        return Err(ConfigError::new("--rounds", "--rounds and --clones are at least 1").into());
    }
    let (duration, warmup) = crate::timing(options.rounds.duration, options.rounds.warmup)?;
    let kind = PeerKind::from_flag(&options.peer, &[PeerKind::Nginx, PeerKind::HaProxy])?;
    kind.binary().await?;
    let mut lab = Lab::open(
        options.config_file.clone(),
        config,
        &format!("lb-{}", scenario.name()),
        options.cpu_lb.is_some(),
    )
    .await?;
    // Ours gets as many worker threads as nginx gets worker processes.
    let workers = crate::peers::workers(options.cpu_lb);
    lab.launcher
        .env
        .push(("BAKERY_LB_WORKERS".into(), workers.to_string()));
    let shape = Shape {
        clones: options.clones,
        cpu_per_clone: None,
        cpu_lb: options.cpu_lb,
        clone_env: scenario.clone_env(),
        push: None,
    };
    let ours = Topology::start(&lab, &shape).await?;
    let mix = scenario.prepare(&lab, &ours.base()).await?;
    let clone_addrs = ours.clone_addrs();
    let site = Site {
        clones: &clone_addrs,
        page: None,
    };
    let theirs = Peer::start(kind, &lab, &site, options.cpu_lb).await?;
    let peer = kind.name();

    let contenders = [
        Contender {
            name: "bakery",
            addr: ours.addr(),
            mix: &mix,
            pids: vec![ours.lb.pid],
        },
        Contender {
            name: peer,
            addr: theirs.addr,
            mix: &mix,
            pids: theirs.pids(),
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
    theirs.stop().await;
    ours.stop().await;

    let points = ab::points(&runs, &options.connections, ["bakery", peer]);
    let table = ab::table(&points, ["ours", peer]);
    let charts = ab::draw(
        &lab.dir,
        &format!("{} through each balancer", scenario.name()),
        ["bakery lb", peer],
        &points,
    )?;
    std::fs::write(
        lab.dir.join("runs.json"),
        serde_json::to_string_pretty(&runs)?,
    )?;
    html::write(
        &lab.dir,
        &format!("bench lb — ours against {peer}, {}", scenario.name()),
        &html::Page {
            summary: vec![format!(
                "{} clone(s) behind each; closed model; {} round(s) of {:.0} s (after {:.0} s of warm-up) per side and connection count, alternating which side goes first; CPU for each balancer: {} ({} worker(s) each).",
                options.clones,
                options.rounds.rounds,
                options.rounds.duration,
                options.rounds.warmup,
                options
                    .cpu_lb
                    .map_or("unlimited".into(), |c| format!("{c} core")),
                workers
            )],
            table,
            charts,
            files: vec!["results.json".into(), "runs.json".into()],
        },
    )?;
    // The peer's figures under `peer_*`, and under its own name too (`nginx_*`,
    // `haproxy_*`).
    let point = |(c, o, n): &(usize, ab::Side, ab::Side)| {
        let mut point = json!({
            "connections": c,
            "ours_rps": o.rps.round(),
            "ours_p99_ms": (o.p99_ms * 1000.0).round() / 1000.0,
            "ratio": ab::ratio(o.rps, n.rps),
            "ours_errors": o.errors,
            "ours_cpu_us_per_request": (o.cpu_us * 10.0).round() / 10.0,
        });
        for name in ["peer", peer] {
            point[format!("{name}_rps")] = json!(n.rps.round());
            point[format!("{name}_p99_ms")] = json!((n.p99_ms * 1000.0).round() / 1000.0);
            point[format!("{name}_errors")] = json!(n.errors);
            point[format!("{name}_cpu_us_per_request")] = json!((n.cpu_us * 10.0).round() / 10.0);
        }
        point
    };
    let result = json!({
        "scenario": "lb",
        "peer": peer,
        "requests": scenario.name(),
        "clones": options.clones,
        "cpu_lb": options.cpu_lb,
        "workers": workers,
        "points": points.iter().map(point).collect::<Vec<_>>(),
    });
    crate::write_result(&lab.dir, &result)
}
