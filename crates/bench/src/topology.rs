//! The system under test, started by the bench itself: a load balancer in front
//! of N web clones (`bakery lb`, `bakery web`), each optionally in a CPU budget of
//! its own, all on one deployment of the lab (its own data directory, so a run
//! never touches the operator's data; databases and stores named in the
//! environment are used as they are).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bakery_config::Config;
use bakery_supervisor::child::{ChildSpec, Launcher, Role, Running};

use crate::cgroup::{Budgets, Group};

/// What every topology of one bench run shares.
pub struct Lab {
    pub launcher: Launcher,
    /// The lab deployment's configuration (as its processes see it).
    pub config: Config,
    pub budgets: Option<Budgets>,
    /// The run's report folder.
    pub dir: PathBuf,
}

impl Lab {
    /// A lab writing its report under `$BAKERY_DATA_DIR/bench/<name>-<time>/`,
    /// its embedded stores in `data/` there; `budgets` when CPU shares are asked for.
    pub async fn open(
        config_file: Option<PathBuf>,
        config: &Config,
        name: &str,
        budgets: bool,
    ) -> anyhow::Result<Self> {
        let dir = crate::report_dir(config, name)?;
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        let env = vec![
            ("BAKERY_DATA_DIR".to_string(), data.display().to_string()),
            ("BAKERY_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
            crate::quiet_log(),
        ];
        let lab_config = Config::from_layers(
            config_file.as_deref(),
            std::env::vars().chain(env.iter().cloned()),
        )?;
        bakery_db::bootstrap(&lab_config, true).await?;
        let budgets = if budgets {
            Some(Budgets::open()?)
        } else {
            None
        };
        Ok(Self {
            launcher: Launcher {
                exe: std::env::current_exe()?,
                config_file,
                env,
            },
            config: lab_config,
            budgets,
            dir,
        })
    }
}

impl Lab {
    /// A worker of the lab, until stopped (renders pages, keeps documents).
    pub async fn start_worker(&self) -> anyhow::Result<Running> {
        self.launcher
            .start(&ChildSpec {
                role: Role::Worker,
                id: "bench-worker".into(),
                listen: "127.0.0.1:0".into(),
                args: vec![],
            })
            .await
    }
}

/// The lab's admin (its own deployment, so its own password).
pub const ADMIN_PASSWORD: &str = "bench-admin-password";

/// How many clones, and what CPU each part gets (`None`: no budget).
#[derive(Clone, Debug, Default)]
pub struct Shape {
    pub clones: usize,
    pub cpu_per_clone: Option<f64>,
    pub cpu_lb: Option<f64>,
    /// More environment for the clones (e.g. `BAKERY_CACHE_URL=none`).
    pub clone_env: Vec<(String, String)>,
    /// A push process already started, which the load balancer routes the
    /// notification streams to.
    pub push: Option<SocketAddr>,
}

pub struct Topology {
    pub lb: Running,
    pub clones: Vec<Running>,
    _groups: Vec<Group>,
}

impl Topology {
    pub async fn start(lab: &Lab, shape: &Shape) -> anyhow::Result<Self> {
        let mut groups = Vec::new();
        let mut clones = Vec::new();
        let mut launcher = lab.launcher.clone();
        launcher.env.extend(shape.clone_env.iter().cloned());
        if let Some(cpus) = shape.cpu_per_clone {
            // As many runtime threads as cores it may use: more only wake to wait.
            launcher.env.push((
                "BAKERY_RUNTIME_THREADS".into(),
                (cpus.ceil() as usize).max(1).to_string(),
            ));
        }
        for i in 1..=shape.clones {
            let spec = ChildSpec {
                role: Role::Web,
                id: format!("web-{i}"),
                listen: "127.0.0.1:0".into(),
                args: vec![],
            };
            let clone = launcher.start(&spec).await?;
            if let (Some(budgets), Some(cpus)) = (&lab.budgets, shape.cpu_per_clone) {
                let group = budgets.group(&spec.id, cpus)?;
                group.add(clone.pid)?;
                groups.push(group);
                if cpus <= 1.0 {
                    // A small machine of its own has one core: clone i on core i.
                    crate::cgroup::pin(clone.pid, i - 1);
                }
            }
            clones.push(clone);
        }
        let mut args = vec![];
        for (clone, i) in clones.iter().zip(1..) {
            args.push("--backend".to_string());
            args.push(format!("web=web-{i}@{}", clone.addr));
        }
        if let Some(push) = shape.push {
            args.extend([
                "--backend".to_string(),
                format!("push=push-1@{push}"),
                "--route".to_string(),
                bakery_supervisor::PUSH_ROUTE.to_string(),
            ]);
        }
        let lb = lab
            .launcher
            .start(&ChildSpec {
                role: Role::Lb,
                id: "lb-1".into(),
                listen: "127.0.0.1:0".into(),
                args,
            })
            .await?;
        if let (Some(budgets), Some(cpus)) = (&lab.budgets, shape.cpu_lb) {
            let group = budgets.group("lb-1", cpus)?;
            group.add(lb.pid)?;
            groups.push(group);
        }
        let topology = Self {
            lb,
            clones,
            _groups: groups,
        };
        topology.wait_healthy().await?;
        // A person can watch the run: the lab's clones serve /ops like any others.
        eprintln!(
            "watch it live: http://{}/ops (log in as admin, password {ADMIN_PASSWORD})",
            topology.addr()
        );
        Ok(topology)
    }

