//! `bakery bench jobs --jobs N --workers W [--kind noop|image] [--batch B]
//! [--producers P] [--peer celery --rounds R]`: starts W `bakery worker` processes on
//! this configuration, enqueues N jobs from P producers at once, each a transaction of
//! B jobs at a time (`--batch 1` is what a web request does), waits until all have
//! ended, and reports jobs/s (first enqueue to last end), the end-to-end latency of
//! each job (enqueued → ended) and the workers' peak memory.
//!
//! `--peer celery` measures Celery 5 doing the same no-op work on the same RabbitMQ
//! beside it, in rounds that alternate which side goes first: W Celery workers with
//! Celery's defaults, and P producer threads each calling `apply_async()` once per
//! task. Medians, the ratio and a plot of every round.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bakery_app::App;
use bakery_config::{BrokerUrl, Config, ConfigError};
use bakery_events::topology::job_kind;
use bakery_supervisor::child::{ChildSpec, Launcher, Role};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::process::Command;

use crate::plot::{self, Chart, Series, Style};
use crate::{median, percentile, report_dir, write_result};

/// `bakery bench jobs`'s flags.
#[derive(clap::Args, Debug)]
pub struct Options {
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// noop (the machinery alone) or image (a 1600x1200 photo each).
    #[arg(long, default_value = job_kind::NOOP)]
    pub kind: String,
    /// Jobs enqueued per transaction.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Producers enqueuing at once, each one transaction at a time.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Measure against a peer doing the same work on the same broker: `celery`
    /// (no-op jobs on RabbitMQ; needs Python's celery, which scripts/services.sh installs).
    #[arg(long)]
    pub peer: Option<String>,
    /// Rounds of each side, alternating (with --peer).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The `--config` file the bench's processes are started with.
    #[arg(skip)]
    pub config_file: Option<PathBuf>,
}

