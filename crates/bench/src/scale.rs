//! `bakery bench scale --clones 1,2,3,4,6,8 --cpu-per-clone C [--scenario S[,S2]]`:
//! the same scenario through a load balancer in front of 1, 2, 3, ... clones, each
//! clone given the same CPU budget, at the same concurrency per clone (closed
//! model). Reports throughput and latency per point, scaling efficiency
//! X(N)/(N·X(1)), the Universal Scalability Law fitted to the curve (and, fitted on
//! the first points only, what it predicts for the rest), and — from the CPU each
//! part used — which resource was saturated at each point. Several scenarios make
//! one report, their curves side by side, each explained in a sentence.
//!
//! Each clone with a budget of at most a core is pinned to one core (see
//! [`crate::cgroup::pin`]): unpinned, a one-clone point spent twice the CPU per
//! request of a four-clone point and the curve looked super-linear.

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
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,6,8")]
    pub clones: Vec<usize>,
    /// Cores each clone may use (a cgroup quota), e.g. 0.125.
    #[arg(long)]
    pub cpu_per_clone: Option<f64>,
    /// Cores the load balancer may use.
    #[arg(long)]
    pub cpu_lb: Option<f64>,
    /// One scenario or several, comma-separated: ping, product, product-uncached,
    /// product-page, edge, rsvp, hot-write or browse.
    #[arg(long, value_delimiter = ',', default_value = "product-page")]
    pub scenario: Vec<String>,
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
    /// The database server's CPU, when it runs on this machine (see [`Primary`]).
    db_cores: Option<f64>,
    machine_busy: f64,
}

/// One number of clones: the median of its rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub clones: usize,
    /// Rounds measured (the one-clone point's two visits pooled).
    pub rounds: usize,
    pub connections: usize,
    pub rps: f64,
    pub rps_min: f64,
    pub rps_max: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub efficiency: f64,
    /// The clones' CPU per answered request, in milliseconds.
    pub cpu_ms_per_request: f64,
    /// The database server's CPU per answered request, in milliseconds, when it
    /// runs on this machine (SQLite's work is in the clones' own).
    pub db_cpu_ms_per_request: Option<f64>,
    /// Share of its budget (or of the machine) each part used.
    pub clones_util: f64,
    pub lb_util: f64,
    pub loadgen_util: f64,
    pub machine_util: f64,
    /// The resource that limited this point.
    pub saturated: String,
}

/// One scenario's curve: its points, the fit, and the fit's prediction check.
struct Curve {
    scenario: Scenario,
    points: Vec<Point>,
    fit: Option<Fit>,
    check: Option<Check>,
    /// Each point's peak memory by process, in the order of `points`.
    memories: Vec<serde_json::Map<String, serde_json::Value>>,
    rounds: Vec<serde_json::Value>,
}

impl Curve {
    /// Throughput at one clone (every run measures it).
    fn one_clone(&self) -> f64 {
        self.points
            .iter()
            .find(|p| p.clones == 1)
            .map_or(0.0, |p| p.rps)
    }

    /// The point with the most throughput.
    fn peak(&self) -> Option<&Point> {
        self.points.iter().max_by(|a, b| a.rps.total_cmp(&b.rps))
    }
}

/// The USL fitted on the first points only, against what was measured after them:
/// a fit that explains the curve predicts where it goes.
#[derive(Clone, Debug, Serialize)]
struct Check {
    /// Clone counts the fit saw.
    fitted_on: Vec<usize>,
    sigma: f64,
    kappa: f64,
    peak_clones: Option<f64>,
    /// (clones, predicted req/s, measured req/s) for the points it did not see.
    predicted: Vec<(usize, f64, f64)>,
}

