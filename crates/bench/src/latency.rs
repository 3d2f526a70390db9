//! `bakery bench latency [--scenario S] [--clones N] [--rates R1,R2,..]`: the
//! latency of one request alone (one connection, one request at a time), then at
//! rising constant arrival rates (open model, coordinated omission corrected), to
//! find the knee: the rate past which latency stops being the cost of the work and
//! becomes time spent queueing. Without `--rates` the rates are fractions (10 % to
//! 100 %) of the throughput a closed-model run first measures.

use std::path::PathBuf;

use bakery_config::{Config, ConfigError};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;

use crate::load::{self, Model, Plan};
use crate::plot::{self, Chart, Series, Style};
use crate::scenarios::Scenario;
use crate::topology::{Lab, Shape, Topology};
use crate::{html, median};

/// `bakery bench latency`'s flags.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// ping, product, product-uncached, product-page, edge, rsvp, hot-write or browse.
    #[arg(long, default_value = "product")]
    pub scenario: String,
    #[arg(long, default_value_t = 2)]
    pub clones: usize,
    /// Cores each clone may use (a cgroup quota).
    #[arg(long)]
    pub cpu_per_clone: Option<f64>,
    /// Cores the load balancer may use.
    #[arg(long)]
    pub cpu_lb: Option<f64>,
    /// Arrival rates (req/s); default: 10 % to 110 % of the measured maximum.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Connections the open model sends on.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Seconds measured per rate.
    #[arg(long, default_value_t = 8.0)]
    pub duration: f64,
    /// Seconds of load before each measurement.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// The `--config` file the bench's processes are started with.
    #[arg(skip)]
    pub config_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// The offered rate (0 for "alone").
    pub rate: f64,
    /// What was served.
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub errors: u64,
}

/// Latency past this multiple of the alone p99 is queueing, not work.
const KNEE_FACTOR: f64 = 3.0;

