//! `bakery bench read-models`: the lesson's two database paths on a large dataset
//! ("soon your requests will get slow after a large dataset, so you'll introduce a
//! cache"). A catalog of `--products` products and `--reviews` reviews is made in
//! bulk, their documents built, and one product read (`GET /api/products/{id}` of
//! `--hot` products, over and over) is measured four ways side by side, in
//! alternating rounds on the same database: normalised with SQL joins (`tables`),
//! from the de-normalised documents (`documents`), and each with the cache in front.

use std::path::PathBuf;
use std::time::Instant;

use bakery_app::App;
use bakery_config::{Config, ConfigError};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::ab::{self, Contender, Side};
use crate::html;
use crate::load::{Call, Mix};
use crate::plot::Style;
use crate::topology::{Lab, Shape, Topology};

/// `bakery bench read-models`' flags.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Products in the catalog (made in bulk when there are fewer).
    #[arg(long, default_value_t = 100_000)]
    pub products: i64,
    /// Reviews in all, spread evenly over the products.
    #[arg(long, default_value_t = 1_000_000)]
    pub reviews: i64,
    /// Distinct products the load reads, each over and over (so the cache warms).
    #[arg(long, default_value_t = 1_000)]
    pub hot: usize,
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub connections: Vec<usize>,
    #[command(flatten)]
    pub rounds: ab::Rounds,
    /// The `--config` file the bench's processes are started with.
    #[arg(skip)]
    pub config_file: Option<PathBuf>,
}

/// The four ways a product is read: a name and the clones' environment.
const PATHS: [(&str, &str, bool); 4] = [
    ("tables", "tables", false),
    ("documents", "documents", false),
    ("tables+cache", "tables", true),
    ("documents+cache", "documents", true),
];