pub async fn run(config: &Config, options: Options) -> anyhow::Result<()> {
    let scenarios = options
        .scenario
        .iter()
        .map(|s| Scenario::from_flag(s.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if scenarios.is_empty() {
        return Err(ConfigError::new("--scenario", "at least one scenario").into());
    }
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
    let names: Vec<&str> = scenarios.iter().map(|s| s.name()).collect();
    let lab = Lab::open(
        options.config_file.clone(),
        config,
        &format!("scale-{}", names.join("-")),
        budgeted,
    )
    .await?;
    let mut clones = options.clones.clone();
    clones.sort_unstable();
    clones.dedup();

    let visits = visiting_order(&clones).len();
    let bar = ProgressBar::new((scenarios.len() * visits * options.rounds) as u64).with_style(
        ProgressStyle::with_template("{msg:>32} [{bar:30}] {pos}/{len} rounds ({elapsed})")?
            .progress_chars("=> "),
    );
    let plan = Plan {
        model: Model::Closed { connections: 0 },
        warmup,
        duration,
    };
    let mut curves = Vec::new();
    for &scenario in &scenarios {
        curves.push(curve(&lab, scenario, &clones, &options, plan, &bar).await?);
    }
    bar.finish_and_clear();

    let mut charts = Vec::new();
    for curve in &curves {
        charts.extend(draw(&lab, curve)?);
    }
    if curves.len() > 1 {
        charts.insert(0, draw_speedup(&lab, &curves)?);
    }
    let results: Vec<serde_json::Value> = curves
        .iter()
        .map(|c| curve_result(c, &options, &lab))
        .collect();
    let result = match &results[..] {
        [one] => one.clone(),
        _ => json!({"scenario": "scale", "curves": results}),
    };
    write_csv(&lab, &curves)?;
    std::fs::write(
        lab.dir.join("rounds.json"),
        serde_json::to_string_pretty(
            &curves
                .iter()
                .map(|c| json!({"scenario": c.scenario.name(), "points": c.rounds}))
                .collect::<Vec<_>>(),
        )?,
    )?;
    let mut summary = vec![method(&options)];
    for curve in &curves {
        print_table(curve);
        summary.extend(explain(curve));
    }
    std::fs::write(lab.dir.join("summary.md"), markdown(&options, &curves))?;
    html::write(
        &lab.dir,
        &format!("bench scale — {}", names.join(", ")),
        &html::Page {
            summary,
            table: table(&curves),
            charts,
            files: vec![
                "results.json".into(),
                "points.csv".into(),
                "rounds.json".into(),
                "summary.md".into(),
            ],
        },
    )?;
    crate::write_result(&lab.dir, &result)
}

/// The clone counts in the order they are measured: each once, and the one-clone
/// point — every other point's baseline — again at the end, its rounds pooled with
/// the first visit's: a lone clone on an idle machine is sometimes slower per
/// request than among others (docs/lab.md), and one visit made the whole curve look
/// super-linear.
fn visiting_order(clones: &[usize]) -> Vec<usize> {
    let revisit = (clones.len() > 1 && clones.contains(&1)).then_some(1);
    clones.iter().copied().chain(revisit).collect()
}

/// Measures one scenario at every clone count (see [`visiting_order`]).
async fn curve(
    lab: &Lab,
    scenario: Scenario,
    clones: &[usize],
    options: &Options,
    plan: Plan,
    bar: &ProgressBar,
) -> anyhow::Result<Curve> {
    let primary = Primary::of(&lab.config);
    let mut mix = None;
    let mut visits: Vec<(
        usize,
        Vec<Round>,
        serde_json::Map<String, serde_json::Value>,
    )> = Vec::new();
    for n in visiting_order(clones) {
        bar.set_message(format!("{}, {n} clone(s): starting", scenario.name()));
        let topology = Topology::start(lab, &shape(n, scenario, options)).await?;
        if mix.is_none() {
            mix = Some(scenario.prepare(lab, &topology.base()).await?);
        }
        let mix = mix.as_ref().expect("prepared above");
        let mut rounds = Vec::new();
        for r in 1..=options.rounds {
            bar.set_message(format!("{}, {n} clone(s): round {r}", scenario.name()));
            let plan = Plan {
                model: Model::Closed {
                    connections: n * options.connections_per_clone,
                },
                ..plan
            };
            rounds.push(measure(&topology, mix, plan, primary).await?);
            bar.inc(1);
        }
        let memory = topology.peak_memory();
        topology.stop().await;
        match visits.iter_mut().find(|(seen, ..)| *seen == n) {
            Some((_, earlier, _)) => earlier.extend(rounds),
            None => visits.push((n, rounds, memory)),
        }
    }
    let points = visits
        .iter()
        .map(|(n, rounds, _)| {
            summarise(
                *n,
                n * options.connections_per_clone,
                rounds,
                &shape(*n, scenario, options),
            )
        })
        .collect();
    let rounds_by_point = visits
        .iter()
        .map(|(n, rounds, memory)| json!({"clones": n, "rounds": rounds, "peak_rss_bytes": memory}))
        .collect();
    let memories = visits.into_iter().map(|(.., memory)| memory).collect();
    let mut curve = Curve {
        scenario,
        points,
        fit: None,
        check: None,
        memories,
        rounds: rounds_by_point,
    };
    let x1 = curve.one_clone();
    for point in &mut curve.points {
        point.efficiency = usl::efficiency(x1, point.clones as f64, point.rps);
    }
    let xy: Vec<(f64, f64)> = curve
        .points
        .iter()
        .map(|p| (p.clones as f64, p.rps))
        .collect();
    curve.fit = Fit::of(&xy);
    curve.check = check(&curve.points);
    Ok(curve)
}

/// The topology of one point: `n` clones with the run's budgets.
fn shape(n: usize, scenario: Scenario, options: &Options) -> Shape {
    Shape {
        clones: n,
        cpu_per_clone: options.cpu_per_clone,
        cpu_lb: options.cpu_lb,
        clone_env: scenario.clone_env(),
        push: None,
    }
}

/// Fits the points up to half the largest clone count (at least three of them)
/// and compares its prediction with the points after; `None` when there are too
/// few points to hold any back.
fn check(points: &[Point]) -> Option<Check> {
    let max = points.iter().map(|p| p.clones).max()?;
    let seen: Vec<&Point> = points.iter().filter(|p| 2 * p.clones <= max).collect();
    let held: Vec<&Point> = points.iter().filter(|p| 2 * p.clones > max).collect();
    if seen.len() < 3 || held.is_empty() {
        return None;
    }
    let fit = Fit::of(
        &seen
            .iter()
            .map(|p| (p.clones as f64, p.rps))
            .collect::<Vec<_>>(),
    )?;
    Some(Check {
        fitted_on: seen.iter().map(|p| p.clones).collect(),
        sigma: round4(fit.sigma),
        kappa: round4(fit.kappa),
        peak_clones: fit.peak().map(round3),
        predicted: held
            .iter()
            .map(|p| (p.clones, fit.at(p.clones as f64).round(), p.rps.round()))
            .collect(),
    })
}

/// One curve as the `result` line gives it (the contract's shape for one scenario).
fn curve_result(curve: &Curve, options: &Options, lab: &Lab) -> serde_json::Value {
    let efficiency: serde_json::Map<String, serde_json::Value> = curve
        .points
        .iter()
        .filter(|p| p.clones > 1)
        .map(|p| (p.clones.to_string(), json!(round3(p.efficiency))))
        .collect();
    let usl = curve.fit.map(|f| {
        json!({
            "lambda": round3(f.lambda), "sigma": round4(f.sigma), "kappa": round4(f.kappa),
            "r2": round4(f.r2), "peak_clones": f.peak().map(round3),
        })
    });
    let measured_peak = curve.peak().map(|p| p.clones);
    json!({
        "scenario": curve.scenario.name(),
        "points": curve.points.iter().zip(&curve.memories).map(|(p, memory)| json!({
            "clones": p.clones, "rps": round3(p.rps), "p99_ms": round3(p.p99_ms),
            "p50_ms": round3(p.p50_ms), "errors": p.errors, "saturated": p.saturated,
            "clones_util": round3(p.clones_util), "cpu_ms_per_request": round4(p.cpu_ms_per_request),
            "db_cpu_ms_per_request": p.db_cpu_ms_per_request.map(round4),
            "peak_rss_bytes": memory, "rounds": p.rounds,
        })).collect::<Vec<_>>(),
        "efficiency": efficiency,
        "usl": usl,
        "measured_peak_clones": measured_peak,
        "prediction": curve.check,
        "explanation": explain(curve),
        "cpu_per_clone": options.cpu_per_clone,
        "cpu_lb": options.cpu_lb,
        "cgroup": lab.budgets.as_ref().map(|b| b.version()),
        "connections_per_clone": options.connections_per_clone,
        "rounds": options.rounds,
        "duration_s": options.duration,
    })
}

/// The primary database as a server on this machine, whose processes' CPU a round
/// can count (by their command name): where contention costs the database itself.
#[derive(Clone, Copy)]
struct Primary(&'static [&'static str]);

impl Primary {
    fn of(config: &Config) -> Option<Self> {
        let url = &config.database.url;
        let local = url.hosts().iter().all(|host| {
            reqwest::Url::parse(host).is_ok_and(|u| {
                matches!(
                    u.host_str(),
                    None | Some("" | "localhost" | "127.0.0.1" | "[::1]")
                )
            })
        });
        let names: &'static [&'static str] = match url.engine() {
            bakery_config::DatabaseEngine::Sqlite => return None,
            bakery_config::DatabaseEngine::Postgres => &["postgres"],
            bakery_config::DatabaseEngine::MariaDb => &["mariadbd", "mysqld"],
        };
        local.then_some(Self(names))
    }

    fn used(self) -> Duration {
        cpu::used_by_named(self.0)
    }
}

