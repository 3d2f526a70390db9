//! `bakery bench jobs --jobs N --workers W [--kind noop|image] [--batch B]`: starts
//! W `bakery worker` processes on this configuration, enqueues N jobs in batches of B
//! (one transaction each), waits until all have ended, and reports jobs/s (first
//! enqueue to last end) and the end-to-end latency of each job (enqueued → ended).

use std::time::{Duration, Instant};

use bakery_app::App;
use bakery_config::{Config, ConfigError};
use bakery_events::topology::job_kind;
use bakery_supervisor::child::{ChildSpec, Launcher, Role};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::{percentile, report};

pub struct Options {
    pub jobs: usize,
    pub workers: usize,
    pub kind: String,
    pub batch: usize,
    pub config_file: Option<std::path::PathBuf>,
}

pub async fn run(config: &Config, options: Options) -> anyhow::Result<()> {
    if options.jobs == 0 || options.workers == 0 || options.batch == 0 {
        return Err(
            ConfigError::new("--jobs", "--jobs, --workers and --batch must be at least 1").into(),
        );
    }
    if ![job_kind::NOOP, job_kind::IMAGE].contains(&options.kind.as_str()) {
        return Err(ConfigError::new("--kind", "expected noop or image").into());
    }
    bakery_db::bootstrap(config, false).await?;
    let app = App::connect(config).await?;
    app.broker().check(&config.broker).await?;
    let payload = payload(&app, &options.kind).await?;
    eprintln!("starting {} worker(s)", options.workers);
    let launcher = Launcher {
        exe: std::env::current_exe()?,
        config_file: options.config_file.clone(),
        env: vec![crate::quiet_log()],
    };
    let mut workers = Vec::new();
    for i in 1..=options.workers {
        let spec = ChildSpec {
            role: Role::Worker,
            id: format!("bench-worker-{i}"),
            listen: "127.0.0.1:0".into(),
            args: vec![],
        };
        workers.push(launcher.start(&spec).await?);
    }

    let bar = ProgressBar::new(options.jobs as u64).with_style(
        ProgressStyle::with_template("{msg:>9} [{bar:40}] {pos}/{len} ({per_sec}, {elapsed})")?
            .progress_chars("=> "),
    );
    bar.set_message("enqueued");
    let started = Instant::now();
    let mut first = None;
    let mut last = 0;
    let mut left = options.jobs;
    while left > 0 {
        let n = left.min(options.batch);
        let ids = app
            .enqueue_jobs(&options.kind, vec![payload.clone(); n], "bench")
            .await?;
        first.get_or_insert(ids[0]);
        last = *ids.last().unwrap_or(&last);
        left -= n;
        bar.inc(n as u64);
    }
    bar.reset();
    bar.set_message("ended");
    let first = first.unwrap_or(0);
    // Counting is cheap; the ends themselves are read once, after the last.
    loop {
        let ended = app.jobs_ended(first, last).await?;
        bar.set_position(ended as u64);
        if ended as usize >= options.jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    bar.finish();
    let ends = app.job_ends(first, last).await?;
    for worker in &mut workers {
        worker.stop(Duration::from_secs(15)).await;
    }
    let failed = ends
        .iter()
        .filter(|(_, _, state)| state != "succeeded")
        .count();
    let mut latencies: Vec<f64> = ends
        .iter()
        .map(|(created, finished, _)| (finished - created) as f64)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let result = json!({
        "scenario": "jobs",
        "kind": options.kind,
        "jobs": options.jobs,
        "workers": options.workers,
        "concurrency": config.worker.concurrency,
        "batch": options.batch,
        "broker": app.broker().engine(),
        "jobs_per_s": (options.jobs as f64 / elapsed.as_secs_f64() * 10.0).round() / 10.0,
        "p50_ms": percentile(&latencies, 50.0),
        "p99_ms": percentile(&latencies, 99.0),
        "failed": failed,
    });
    report(config, "jobs", &result)?;
    Ok(())
}

/// What each job is given: nothing for `noop`; for `image`, one stored photo of a
/// product made for the run.
async fn payload(app: &App, kind: &str) -> anyhow::Result<serde_json::Value> {
    if kind == job_kind::NOOP {
        return Ok(json!({}));
    }
    let product = app
        .create_product_as_operator(bakery_app::catalog::ProductDraft {
            name: "Benchmark loaf".into(),
            description: "Photographed many times.".into(),
            price_cents: 100,
        })
        .await?
        .value
        .id;
    let photo = image::RgbImage::from_fn(1600, 1200, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(photo).write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    let original = "originals/bench.png".to_string();
    bakery_app::media::write_file(&app.media_dir().join(&original), &bytes).await?;
    Ok(json!({ "product_id": product, "original": original }))
}
