//! `bakery bench compare --scenario S --baseline B`: one scenario against a
//! baseline on the same topology, in alternating rounds, at each connection count:
//! requests/s, p50 and p99 side by side and the ratio S / B. With `ping` as the
//! baseline it says what a route costs beyond HTTP and the load balancer (a cached
//! product read should cost little more than a ping).

use std::path::{Path, PathBuf};

use bakery_config::{Config, ConfigError};
use serde_json::json;

use crate::ab::{self, Contender, Side};
use crate::html;
use crate::plot::{self, Chart, Series, Style};
use crate::scenarios::Scenario;
use crate::topology::{Lab, Shape, Topology};

/// `bakery bench compare`'s flags.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// The scenario measured: ping, product, product-page, edge, rsvp or browse.
    #[arg(long, default_value = "product")]
    pub scenario: String,
    /// What it is measured against, on the same topology.
    #[arg(long, default_value = "ping")]
    pub baseline: String,
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
    /// Seconds measured per round.
    #[arg(long, default_value_t = 8.0)]
    pub duration: f64,
    /// Seconds of load before each round's measurement.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The `--config` file the bench's processes are started with.
    #[arg(skip)]
    pub config_file: Option<PathBuf>,
}

pub async fn run(config: &Config, options: Options) -> anyhow::Result<()> {
    let scenario = Scenario::from_flag(&options.scenario)?;
    let baseline = Scenario::from_flag(&options.baseline)?;
    if scenario.clone_env() != baseline.clone_env() {
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
    if options.connections.is_empty() || options.connections.contains(&0) {
        return Err(ConfigError::new(
            "--connections",
            "a list of connection counts, each at least 1",
        )
        .into());
    }
    if options.rounds == 0 || options.clones == 0 {
        return Err(ConfigError::new("--rounds", "--rounds and --clones are at least 1").into());
    }
    crate::cpu_share("--cpu-per-clone", options.cpu_per_clone)?;
    crate::cpu_share("--cpu-lb", options.cpu_lb)?;
    let (duration, warmup) = crate::timing(options.duration, options.warmup)?;
    let lab = Lab::open(
        options.config_file.clone(),
        config,
        &format!("compare-{}-{}", scenario.name(), baseline.name()),
        options.cpu_per_clone.is_some() || options.cpu_lb.is_some(),
    )
    .await?;
    let shape = Shape {
        clones: options.clones,
        cpu_per_clone: options.cpu_per_clone,
        cpu_lb: options.cpu_lb,
        clone_env: scenario.clone_env(),
    };
    let topology = Topology::start(&lab, &shape).await?;
    let measured_mix = scenario.prepare(&lab, &topology.base()).await?;
    let baseline_mix = baseline.prepare(&lab, &topology.base()).await?;
    let (a, b) = (scenario.name(), baseline.name());
    let contenders = [
        Contender {
            name: a,
            addr: topology.addr(),
            mix: &measured_mix,
        },
        Contender {
            name: b,
            addr: topology.addr(),
            mix: &baseline_mix,
        },
    ];
    let runs = ab::alternate(
        &contenders,
        &options.connections,
        options.rounds,
        warmup,
        duration,
    )
    .await?;
    topology.stop().await;

    let points: Vec<(usize, Side, Side)> = options
        .connections
        .iter()
        .map(|&c| {
            (
                c,
                ab::median_side(&runs, c, a),
                ab::median_side(&runs, c, b),
            )
        })
        .collect();
    let mut table = vec![vec![
        "connections".to_string(),
        format!("{a} req/s"),
        format!("{b} req/s"),
        format!("{a} / {b}"),
        format!("{a} p50 / p99 ms"),
        format!("{b} p50 / p99 ms"),
    ]];
    for (c, x, y) in &points {
        table.push(vec![
            c.to_string(),
            format!("{:.0}", x.rps),
            format!("{:.0}", y.rps),
            format!("{:.3}", ab::ratio(x.rps, y.rps)),
            format!("{:.2} / {:.2}", x.p50_ms, x.p99_ms),
            format!("{:.2} / {:.2}", y.p50_ms, y.p99_ms),
        ]);
    }
    for row in &table {
        eprintln!("{}", row.join(" | "));
    }
    let charts = draw(&lab.dir, a, b, &points)?;
    std::fs::write(
        lab.dir.join("runs.json"),
        serde_json::to_string_pretty(&runs)?,
    )?;
    let budget = |c: Option<f64>| c.map_or("unlimited".to_string(), |c| format!("{c} core"));
    html::write(
        &lab.dir,
        &format!("bench compare — {a} against {b}"),
        &html::Page {
            summary: vec![format!(
                "{} clone(s) (CPU each: {}) behind the load balancer (CPU: {}); closed model; {} round(s) of {:.0} s (after {:.0} s of warm-up) per scenario and connection count, alternating which goes first. Cache: {}.",
                options.clones,
                budget(options.cpu_per_clone),
                budget(options.cpu_lb),
                options.rounds,
                options.duration,
                options.warmup,
                cache_engine(&lab.config.cache_url),
            )],
            table,
            charts,
            files: vec!["results.json".into(), "runs.json".into()],
        },
    )?;
    let result = json!({
        "scenario": "compare",
        "measured": a,
        "baseline": b,
        "clones": options.clones,
        "cache": cache_engine(&lab.config.cache_url),
        "points": points.iter().map(|(c, x, y)| json!({
            "connections": c,
            "rps": x.rps.round(), "baseline_rps": y.rps.round(),
            "p99_ms": (x.p99_ms * 1000.0).round() / 1000.0,
            "baseline_p99_ms": (y.p99_ms * 1000.0).round() / 1000.0,
            "ratio": ab::ratio(x.rps, y.rps),
            "errors": x.errors, "baseline_errors": y.errors,
        })).collect::<Vec<_>>(),
    });
    crate::write_result(&lab.dir, &result)
}

fn draw(
    dir: &Path,
    a: &str,
    b: &str,
    points: &[(usize, Side, Side)],
) -> anyhow::Result<Vec<String>> {
    let series = |name: &str, f: &dyn Fn(&(usize, Side, Side)) -> f64| Series {
        name: name.into(),
        points: points.iter().map(|p| (p.0 as f64, f(p))).collect(),
        style: Style::LineAndPoints,
    };
    plot::draw(
        dir,
        "throughput",
        &Chart {
            title: &format!("{a} against {b}: requests/s"),
            x: "connections",
            y: "requests/s",
            series: vec![series(a, &|p| p.1.rps), series(b, &|p| p.2.rps)],
            log_y: false,
        },
    )?;
    plot::draw(
        dir,
        "p99",
        &Chart {
            title: &format!("{a} against {b}: p99 latency"),
            x: "connections",
            y: "ms",
            series: vec![series(a, &|p| p.1.p99_ms), series(b, &|p| p.2.p99_ms)],
            log_y: false,
        },
    )?;
    Ok(vec!["throughput".into(), "p99".into()])
}

/// The cache engine's name as the report shows it.
fn cache_engine(url: &bakery_config::CacheUrl) -> &'static str {
    match url {
        bakery_config::CacheUrl::Embedded(_) => "embedded",
        bakery_config::CacheUrl::Redis(_) => "redis",
        bakery_config::CacheUrl::Memcached(_) => "memcached",
        bakery_config::CacheUrl::None => "none",
    }
}
