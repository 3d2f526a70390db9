//! Two (or more) sides measured fairly against each other: the same closed-model
//! load, in rounds that alternate which side goes first (so a machine that warms
//! up or slows down during the run favours neither), reported as medians. Beside
//! requests/s, the CPU each side's processes spent per request while measured: on a
//! machine shared with other work, throughput says who got more of it, while CPU
//! per request says who needed less.

use std::net::SocketAddr;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::load::{self, Mix, Model, Plan};
use crate::plot::{self, Chart, Series, Style};
use crate::{cpu, median};

/// How long each side is measured, and how often: the flags of every A/B command.
#[derive(clap::Args, Debug, Clone)]
pub struct Rounds {
    /// Seconds measured per round.
    #[arg(long, default_value_t = 8.0)]
    pub duration: f64,
    /// Seconds of load before each round's measurement.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// `--connections`: a non-empty list of counts, each at least 1.
pub fn check_connections(connections: &[usize]) -> Result<(), bakery_config::ConfigError> {
    if connections.is_empty() || connections.contains(&0) {
        return Err(bakery_config::ConfigError::new(
            "--connections",
            "a list of connection counts, each at least 1",
        ));
    }
    Ok(())
}

/// One side: a name, where its requests go, what it sends, and the processes whose
/// CPU it is charged.
pub struct Contender<'a> {
    pub name: &'a str,
    pub addr: SocketAddr,
    pub mix: &'a Mix,
    pub pids: Vec<u32>,
}

/// What one round (or the median of a side's rounds) measured.
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// CPU time of the side's processes per answered request, in microseconds.
    pub cpu_us: f64,
}

/// One round of one side at one connection count.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub connections: usize,
    pub side: String,
    #[serde(flatten)]
    pub measured: Side,
}

