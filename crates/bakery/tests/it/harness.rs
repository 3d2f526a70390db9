//! Starting the real binary, talking to it, and always stopping what was started
//! (by pid, never by name).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const BIN: &str = env!("CARGO_BIN_EXE_bakery");

/// The PostgreSQL server the tests use (`scripts/test` makes sure it runs).
pub fn postgres_admin_url() -> String {
    std::env::var("BAKERY_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The streaming replica of the test PostgreSQL (`scripts/services.sh` makes it).
pub fn replica_admin_url() -> String {
    std::env::var("BAKERY_TEST_REPLICA_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/postgres".into())
}

/// The replica's URL for the database at `primary_url` (same name, replica server).
pub fn replica_url_for(primary_url: &str) -> String {
    let name = primary_url.rsplit('/').next().unwrap_or_default();
    let base = replica_admin_url();
    let base = base.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(base);
    format!("{base}/{name}")
}

pub fn redis_url() -> String {
    std::env::var("BAKERY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh database (as [`fresh_postgres_database`]) once the replica has it too.
pub async fn fresh_replicated_database() -> String {
    use sqlx::Connection;
    let url = fresh_postgres_database().await;
    let replica = replica_url_for(&url);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match sqlx::PgConnection::connect(&replica).await {
            Ok(conn) => {
                let _ = conn.close().await;
                return url;
            }
            Err(e) if Instant::now() > deadline => {
                panic!("the PostgreSQL replica is needed at {replica} (set BAKERY_TEST_REPLICA_URL): {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A fresh, empty PostgreSQL database for one test; fails naming the server if it is down.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is needed at {admin} (set BAKERY_TEST_POSTGRES_URL): {e}"));
    let name = format!("bakery_test_{:016x}", rand_u64());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.expect("create database");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    format!("{base}/{name}")
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// A temporary data directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("bakery-it-{}-{:x}", std::process::id(), rand_u64()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One process line from `bakery up`: `started role=web id=web-2 pid=123 addr=...`.
#[derive(Debug, Clone)]
pub struct Started {
    pub role: String,
    pub id: String,
    pub pid: i32,
    pub addr: SocketAddr,
}

fn parse_started(line: &str) -> Option<Started> {
    let rest = line.strip_prefix("started ")?;
    let fields: HashMap<&str, &str> = rest.split_whitespace().filter_map(|kv| kv.split_once('=')).collect();
    Some(Started {
        role: fields.get("role")?.to_string(),
        id: fields.get("id")?.to_string(),
        pid: fields.get("pid")?.parse().ok()?,
        addr: fields.get("addr")?.parse().ok()?,
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
        let mut child = Command::new(BIN)
            .args(["up", "--listen", "127.0.0.1:0", "--clones", &clones.to_string()])
            .args(flags)
            .envs(all)
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
        let mut up = Self { child, lines, seen: Vec::new(), base: String::new(), processes: Vec::new(), _data: data };
        let Some(ready) = up.wait_line(Duration::from_secs(90), |l| l.starts_with("ready ")) else {
            panic!("bakery up did not print ready; it printed {:?} (its stderr is above)", up.seen);
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
        self.processes.iter().filter(|p| p.role == "web").cloned().collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
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
        // Belt and braces: anything it started that is still alive.
        for p in &self.processes {
            if process_alive(p.pid) {
                let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
            }
        }
    }
}

/// Whether `pid` names a live process (not a zombie).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits until `check` holds, up to `limit`.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// The `bakery_session=...` pair from a response's `Set-Cookie`, if any.
pub fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("bakery_session="))
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
}

pub fn served_by(response: &reqwest::Response) -> String {
    response.headers().get("x-served-by").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// Signs up and logs in `username`; returns the cookie pair.
pub async fn sign_up_and_log_in(http: &reqwest::Client, base: &str, username: &str) -> String {
    let created = http
        .post(format!("{base}/api/users"))
        .json(&serde_json::json!({"username": username, "email": format!("{username}@example.com"), "password": "password-1"}))
        .send()
        .await
        .expect("sign up");
    assert_eq!(created.status(), 201, "sign up {username}");
    let login = http
        .post(format!("{base}/api/session"))
        .json(&serde_json::json!({"username": username, "password": "password-1"}))
        .send()
        .await
        .expect("log in");
    assert_eq!(login.status(), 200);
    session_cookie(&login).expect("a session cookie")
}

/// Logs in and returns the cookie pair.
pub async fn log_in(http: &reqwest::Client, base: &str, username: &str, password: &str) -> String {
    let login = http
        .post(format!("{base}/api/session"))
        .json(&serde_json::json!({"username": username, "password": password}))
        .send()
        .await
        .expect("log in");
    assert_eq!(login.status(), 200, "log in as {username}");
    session_cookie(&login).expect("a session cookie")
}

/// Asserts the contract's JSON error shape and returns its code.
pub async fn error_code(response: reqwest::Response) -> String {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_else(|e| panic!("{status}: error body is not JSON: {e}"));
    let code = body["error"]["code"].as_str().unwrap_or_else(|| panic!("{status}: no error.code in {body}"));
    assert!(body["error"]["message"].is_string(), "{status}: no error.message in {body}");
    code.to_string()
}

/// One role started alone (`bakery lb ...`), stopped on drop.
pub struct Role {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Role {
    pub fn start(args: &[&str], env: Vec<(String, String)>) -> Self {
        let mut child = Command::new(BIN)
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
        reader.read_line(&mut line).expect("read the listening line");
        let addr = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("addr="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no listening line, got {line:?}"));
        std::thread::spawn(move || for _ in reader.lines() {});
        Self { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion; returns (exit code, stderr).
pub fn run_to_end(args: &[&str], env: Vec<(String, String)>) -> (Option<i32>, String) {
    let output = Command::new(BIN).args(args).envs(env).stdin(Stdio::null()).output().expect("run bakery");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).to_string())
}