pub async fn run(config: &Config, options: Options) -> anyhow::Result<()> {
    let scenario = Scenario::from_flag(&options.scenario)?;
    if options.clones == 0 {
        return Err(ConfigError::new("--clones", "at least 1").into());
    }
    crate::cpu_share("--cpu-per-clone", options.cpu_per_clone)?;
    crate::cpu_share("--cpu-lb", options.cpu_lb)?;
    if options.rates.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
        return Err(ConfigError::new("--rates", "positive requests per second").into());
    }
    if options.rounds == 0 || options.connections == 0 {
        return Err(
            ConfigError::new("--rounds", "--rounds and --connections are at least 1").into(),
        );
    }
    let (duration, warmup) = crate::timing(options.duration, options.warmup)?;
    let budgeted = options.cpu_per_clone.is_some() || options.cpu_lb.is_some();
    let lab = Lab::open(
        options.config_file.clone(),
        config,
        &format!("latency-{}", scenario.name()),
        budgeted,
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
    let mix = scenario.prepare(&lab, &topology.base()).await?;
    let plan = |model| Plan {
        model,
        warmup,
        duration,
    };

    eprintln!("measuring one request at a time, then the most it serves");
    let alone = point(
        &topology,
        &mix,
        plan(Model::Closed { connections: 1 }),
        options.rounds,
        0.0,
    )
    .await?;
    let rates = if options.rates.is_empty() {
        let most = point(
            &topology,
            &mix,
            plan(Model::Closed {
                connections: options.connections,
            }),
            1,
            0.0,
        )
        .await?;
        [0.1, 0.25, 0.5, 0.7, 0.8, 0.9, 1.0, 1.1]
            .iter()
            .map(|f| (most.rps * f).round().max(1.0))
            .collect()
    } else {
        options.rates.clone()
    };

    let bar = ProgressBar::new(rates.len() as u64).with_style(
        ProgressStyle::with_template("{msg:>18} [{bar:30}] {pos}/{len} rates ({elapsed})")?
            .progress_chars("=> "),
    );
    let mut points = Vec::new();
    for &rate in &rates {
        bar.set_message(format!("{rate:.0} req/s"));
        let model = Model::Open {
            rate,
            connections: options.connections,
        };
        points.push(point(&topology, &mix, plan(model), options.rounds, rate).await?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    topology.stop().await;

    let knee = knee(&alone, &points);
    let charts = draw(&lab, scenario, &alone, &points)?;
    let mut table = vec![
        [
            "offered req/s",
            "served req/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "errors",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for p in std::iter::once(&alone).chain(&points) {
        table.push(vec![
            if p.rate == 0.0 {
                "alone (1 at a time)".into()
            } else {
                format!("{:.0}", p.rate)
            },
            format!("{:.0}", p.rps),
            format!("{:.3}", p.p50_ms),
            format!("{:.3}", p.p99_ms),
            format!("{:.3}", p.p999_ms),
            p.errors.to_string(),
        ]);
    }
    for row in &table {
        eprintln!("{}", row.join(" | "));
    }
    let summary = vec![
        format!(
            "Scenario {} through a load balancer and {} clone(s); open model on {} connections, {} round(s) of {:.0} s after {:.0} s of warm-up per rate; latency from each request's due time.",
            scenario.name(),
            options.clones,
            options.connections,
            options.rounds,
            options.duration,
            options.warmup
        ),
        format!(
            "Alone, a request takes {:.3} ms (p50), {:.3} ms (p99). {}",
            alone.p50_ms,
            alone.p99_ms,
            knee.map_or("No knee within the rates measured.".to_string(), |k| format!(
                "The knee: from {k:.0} req/s latency is mostly queueing (p99 over {KNEE_FACTOR}× alone, or the rate no longer served)."
            ))
        ),
    ];
    std::fs::write(
        lab.dir.join("points.csv"),
        std::iter::once("rate,rps,p50_ms,p99_ms,p999_ms,errors".to_string())
            .chain(std::iter::once(&alone).chain(&points).map(|p| {
                format!(
                    "{},{:.1},{:.3},{:.3},{:.3},{}",
                    p.rate, p.rps, p.p50_ms, p.p99_ms, p.p999_ms, p.errors
                )
            }))
            .collect::<Vec<_>>()
            .join("\n"),
    )?;
    html::write(
        &lab.dir,
        &format!("bench latency — {}", scenario.name()),
        &html::Page {
            summary,
            table,
            charts,
            files: vec!["results.json".into(), "points.csv".into()],
        },
    )?;
    let result = json!({
        "scenario": scenario.name(),
        "clones": options.clones,
        "alone": alone,
        "points": points,
        "knee_rps": knee,
    });
    crate::write_result(&lab.dir, &result)
}

/// The lowest rate from which every higher rate is queueing (p99 over
/// [`KNEE_FACTOR`] × alone, or the rate no longer served): one noisy spike below
/// it does not count as the knee.
fn knee(alone: &Point, points: &[Point]) -> Option<f64> {
    let queueing = |p: &Point| p.p99_ms > KNEE_FACTOR * alone.p99_ms || p.rps < 0.95 * p.rate;
    let calm = points.iter().rposition(|p| !queueing(p));
    match calm {
        Some(i) => points.get(i + 1).map(|p| p.rate),
        None => points.first().map(|p| p.rate),
    }
}

/// The median of `rounds` runs of `plan`.
async fn point(
    topology: &Topology,
    mix: &load::Mix,
    plan: Plan,
    rounds: usize,
    rate: f64,
) -> anyhow::Result<Point> {
    let mut runs = Vec::new();
    for _ in 0..rounds {
        runs.push(load::run(topology.addr(), mix, plan).await?);
    }
    let of = |f: &dyn Fn(&load::Measured) -> f64| median(runs.iter().map(f).collect());
    Ok(Point {
        rate,
        rps: of(&|m| m.rps()),
        p50_ms: of(&|m| m.ms(0.5)),
        p99_ms: of(&|m| m.ms(0.99)),
        p999_ms: of(&|m| m.ms(0.999)),
        errors: runs.iter().map(|m| m.errors).sum(),
    })
}

fn draw(
    lab: &Lab,
    scenario: Scenario,
    alone: &Point,
    points: &[Point],
) -> anyhow::Result<Vec<String>> {
    let line = |name: &str, f: fn(&Point) -> f64| Series {
        name: name.into(),
        points: points.iter().map(|p| (p.rate, f(p))).collect(),
        style: Style::LineAndPoints,
    };
    let max_rate = points.iter().map(|p| p.rate).fold(1.0, f64::max);
    let title = format!("{}: latency by offered rate", scenario.name());
    plot::draw(
        &lab.dir,
        "latency",
        &Chart {
            title: &title,
            x: "offered requests/s",
            y: "ms (log)",
            series: vec![
                line("p50", |p| p.p50_ms),
                line("p99", |p| p.p99_ms),
                line("p99.9", |p| p.p999_ms),
                Series {
                    name: "p99 alone".into(),
                    points: vec![(0.0, alone.p99_ms), (max_rate, alone.p99_ms)],
                    style: Style::Dashed,
                },
            ],
            log_y: true,
        },
    )?;
    let served = Series {
        name: "served".into(),
        points: points.iter().map(|p| (p.rate, p.rps)).collect(),
        style: Style::LineAndPoints,
    };
    plot::draw(
        &lab.dir,
        "served",
        &Chart {
            title: "served against offered",
            x: "offered requests/s",
            y: "served requests/s",
            series: vec![
                served,
                Series {
                    name: "all of it".into(),
                    points: vec![(0.0, 0.0), (max_rate, max_rate)],
                    style: Style::Dashed,
                },
            ],
            log_y: false,
        },
    )?;
    Ok(vec!["latency".into(), "served".into()])
}
