//! `bakery bench scale --clones 1,2,4 --cpu-per-clone C [--scenario S]`: the same
//! scenario through a load balancer in front of 1, 2, 4, ... clones, each clone
//! given the same CPU budget, at the same concurrency per clone (closed model).
//! Reports throughput and latency per point, scaling efficiency X(N)/(N·X(1)),
//! the Universal Scalability Law fitted to the curve, and — from the CPU each part
//! used — which resource was saturated at each point.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bakery_config::{Config, ConfigError};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;

use crate::load::{self, Model, Plan};
use crate::plot::{self, Chart, Series, Style};
use crate::scenarios::Scenario;
use crate::topology::{Lab, Shape, Topology};
use crate::usl::{self, Fit};
use crate::{cpu, html, median};

/// `bakery bench scale`'s flags.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Clone counts to measure (must include 1).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub clones: Vec<usize>,
    /// Cores each clone may use (a cgroup quota), e.g. 0.25.
    #[arg(long)]
    pub cpu_per_clone: Option<f64>,
    /// Cores the load balancer may use.
    #[arg(long)]
    pub cpu_lb: Option<f64>,
    /// ping, product, product-uncached, product-page, edge, rsvp or browse.
    #[arg(long, default_value = "product-page")]
    pub scenario: String,
    /// Concurrent connections per clone (closed model).
    #[arg(long, default_value_t = 8)]
    pub connections_per_clone: usize,
    /// Seconds measured per round.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before each round's measurement.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Rounds per point (the median is reported, with the spread).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The `--config` file the bench's processes are started with.
    #[arg(skip)]
    pub config_file: Option<PathBuf>,
}

/// One round at one point.
#[derive(Clone, Debug, Serialize)]
struct Round {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// CPU used over the round, in cores (1.0 = one core busy all along).
    clones_cores: f64,
    lb_cores: f64,
    loadgen_cores: f64,
    machine_busy: f64,
}

/// One number of clones: the median of its rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub clones: usize,
    pub connections: usize,
    pub rps: f64,
    pub rps_min: f64,
    pub rps_max: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub efficiency: f64,
    /// Share of its budget (or of the machine) each part used.
    pub clones_util: f64,
    pub lb_util: f64,
    pub loadgen_util: f64,
    pub machine_util: f64,
    /// The resource that limited this point.
    pub saturated: String,
}