/// Every side, `rounds` times at each connection count, alternating the order.
pub async fn alternate(
    contenders: &[Contender<'_>],
    connections: &[usize],
    rounds: usize,
    warmup: std::time::Duration,
    duration: std::time::Duration,
) -> anyhow::Result<Vec<Run>> {
    let total = connections.len() * rounds * contenders.len();
    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} runs ({elapsed})")?
            .progress_chars("=> "),
    );
    let mut runs = Vec::with_capacity(total);
    for &c in connections {
        for round in 0..rounds {
            let mut order: Vec<&Contender> = contenders.iter().collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for contender in order {
                bar.set_message(format!("{} at {c} conns", contender.name));
                let plan = Plan {
                    model: Model::Closed { connections: c },
                    warmup,
                    duration,
                };
                // The CPU of the measured window only, sampled beside the load.
                let pids = contender.pids.clone();
                let cpu = tokio::spawn(async move {
                    tokio::time::sleep(warmup).await;
                    let before = cpu::used_by(&pids);
                    tokio::time::sleep(duration).await;
                    cpu::used_by(&pids).saturating_sub(before)
                });
                let m = load::run(contender.addr, contender.mix, plan).await?;
                let cpu = cpu.await?;
                runs.push(Run {
                    connections: c,
                    side: contender.name.to_string(),
                    measured: Side {
                        rps: m.rps(),
                        p50_ms: m.ms(0.5),
                        p99_ms: m.ms(0.99),
                        errors: m.errors,
                        cpu_us: cpu.as_secs_f64() * 1e6 / m.ok.max(1) as f64,
                    },
                });
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    Ok(runs)
}

/// The median of a side's rounds at `connections` (errors summed).
pub fn median_side(runs: &[Run], connections: usize, side: &str) -> Side {
    let mine: Vec<&Side> = runs
        .iter()
        .filter(|r| r.connections == connections && r.side == side)
        .map(|r| &r.measured)
        .collect();
    let of = |f: fn(&Side) -> f64| median(mine.iter().map(|s| f(s)).collect());
    Side {
        rps: of(|s| s.rps),
        p50_ms: of(|s| s.p50_ms),
        p99_ms: of(|s| s.p99_ms),
        errors: mine.iter().map(|s| s.errors).sum(),
        cpu_us: of(|s| s.cpu_us),
    }
}

/// Each connection count with the medians of both sides.
pub fn points(runs: &[Run], connections: &[usize], sides: [&str; 2]) -> Vec<(usize, Side, Side)> {
    connections
        .iter()
        .map(|&c| {
            (
                c,
                median_side(runs, c, sides[0]),
                median_side(runs, c, sides[1]),
            )
        })
        .collect()
}

/// The two sides side by side, a header row then a row per connection count; also
/// printed on stderr.
pub fn table(points: &[(usize, Side, Side)], labels: [&str; 2]) -> Vec<Vec<String>> {
    let [a, b] = labels;
    let mut table = vec![vec![
        "connections".to_string(),
        format!("{a} req/s"),
        format!("{b} req/s"),
        format!("{a} / {b}"),
        format!("{a} p50 / p99 ms"),
        format!("{b} p50 / p99 ms"),
        format!("{a} / {b} CPU µs per request"),
    ]];
    for (c, x, y) in points {
        table.push(vec![
            c.to_string(),
            format!("{:.0}", x.rps),
            format!("{:.0}", y.rps),
            format!("{:.3}", ratio(x.rps, y.rps)),
            format!("{:.2} / {:.2}", x.p50_ms, x.p99_ms),
            format!("{:.2} / {:.2}", y.p50_ms, y.p99_ms),
            format!("{:.1} / {:.1}", x.cpu_us, y.cpu_us),
        ]);
    }
    for row in &table {
        eprintln!("{}", row.join(" | "));
    }
    table
}

/// `a / b`, rounded to three places (0 when `b` served nothing).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        (a / b * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

/// Requests/s and p99 of two sides over the connection counts (`throughput` and
/// `p99` charts); the names of the charts drawn.
pub fn draw(
    dir: &std::path::Path,
    what: &str,
    names: [&str; 2],
    points: &[(usize, Side, Side)],
) -> anyhow::Result<Vec<String>> {
    let medians: Vec<(usize, Vec<Side>)> = points
        .iter()
        .map(|(c, a, b)| (*c, vec![a.clone(), b.clone()]))
        .collect();
    let sides = names.map(|name| (name, Style::LineAndPoints));
    draw_sides(dir, what, &sides, &medians)
}

/// The medians of each of `sides` at each connection count.
pub fn medians(runs: &[Run], connections: &[usize], sides: &[&str]) -> Vec<(usize, Vec<Side>)> {
    connections
        .iter()
        .map(|&c| (c, sides.iter().map(|s| median_side(runs, c, s)).collect()))
        .collect()
}

/// Requests/s and p99 of any number of sides (a name and a line style each) over
/// the connection counts, each point's sides in that order.
pub fn draw_sides(
    dir: &std::path::Path,
    what: &str,
    sides: &[(&str, Style)],
    medians: &[(usize, Vec<Side>)],
) -> anyhow::Result<Vec<String>> {
    for (stem, title, y, of) in [
        (
            "throughput",
            "requests/s",
            "requests/s",
            (|s: &Side| s.rps) as fn(&Side) -> f64,
        ),
        ("p99", "p99 latency", "ms", |s: &Side| s.p99_ms),
    ] {
        let series = sides
            .iter()
            .enumerate()
            .map(|(i, (name, style))| Series {
                name: name.to_string(),
                points: medians
                    .iter()
                    .map(|(c, measured)| (*c as f64, of(&measured[i])))
                    .collect(),
                style: *style,
            })
            .collect();
        plot::draw(
            dir,
            stem,
            &Chart {
                title: &format!("{what}: {title}"),
                x: "connections",
                y,
                series,
                log_y: false,
            },
        )?;
    }
    Ok(vec!["throughput".into(), "p99".into()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(connections: usize, side: &str, rps: f64, errors: u64) -> Run {
        Run {
            connections,
            side: side.into(),
            measured: Side {
                rps,
                p50_ms: rps / 1000.0,
                p99_ms: rps / 100.0,
                errors,
                cpu_us: 1e6 / rps,
            },
        }
    }

    #[test]
    fn a_side_is_the_median_of_its_own_rounds() {
        let runs = vec![
            run(16, "a", 100.0, 1),
            run(16, "b", 900.0, 0),
            run(16, "a", 300.0, 0),
            run(16, "a", 200.0, 2),
            run(64, "a", 5000.0, 0),
        ];
        let a = median_side(&runs, 16, "a");
        assert_eq!((a.rps, a.errors, a.cpu_us), (200.0, 3, 5000.0));
        assert_eq!(median_side(&runs, 16, "b").rps, 900.0);
        assert_eq!(ratio(a.rps, 900.0), 0.222);
        assert_eq!(ratio(1.0, 0.0), 0.0);
    }
}
