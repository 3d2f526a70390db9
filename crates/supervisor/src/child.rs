//! One child process: how it is started, how its address is learned, how it is stopped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The roles `up` starts, each the subcommand of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Lb,
    Web,
    Email,
    Push,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lb => "lb",
            Self::Web => "web",
            Self::Email => "email",
            Self::Push => "push",
            Self::Worker => "worker",
        }
    }

    /// The load balancer's pool this role serves in, if it is behind it.
    pub fn pool(self) -> Option<&'static str> {
        match self {
            Self::Web => Some("web"),
            Self::Push => Some("push"),
            Self::Lb | Self::Email | Self::Worker => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to run: `bakery <role> --listen <listen> --id <id> <args...>`.
#[derive(Clone, Debug)]
pub struct ChildSpec {
    pub role: Role,
    pub id: String,
    pub listen: String,
    pub args: Vec<String>,
}

/// How every child is launched: the same executable and configuration as `up`.
#[derive(Clone, Debug)]
pub struct Launcher {
    pub exe: PathBuf,
    pub config_file: Option<PathBuf>,
    pub env: Vec<(String, String)>,
}

pub struct Running {
    pub child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    /// The load balancer's admin address (`admin=` on its `listening` line).
    pub admin: Option<SocketAddr>,
}

/// The value of `key=` on a `listening` line, parsed.
fn field(line: &str, key: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key))
        .and_then(|a| a.parse().ok())
}

impl Launcher {
    /// Starts the child and reads its `listening ... addr=HOST:PORT` line.
    pub async fn start(&self, spec: &ChildSpec) -> anyhow::Result<Running> {
        let mut command = Command::new(&self.exe);
        if let Some(file) = &self.config_file {
            command.arg("--config").arg(file);
        }
        command
            .arg(spec.role.as_str())
            .args(["--listen", &spec.listen, "--id", &spec.id])
            .args(&spec.args)
            .envs(self.env.iter().cloned())
            .env("BAKERY_SUPERVISOR_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group: a terminal's Ctrl-C reaches only `up`, which
            // then stops the children in order.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", spec.id))?;
        let pid = child
            .id()
            .context("the child has a pid until it is waited for")?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let mut lines = BufReader::new(stdout).lines();
        let (addr, admin) = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("listening ")
                    && let Some(addr) = field(rest, "addr=")
                {
                    return Ok((addr, field(rest, "admin=")));
                }
            }
            bail!("{} exited before it listened", spec.id)
        })
        .await
        .with_context(|| format!("{} did not listen within 30 s", spec.id))??;
        // Keep draining its stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Running {
            child,
            pid,
            addr,
            admin,
        })
    }
}

impl Running {
    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(pid = self.pid, "did not stop in time; killing it");
            let _ = self.child.kill().await;
        }
    }
}