/// One closed-model run against the topology, with the CPU each part used.
async fn measure(
    topology: &Topology,
    mix: &load::Mix,
    plan: Plan,
    primary: Option<Primary>,
) -> anyhow::Result<Round> {
    let clone_pids = topology.clone_pids();
    let me = std::process::id();
    let db_before = primary.map(Primary::used);
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
    let db_after = primary.map(Primary::used);
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
        db_cores: db_before.zip(db_after).map(|(a, b)| cores(a, b)),
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
        rounds: rounds.len(),
        connections,
        rps: of(|r| r.rps),
        rps_min: rounds.iter().map(|r| r.rps).fold(f64::MAX, f64::min),
        rps_max: rounds.iter().map(|r| r.rps).fold(0.0, f64::max),
        p50_ms: of(|r| r.p50_ms),
        p99_ms: of(|r| r.p99_ms),
        errors: rounds.iter().map(|r| r.errors).sum(),
        efficiency: 0.0,
        cpu_ms_per_request: of(|r| 1000.0 * r.clones_cores / r.rps.max(1.0)),
        db_cpu_ms_per_request: rounds
            .iter()
            .all(|r| r.db_cores.is_some())
            .then(|| of(|r| 1000.0 * r.db_cores.unwrap_or(0.0) / r.rps.max(1.0))),
        clones_util,
        lb_util,
        loadgen_util,
        machine_util,
        saturated,
    }
}

