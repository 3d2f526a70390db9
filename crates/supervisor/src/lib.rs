//! `bakery up`: starts the whole topology on this machine as separate processes
//! (the load balancer, the web clones, the email and the push service, the job
//! workers), prints one `started` line per process
//! and `ready http://ADDR` once everything answers its health check, replaces a
//! process that dies (with backoff, telling the load balancer about the new clone),
//! and stops everything on Ctrl-C or SIGTERM: the load balancer first, then the clones.
//!
//! The database is bootstrapped (`bakery_db::bootstrap`) before this starts; the
//! supervisor itself knows no store.
//!
//! Children also watch this process: if `up` is killed outright, they notice that
//! their parent is gone and shut themselves down (see the binary's `shutdown` module).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bakery_config::ConfigError;
use http::Method;
use tokio_util::sync::CancellationToken;

pub mod child;
pub mod probe;

use child::{ChildSpec, Launcher, Role, Running};
use probe::Http;

/// `bakery up`'s own options.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub listen: String,
    pub clones: usize,
    pub workers: usize,
    pub config_file: Option<PathBuf>,
}

/// The path prefix the load balancer sends to the push pool (the event streams).
/// The load balancer's route of the notification streams to the push pool.
pub const PUSH_ROUTE: &str = "/api/notifications/=push";

/// Longest a child may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Longest a fresh child may take to answer its health check.
const READY_LIMIT: Duration = Duration::from_secs(30);