    pub fn addr(&self) -> SocketAddr {
        self.lb.addr
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.lb.addr)
    }

    /// Each process's peak memory so far, in bytes, by id (`lb-1`, `web-1`, ...).
    pub fn peak_memory(&self) -> serde_json::Map<String, serde_json::Value> {
        std::iter::once(("lb-1".to_string(), self.lb.pid))
            .chain(
                self.clones
                    .iter()
                    .enumerate()
                    .map(|(i, clone)| (format!("web-{}", i + 1), clone.pid)),
            )
            .map(|(id, pid)| (id, serde_json::json!(crate::cpu::peak_memory(pid))))
            .collect()
    }

    pub fn clone_pids(&self) -> Vec<u32> {
        self.clones.iter().map(|c| c.pid).collect()
    }

    /// The clones' addresses, as a peer in front of them is given them.
    pub fn clone_addrs(&self) -> Vec<String> {
        self.clones.iter().map(|c| c.addr.to_string()).collect()
    }

    /// Until the load balancer counts every clone healthy.
    async fn wait_healthy(&self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let admin = self.lb.admin.unwrap_or(self.lb.addr);
        let url = format!("http://{admin}/lb/backends");
        for _ in 0..150 {
            if let Ok(answer) = http.get(&url).send().await
                && let Ok(body) = answer.json::<serde_json::Value>().await
            {
                let healthy = body["pools"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["name"] == "web")
                    .flat_map(|p| p["backends"].as_array().cloned().unwrap_or_default())
                    .filter(|b| b["healthy"] == true)
                    .count();
                if healthy == self.clones.len() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the load balancer did not see its clones healthy within 15 s")
    }

    /// Stops the load balancer, then the clones.
    pub async fn stop(mut self) {
        self.lb.stop(Duration::from_secs(10)).await;
        for clone in &mut self.clones {
            clone.stop(Duration::from_secs(10)).await;
        }
    }
}

/// Logs `username` in through `base`; the `bakery_session=...` cookie pair.
pub async fn log_in(base: &str, username: &str, password: &str) -> anyhow::Result<String> {
    let answer = reqwest::Client::new()
        .post(format!("{base}/api/session"))
        .json(&serde_json::json!({"username": username, "password": password}))
        .send()
        .await?;
    anyhow::ensure!(
        answer.status().is_success(),
        "logging {username} in: {}",
        answer.status()
    );
    answer
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("bakery_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
        .context("a login sets bakery_session")
}
