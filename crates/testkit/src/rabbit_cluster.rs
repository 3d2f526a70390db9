//! A RabbitMQ cluster of three nodes for a test, on loopback ports of their own (one
//! machine holds one Erlang port mapper, so the nodes differ by name and ports), each
//! node in its own process group, killed with it on drop.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::TempDir;

pub struct RabbitCluster {
    dir: TempDir,
    nodes: Vec<Node>,
}

struct Node {
    name: String,
    port: u16,
    dist_port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl RabbitCluster {
    /// Starts three nodes that form one cluster (peer discovery from a list) and
    /// waits until every node runs in it.
    pub fn start() -> Self {
        let dir = TempDir::new();
        let tag = format!("{:x}", rand::random::<u32>());
        let names: Vec<String> = (1..=3)
            .map(|i| format!("bakery-{tag}-{i}@localhost"))
            .collect();
        let plugins = dir.0.join("enabled_plugins");
        std::fs::write(&plugins, "[].\n").expect("plugins file");
        let mut nodes = Vec::new();
        for name in &names {
            let home = dir.0.join(name.split('@').next().unwrap_or_default());
            std::fs::create_dir_all(home.join("mnesia")).expect("node dir");
            std::fs::create_dir_all(home.join("log")).expect("node dir");
            let port = free_port();
            let peers: String = names
                .iter()
                .enumerate()
                .map(|(i, n)| format!("cluster_formation.classic_config.nodes.{} = {n}\n", i + 1))
                .collect();
            std::fs::write(
                home.join("rabbitmq.conf"),
                format!(
                    "listeners.tcp.default = {port}\nloopback_users = none\n\
                     cluster_formation.peer_discovery_backend = classic_config\n{peers}"
                ),
            )
            .expect("node config");
            nodes.push(Node {
                name: name.clone(),
                port,
                dist_port: free_port(),
                child: None,
            });
        }
        let status = Command::new("chmod").arg("755").arg(&dir.0).status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "chmod the cluster's directory"
        );
        let status = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir.0)
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "chown the cluster's directory to rabbitmq"
        );
        let mut cluster = Self { dir, nodes };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = Command::new("rabbitmqctl")
                .args([
                    "-q",
                    "-n",
                    &cluster.nodes[0].name,
                    "cluster_status",
                    "--formatter",
                    "json",
                ])
                .output();
            let running = status
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
                .and_then(|v| v["running_nodes"].as_array().map(Vec::len))
                .unwrap_or(0);
            if running == 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the three RabbitMQ nodes did not form a cluster within 120 s (logs in {})",
                cluster.dir.0.display()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        cluster
    }

    /// Starts node `i`'s server (its own process group), on its ports and data.
    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let home = self
            .dir
            .0
            .join(node.name.split('@').next().unwrap_or_default());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.join("out.log"))
            .expect("log");
        let child = Command::new("runuser")
            .args(["-u", "rabbitmq", "--", "env", "HOME=/var/lib/rabbitmq"])
            .arg(format!("RABBITMQ_NODENAME={}", node.name))
            .arg(format!("RABBITMQ_NODE_PORT={}", node.port))
            .arg(format!("RABBITMQ_DIST_PORT={}", node.dist_port))
            .arg(format!(
                "RABBITMQ_MNESIA_BASE={}",
                home.join("mnesia").display()
            ))
            .arg(format!("RABBITMQ_LOG_BASE={}", home.join("log").display()))
            .arg(format!(
                "RABBITMQ_CONFIG_FILE={}",
                home.join("rabbitmq.conf").display()
            ))
            .arg(format!("RABBITMQ_PID_FILE={}", home.join("pid").display()))
            .arg(format!(
                "RABBITMQ_ENABLED_PLUGINS_FILE={}",
                self.dir.0.join("enabled_plugins").display()
            ))
            .arg("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .current_dir("/tmp")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start rabbitmq-server (scripts/services.sh installs it)");
        node.child = Some(child);
    }

    /// Starts node `i` again after [`RabbitCluster::kill`] (same name, ports and
    /// data) and waits until it runs in the cluster again.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        // `await_startup` needs the Erlang node up first: asked again until it is.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let started = Command::new("rabbitmqctl")
                .args([
                    "-q",
                    "-n",
                    &self.nodes[i].name,
                    "await_startup",
                    "--timeout",
                    "10",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if started {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not start again within 120 s (logs in {})",
                self.nodes[i].name,
                self.dir.0.display()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `BAKERY_BROKER_URL` naming every node (guest, the default vhost).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("amqp://guest:guest@127.0.0.1:{}/%2f", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Where node `i` takes AMQP connections.
    pub fn addr(&self, i: usize) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.nodes[i].port))
    }

    /// The node names, as `rabbitmqctl -n` takes them.
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Kills node `i` outright (its whole process group, SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        // A failed test shows what the nodes said: the end of each node's log.
        if std::thread::panicking() {
            for node in &self.nodes {
                let short = node.name.split('@').next().unwrap_or_default();
                let log = self
                    .dir
                    .0
                    .join(short)
                    .join("log")
                    .join(format!("{}.log", node.name));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("--- the last lines of {} ---", log.display());
                for line in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("{line}");
                }
            }
        }
    }
}