struct Supervisor {
    launcher: Launcher,
    http: Http,
    admin_token: String,
    /// The live members of the load balancer's pools, by id (pool, address): what a
    /// restarted load balancer is told.
    members: Mutex<BTreeMap<String, (&'static str, SocketAddr)>>,
    /// Where the load balancer's admin API answers (its admin listener).
    lb_addr: Mutex<Option<SocketAddr>>,
}

/// Starts everything, and supervises until `shutdown` resolves.
pub async fn run(options: UpOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if options.clones == 0 {
        return Err(ConfigError::new("--clones", "at least one web clone is needed").into());
    }

    let admin_token = format!("{:032x}", rand::random::<u128>());
    let supervisor = Arc::new(Supervisor {
        launcher: Launcher {
            exe: std::env::current_exe().context("cannot find the bakery executable")?,
            config_file: options.config_file.clone(),
            env: vec![("BAKERY_LB_ADMIN_TOKEN".to_string(), admin_token.clone())],
        },
        http: Http::new(),
        admin_token,
        members: Mutex::new(BTreeMap::new()),
        lb_addr: Mutex::new(None),
    });

    // Clones and services first, so the load balancer starts with members to send to.
    let mut started: Vec<(ChildSpec, Running)> = Vec::new();
    let spec = |role: Role, id: String| ChildSpec {
        role,
        id,
        listen: "127.0.0.1:0".into(),
        args: vec![],
    };
    let specs: Vec<ChildSpec> = (1..=options.clones)
        .map(|i| spec(Role::Web, format!("web-{i}")))
        .chain([
            spec(Role::Push, "push-1".into()),
            spec(Role::Email, "email-1".into()),
        ])
        .chain((1..=options.workers).map(|i| spec(Role::Worker, format!("worker-{i}"))))
        .collect();
    let launched =
        futures::future::join_all(specs.iter().map(|spec| supervisor.start_ready(spec))).await;
    for (spec, running) in specs.into_iter().zip(launched) {
        let running = running?;
        if let Some(pool) = spec.role.pool() {
            supervisor
                .lock_members()
                .insert(spec.id.clone(), (pool, running.addr));
        }
        started.push((spec, running));
    }
    let lb_spec = ChildSpec {
        role: Role::Lb,
        id: "lb-1".into(),
        listen: options.listen.clone(),
        args: vec![],
    };
    let lb = supervisor.start_ready(&lb_spec).await?;
    for (spec, running) in
        std::iter::once((&lb_spec, &lb)).chain(started.iter().map(|(s, r)| (s, r)))
    {
        announce(spec, running);
    }
    println!("ready http://{}", lb.addr);

    // Stopped in steps: the services first (the push service ends its open event
    // streams, which would otherwise hold the load balancer's drain open), then the
    // load balancer (no new requests), then the web clones (in-flight ones finish).
    let stop_services = CancellationToken::new();
    let stop_lb = CancellationToken::new();
    let stop_web = CancellationToken::new();
    let lb_keeper = tokio::spawn(supervisor.clone().keep(lb_spec, lb, stop_lb.clone()));
    let (mut service_keepers, mut web_keepers) = (Vec::new(), Vec::new());
    for (spec, running) in started {
        if spec.role == Role::Web {
            web_keepers.push(tokio::spawn(supervisor.clone().keep(
                spec,
                running,
                stop_web.clone(),
            )));
        } else {
            service_keepers.push(tokio::spawn(supervisor.clone().keep(
                spec,
                running,
                stop_services.clone(),
            )));
        }
    }

    shutdown.await;
    println!("stopping");
    for (token, keepers) in [
        (stop_services, service_keepers),
        (stop_lb, vec![lb_keeper]),
        (stop_web, web_keepers),
    ] {
        token.cancel();
        for keeper in keepers {
            let _ = keeper.await;
        }
    }
    println!("stopped");
    Ok(())
}

fn announce(spec: &ChildSpec, running: &Running) {
    // The load balancer's admin address too: its metrics and members are there only.
    let admin = running
        .admin
        .map(|admin| format!(" admin={admin}"))
        .unwrap_or_default();
    println!(
        "started role={} id={} pid={} addr={}{admin}",
        spec.role, spec.id, running.pid, running.addr
    );
}

impl Supervisor {
    fn lock_members(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, (&'static str, SocketAddr)>> {
        self.members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a child and waits until it is ready: a service answers `/healthz`;
    /// the load balancer answers and sees every member of its pools healthy.
    async fn start_ready(&self, spec: &ChildSpec) -> anyhow::Result<Running> {
        let mut spec = spec.clone();
        if spec.role == Role::Lb {
            spec.args = self
                .lock_members()
                .iter()
                .flat_map(|(id, (pool, addr))| {
                    ["--backend".to_string(), format!("{pool}={id}@{addr}")]
                })
                .chain(["--route".to_string(), PUSH_ROUTE.to_string()])
                .collect();
        }
        let mut running = self.launcher.start(&spec).await?;
        let ready = if spec.role == Role::Lb {
            let expected: Vec<(&str, usize)> = ["web", "push"]
                .into_iter()
                .map(|pool| {
                    let members = self
                        .lock_members()
                        .values()
                        .filter(|(p, _)| *p == pool)
                        .count();
                    (pool, members)
                })
                .collect();
            let admin = running.admin.unwrap_or(running.addr);
            self.http
                .wait_until(admin, "/lb/backends", READY_LIMIT, |status, body| {
                    status.is_success()
                        && expected
                            .iter()
                            .all(|(pool, n)| healthy_members(body, pool) >= *n)
                })
                .await
        } else {
            self.http
                .wait_until(running.addr, "/healthz", READY_LIMIT, |status, _| {
                    status.is_success()
                })
                .await
        };
        if !ready {
            running.stop(Duration::from_secs(1)).await;
            bail!(
                "{} did not become healthy within {} s",
                spec.id,
                READY_LIMIT.as_secs()
            );
        }
        if spec.role == Role::Lb {
            *self.lb_addr.lock().unwrap_or_else(|p| p.into_inner()) = running.admin;
        }
        Ok(running)
    }

    /// Watches one child until `stop`; replaces it with backoff whenever it dies.
    async fn keep(self: Arc<Self>, spec: ChildSpec, mut running: Running, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(500);
        let mut since = Instant::now();
        loop {
            let status = tokio::select! {
                status = running.child.wait() => status,
                () = stop.cancelled() => {
                    running.stop(STOP_GRACE).await;
                    return;
                }
            };
            let how = status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string());
            println!(
                "restarted role={} id={} old_pid={} reason=\"{how}\"",
                spec.role, spec.id, running.pid
            );
            if since.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(500);
            }
            running = loop {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                match self.start_ready(&spec).await {
                    Ok(fresh) => break fresh,
                    Err(error) => {
                        tracing::error!(id = %spec.id, error = format!("{error:#}"), "restart failed; backing off")
                    }
                }
            };
            since = Instant::now();
            if let Some(pool) = spec.role.pool() {
                self.lock_members()
                    .insert(spec.id.clone(), (pool, running.addr));
                self.register(pool, &spec.id, running.addr).await;
            }
            announce(&spec, &running);
        }
    }

    /// Tells the load balancer where a (re)started member of `pool` now listens.
    async fn register(&self, pool: &str, id: &str, addr: SocketAddr) {
        let Some(lb) = *self.lb_addr.lock().unwrap_or_else(|p| p.into_inner()) else {
            return;
        };
        let body = serde_json::json!({ "addr": addr.to_string() }).to_string();
        let answer = self
            .http
            .call(
                Method::PUT,
                lb,
                &format!("/lb/backends/{pool}/{id}"),
                Some(&self.admin_token),
                Some(body),
            )
            .await;
        if !answer.is_some_and(|(status, _)| status.is_success()) {
            tracing::warn!(id, %addr, "could not register the member with the load balancer");
        }
    }
}

/// Counts the healthy members of `pool` in a `/lb/backends` answer.
fn healthy_members(body: &[u8], pool: &str) -> usize {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return 0;
    };
    value["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == pool)
        .flat_map(|p| p["backends"].as_array().into_iter().flatten())
        .filter(|b| b["healthy"] == true)
        .count()
}