/// Names the resource that limited a point: a part at ≥ 80 % of its CPU budget
/// (a throttled group seldom shows more: its periods end in stalls), or the
/// machine itself at ≥ 90 % when everything shares its cores — first of all when
/// it is full and the clones did not get their whole budget (the host could not
/// give each simulated machine its share).
fn saturated(clones: f64, lb: f64, machine: f64, shape: &Shape) -> String {
    const BUDGET_FULL: f64 = 0.8;
    const FULL: f64 = 0.9;
    const MACHINE_FULL: f64 = 0.97;
    const BUDGET_GIVEN: f64 = 0.95;
    if shape.cpu_per_clone.is_some() && machine >= MACHINE_FULL && clones < BUDGET_GIVEN {
        "the machine's cores (the clones did not get their whole budget)".into()
    } else if shape.cpu_per_clone.is_some() && clones >= BUDGET_FULL {
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

/// A curve's own charts: throughput with the linear line and the fit, latency, CPU.
fn draw(lab: &Lab, curve: &Curve) -> anyhow::Result<Vec<String>> {
    let (name, points) = (curve.scenario.name(), &curve.points);
    let measured: Vec<(f64, f64)> = points.iter().map(|p| (p.clones as f64, p.rps)).collect();
    let max_n = points.iter().map(|p| p.clones).max().unwrap_or(1) as f64;
    let x1 = curve.one_clone();
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
    if let Some(fit) = curve.fit {
        series.push(Series {
            name: format!(
                "USL: σ = {:.3}, κ = {:.4}, R² = {:.3}",
                fit.sigma, fit.kappa, fit.r2
            ),
            points: along(max_n, |n| fit.at(n)),
            style: Style::Line,
        });
    }
    let stems = [
        format!("throughput-{name}"),
        format!("latency-{name}"),
        format!("cpu-{name}"),
    ];
    plot::draw(
        &lab.dir,
        &stems[0],
        &Chart {
            title: &format!("{name}: throughput by clones"),
            x: "clones",
            y: "requests/s",
            series,
            log_y: false,
        },
    )?;
    let by_clones = |name: &str, f: &dyn Fn(&Point) -> f64| Series {
        name: name.into(),
        points: points.iter().map(|p| (p.clones as f64, f(p))).collect(),
        style: Style::LineAndPoints,
    };
    plot::draw(
        &lab.dir,
        &stems[1],
        &Chart {
            title: &format!("{name}: latency by clones"),
            x: "clones",
            y: "ms",
            series: vec![
                by_clones("p50", &|p| p.p50_ms),
                by_clones("p99", &|p| p.p99_ms),
            ],
            log_y: false,
        },
    )?;
    plot::draw(
        &lab.dir,
        &stems[2],
        &Chart {
            title: &format!("{name}: CPU used, % of each part's budget (or of the machine)"),
            x: "clones",
            y: "% busy",
            series: vec![
                by_clones("clones", &|p| 100.0 * p.clones_util),
                by_clones("load balancer", &|p| 100.0 * p.lb_util),
                by_clones("load generator", &|p| 100.0 * p.loadgen_util),
                by_clones("machine", &|p| 100.0 * p.machine_util),
            ],
            log_y: false,
        },
    )?;
    Ok(stems.into())
}

/// Every curve relative to its own one clone, with the linear line: which scale
/// and which stop.
fn draw_speedup(lab: &Lab, curves: &[Curve]) -> anyhow::Result<String> {
    let max_n = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.clones))
        .max()
        .unwrap_or(1) as f64;
    let mut series = vec![Series {
        name: "linear".into(),
        points: vec![(1.0, 1.0), (max_n, max_n)],
        style: Style::Dashed,
    }];
    for curve in curves {
        let x1 = curve.one_clone();
        series.push(Series {
            name: format!("{} (measured)", curve.scenario.name()),
            points: curve
                .points
                .iter()
                .map(|p| (p.clones as f64, p.rps / x1))
                .collect(),
            style: Style::Points,
        });
        if let Some(fit) = curve.fit {
            series.push(Series {
                name: format!("{} (USL, R² = {:.3})", curve.scenario.name(), fit.r2),
                points: along(max_n, |n| fit.at(n) / fit.lambda),
                style: Style::Line,
            });
        }
    }
    plot::draw(
        &lab.dir,
        "speedup",
        &Chart {
            title: "speed-up X(N) / X(1) by clones",
            x: "clones",
            y: "× one clone",
            series,
            log_y: false,
        },
    )?;
    Ok("speedup".into())
}