pub async fn run(config: &Config, options: Options) -> anyhow::Result<()> {
    if !(1..=10_000_000).contains(&options.products) {
        return Err(ConfigError::new("--products", "from 1 to 10000000").into());
    }
    if !(0..=100_000_000).contains(&options.reviews) {
        return Err(ConfigError::new("--reviews", "from 0 to 100000000").into());
    }
    if options.hot == 0 {
        return Err(ConfigError::new("--hot", "at least 1").into());
    }
    ab::check_connections(&options.connections)?;
    if options.rounds.rounds == 0 {
        return Err(ConfigError::new("--rounds", "at least 1").into());
    }
    let (duration, warmup) = crate::timing(options.rounds.duration, options.rounds.warmup)?;
    let lab = Lab::open(options.config_file.clone(), config, "read-models", false).await?;
    if lab.config.cache.url.engine() == "none" {
        return Err(ConfigError::new(
            "BAKERY_CACHE_URL",
            "the bench compares each path with and without the cache: give it a cache (or the embedded default)",
        )
        .into());
    }
    let database = lab.config.database.url.engine().name();
    let app = App::connect(&lab.config).await?;

    // The dataset, then its documents.
    let per_product = (options.reviews / options.products).max(i64::from(options.reviews > 0));
    let bar = progress(options.products as u64, "catalog", "products")?;
    let started = Instant::now();
    let dataset = app
        .load_bench_catalog(options.products, per_product, |done| {
            bar.set_position(done as u64)
        })
        .await?;
    bar.finish_and_clear();
    let load_s = started.elapsed().as_secs_f64();
    eprintln!(
        "catalog: {} products, {} reviews on {database} ({load_s:.1} s)",
        dataset.products, dataset.reviews
    );
    let behind = app.documents_behind().await?.products;
    let started = Instant::now();
    if behind > 0 {
        let bar = progress(
            app.product_count().await?.max(0) as u64,
            "documents",
            "products",
        )?;
        app.rebuild_documents(|| bar.inc(1)).await?;
        bar.finish_and_clear();
    }
    let documents_s = started.elapsed().as_secs_f64();
    if behind > 0 {
        eprintln!("documents: {behind} made ({documents_s:.1} s)");
    }

    // The hot products: spread evenly over the catalog.
    let ids = app.bench_product_ids().await?;
    let step = (ids.len() / options.hot.min(ids.len())).max(1);
    let mix = Mix::new(
        ids.iter()
            .step_by(step)
            .take(options.hot)
            .map(|id| (Call::get(format!("/api/products/{id}")), 1))
            .collect(),
    );

    let mut topologies = Vec::new();
    for (_, model, cached) in PATHS {
        let mut clone_env = vec![("BAKERY_READ_MODEL".to_string(), model.to_string())];
        if !cached {
            clone_env.push(("BAKERY_CACHE_URL".into(), "none".into()));
        }
        let shape = Shape {
            clones: 1,
            clone_env,
            ..Shape::default()
        };
        topologies.push(Topology::start(&lab, &shape).await?);
    }
    let contenders: Vec<Contender> = PATHS
        .iter()
        .zip(&topologies)
        .map(|((name, _, _), topology)| Contender {
            name,
            addr: topology.addr(),
            mix: &mix,
            pids: std::iter::once(topology.lb.pid)
                .chain(topology.clone_pids())
                .collect(),
        })
        .collect();
    let runs = ab::alternate(
        &contenders,
        &options.connections,
        options.rounds.rounds,
        warmup,
        duration,
    )
    .await?;
    let memory: Vec<_> = topologies.iter().map(|t| t.peak_memory()).collect();
    for topology in topologies {
        topology.stop().await;
    }

    let names: Vec<&str> = PATHS.iter().map(|(name, _, _)| *name).collect();
    let medians = ab::medians(&runs, &options.connections, &names);
    let table = table(&medians);
    // The cached paths dashed: the lesson's "introduce a cache", drawn over the two.
    let sides: Vec<(&str, Style)> = names
        .iter()
        .map(|name| {
            let style = if name.ends_with("+cache") {
                Style::Dashed
            } else {
                Style::LineAndPoints
            };
            (*name, style)
        })
        .collect();
    let charts = ab::draw_sides(
        &lab.dir,
        &format!(
            "a product read on {database}, {} products",
            dataset.products
        ),
        &sides,
        &medians,
    )?;
    std::fs::write(
        lab.dir.join("runs.json"),
        serde_json::to_string_pretty(&runs)?,
    )?;
    html::write(
        &lab.dir,
        &format!(
            "bench read-models — {database}, {} products",
            dataset.products
        ),
        &html::Page {
            summary: vec![
                format!(
                    "A product read (GET /api/products/{{id}} of {} products, over and over) on {database} with {} products and {} reviews: from the normalised tables (SQL joins), from the de-normalised documents (one row), and each with the cache ({}) in front. One load balancer and one clone per path; closed model; {} round(s) of {:.0} s (after {:.0} s of warm-up) per path and connection count, alternating the order.",
                    options.hot.min(ids.len()),
                    dataset.products,
                    dataset.reviews,
                    lab.config.cache.url.engine(),
                    options.rounds.rounds,
                    options.rounds.duration,
                    options.rounds.warmup,
                ),
                format!(
                    "Catalog made in {load_s:.1} s; {behind} documents made in {documents_s:.1} s."
                ),
            ],
            table,
            charts,
            files: vec!["results.json".into(), "runs.json".into()],
        },
    )?;
    let result = json!({
        "scenario": "read-models",
        "database": database,
        "cache": lab.config.cache.url.engine(),
        "products": dataset.products,
        "reviews": dataset.reviews,
        "hot": options.hot.min(ids.len()),
        "load_s": (load_s * 10.0).round() / 10.0,
        "documents_made": behind,
        "documents_s": (documents_s * 10.0).round() / 10.0,
        "peak_rss_bytes": memory,
        "points": medians.iter().map(|(c, sides)| {
            let mut point = serde_json::Map::new();
            point.insert("connections".into(), json!(c));
            for ((name, _, _), side) in PATHS.iter().zip(sides) {
                let key = name.replace('+', "_");
                point.insert(format!("{key}_rps"), json!(side.rps.round()));
                point.insert(format!("{key}_p50_ms"), json!((side.p50_ms * 1000.0).round() / 1000.0));
                point.insert(format!("{key}_p99_ms"), json!((side.p99_ms * 1000.0).round() / 1000.0));
                point.insert(format!("{key}_errors"), json!(side.errors));
            }
            point.insert("documents_over_tables".into(), json!(ab::ratio(sides[1].rps, sides[0].rps)));
            point.insert("cached_documents_over_cached_tables".into(), json!(ab::ratio(sides[3].rps, sides[2].rps)));
            serde_json::Value::Object(point)
        }).collect::<Vec<_>>(),
    });
    crate::write_result(&lab.dir, &result)
}

fn progress(len: u64, what: &str, unit: &str) -> anyhow::Result<ProgressBar> {
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template(&format!(
            "{{msg:>10}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{elapsed}})"
        ))?
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    Ok(bar)
}

/// A row per connection count: each path's requests/s and p50/p99, and the
/// documents' ratio to the tables with and without the cache; also on stderr.
fn table(medians: &[(usize, Vec<Side>)]) -> Vec<Vec<String>> {
    let mut header = vec!["connections".to_string()];
    for (name, _, _) in PATHS {
        header.push(format!("{name} req/s"));
        header.push(format!("{name} p50 / p99 ms"));
    }
    header.push("documents / tables".into());
    header.push("with the cache".into());
    let mut rows = vec![header];
    for (c, sides) in medians {
        let mut row = vec![c.to_string()];
        for side in sides {
            row.push(format!("{:.0}", side.rps));
            row.push(format!("{:.2} / {:.2}", side.p50_ms, side.p99_ms));
        }
        row.push(format!("{:.3}", ab::ratio(sides[1].rps, sides[0].rps)));
        row.push(format!("{:.3}", ab::ratio(sides[3].rps, sides[2].rps)));
        rows.push(row);
    }
    for row in &rows {
        eprintln!("{}", row.join(" | "));
    }
    rows
}
