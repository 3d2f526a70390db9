//! `bakery bench push --streams N [--users U]`: one push process behind the load
//! balancer (and one clone for the writes), N notification streams opened through
//! the balancer by U users in turn, then one RSVP by each user: how long each stream
//! took to carry its user's `rsvp.created` from the moment the RSVP was sent (p50,
//! p99, the last), how many streams opened and got it, and what the open streams
//! cost the push process in resident memory, per stream.
//!
//! The per-user stream cap (`BAKERY_PUSH_MAX_STREAMS_PER_USER`) and the balancer's
//! per-client connection cap are lifted for the lab's processes: every stream comes
//! from this one address.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bakery_config::{Config, ConfigError};
use bakery_supervisor::child::{ChildSpec, Role};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::sync::{Semaphore, watch};

use crate::topology::{Lab, Shape, Topology};
use crate::{cpu, percentile, scenarios, write_result};

/// `bakery bench push`'s flags.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Notification streams opened through the load balancer.
    #[arg(long, default_value_t = 1_000)]
    pub streams: usize,
    /// Users the streams belong to, in turn; each RSVPs once.
    #[arg(long, default_value_t = 1)]
    pub users: usize,
    /// The `--config` file the bench's processes are started with.
    #[arg(skip)]
    pub config_file: Option<PathBuf>,
}

/// Streams being opened at once (each a TCP connect and a session check).
const OPENING_AT_ONCE: usize = 128;
/// How long the streams may take to open, and the events to arrive.
const OPEN_LIMIT: Duration = Duration::from_secs(180);
const DELIVERY_LIMIT: Duration = Duration::from_secs(30);

pub async fn run(config: &Config, options: Options) -> anyhow::Result<()> {
    if options.streams == 0 || options.users == 0 || options.users > options.streams {
        return Err(ConfigError::new(
            "--streams",
            "--streams and --users at least 1, and no more users than streams",
        )
        .into());
    }
    let files = raise_open_files(options.streams);
    let mut lab = Lab::open(options.config_file.clone(), config, "push", false).await?;
    lab.launcher.env.extend([
        (
            "BAKERY_PUSH_MAX_STREAMS_PER_USER".to_string(),
            options.streams.to_string(),
        ),
        (
            "BAKERY_LB_MAX_CONNECTIONS_PER_CLIENT".to_string(),
            (options.streams + 1024).to_string(),
        ),
    ]);
    let mut push = lab
        .launcher
        .start(&ChildSpec {
            role: Role::Push,
            id: "push-1".into(),
            listen: "127.0.0.1:0".into(),
            args: vec![],
        })
        .await?;
    let topology = Topology::start(
        &lab,
        &Shape {
            clones: 1,
            push: Some(push.addr),
            ..Shape::default()
        },
    )
    .await;
    let topology = match topology {
        Ok(topology) => topology,
        Err(error) => {
            push.stop(Duration::from_secs(10)).await;
            return Err(error);
        }
    };
    let outcome = measure(&lab, &topology, push.pid, &options, files).await;
    topology.stop().await;
    push.stop(Duration::from_secs(10)).await;
    let result = outcome?;
    write_result(&lab.dir, &result)
}

/// Raises the open-files limit the lab's processes inherit towards what `streams`
/// need (each stream is a socket here and one at the load balancer, which reaches
/// the push process over a few HTTP/2 connections); beyond the hard limit only a
/// process allowed to raise it may go. The limit in force.
fn raise_open_files(streams: usize) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let needed = streams as u64 + 4096;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    if soft >= needed {
        return soft;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, needed, hard.max(needed)).is_ok() {
        return needed;
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    eprintln!(
        "{streams} streams need {needed} open files at the load balancer, and processes here may have {hard}: some will not open (raise `ulimit -Hn` for all)"
    );
    hard
}

/// Clients on loopback addresses of their own (127.0.0.2, .3, ...), as many as keep
/// each address under the load balancer's per-address cap (a quarter of its open
/// files), so the cap meant for one client does not stop the run.
fn clients(streams: usize, files: u64) -> anyhow::Result<Vec<reqwest::Client>> {
    let per_address = ((files / 4) as usize).saturating_sub(64).max(1);
    let addresses = streams.div_ceil(per_address).clamp(1, 250);
    (0..addresses)
        .map(|i| {
            let local = std::net::Ipv4Addr::new(127, 0, 0, 2 + i as u8);
            Ok(reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .local_address(std::net::IpAddr::V4(local))
                .build()?)
        })
        .collect()
}

/// One stream's end of the run: when its user's event arrived, if it did, and the
/// stream, still open (closed once every stream is done: streams closing while
/// others still wait for their event would be work the measurement counts).
type Arrival = Option<(Instant, reqwest::Response)>;