/// `f` at 101 steps from 1 to `max_n`.
fn along(max_n: f64, f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
    (0..=100)
        .map(|i| 1.0 + (max_n - 1.0) * i as f64 / 100.0)
        .map(|n| (n, f(n)))
        .collect()
}

fn write_csv(lab: &Lab, curves: &[Curve]) -> anyhow::Result<()> {
    let mut csv = String::from(
        "scenario,clones,connections,rps,rps_min,rps_max,p50_ms,p99_ms,errors,efficiency,cpu_ms_per_request,db_cpu_ms_per_request,clones_util,lb_util,loadgen_util,machine_util,saturated\n",
    );
    for curve in curves {
        for p in &curve.points {
            csv.push_str(&format!(
                "{},{},{},{:.1},{:.1},{:.1},{:.3},{:.3},{},{:.4},{:.4},{},{:.3},{:.3},{:.3},{:.3},\"{}\"\n",
                curve.scenario.name(),
                p.clones,
                p.connections,
                p.rps,
                p.rps_min,
                p.rps_max,
                p.p50_ms,
                p.p99_ms,
                p.errors,
                p.efficiency,
                p.cpu_ms_per_request,
                p.db_cpu_ms_per_request
                    .map_or(String::new(), |ms| format!("{ms:.4}")),
                p.clones_util,
                p.lb_util,
                p.loadgen_util,
                p.machine_util,
                p.saturated
            ));
        }
    }
    std::fs::write(lab.dir.join("points.csv"), csv)?;
    Ok(())
}

