//! `bakery bench lb [--peer nginx|haproxy] --connections 16,64,256 [--cpu-lb C]`:
//! our load balancer against a peer (nginx or HAProxy, installed from Debian when
//! missing), in front of the same clones, on the same scenario (`ping` by default:
//! the cheapest proxied route, so the balancer's own cost shows). Rounds alternate
//! which goes first; with `--cpu-lb` both get the same CPU budget and as many
//! workers (nginx's processes, HAProxy's threads, our threads) as its cores.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bakery_config::{Config, ConfigError};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::ab::{self, Contender};
use crate::html;
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
    /// ping, product, product-uncached, product-page, edge, rsvp or browse.
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
    let kind = PeerKind::from_flag(&options.peer)?;
    let binary = kind.binary().await?;
    let mut lab = Lab::open(
        options.config_file.clone(),
        config,
        &format!("lb-{}", scenario.name()),
        options.cpu_lb.is_some(),
    )
    .await?;
    // Ours gets as many worker threads as nginx gets worker processes.
    let workers = options
        .cpu_lb
        .map_or(crate::cpu::cores(), |c| c.ceil())
        .max(1.0) as usize;
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
    let clone_addrs: Vec<String> = ours.clones.iter().map(|c| c.addr.to_string()).collect();
    let theirs = Peer::start(kind, &binary, &lab, &clone_addrs, workers, options.cpu_lb).await?;
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
            pids: family(theirs.child.id().unwrap_or(0)),
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
        &format!("bench lb — ours against nginx, {}", scenario.name()),
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

/// The balancers ours is measured against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerKind {
    Nginx,
    HaProxy,
}

impl PeerKind {
    fn from_flag(flag: &str) -> Result<Self, ConfigError> {
        match flag {
            "nginx" => Ok(Self::Nginx),
            "haproxy" => Ok(Self::HaProxy),
            _ => Err(ConfigError::new("--peer", "expected nginx or haproxy")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
            Self::HaProxy => "haproxy",
        }
    }

    /// Its path, installing it from Debian when missing.
    async fn binary(self) -> anyhow::Result<PathBuf> {
        let (paths, packages): (&[&str], &[&str]) = match self {
            Self::Nginx => (
                &["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"],
                &["nginx-light", "nginx"],
            ),
            Self::HaProxy => (
                &[
                    "/usr/sbin/haproxy",
                    "/usr/local/sbin/haproxy",
                    "/usr/bin/haproxy",
                ],
                &["haproxy"],
            ),
        };
        let find = || paths.iter().map(PathBuf::from).find(|p| p.exists());
        if let Some(path) = find() {
            return Ok(path);
        }
        eprintln!("installing {} (Debian) for the comparison", self.name());
        let _ = Command::new("apt-get")
            .args(["update", "-qq"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        for package in packages {
            let _ = Command::new("apt-get")
                .args(["install", "-y", "-qq", package])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            if let Some(path) = find() {
                return Ok(path);
            }
        }
        Err(ConfigError::new(
            self.name(),
            "not installed and apt-get could not install it",
        )
        .into())
    }

    /// Its configuration as a load balancer should be set up (keep-alive to the
    /// clones, least connections, no access log), and the command that runs it in
    /// the foreground.
    fn command(
        self,
        binary: &Path,
        dir: &Path,
        addr: std::net::SocketAddr,
        clones: &[String],
        workers: usize,
    ) -> anyhow::Result<Command> {
        let mut command = Command::new(binary);
        match self {
            Self::Nginx => {
                let servers: String = clones
                    .iter()
                    .map(|a| format!("    server {a};\n"))
                    .collect();
                let conf = format!(
                    "worker_processes {workers};\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
                     events {{ worker_connections 8192; }}\n\
                     http {{\n  access_log off;\n  upstream web {{\n    least_conn;\n{servers}    keepalive 256;\n  }}\n\
                     \x20 server {{\n    listen {addr};\n    location / {{\n      proxy_pass http://web;\n      proxy_http_version 1.1;\n\
                     \x20     proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n\
                     \x20     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      proxy_set_header X-Request-Id $request_id;\n\
                     \x20     proxy_next_upstream error timeout;\n    }}\n  }}\n}}\n",
                    dir = dir.display()
                );
                let conf_path = dir.join("nginx.conf");
                std::fs::write(&conf_path, conf)?;
                command
                    .arg("-c")
                    .arg(&conf_path)
                    .arg("-p")
                    .arg(dir)
                    .arg("-e")
                    .arg(dir.join("error.log"));
            }
            Self::HaProxy => {
                let servers: String = clones
                    .iter()
                    .enumerate()
                    .map(|(i, a)| format!("  server web{} {a}\n", i + 1))
                    .collect();
                // Threads as nginx has processes, and as many connections as one of
                // nginx's workers (HAProxy wants two descriptors for each, within the
                // machine's limit); keep-alive both ways and idle
                // connections to the clones shared by every client (`http-reuse
                // always`), as HAProxy is run in front of web clones.
                let conf = format!(
                    "global\n  nbthread {workers}\n  maxconn 8192\n\
                     defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
                     \x20 option http-keep-alive\n  option forwardfor\n  http-reuse always\n\
                     frontend front\n  bind {addr}\n  default_backend web\n\
                     backend web\n  balance leastconn\n{servers}"
                );
                let conf_path = dir.join("haproxy.cfg");
                std::fs::write(&conf_path, conf)?;
                // -db: in the foreground, no daemon; -W would fork a master.
                command.arg("-f").arg(&conf_path).arg("-db");
            }
        }
        Ok(command)
    }
}

/// The peer in front of the same clones, in the foreground, in its own process group.
struct Peer {
    kind: PeerKind,
    child: Child,
    addr: std::net::SocketAddr,
    _group: Option<crate::cgroup::Group>,
}

impl Peer {
    async fn start(
        kind: PeerKind,
        binary: &Path,
        lab: &Lab,
        clones: &[String],
        workers: usize,
        cpus: Option<f64>,
    ) -> anyhow::Result<Self> {
        let dir = lab.dir.join(kind.name());
        std::fs::create_dir_all(&dir)?;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = kind
            .command(binary, &dir, addr, clones, workers)?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let master = child.id().unwrap_or(0);
        // Ready when it answers through to a clone.
        let http = reqwest::Client::new();
        let mut ready = false;
        for _ in 0..100 {
            if http
                .get(format!("http://{addr}/api/ping"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::ensure!(
            ready,
            "{} did not answer within 10 s (see {})",
            kind.name(),
            dir.display()
        );
        let group = match (&lab.budgets, cpus) {
            (Some(budgets), Some(cpus)) => {
                let group = budgets.group(kind.name(), cpus)?;
                for pid in family(master) {
                    group.add(pid)?;
                }
                Some(group)
            }
            _ => None,
        };
        Ok(Self {
            kind,
            child,
            addr,
            _group: group,
        })
    }

    async fn stop(mut self) {
        // QUIT: nginx's graceful stop of its master and workers; USR1: HAProxy's.
        let signal = match self.kind {
            PeerKind::Nginx => nix::sys::signal::Signal::SIGQUIT,
            PeerKind::HaProxy => nix::sys::signal::Signal::SIGUSR1,
        };
        crate::stop_group(&mut self.child, signal).await;
    }
}

/// The peer's process and its children (nginx's workers).
fn family(master: u32) -> Vec<u32> {
    std::iter::once(master).chain(children(master)).collect()
}

/// The processes whose parent is `pid` (nginx's workers).
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(pid)
        })
        .collect()
}