pub async fn run(config: &Config, options: Options) -> anyhow::Result<()> {
    let scenario = Scenario::from_flag(&options.scenario)?;
    if options.clones.is_empty() || options.clones.contains(&0) {
        return Err(ConfigError::new("--clones", "a list of clone counts, each at least 1").into());
    }
    if !options.clones.contains(&1) {
        return Err(ConfigError::new(
            "--clones",
            "include 1: efficiency and the USL fit are relative to one clone",
        )
        .into());
    }
    crate::cpu_share("--cpu-per-clone", options.cpu_per_clone)?;
    crate::cpu_share("--cpu-lb", options.cpu_lb)?;
    if options.rounds == 0 || options.connections_per_clone == 0 {
        return Err(ConfigError::new(
            "--rounds",
            "--rounds and --connections-per-clone are at least 1",
        )
        .into());
    }
    let (duration, warmup) = crate::timing(options.duration, options.warmup)?;
    let budgeted = options.cpu_per_clone.is_some() || options.cpu_lb.is_some();
    let lab = Lab::open(
        options.config_file.clone(),
        config,
        &format!("scale-{}", scenario.name()),
        budgeted,
    )
    .await?;
    let mut clones = options.clones.clone();
    clones.sort_unstable();
    clones.dedup();

    let bar = ProgressBar::new((clones.len() * options.rounds) as u64).with_style(
        ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} rounds ({elapsed})")?
            .progress_chars("=> "),
    );
    let mut mix = None;
    let mut points = Vec::new();
    let mut all_rounds = Vec::new();
    // Each point's peak memory by process, in the order of `points`.
    let mut memories = Vec::new();
    for &n in &clones {
        bar.set_message(format!("{n} clone(s): starting"));
        let shape = Shape {
            clones: n,
            cpu_per_clone: options.cpu_per_clone,
            cpu_lb: options.cpu_lb,
            clone_env: scenario.clone_env(),
            push: None,
        };
        let topology = Topology::start(&lab, &shape).await?;
        if mix.is_none() {
            mix = Some(scenario.prepare(&lab, &topology.base()).await?);
        }
        let mix = mix.as_ref().expect("prepared above");
        let connections = n * options.connections_per_clone;
        let mut rounds = Vec::new();
        for r in 1..=options.rounds {
            bar.set_message(format!("{n} clone(s): round {r}"));
            let plan = Plan {
                model: Model::Closed { connections },
                warmup,
                duration,
            };
            let round = measure(&topology, mix, plan).await?;
            rounds.push(round);
            bar.inc(1);
        }
        let memory = topology.peak_memory();
        topology.stop().await;
        all_rounds.push(json!({"clones": n, "rounds": rounds, "peak_rss_bytes": memory}));
        memories.push(memory);
        points.push(summarise(n, connections, &rounds, &shape));
    }
    bar.finish_and_clear();

    let x1 = points.iter().find(|p| p.clones == 1).map_or(0.0, |p| p.rps);
    for point in &mut points {
        point.efficiency = usl::efficiency(x1, point.clones as f64, point.rps);
    }
    let fit = Fit::of(
        &points
            .iter()
            .map(|p| (p.clones as f64, p.rps))
            .collect::<Vec<_>>(),
    );
    let charts = draw(&lab, scenario, &points, fit.as_ref())?;
    let efficiency: serde_json::Map<String, serde_json::Value> = points
        .iter()
        .filter(|p| p.clones > 1)
        .map(|p| (p.clones.to_string(), json!(round3(p.efficiency))))
        .collect();
    let usl = fit.map(|f| {
        json!({
            "lambda": round3(f.lambda), "sigma": round4(f.sigma), "kappa": round4(f.kappa),
            "r2": round4(f.r2), "peak_clones": f.peak().map(round3),
        })
    });
    let result = json!({
        "scenario": scenario.name(),
        "points": points.iter().zip(&memories).map(|(p, memory)| json!({
            "clones": p.clones, "rps": round3(p.rps), "p99_ms": round3(p.p99_ms),
            "p50_ms": round3(p.p50_ms), "errors": p.errors, "saturated": p.saturated,
            "peak_rss_bytes": memory,
        })).collect::<Vec<_>>(),
        "efficiency": efficiency,
        "usl": usl,
        "cpu_per_clone": options.cpu_per_clone,
        "cpu_lb": options.cpu_lb,
        "cgroup": lab.budgets.as_ref().map(|b| b.version()),
        "connections_per_clone": options.connections_per_clone,
        "rounds": options.rounds,
        "duration_s": options.duration,
    });
    write_csv(&lab, &points)?;
    std::fs::write(
        lab.dir.join("rounds.json"),
        serde_json::to_string_pretty(&all_rounds)?,
    )?;
    print_table(&points, fit.as_ref());
    html::write(
        &lab.dir,
        &format!("bench scale — {}", scenario.name()),
        &html::Page {
            summary: summary_lines(scenario, &options, &points, fit.as_ref()),
            table: table(&points),
            charts,
            files: vec![
                "results.json".into(),
                "points.csv".into(),
                "rounds.json".into(),
            ],
        },
    )?;
    crate::write_result(&lab.dir, &result)
}

/// One closed-model run against the topology, with the CPU each part used.
async fn measure(topology: &Topology, mix: &load::Mix, plan: Plan) -> anyhow::Result<Round> {
    let clone_pids = topology.clone_pids();
    let me = std::process::id();
    let before = (
        cpu::used_by(&clone_pids),
        cpu::used(topology.lb.pid),
        cpu::used(me),
        cpu::machine(),
    );
    let started = Instant::now();
    let measured = load::run(topology.addr(), mix, plan).await?;
    let wall = started.elapsed().as_secs_f64();
    let after = (
        cpu::used_by(&clone_pids),
        cpu::used(topology.lb.pid),
        cpu::used(me),
        cpu::machine(),
    );
    let cores = |a: Duration, b: Duration| (b.saturating_sub(a)).as_secs_f64() / wall;
    let (busy, total) = (
        after.3.0.saturating_sub(before.3.0),
        after.3.1.saturating_sub(before.3.1),
    );
    Ok(Round {
        rps: measured.rps(),
        p50_ms: measured.ms(0.5),
        p99_ms: measured.ms(0.99),
        errors: measured.errors,
        clones_cores: cores(before.0, after.0),
        lb_cores: cores(before.1, after.1),
        loadgen_cores: cores(before.2, after.2),
        machine_busy: if total > 0 {
            busy as f64 / total as f64
        } else {
            0.0
        },
    })
}