/// What one run of one side measured.
#[derive(Clone, Debug, serde::Serialize)]
struct Figures {
    jobs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

pub async fn run(config: &Config, options: Options) -> anyhow::Result<()> {
    if options.jobs == 0 || options.workers == 0 || options.batch == 0 || options.producers == 0 {
        return Err(ConfigError::new(
            "--jobs",
            "--jobs, --workers, --batch and --producers must be at least 1",
        )
        .into());
    }
    if ![job_kind::NOOP, job_kind::IMAGE].contains(&options.kind.as_str()) {
        return Err(ConfigError::new("--kind", "expected noop or image").into());
    }
    let peer = match options.peer.as_deref() {
        None => None,
        Some("celery") => Some(Celery::prepare(config, &options)?),
        Some(_) => return Err(ConfigError::new("--peer", "expected celery").into()),
    };
    if options.rounds == 0 {
        return Err(ConfigError::new("--rounds", "at least 1").into());
    }
    bakery_db::bootstrap(config, false).await?;
    let app = App::connect(config).await?;
    app.broker().check(&config.broker).await?;
    let payload = payload(&app, &options.kind).await?;
    let dir = report_dir(config, "jobs")?;
    let base = json!({
        "scenario": "jobs",
        "kind": options.kind,
        "jobs": options.jobs,
        "workers": options.workers,
        "concurrency": config.worker.concurrency,
        "cpu_concurrency": config.worker.cpu_slots(),
        "batch": options.batch,
        "producers": options.producers,
        "broker": app.broker().engine(),
    });
    let Some(peer) = peer else {
        let (figures, failed, memory) = ours(&app, &options, &payload).await?;
        let mut result = base;
        merge(&mut result, json!(figures));
        merge(
            &mut result,
            json!({"failed": failed, "peak_rss_bytes": memory}),
        );
        eprintln!("workers' peak memory: {}", crate::megabytes(&memory));
        return write_result(&dir, &result);
    };
    let (mut our_rounds, mut peer_rounds) = (Vec::new(), Vec::new());
    let mut memory = serde_json::Map::new();
    let mut failed = 0;
    for round in 0..options.rounds {
        // Alternating who goes first: a machine warming up favours neither side.
        let peer_first = round % 2 == 1;
        if peer_first {
            peer_rounds.push(peer.measure(round, &dir).await?);
        }
        let (figures, f, m) = ours(&app, &options, &payload).await?;
        failed += f;
        for (id, bytes) in m {
            let most = bytes.as_u64().max(memory.get(&id).and_then(|b| b.as_u64()));
            memory.insert(id, json!(most));
        }
        our_rounds.push(figures);
        if !peer_first {
            peer_rounds.push(peer.measure(round, &dir).await?);
        }
        eprintln!(
            "round {}: bakery {:.0} jobs/s, celery {:.0} tasks/s",
            round + 1,
            our_rounds[round].jobs_per_s,
            peer_rounds[round].jobs_per_s
        );
    }
    let ours = medians(&our_rounds);
    let theirs = medians(&peer_rounds);
    let ratio = crate::ab::ratio(ours.jobs_per_s, theirs.jobs_per_s);
    eprintln!(
        "median: bakery {:.0} jobs/s (p50 {:.0} ms, p99 {:.0} ms), celery {:.0} tasks/s (p50 {:.0} ms, p99 {:.0} ms): {ratio}x; workers' peak memory: {}",
        ours.jobs_per_s,
        ours.p50_ms,
        ours.p99_ms,
        theirs.jobs_per_s,
        theirs.p50_ms,
        theirs.p99_ms,
        crate::megabytes(&memory)
    );
    let title = format!(
        "{} no-op jobs, {} workers, {} producer(s), batch {}",
        options.jobs, options.workers, options.producers, options.batch
    );
    let series = |name: &str, rounds: &[Figures]| Series {
        name: name.to_string(),
        points: rounds
            .iter()
            .enumerate()
            .map(|(i, f)| ((i + 1) as f64, f.jobs_per_s))
            .collect(),
        style: Style::LineAndPoints,
    };
    plot::draw(
        &dir,
        "jobs",
        &Chart {
            title: &title,
            x: "round",
            y: "jobs per second",
            series: vec![
                series("bakery", &our_rounds),
                series("Celery 5", &peer_rounds),
            ],
            log_y: false,
        },
    )?;
    let mut result = base;
    merge(&mut result, json!(ours));
    merge(
        &mut result,
        json!({
            "failed": failed,
            "peer": "celery",
            "peer_jobs_per_s": theirs.jobs_per_s,
            "peer_p50_ms": theirs.p50_ms,
            "peer_p99_ms": theirs.p99_ms,
            "ratio": ratio,
            "rounds": {"bakery": our_rounds, "celery": peer_rounds},
            "peak_rss_bytes": memory,
        }),
    );
    write_result(&dir, &result)
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(into), serde_json::Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

fn medians(rounds: &[Figures]) -> Figures {
    let of = |f: fn(&Figures) -> f64| median(rounds.iter().map(f).collect());
    Figures {
        jobs_per_s: (of(|f| f.jobs_per_s) * 10.0).round() / 10.0,
        p50_ms: of(|f| f.p50_ms),
        p99_ms: of(|f| f.p99_ms),
    }
}

/// One run of ours: W workers started, N jobs enqueued by P producers, all ended.
/// Its figures, the jobs that did not succeed, and each worker's peak memory.
async fn ours(
    app: &App,
    options: &Options,
    payload: &serde_json::Value,
) -> anyhow::Result<(Figures, usize, serde_json::Map<String, serde_json::Value>)> {
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
    let left = Arc::new(AtomicUsize::new(options.jobs));
    let producers: Vec<_> = (0..options.producers)
        .map(|_| {
            let (app, left, bar) = (app.clone(), left.clone(), bar.clone());
            let (kind, payload, batch) = (options.kind.clone(), payload.clone(), options.batch);
            tokio::spawn(async move {
                let (mut first, mut last) = (i64::MAX, i64::MIN);
                loop {
                    // Take up to a batch of what is left, or stop.
                    let taken = left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n > 0).then(|| n - n.min(batch))
                    });
                    let Ok(before) = taken else { break };
                    let n = before.min(batch);
                    // One at a time is a web request's way (POST /api/jobs): the
                    // enqueuer's group commit; more, a bulk producer's one transaction.
                    let ids = if n == 1 {
                        vec![app.enqueue_job(&kind, None, payload.clone()).await?.value]
                    } else {
                        app.enqueue_jobs(&kind, vec![payload.clone(); n], "bench")
                            .await?
                    };
                    first = first.min(ids.iter().copied().min().unwrap_or(first));
                    last = last.max(ids.iter().copied().max().unwrap_or(last));
                    bar.inc(n as u64);
                }
                anyhow::Ok((first, last))
            })
        })
        .collect();
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for producer in producers {
        let (f, l) = producer.await??;
        (first, last) = (first.min(f), last.max(l));
    }
    bar.reset();
    bar.set_message("ended");
    // Looking is cheap (from the first job not yet ended on); the ends themselves
    // are read once, after the last.
    let mut cursor = first;
    while let Some(unended) = app.first_unended_job(cursor, last).await? {
        cursor = unended;
        bar.set_position((cursor - first) as u64);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let ends = app.job_ends(first, last).await?;
    let mut memory = serde_json::Map::new();
    for (i, worker) in workers.iter_mut().enumerate() {
        memory.insert(
            format!("worker-{}", i + 1),
            json!(crate::cpu::peak_memory(worker.pid)),
        );
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
    let figures = Figures {
        jobs_per_s: (options.jobs as f64 / elapsed.as_secs_f64() * 10.0).round() / 10.0,
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
    };
    Ok((figures, failed, memory))
}

/// Celery 5 on the same RabbitMQ, as `crates/bench/src/peers/celery_peer.py` runs it.
struct Celery {
    broker: String,
    jobs: usize,
    workers: usize,
    producers: usize,
}

impl Celery {
    fn prepare(config: &Config, options: &Options) -> Result<Self, ConfigError> {
        let BrokerUrl::Amqp(nodes) = &config.broker.url else {
            return Err(ConfigError::new(
                "--peer",
                "celery needs RabbitMQ: set BAKERY_BROKER_URL to an amqp:// URL",
            ));
        };
        if options.kind != job_kind::NOOP {
            return Err(ConfigError::new("--peer", "celery runs noop jobs only"));
        }
        let importable = std::process::Command::new("python3")
            .args(["-c", "import celery"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !importable {
            return Err(ConfigError::new(
                "--peer",
                "celery is not installed (python3 -m pip install 'celery>=5,<6', or scripts/services.sh)",
            ));
        }
        Ok(Self {
            broker: nodes[0].clone(),
            jobs: options.jobs,
            workers: options.workers,
            producers: options.producers,
        })
    }

    /// One round: workers started, every task produced and run, workers stopped.
    async fn measure(&self, round: usize, report: &Path) -> anyhow::Result<Figures> {
        let dir = report.join(format!("celery-{}", round + 1));
        std::fs::create_dir_all(&dir)?;
        let script = dir.join("celery_peer.py");
        std::fs::write(&script, include_str!("peers/celery_peer.py"))?;
        let queue = format!(
            "bench.celery.{}.{}",
            std::process::id(),
            bakery_core::now_millis()
        );
        let command = |args: &[&str]| {
            let mut c = Command::new("python3");
            c.arg(&script)
                .args(args)
                .current_dir(&dir)
                .env("BENCH_BROKER", &self.broker)
                .env("BENCH_QUEUE", &queue)
                .env("BENCH_DIR", &dir)
                .stdin(Stdio::null())
                .process_group(0)
                .kill_on_drop(true);
            c
        };
        eprintln!("starting {} celery worker(s)", self.workers);
        let mut workers = Vec::new();
        for i in 1..=self.workers {
            let log = std::fs::File::create(dir.join(format!("worker-{i}.log")))?;
            let name = format!("bench-{i}-{round}@localhost");
            workers.push(
                command(&["worker", &name])
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()?,
            );
        }
        let outcome = self.produce(&dir, command).await;
        for worker in &mut workers {
            crate::stop_group(worker, nix::sys::signal::Signal::SIGTERM).await;
        }
        outcome
    }

    async fn produce(
        &self,
        dir: &Path,
        command: impl Fn(&[&str]) -> Command,
    ) -> anyhow::Result<Figures> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::read_dir(dir)?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("ready-"))
            .count()
            < self.workers
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the celery workers were not ready within 60 s (logs in {})",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (jobs, producers) = (self.jobs.to_string(), self.producers.to_string());
        let output = command(&["produce", &jobs, &producers])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await?;
        anyhow::ensure!(
            output.status.success(),
            "the celery producer failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        let figures: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("the celery producer printed {line:?}: {e}"))?;
        let of = |key: &str| figures[key].as_f64().unwrap_or(0.0);
        Ok(Figures {
            jobs_per_s: (of("jobs_per_s") * 10.0).round() / 10.0,
            p50_ms: of("p50_ms"),
            p99_ms: of("p99_ms"),
        })
    }
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
