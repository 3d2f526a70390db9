//! Redis with Sentinel for a test: a primary, its replica and three sentinels, each a
//! `redis-server` of its own on a free loopback port, stopped on drop (by pid).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TempDir;

pub struct RedisSentinel {
    dir: TempDir,
    /// (name, process): "primary", "replica", "sentinel-1".. — in start order.
    children: Vec<(String, Child)>,
    pub service: String,
    pub primary_port: u16,
    pub replica_port: u16,
    pub sentinel_ports: Vec<u16>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `redis-cli -p PORT ARGS...`'s answer, or `None` when it fails.
fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} within {limit:?}");
}

impl RedisSentinel {
    /// Starts the five servers and waits until the replica follows the primary and
    /// every sentinel watches it (quorum 2; a primary is down after 1 s of silence).
    pub fn start(service: &str) -> Self {
        let mut set = Self {
            dir: TempDir::new(),
            children: Vec::new(),
            service: service.to_string(),
            primary_port: free_port(),
            replica_port: free_port(),
            sentinel_ports: (0..3).map(|_| free_port()).collect(),
        };
        let primary = set.primary_port.to_string();
        set.spawn("primary", &["--port", &primary]);
        set.spawn(
            "replica",
            &[
                "--port",
                &set.replica_port.to_string(),
                "--replicaof",
                "127.0.0.1",
                &primary,
            ],
        );
        for (i, port) in set.sentinel_ports.clone().into_iter().enumerate() {
            let config = set.dir.0.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {service} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {service} 1000\n\
                     sentinel failover-timeout {service} 5000\n\
                     sentinel parallel-syncs {service} 1\n",
                    dir = set.dir.0.display(),
                ),
            )
            .expect("sentinel config");
            let config = config.display().to_string();
            set.spawn(&format!("sentinel-{i}"), &[&config, "--sentinel"]);
        }
        wait_until(
            "the replica follows the primary",
            Duration::from_secs(20),
            || {
                cli(set.replica_port, &["info", "replication"])
                    .is_some_and(|info| info.contains("master_link_status:up"))
            },
        );
        for port in set.sentinel_ports.clone() {
            wait_until(
                "every sentinel knows the replica",
                Duration::from_secs(30),
                || {
                    cli(port, &["sentinel", "replicas", service])
                        .is_some_and(|r| r.contains(&set.replica_port.to_string()))
                },
            );
        }
        set
    }

    fn spawn(&mut self, name: &str, args: &[&str]) {
        let log = std::fs::File::create(self.dir.0.join(format!("{name}.log"))).expect("log");
        let mut command = Command::new("redis-server");
        if !args.contains(&"--sentinel") {
            let dir = self.dir.0.join(name);
            std::fs::create_dir_all(&dir).expect("a directory for the server");
            command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
            command.args(["--dir", &dir.display().to_string()]);
        }
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start redis-server (scripts/services.sh installs it)");
        self.children.push((name.to_string(), child));
    }

    /// `BAKERY_SESSION_URL` / `BAKERY_CACHE_URL` for database `db` of the service.
    pub fn url(&self, db: u8) -> String {
        let nodes: Vec<String> = self
            .sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{}/{db}", nodes.join(","), self.service)
    }

    /// Waits until the replica has every write the primary took so far.
    pub fn wait_replicated(&self) {
        let acked = cli(self.primary_port, &["wait", "1", "5000"]);
        assert_eq!(
            acked.as_deref().map(str::trim),
            Some("1"),
            "the replica acknowledged"
        );
    }

    /// Kills the primary outright (SIGKILL, by pid).
    pub fn kill_primary(&mut self) {
        if let Some((_, child)) = self.children.iter_mut().find(|(n, _)| n == "primary") {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The primary's port as the first sentinel names it now.
    pub fn primary_now(&self) -> Option<u16> {
        let answer = cli(
            self.sentinel_ports[0],
            &["sentinel", "get-master-addr-by-name", &self.service],
        )?;
        answer.lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