fn summarise(n: usize, connections: usize, rounds: &[Round], shape: &Shape) -> Point {
    let of = |f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    let cores = cpu::cores();
    let clones_util = of(|r| r.clones_cores) / (n as f64 * shape.cpu_per_clone.unwrap_or(cores));
    let lb_util = of(|r| r.lb_cores) / shape.cpu_lb.unwrap_or(cores);
    let loadgen_util = of(|r| r.loadgen_cores) / cores;
    let machine_util = of(|r| r.machine_busy);
    let saturated = saturated(clones_util, lb_util, machine_util, shape);
    Point {
        clones: n,
        connections,
        rps: of(|r| r.rps),
        rps_min: rounds.iter().map(|r| r.rps).fold(f64::MAX, f64::min),
        rps_max: rounds.iter().map(|r| r.rps).fold(0.0, f64::max),
        p50_ms: of(|r| r.p50_ms),
        p99_ms: of(|r| r.p99_ms),
        errors: rounds.iter().map(|r| r.errors).sum(),
        efficiency: 0.0,
        clones_util,
        lb_util,
        loadgen_util,
        machine_util,
        saturated,
    }
}

/// Names the resource that limited a point: a part at ≥ 80 % of its CPU budget
/// (a throttled group seldom shows more: its periods end in stalls), or the
/// machine itself at ≥ 90 % when everything shares its cores.
fn saturated(clones: f64, lb: f64, machine: f64, shape: &Shape) -> String {
    const BUDGET_FULL: f64 = 0.8;
    const FULL: f64 = 0.9;
    if shape.cpu_per_clone.is_some() && clones >= BUDGET_FULL {
        "clone CPU".into()
    } else if shape.cpu_lb.is_some() && lb >= BUDGET_FULL {
        "load balancer CPU".into()
    } else if machine >= FULL {
        "the machine's cores (shared by every part)".into()
    } else if shape.cpu_per_clone.is_none() && clones * cpu::cores() >= FULL * cpu::cores() {
        "clone CPU".into()
    } else {
        "none at 90 %: latency-bound (a database, the cache or too few connections)".into()
    }
}

fn draw(
    lab: &Lab,
    scenario: Scenario,
    points: &[Point],
    fit: Option<&Fit>,
) -> anyhow::Result<Vec<String>> {
    let measured: Vec<(f64, f64)> = points.iter().map(|p| (p.clones as f64, p.rps)).collect();
    let max_n = points.iter().map(|p| p.clones).max().unwrap_or(1) as f64;
    let x1 = points.iter().find(|p| p.clones == 1).map_or(0.0, |p| p.rps);
    let mut series = vec![
        Series {
            name: "measured (median of rounds)".into(),
            points: measured,
            style: Style::Points,
        },
        Series {
            name: "linear: N × X(1)".into(),
            points: vec![(1.0, x1), (max_n, max_n * x1)],
            style: Style::Dashed,
        },
    ];
    if let Some(fit) = fit {
        let steps = (0..=100).map(|i| 1.0 + (max_n - 1.0) * i as f64 / 100.0);
        series.push(Series {
            name: format!(
                "USL: σ = {:.3}, κ = {:.4}, R² = {:.3}",
                fit.sigma, fit.kappa, fit.r2
            ),
            points: steps.map(|n| (n, fit.at(n))).collect(),
            style: Style::Line,
        });
    }
    let title = format!("{}: throughput by clones", scenario.name());
    plot::draw(
        &lab.dir,
        "throughput",
        &Chart {
            title: &title,
            x: "clones",
            y: "requests/s",
            series,
            log_y: false,
        },
    )?;
    let latency = |name: &str, f: fn(&Point) -> f64| Series {
        name: name.into(),
        points: points.iter().map(|p| (p.clones as f64, f(p))).collect(),
        style: Style::LineAndPoints,
    };
    plot::draw(
        &lab.dir,
        "latency",
        &Chart {
            title: &format!("{}: latency by clones", scenario.name()),
            x: "clones",
            y: "ms",
            series: vec![latency("p50", |p| p.p50_ms), latency("p99", |p| p.p99_ms)],
            log_y: false,
        },
    )?;
    let util = |name: &str, f: fn(&Point) -> f64| Series {
        name: name.into(),
        points: points
            .iter()
            .map(|p| (p.clones as f64, 100.0 * f(p)))
            .collect(),
        style: Style::LineAndPoints,
    };
    plot::draw(
        &lab.dir,
        "cpu",
        &Chart {
            title: "CPU used, % of each part's budget (or of the machine)",
            x: "clones",
            y: "% busy",
            series: vec![
                util("clones", |p| p.clones_util),
                util("load balancer", |p| p.lb_util),
                util("load generator", |p| p.loadgen_util),
                util("machine", |p| p.machine_util),
            ],
            log_y: false,
        },
    )?;
    Ok(vec!["throughput".into(), "latency".into(), "cpu".into()])
}

