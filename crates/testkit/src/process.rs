//! The built `bakery` binary started for a test, and always stopped (by pid, never
//! by name): a whole `bakery up`, or one role alone.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::TempDir;

/// The built `bakery` executable: beside the test executable's `deps/` folder, where
/// cargo puts the binaries of the workspace it built for the tests.
pub fn bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let bin = dir.join("bakery");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo test builds it for the bakery crate)",
        bin.display()
    );
    bin
}

/// One process line from `bakery up`: `started role=web id=web-2 pid=123 addr=...`.
#[derive(Debug, Clone)]
pub struct Started {
    pub role: String,
    pub id: String,
    pub pid: i32,
    pub addr: SocketAddr,
    /// The load balancer's admin address (its metrics and members answer there only).
    pub admin: Option<SocketAddr>,
}

fn parse_started(line: &str) -> Option<Started> {
    let rest = line.strip_prefix("started ")?;
    let fields: HashMap<&str, &str> = rest
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    Some(Started {
        role: fields.get("role")?.to_string(),
        id: fields.get("id")?.to_string(),
        pid: fields.get("pid")?.parse().ok()?,
        addr: fields.get("addr")?.parse().ok()?,
        admin: fields.get("admin").and_then(|a| a.parse().ok()),
    })
}

/// A running `bakery up`, stopped on drop.
pub struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stdout line so far.
    pub seen: Vec<String>,
    pub base: String,
    pub processes: Vec<Started>,
    /// The environment `up` was started with (its data directory included): for
    /// more processes of the same deployment.
    pub env: Vec<(String, String)>,
    _data: TempDir,
}

/// Environment for an `up` on the embedded defaults, in its own data directory.
pub fn embedded_env(data: &TempDir) -> Vec<(String, String)> {
    vec![
        ("BAKERY_DATA_DIR".into(), data.0.display().to_string()),
        ("BAKERY_ADMIN_PASSWORD".into(), "admin-password".into()),
        ("BAKERY_LOG".into(), "warn".into()),
        // Tests stop clones often; a short drain keeps them quick, and is still
        // longer than the load balancer's health interval.
        ("BAKERY_DRAIN_GRACE_MS".into(), "1500".into()),
    ]
}

impl Up {
    /// Starts `bakery up --listen 127.0.0.1:0 --no-demo` with `env` and waits for `ready`.
    pub fn start(env: Vec<(String, String)>, clones: usize) -> Self {
        Self::start_with(env, clones, &["--no-demo"])
    }

    /// The same with other flags for `up`.
    pub fn start_with(env: Vec<(String, String)>, clones: usize, flags: &[&str]) -> Self {
        let data = TempDir::new();
        let mut all = embedded_env(&data);
        all.extend(env);
        let mut child = Command::new(bin())
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--clones",
                &clones.to_string(),
            ])
            .args(flags)
            .envs(all.clone())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bakery up");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut up = Self {
            child,
            lines,
            seen: Vec::new(),
            base: String::new(),
            processes: Vec::new(),
            env: all,
            _data: data,
        };
        let Some(ready) = up.wait_line(Duration::from_secs(90), |l| l.starts_with("ready ")) else {
            panic!(
                "bakery up did not print ready; it printed {:?} (its stderr is above)",
                up.seen
            );
        };
        up.base = ready.trim_start_matches("ready ").to_string();
        up.processes = up.seen.iter().filter_map(|l| parse_started(l)).collect();
        up
    }

    /// Waits for a stdout line matching `want`; `None` on timeout or exit.
    pub fn wait_line(&mut self, limit: Duration, want: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    pub fn clones(&self) -> Vec<Started> {
        self.processes
            .iter()
            .filter(|p| p.role == "web")
            .cloned()
            .collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The load balancer's `GET /lb/backends`: its pools and their members.
    pub async fn backends(&self) -> serde_json::Value {
        crate::http::client()
            .get(self.admin_url("/lb/backends"))
            .send()
            .await
            .expect("GET /lb/backends")
            .json()
            .await
            .expect("/lb/backends is JSON")
    }

    /// A URL on the load balancer's admin address (its `/metrics`, `/lb/backends`).
    pub fn admin_url(&self, path: &str) -> String {
        let admin = self
            .processes
            .iter()
            .rev()
            .find_map(|p| p.admin.filter(|_| p.role == "lb"))
            .expect("up prints the load balancer's admin address");
        format!("http://{admin}{path}")
    }

    /// The process `up` started with this id (the latest, after a restart).
    pub fn process(&self, id: &str) -> Started {
        self.seen
            .iter()
            .rev()
            .filter_map(|l| parse_started(l))
            .find(|p| p.id == id)
            .unwrap_or_else(|| panic!("up started no {id}"))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM to `up`; returns its exit status once it has exited (within `limit`).
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.terminate(Duration::from_secs(30)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Belt and braces: anything it started (or restarted) that is still alive.
        for p in self.seen.iter().filter_map(|l| parse_started(l)) {
            if process_alive(p.pid) {
                let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
            }
        }
    }
}

/// Whether `pid` names a live process (not a zombie).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// One role started alone (`bakery lb ...`), stopped on drop.
pub struct Role {
    pub child: Child,
    pub addr: SocketAddr,
    /// A load balancer's admin address (membership changes go there).
    pub admin: Option<SocketAddr>,
}

impl Role {
    pub fn start(args: &[&str], env: Vec<(String, String)>) -> Self {
        let mut child = Command::new(bin())
            .args(args)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bakery role");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .expect("read the listening line");
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|a| a.parse().ok())
        };
        let addr = field("addr=").unwrap_or_else(|| panic!("no listening line, got {line:?}"));
        let admin = field("admin=");
        std::thread::spawn(move || for _ in reader.lines() {});
        Self { child, addr, admin }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A URL on a load balancer's admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        let admin = self
            .admin
            .expect("a load balancer prints its admin address");
        format!("http://{admin}{path}")
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion; returns (exit code, stdout, stderr).
pub fn run_output(args: &[&str], env: Vec<(String, String)>) -> (Option<i32>, String, String) {
    let output = Command::new(bin())
        .args(args)
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .expect("run bakery");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// Runs the binary to completion; returns (exit code, stderr).
pub fn run_to_end(args: &[&str], env: Vec<(String, String)>) -> (Option<i32>, String) {
    let output = Command::new(bin())
        .args(args)
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .expect("run bakery");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// Runs a program (not ours: a fuzzer, a load generator) to its end, or kills it
/// (by pid) once `limit` has passed; (exit code, stdout, stderr). `None`: killed.
pub fn output_within(command: &mut Command, limit: Duration) -> (Option<i32>, String, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {:?}: {e}", command.get_program()));
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
                break None;
            }
        }
    };
    (
        code,
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    )
}