fn table(curves: &[Curve]) -> Vec<Vec<String>> {
    let mut rows = vec![
        [
            "scenario",
            "clones",
            "req/s (min–max)",
            "p50 ms",
            "p99 ms",
            "efficiency",
            "clone CPU ms / req",
            "database CPU ms / req",
            "clones CPU",
            "LB CPU",
            "loadgen CPU",
            "machine",
            "saturated",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for curve in curves {
        for p in &curve.points {
            rows.push(vec![
                curve.scenario.name().to_string(),
                p.clones.to_string(),
                format!("{:.0} ({:.0}–{:.0})", p.rps, p.rps_min, p.rps_max),
                format!("{:.2}", p.p50_ms),
                format!("{:.2}", p.p99_ms),
                format!("{:.0} %", 100.0 * p.efficiency),
                format!("{:.3}", p.cpu_ms_per_request),
                p.db_cpu_ms_per_request
                    .map_or("in the clones".into(), |ms| format!("{ms:.3}")),
                format!("{:.0} %", 100.0 * p.clones_util),
                format!("{:.0} %", 100.0 * p.lb_util),
                format!("{:.0} %", 100.0 * p.loadgen_util),
                format!("{:.0} %", 100.0 * p.machine_util),
                p.saturated.clone(),
            ]);
        }
    }
    rows
}

fn print_table(curve: &Curve) {
    for row in table(std::slice::from_ref(curve)) {
        eprintln!("{}", row.join(" | "));
    }
    for line in explain(curve) {
        eprintln!("{line}");
    }
}

/// How the run was made, in one sentence.
fn method(options: &Options) -> String {
    let budget = |c: Option<f64>| c.map_or("unlimited".into(), |c| format!("{c} core"));
    format!(
        "Closed model, {} connections per clone, {} round(s) of {:.0} s after {:.0} s of warm-up at each point (at one clone twice as many: measured first and again last, pooled); CPU per clone: {}, load balancer: {}; a clone with at most a core's budget pinned to one core, in turn (see docs/lab.md).",
        options.connections_per_clone,
        options.rounds,
        options.duration,
        options.warmup,
        budget(options.cpu_per_clone),
        budget(options.cpu_lb),
    )
}

/// What a curve says, in sentences a learner can check against the plot: its
/// shape and cause, what the fitted σ and κ mean for it, whether the clones' own
/// cost per request moved, the fit's prediction against the points it did not see,
/// and the limit at the last point.
fn explain(curve: &Curve) -> Vec<String> {
    let name = curve.scenario.name();
    let (Some(first), Some(last)) = (curve.points.first(), curve.points.last()) else {
        return vec![];
    };
    let peak = curve.peak().unwrap_or(last);
    let mut lines = vec![if peak.clones < last.clones {
        format!(
            "{name}: {:.0} req/s at one clone, the most at {} clones ({:.0} req/s, {:.0} % efficiency), {:.0} req/s at {} ({:.0} %) — {}.",
            first.rps,
            peak.clones,
            peak.rps,
            100.0 * peak.efficiency,
            last.rps,
            last.clones,
            100.0 * last.efficiency,
            curve.scenario.why()
        )
    } else {
        format!(
            "{name}: {:.0} req/s at one clone, {:.0} req/s at {} ({:.0} % efficiency) — {}.",
            first.rps,
            last.rps,
            last.clones,
            100.0 * last.efficiency,
            curve.scenario.why()
        )
    }];
    if let Some(fit) = curve.fit {
        let sigma = if fit.sigma >= 0.01 {
            format!(
                "σ = {:.3}: as if {:.0} % of each request's work waited in line for one shared thing, which caps the system near {:.0}× one clone",
                fit.sigma,
                100.0 * fit.sigma,
                1.0 / fit.sigma
            )
        } else if fit.kappa > 0.0 {
            format!(
                "σ = {:.3}: no fixed share of the work waits in line; what the clones lose grows with their number instead",
                fit.sigma
            )
        } else {
            format!("σ = {:.3}: nothing shared to queue for", fit.sigma)
        };
        let kappa = match fit.peak() {
            Some(n) => format!(
                "κ = {:.4}: a cost that grows with every pair of clones, so the fit puts a peak near {n:.1} clones",
                fit.kappa
            ),
            None => "κ = 0: no cost grows with pairs of clones, no peak".to_string(),
        };
        lines.push(format!("USL fit (R² = {:.3}): {sigma}; {kappa}.", fit.r2));
    }
    if last.cpu_ms_per_request > 1.15 * first.cpu_ms_per_request {
        lines.push(format!(
            "The clones' own CPU per request grew from {:.3} ms at one clone to {:.3} ms at {}: more processes take turns on each of this machine's {} cores and find its caches full of the others' data — a cost of simulating {} machines on {}, which the fit counts as κ.",
            first.cpu_ms_per_request,
            last.cpu_ms_per_request,
            last.clones,
            cpu::cores(),
            last.clones,
            cpu::cores()
        ));
    }
    if let (Some(alone), Some(crowded)) = (first.db_cpu_ms_per_request, last.db_cpu_ms_per_request)
        // Only where the database does a real share of the work per request.
        && crowded > 1.3 * alone
        && crowded >= 0.1 * last.cpu_ms_per_request
    {
        lines.push(format!(
            "The database's own CPU per request grew from {alone:.3} ms at one clone to {crowded:.3} ms at {} ({:.1}×): {} — a cost that grows with the number of clones sending it work at once, which the fit counts as κ.",
            last.clones,
            crowded / alone.max(f64::MIN_POSITIVE),
            curve.scenario.crowding()
        ));
    }
    if let Some(check) = &curve.check {
        let predicted: Vec<String> = check
            .predicted
            .iter()
            .map(|(n, p, m)| {
                format!(
                    "{n} clones {p:.0} req/s (measured {m:.0}, {:+.0} %)",
                    100.0 * (m - p) / p.max(1.0)
                )
            })
            .collect();
        lines.push(format!(
            "Fitted on {:?} clones only, the USL predicted {}{}.",
            check.fitted_on,
            predicted.join(", "),
            check.peak_clones.map_or(String::new(), |n| format!(
                ", and a peak near {n:.1} clones"
            ))
        ));
    }
    lines.push(format!(
        "At {} clones the limit was {}.",
        last.clones, last.saturated
    ));
    lines
}

/// The run as Markdown (tables and sentences) for the docs: what docs/lab.md
/// shows comes from this file, unedited.
fn markdown(options: &Options, curves: &[Curve]) -> String {
    let mut md = format!("{}\n\n", method(options));
    for curve in curves {
        let rows = table(std::slice::from_ref(curve));
        let line = |cells: &[String]| format!("| {} |\n", cells[1..].join(" | "));
        md.push_str(&format!("### {}\n\n", curve.scenario.name()));
        md.push_str(&line(&rows[0]));
        md.push_str(&format!("|{}\n", " --- |".repeat(rows[0].len() - 1)));
        for row in &rows[1..] {
            md.push_str(&line(row));
        }
        md.push('\n');
        for sentence in explain(curve) {
            md.push_str(&format!("{sentence}\n\n"));
        }
    }
    md
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn round4(x: f64) -> f64 {
    (x * 10000.0).round() / 10000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_database(url: &str) -> Config {
        let mut config = Config::default();
        config.database.url = bakery_config::DatabaseUrl::parse(url).unwrap();
        config
    }

    #[test]
    fn a_full_machine_that_starves_the_clones_is_the_limit() {
        let shape = Shape {
            clones: 16,
            cpu_per_clone: Some(0.1),
            cpu_lb: None,
            clone_env: vec![],
            push: None,
        };
        // Clones at 89 % of their quota on a machine 100 % busy: the host ran out.
        assert!(saturated(0.89, 0.16, 1.0, &shape).starts_with("the machine's cores"));
        // Clones using their whole quota: they are the limit, whatever the machine.
        assert_eq!(saturated(0.99, 0.16, 1.0, &shape), "clone CPU");
        assert_eq!(saturated(0.85, 0.1, 0.6, &shape), "clone CPU");
        assert!(saturated(0.4, 0.02, 0.5, &shape).starts_with("none at 90 %"));
    }

    #[test]
    fn the_database_is_measured_where_it_is_a_server_on_this_machine() {
        let names = |url: &str| Primary::of(&with_database(url)).map(|p| p.0);
        assert_eq!(
            names("postgres://postgres@127.0.0.1:5432/bakery"),
            Some(&["postgres"][..])
        );
        assert_eq!(
            names("postgres://u@localhost:5432,127.0.0.1:5433/bakery"),
            Some(&["postgres"][..])
        );
        assert_eq!(
            names("mysql://root@127.0.0.1:3306/bakery"),
            Some(&["mariadbd", "mysqld"][..])
        );
        // Another machine's CPU is not this one's to read; SQLite works in the clones.
        assert_eq!(names("postgres://u@db.example:5432/bakery"), None);
        assert_eq!(names("sqlite:///tmp/bakery.db"), None);
    }
}