async fn measure(
    lab: &Lab,
    topology: &Topology,
    push_pid: u32,
    options: &Options,
    files: u64,
) -> anyhow::Result<serde_json::Value> {
    let base = topology.base();
    let mut cookies = Vec::with_capacity(options.users);
    for i in 0..options.users {
        cookies.push(scenarios::user(&base, &format!("bench-streamer-{i}")).await?);
    }
    let event = scenarios::big_event(lab).await?;
    // Let the push process settle before its memory is taken as the idle figure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = cpu::resident_memory(push_pid);

    // The balancer holds a descriptor per stream: beyond its limit, asking for more
    // would only starve it (and every other request) of descriptors.
    let room = (files as usize).saturating_sub(512).max(options.users);
    let asked = options.streams.min(room);
    if asked < options.streams {
        eprintln!(
            "opening {asked} of {} streams: what the load balancer's {files} open files hold",
            options.streams
        );
    }
    let bar = ProgressBar::new(asked as u64).with_style(
        ProgressStyle::with_template("{msg:>9} [{bar:40}] {pos}/{len} ({per_sec}, {elapsed})")?
            .progress_chars("=> "),
    );
    bar.set_message("opened");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let streamers = clients(asked, files)?;
    let opened = Arc::new(AtomicUsize::new(0));
    let gave_up = Arc::new(AtomicUsize::new(0));
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let (go, _) = watch::channel(false);
    let mut streams = Vec::with_capacity(asked);
    for i in 0..asked {
        let cookie = cookies[i % options.users].clone();
        let (http, url) = (
            streamers[i % streamers.len()].clone(),
            format!("{base}/api/notifications/stream"),
        );
        let (opened, gave_up, opening) = (opened.clone(), gave_up.clone(), opening.clone());
        let (bar, mut go) = (bar.clone(), go.subscribe());
        streams.push(tokio::spawn(async move {
            let Some(body) = open(&http, &url, &cookie, &opening).await else {
                gave_up.fetch_add(1, Ordering::AcqRel);
                return None;
            };
            opened.fetch_add(1, Ordering::AcqRel);
            bar.inc(1);
            // Nothing is timed before every stream is open and the RSVPs are sent.
            go.wait_for(|go| *go).await.ok()?;
            arrival(body).await
        }));
    }
    // Until every stream is open or has given up (or the time is out).
    let deadline = Instant::now() + OPEN_LIMIT;
    while opened.load(Ordering::Acquire) + gave_up.load(Ordering::Acquire) < asked
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    let open = opened.load(Ordering::Acquire);
    eprintln!("{open} of {} streams open", options.streams);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_streams = cpu::resident_memory(push_pid);
    let per_stream = with_streams.saturating_sub(idle) / open.max(1) as u64;

    // One RSVP per user, all at once; each stream's latency counts from its user's.
    // Sent to the clone itself: what is measured is the way back, through the push
    // process and the balancer; a balancer holding thousands of streams at its
    // descriptor limit would measure its accept queue instead.
    let clone = format!("http://{}", topology.clones[0].addr);
    let _ = go.send(true);
    let mut sent = Vec::with_capacity(options.users);
    let rsvps: Vec<_> = cookies
        .iter()
        .map(|cookie| {
            let (http, url) = (http.clone(), format!("{clone}/api/events/{event}/rsvp"));
            let cookie = cookie.clone();
            tokio::spawn(async move {
                let at = Instant::now();
                let answer = http.post(url).header("cookie", cookie).send().await?;
                anyhow::ensure!(
                    answer.status().is_success(),
                    "an RSVP was answered {}",
                    answer.status()
                );
                anyhow::Ok(at)
            })
        })
        .collect();
    for rsvp in rsvps {
        sent.push(rsvp.await??);
    }
    let deadline = tokio::time::Instant::now() + DELIVERY_LIMIT;
    let mut latencies = Vec::with_capacity(open);
    let mut done = Vec::with_capacity(open);
    for (i, stream) in streams.into_iter().enumerate() {
        let arrival = tokio::time::timeout_at(deadline, stream).await;
        if let Ok(Ok(Some((at, body)))) = arrival {
            let from = sent[i % options.users];
            latencies.push(at.saturating_duration_since(from).as_secs_f64() * 1000.0);
            done.push(body);
        }
    }
    drop(done);
    latencies.sort_by(f64::total_cmp);
    let delivered = latencies.len();
    let max = latencies.last().copied().unwrap_or(0.0);
    eprintln!(
        "{delivered} of {open} streams had their event: p50 {:.0} ms, p99 {:.0} ms, last {max:.0} ms; the push process {:.1} MB idle, {:.1} MB with the streams open: {:.1} KB a stream",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        idle as f64 / 1e6,
        with_streams as f64 / 1e6,
        per_stream as f64 / 1e3,
    );
    let mut peaks = topology.peak_memory();
    peaks.insert("push-1".into(), json!(cpu::peak_memory(push_pid)));
    Ok(json!({
        "scenario": "push",
        "streams": options.streams,
        "users": options.users,
        "opened": open,
        "delivered": delivered,
        "p50_ms": percentile(&latencies, 50.0),
        "p99_ms": percentile(&latencies, 99.0),
        "max_ms": max,
        "push_rss_idle_bytes": idle,
        "push_rss_open_bytes": with_streams,
        "push_rss_bytes_per_stream": per_stream,
        "peak_rss_bytes": peaks,
    }))
}

/// Opens one stream (again, should the balancer not route it yet, up to 50 tries),
/// taking a turn among the streams being opened; the open body once its first bytes
/// (the `: connected` comment) came.
async fn open(
    http: &reqwest::Client,
    url: &str,
    cookie: &str,
    opening: &Semaphore,
) -> Option<(reqwest::Response, String)> {
    let _turn = opening.acquire().await.ok()?;
    for _ in 0..50 {
        let answer = http
            .get(url)
            .header("cookie", cookie)
            .header("accept", "text/event-stream")
            .send()
            .await;
        if let Ok(mut body) = answer
            && body.status().is_success()
        {
            let first = body.chunk().await.ok()??;
            return Some((body, String::from_utf8_lossy(&first).into_owned()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// When `rsvp.created` came on an open stream (`seen`: what it carried so far).
async fn arrival((mut body, mut seen): (reqwest::Response, String)) -> Arrival {
    loop {
        if seen.contains("event: rsvp.created") || seen.contains("event:rsvp.created") {
            return Some((Instant::now(), body));
        }
        // Only the tail can still be part of a line that has not ended.
        if seen.len() > 4096 {
            let mut cut = seen.len() - 64;
            while !seen.is_char_boundary(cut) {
                cut -= 1;
            }
            seen.drain(..cut);
        }
        let chunk = body.chunk().await.ok()??;
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}
