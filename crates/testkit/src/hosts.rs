//! Several hosts on one machine for a test: the deployment of `deploy/` built by
//! `scripts/hosts.sh` as network namespaces, its stores started, its roles started
//! as the units say — and everything removed on drop, also when the test fails.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{TempDir, bin};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn script() -> PathBuf {
    workspace().join("scripts/hosts.sh")
}

/// The lines of a file of `deploy/` that say something (no blank line, no comment).
fn deploy_lines(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(workspace().join("deploy").join(name))
        .unwrap_or_else(|e| panic!("deploy/{name}: {e}"));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The hosts of `deploy/hosts`: name → address.
pub fn layout() -> HashMap<String, IpAddr> {
    deploy_lines("hosts")
        .iter()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let addr = words.next()?.parse().ok()?;
            Some((words.next()?.to_string(), addr))
        })
        .collect()
}

/// The bakery units each host runs (`deploy/roles`), in the file's order; hosts
/// that run only stores are left out.
pub fn roles() -> Vec<(String, Vec<String>)> {
    deploy_lines("roles")
        .iter()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let host = words.next()?.to_string();
            let units: Vec<String> = words
                .filter(|u| u.starts_with("bakery-"))
                .map(String::from)
                .collect();
            (!units.is_empty()).then_some((host, units))
        })
        .collect()
}

/// The address a unit listens on, from its `ExecStart` (`--listen 0.0.0.0:PORT`).
fn unit_port(unit: &str) -> u16 {
    let path = workspace().join(format!("deploy/systemd/{unit}.service"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{}", path.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .and_then(|exec| {
            exec.split_whitespace()
                .skip_while(|w| *w != "--listen")
                .nth(1)
        })
        .and_then(|listen| listen.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{unit}: no --listen IP:PORT in ExecStart"))
}

pub struct Hosts {
    dir: TempDir,
    addresses: HashMap<String, IpAddr>,
    /// The roles started by `scripts/hosts.sh run`, stopped on drop.
    running: Vec<Child>,
}

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("scripts/hosts.sh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "scripts/hosts.sh {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Hosts {
    /// Makes the hosts and starts their stores (PostgreSQL and its replica, Redis,
    /// RabbitMQ). Panics naming what failed.
    pub fn create() -> Self {
        let hosts = Self {
            dir: TempDir::new(),
            addresses: layout(),
            running: Vec::new(),
        };
        std::fs::create_dir_all(hosts.dir.0.join("logs")).expect("logs dir");
        if let Err(why) =
            sh(&["create"]).and_then(|_| sh(&["stores", &hosts.dir.0.display().to_string()]))
        {
            panic!("{why}\n{}", hosts.logs());
        }
        hosts
    }

    pub fn address(&self, host: &str) -> IpAddr {
        *self
            .addresses
            .get(host)
            .unwrap_or_else(|| panic!("no host {host} in deploy/hosts"))
    }

    /// Where `unit` on `host` listens.
    pub fn addr(&self, host: &str, unit: &str) -> SocketAddr {
        SocketAddr::new(self.address(host), unit_port(unit))
    }

    /// This host's own directory (its `BAKERY_DATA_DIR`).
    fn data_dir(&self, host: &str) -> PathBuf {
        self.dir.0.join("data").join(host)
    }

    fn command(&self, host: &str, unit: &str, env: &[(&str, &str)]) -> Command {
        let data = self.data_dir(host);
        std::fs::create_dir_all(&data).expect("host data dir");
        let mut command = Command::new(script());
        command
            .args(["run", host, unit])
            .arg(format!("BAKERY_DATA_DIR={}", data.display()))
            .args(env.iter().map(|(k, v)| format!("{k}={v}")))
            .env("BAKERY_BIN", bin())
            .stdin(Stdio::null());
        command
    }

    fn log_file(&self, host: &str, unit: &str) -> PathBuf {
        self.dir.0.join("logs").join(format!("{host}-{unit}.log"))
    }

    /// Runs a unit that ends (`bakery-migrate`) and waits for it; panics unless it succeeds.
    pub fn run_once(&self, host: &str, unit: &str, env: &[(&str, &str)]) {
        let out = self
            .command(host, unit, env)
            .output()
            .expect("run scripts/hosts.sh");
        assert!(
            out.status.success(),
            "{unit} on {host} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts a unit on a host (its `ExecStart`, its environment files, then `env`)
    /// and waits for its `listening` line.
    pub fn start(&mut self, host: &str, unit: &str, env: &[(&str, &str)]) -> SocketAddr {
        let log = std::fs::File::create(self.log_file(host, unit)).expect("log file");
        let mut child = self
            .command(host, unit, env)
            .stdout(Stdio::piped())
            .stderr(log.try_clone().expect("log file"))
            .spawn()
            .expect("run scripts/hosts.sh");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // The first line says it listens; the rest goes to the role's log.
        std::thread::spawn(move || {
            let mut log = log;
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            if let Some(first) = lines.next() {
                let _ = writeln!(log, "{first}");
                let _ = tx.send(first);
            }
            for line in lines {
                let _ = writeln!(log, "{line}");
            }
        });
        self.running.push(child);
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.starts_with("listening") => self.addr(host, unit),
            other => panic!(
                "{unit} on {host} did not start ({other:?}):\n{}",
                self.log(host, unit)
            ),
        }
    }

    /// What a role wrote so far.
    pub fn log(&self, host: &str, unit: &str) -> String {
        std::fs::read_to_string(self.log_file(host, unit)).unwrap_or_default()
    }

    /// Every log of the stores and the roles, for a failure's message.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        let entries = std::fs::read_dir(self.dir.0.join("logs"));
        for entry in entries.into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            all.push_str(&format!("--- {}\n", entry.path().display()));
            for line in tail.into_iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }

    /// Takes the host's link down: it answers nothing, as a host cut away by the network.
    pub fn cut(&self, host: &str) {
        sh(&["cut", host]).unwrap_or_else(|why| panic!("{why}"));
    }

    pub fn restore(&self, host: &str) {
        sh(&["restore", host]).unwrap_or_else(|why| panic!("{why}"));
    }

    /// Runs a command inside a host (nftables rules, for example); panics unless it succeeds.
    pub fn exec(&self, host: &str, argv: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("bakery-{host}")])
            .args(argv)
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "{argv:?} on {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Loads nftables `rules` (a whole table) inside a host.
    pub fn nft(&self, host: &str, name: &str, rules: &str) {
        let file = self.dir.0.join(format!("{name}-{host}.nft"));
        std::fs::write(&file, rules).expect("write the rules");
        self.exec(host, &["nft", "-f", &file.display().to_string()]);
    }

    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

fn stop_child(child: &mut Child, limit: Duration) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for child in &mut self.running {
            stop_child(child, Duration::from_secs(5));
        }
        // Whatever is left in the hosts (the stores, epmd), by pid, then the hosts.
        if let Err(why) = sh(&["destroy"]) {
            eprintln!("{why}");
        }
    }
}
