//! The programs our parts are measured against, started by the bench itself in the
//! same lab (installed from Debian when missing): nginx and HAProxy as load
//! balancers in front of the same clones (`bench lb`), nginx serving the edge's page
//! as a file and Varnish caching it from the clones (`bench compare --peer`). Each
//! runs in the foreground in a process group of its own, within the same CPU budget
//! as ours when one is asked for.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bakery_config::ConfigError;
use tokio::process::{Child, Command};

use crate::topology::Lab;

/// The peers, by what they stand in for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    /// nginx as a load balancer in front of the clones.
    Nginx,
    /// HAProxy as a load balancer in front of the clones.
    HaProxy,
    /// nginx serving the edge's copy of the page as a static file: the fastest a
    /// page can be served, and never fresher than the copy.
    NginxStatic,
    /// Varnish caching the page from the clones (1 s TTL, 60 s grace): the classic
    /// shared cache in front of an application.
    Varnish,
}

/// What a peer serves from.
pub struct Site<'a> {
    /// The clones' addresses (`127.0.0.1:port`).
    pub clones: &'a [String],
    /// A page served as a file: its path and body (nginx-static).
    pub page: Option<(&'a str, &'a [u8])>,
}

impl PeerKind {
    /// `flag` as one of `allowed`; a clear error (exit 2) naming them otherwise.
    pub fn from_flag(flag: &str, allowed: &[Self]) -> Result<Self, ConfigError> {
        allowed
            .iter()
            .copied()
            .find(|k| k.name() == flag)
            .ok_or_else(|| {
                let names: Vec<_> = allowed.iter().map(|k| k.name()).collect();
                ConfigError::new("--peer", format!("expected {}", names.join(" or ")))
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
            Self::HaProxy => "haproxy",
            Self::NginxStatic => "nginx-static",
            Self::Varnish => "varnish",
        }
    }

    /// Where Debian puts it, and the packages that do.
    fn install(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Self::Nginx | Self::NginxStatic => (
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
            Self::Varnish => (
                &["/usr/sbin/varnishd", "/usr/local/sbin/varnishd"],
                &["varnish"],
            ),
        }
    }

    /// Its path, installing it from Debian when missing.
    pub async fn binary(self) -> anyhow::Result<PathBuf> {
        let (paths, packages) = self.install();
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

    /// Its configuration as such a program is set up in front of web clones
    /// (keep-alive to the clones, least connections, no access log), and the
    /// command that runs it in the foreground.
    fn command(
        self,
        binary: &Path,
        dir: &Path,
        addr: std::net::SocketAddr,
        site: &Site<'_>,
        workers: usize,
    ) -> anyhow::Result<Command> {
        let mut command = Command::new(binary);
        match self {
            Self::Nginx | Self::NginxStatic => {
                let servers: String = site
                    .clones
                    .iter()
                    .map(|a| format!("    server {a};\n"))
                    .collect();
                let location = match (self, site.page) {
                    (Self::NginxStatic, Some((path, body))) => {
                        let root = dir.join("root");
                        let file = root.join(path.trim_start_matches('/'));
                        std::fs::create_dir_all(file.parent().unwrap_or(&root))?;
                        std::fs::write(&file, body)?;
                        format!(
                            "    location / {{\n      root {};\n      default_type text/html;\n    }}\n",
                            root.display()
                        )
                    }
                    (Self::NginxStatic, None) => {
                        anyhow::bail!("nginx-static serves a page: none was given")
                    }
                    _ => "    location / {\n      proxy_pass http://web;\n      proxy_http_version 1.1;\n\
                          \x20     proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n\
                          \x20     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      proxy_set_header X-Request-Id $request_id;\n\
                          \x20     proxy_next_upstream error timeout;\n    }\n"
                        .to_string(),
                };
                // Workers as the operator (nginx ignores this unless started as
                // root), so they may read the lab's files.
                let user = nix::unistd::User::from_uid(nix::unistd::getuid())
                    .ok()
                    .flatten()
                    .map_or("nobody".to_string(), |u| u.name);
                let conf = format!(
                    "user {user};\nworker_processes {workers};\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
                     events {{ worker_connections 8192; }}\n\
                     http {{\n  access_log off;\n  upstream web {{\n    least_conn;\n{servers}    keepalive 256;\n  }}\n\
                     \x20 server {{\n    listen {addr};\n{location}  }}\n}}\n",
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
                let servers: String = site
                    .clones
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
            Self::Varnish => {
                std::fs::write(dir.join("default.vcl"), varnish_vcl(site.clones))?;
                // -F: in the foreground; -j none: no privilege separation (the bench
                // runs as the operator, its files are the operator's); a pool of
                // threads per core of its budget, as the others get workers.
                command
                    .arg("-F")
                    .args(["-j", "none"])
                    .arg("-n")
                    .arg(dir.join("work"))
                    .arg("-a")
                    .arg(addr.to_string())
                    .arg("-f")
                    .arg(dir.join("default.vcl"))
                    .args(["-s", "malloc,64m"])
                    .args(["-p", &format!("thread_pools={workers}")]);
            }
        }
        Ok(command)
    }

    /// The path that answers once it is ready (through to a clone, or its file).
    fn ready_path<'a>(self, site: &Site<'a>) -> &'a str {
        match (self, site.page) {
            (Self::NginxStatic | Self::Varnish, Some((path, _))) => path,
            _ => "/api/ping",
        }
    }

    /// Its graceful stop: QUIT for nginx's master and workers, USR1 for HAProxy,
    /// TERM for Varnish's manager (which stops its cache process).
    fn stop_signal(self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal;
        match self {
            Self::Nginx | Self::NginxStatic => Signal::SIGQUIT,
            Self::HaProxy => Signal::SIGUSR1,
            Self::Varnish => Signal::SIGTERM,
        }
    }
}

/// Varnish in front of the clones as it is usually set up for pages anyone may
/// see: round robin, requests with a session go through, answers cached 1 s and
/// served up to 60 s past that while a fresh copy is fetched (grace).
fn varnish_vcl(clones: &[String]) -> String {
    let mut backends = String::new();
    let mut adds = String::new();
    for (i, clone) in clones.iter().enumerate() {
        let (host, port) = clone.rsplit_once(':').unwrap_or((clone, "80"));
        backends.push_str(&format!(
            "backend web{i} {{ .host = \"{host}\"; .port = \"{port}\"; }}\n"
        ));
        adds.push_str(&format!("  web.add_backend(web{i});\n"));
    }
    format!(
        "vcl 4.1;\nimport directors;\n{backends}\
         sub vcl_init {{\n  new web = directors.round_robin();\n{adds}}}\n\
         sub vcl_recv {{\n  set req.backend_hint = web.backend();\n}}\n\
         sub vcl_backend_response {{\n  unset beresp.http.set-cookie;\n  set beresp.ttl = 1s;\n  set beresp.grace = 60s;\n}}\n"
    )
}

/// Workers (nginx's processes, HAProxy's threads, Varnish's thread pools, our
/// balancer's threads) for a CPU budget: one per core of it, or per core of the
/// machine without one.
pub fn workers(cpus: Option<f64>) -> usize {
    cpus.map_or(crate::cpu::cores(), f64::ceil).max(1.0) as usize
}

/// How long a peer may take to answer after its start.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// A peer running in the lab, in the foreground, in its own process group.
pub struct Peer {
    kind: PeerKind,
    child: Child,
    pub addr: std::net::SocketAddr,
    _group: Option<crate::cgroup::Group>,
}

impl Peer {
    pub async fn start(
        kind: PeerKind,
        lab: &Lab,
        site: &Site<'_>,
        cpus: Option<f64>,
    ) -> anyhow::Result<Self> {
        let binary = kind.binary().await?;
        let dir = lab.dir.join(kind.name());
        std::fs::create_dir_all(&dir)?;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut child = kind
            .command(&binary, &dir, addr, site, workers(cpus))?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let master = child.id().unwrap_or(0);
        let ready = async {
            let ready = bakery_supervisor::probe::Http::new()
                .wait_until(addr, kind.ready_path(site), READY_WITHIN, |status, _| {
                    status.is_success()
                })
                .await;
            anyhow::ensure!(
                ready,
                "{} did not answer within {READY_WITHIN:?} (see {})",
                kind.name(),
                dir.display()
            );
            Ok(match (&lab.budgets, cpus) {
                (Some(budgets), Some(cpus)) => {
                    let group = budgets.group(kind.name(), cpus)?;
                    for pid in family(master) {
                        group.add(pid)?;
                    }
                    Some(group)
                }
                _ => None,
            })
        };
        match ready.await {
            Ok(group) => Ok(Self {
                kind,
                child,
                addr,
                _group: group,
            }),
            Err(error) => {
                // Its whole group goes, not only its leader: nginx's workers outlive
                // a master killed alone.
                crate::stop_group(&mut child, kind.stop_signal()).await;
                Err(error)
            }
        }
    }

    /// Its processes: the master and its children (nginx's workers, Varnish's cache).
    pub fn pids(&self) -> Vec<u32> {
        family(self.child.id().unwrap_or(0))
    }

    pub async fn stop(mut self) {
        crate::stop_group(&mut self.child, self.kind.stop_signal()).await;
    }
}

/// A process and its children.
fn family(master: u32) -> Vec<u32> {
    std::iter::once(master).chain(children(master)).collect()
}

/// The processes whose parent is `pid`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_outside_the_allowed_ones_is_refused_naming_them() {
        let lb = [PeerKind::Nginx, PeerKind::HaProxy];
        assert_eq!(
            PeerKind::from_flag("haproxy", &lb).unwrap(),
            PeerKind::HaProxy
        );
        let err = PeerKind::from_flag("varnish", &lb).unwrap_err().to_string();
        assert!(
            err.contains("--peer") && err.contains("nginx or haproxy"),
            "{err}"
        );
    }

    #[test]
    fn varnish_balances_every_clone_and_caches_a_second_with_grace() {
        let vcl = varnish_vcl(&["127.0.0.1:4001".into(), "127.0.0.1:4002".into()]);
        assert!(vcl.contains("backend web1 { .host = \"127.0.0.1\"; .port = \"4002\"; }"));
        assert!(vcl.contains("web.add_backend(web0);") && vcl.contains("web.add_backend(web1);"));
        assert!(vcl.contains("beresp.ttl = 1s;") && vcl.contains("beresp.grace = 60s;"));
    }
}