fn write_csv(lab: &Lab, points: &[Point]) -> anyhow::Result<()> {
    let mut csv = String::from(
        "clones,connections,rps,rps_min,rps_max,p50_ms,p99_ms,errors,efficiency,clones_util,lb_util,loadgen_util,machine_util,saturated\n",
    );
    for p in points {
        csv.push_str(&format!(
            "{},{},{:.1},{:.1},{:.1},{:.3},{:.3},{},{:.4},{:.3},{:.3},{:.3},{:.3},\"{}\"\n",
            p.clones,
            p.connections,
            p.rps,
            p.rps_min,
            p.rps_max,
            p.p50_ms,
            p.p99_ms,
            p.errors,
            p.efficiency,
            p.clones_util,
            p.lb_util,
            p.loadgen_util,
            p.machine_util,
            p.saturated
        ));
    }
    std::fs::write(lab.dir.join("points.csv"), csv)?;
    Ok(())
}

fn table(points: &[Point]) -> Vec<Vec<String>> {
    let mut rows = vec![
        [
            "clones",
            "req/s (min–max)",
            "p50 ms",
            "p99 ms",
            "efficiency",
            "clones CPU",
            "LB CPU",
            "loadgen CPU",
            "machine",
            "saturated",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for p in points {
        rows.push(vec![
            p.clones.to_string(),
            format!("{:.0} ({:.0}–{:.0})", p.rps, p.rps_min, p.rps_max),
            format!("{:.2}", p.p50_ms),
            format!("{:.2}", p.p99_ms),
            format!("{:.0} %", 100.0 * p.efficiency),
            format!("{:.0} %", 100.0 * p.clones_util),
            format!("{:.0} %", 100.0 * p.lb_util),
            format!("{:.0} %", 100.0 * p.loadgen_util),
            format!("{:.0} %", 100.0 * p.machine_util),
            p.saturated.clone(),
        ]);
    }
    rows
}

fn print_table(points: &[Point], fit: Option<&Fit>) {
    for row in table(points) {
        eprintln!("{}", row.join(" | "));
    }
    if let Some(f) = fit {
        eprintln!(
            "USL: sigma {:.4}, kappa {:.5}, R² {:.4}, peak {}",
            f.sigma,
            f.kappa,
            f.r2,
            f.peak()
                .map_or("none (κ = 0)".into(), |n| format!("{n:.1} clones"))
        );
    }
}

fn summary_lines(
    scenario: Scenario,
    options: &Options,
    points: &[Point],
    fit: Option<&Fit>,
) -> Vec<String> {
    let mut lines = vec![format!(
        "Scenario {}, closed model, {} connections per clone, {} round(s) of {:.0} s after {:.0} s of warm-up at each point; CPU per clone: {}, load balancer: {}.",
        scenario.name(),
        options.connections_per_clone,
        options.rounds,
        options.duration,
        options.warmup,
        options
            .cpu_per_clone
            .map_or("unlimited".into(), |c| format!("{c} core")),
        options
            .cpu_lb
            .map_or("unlimited".into(), |c| format!("{c} core")),
    )];
    if let Some(f) = fit {
        lines.push(format!(
            "Universal Scalability Law: σ = {:.4} (the serialised share: what every request queues for), κ = {:.5} (the cost of the parts keeping each other coherent), R² = {:.4}; {}.",
            f.sigma,
            f.kappa,
            f.r2,
            f.peak().map_or("no peak (κ = 0): throughput keeps rising, ever more slowly".into(), |n| format!("throughput peaks near {n:.1} clones"))
        ));
    }
    if let Some(last) = points.last() {
        lines.push(format!(
            "At {} clones: {:.0} % efficiency; limited by {}.",
            last.clones,
            100.0 * last.efficiency,
            last.saturated
        ));
    }
    lines
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn round4(x: f64) -> f64 {
    (x * 10000.0).round() / 10000.0
}
