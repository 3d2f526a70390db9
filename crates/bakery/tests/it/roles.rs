//! Each role opens only the stores it uses (issue "One front door for every role"):
//! the email service and the workers start and report healthy while the session
//! store is away (and the email service while the cache is away too), because they
//! never use them. And after a reboot processes come up in any order (issue 27): a
//! clone and the push service start while their session store and cache do not
//! answer, serve what needs neither, say so in `/healthz`, and use them once they
//! answer.

use std::time::Duration;

use crate::harness::{self, Role, TempDir, eventually, redis_url, run_to_end};
use crate::proxy::CuttableProxy;

/// Nothing listens here: a store on it is unreachable.
const NOWHERE: &str = "redis://127.0.0.1:1";

fn env(data: &TempDir, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("BAKERY_DATA_DIR".to_string(), data.0.display().to_string()),
        ("BAKERY_LOG".into(), "warn".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// `/healthz` of `role` answers 200 with these checks named `up`.
async fn healthy(role: &Role, checks: &[&str]) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let ok = eventually(Duration::from_secs(20), async || {
        let Ok(answer) = harness::client().get(role.url("/healthz")).send().await else {
            return false;
        };
        let status = answer.status();
        last = answer.json().await.unwrap_or_default();
        status == 200 && checks.iter().all(|c| last[*c] == "up")
    })
    .await;
    assert!(ok, "not healthy: {last}");
    last
}

#[tokio::test]
async fn email_and_workers_start_without_the_session_store_they_never_use() {
    let data = TempDir::new();
    let (code, err) = run_to_end(&["migrate"], env(&data, &[]));
    assert_eq!(code, Some(0), "{err}");

    let away = [
        ("BAKERY_SESSION_URL", NOWHERE),
        ("BAKERY_CACHE_URL", NOWHERE),
    ];
    let email = Role::start(
        &["email", "--listen", "127.0.0.1:0", "--id", "email-9"],
        env(&data, &away),
    );
    let health = healthy(&email, &["database", "broker"]).await;
    assert!(health.get("sessions").is_none(), "{health}");

    let worker = Role::start(
        &["worker", "--listen", "127.0.0.1:0", "--id", "worker-9"],
        env(&data, &[("BAKERY_SESSION_URL", NOWHERE)]),
    );
    let health = healthy(&worker, &["database", "broker"]).await;
    assert!(health.get("sessions").is_none(), "{health}");

    // The stores really are away: a worker reports the cache it uses as down.
    let worker_cache = Role::start(
        &["worker", "--listen", "127.0.0.1:0", "--id", "worker-8"],
        env(&data, &away),
    );
    let health = healthy(&worker_cache, &["database", "broker"]).await;
    assert_eq!(health["cache"], "down", "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["degraded"], serde_json::json!(["cache"]), "{health}");
}

/// `/healthz` of `role`: its status code and body.
async fn health(role: &Role) -> (u16, serde_json::Value) {
    match harness::client().get(role.url("/healthz")).send().await {
        Ok(answer) => (
            answer.status().as_u16(),
            answer.json().await.unwrap_or_default(),
        ),
        Err(_) => (0, serde_json::Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_and_push_start_before_their_session_store_and_cache_and_use_them_once_they_answer()
{
    let data = TempDir::new();
    let (code, err) = run_to_end(
        &["migrate"],
        env(&data, &[("BAKERY_ADMIN_PASSWORD", "admin-password")]),
    );
    assert_eq!(code, Some(0), "{err}");
    // Redis behind a proxy that refuses connections: down, as after a reboot.
    let target = redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .expect("the test Redis's address");
    let redis = CuttableProxy::start(target).await;
    redis.cut();
    let url = format!("redis://{}", redis.addr);
    let stores = [
        ("BAKERY_SESSION_URL", url.as_str()),
        ("BAKERY_CACHE_URL", url.as_str()),
    ];
    let web = Role::start(
        &["web", "--listen", "127.0.0.1:0", "--id", "web-9"],
        env(&data, &stores),
    );
    let push = Role::start(
        &["push", "--listen", "127.0.0.1:0", "--id", "push-9"],
        env(&data, &stores),
    );

    // Degraded, and saying so: the clone is healthy for the balancer (it serves
    // public pages) and names what is down; push cannot serve a stream without
    // sessions, so it answers 503 naming them — but it runs.
    let web_health = healthy(&web, &["database"]).await;
    assert_eq!(web_health["sessions"], "down", "{web_health}");
    assert_eq!(web_health["cache"], "down", "{web_health}");
    assert_eq!(web_health["status"], "degraded", "{web_health}");
    let mut degraded: Vec<String> =
        serde_json::from_value(web_health["degraded"].clone()).unwrap_or_default();
    degraded.sort();
    assert_eq!(degraded, ["cache", "sessions"], "{web_health}");
    let (status, push_health) = health(&push).await;
    assert_eq!(status, 503, "{push_health}");
    assert_eq!(push_health["failing"], serde_json::json!(["sessions"]));
    let http = harness::client();
    let public = http.get(web.url("/api/products")).send().await.unwrap();
    assert_eq!(public.status(), 200, "a public read without the cache");
    let login = http
        .post(web.url("/api/session"))
        .json(&serde_json::json!({"username": "admin", "password": "admin-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 503);
    assert_eq!(
        harness::error_code(login).await,
        "session_store_unavailable"
    );

    // The stores answer: both roles use them without a restart.
    redis.restore().await;
    let recovered = eventually(Duration::from_secs(20), async || {
        let (web_status, web_health) = health(&web).await;
        let (push_status, _) = health(&push).await;
        web_status == 200
            && web_health["status"] == "ok"
            && web_health["sessions"] == "up"
            && web_health["cache"] == "up"
            && push_status == 200
    })
    .await;
    assert!(
        recovered,
        "web {:?} push {:?}",
        health(&web).await,
        health(&push).await
    );
    let cookie = harness::log_in(&http, &web.url(""), "admin", "admin-password").await;
    let me = http
        .get(web.url("/api/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
}

/// Issue 29, 5: the binary's relative relocations are packed (RELR), so the table
/// the loader walks at every process's start is kilobytes, not the 1.3 MB of
/// `.rela.dyn` entries every process read before (`crates/bakery/build.rs`).
#[test]
fn the_binary_packs_its_relative_relocations() {
    let out = std::process::Command::new("readelf")
        .args(["--wide", "--dynamic", "--section-headers"])
        .arg(harness::bin())
        .output()
        .expect("readelf (binutils) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(RELR)"), "no DT_RELR entry:\n{text}");
    // What is left unpacked (relocations against symbols) is small.
    let rela = text
        .lines()
        .find(|l| l.contains(" .rela.dyn "))
        .and_then(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let at = fields.iter().position(|f| *f == ".rela.dyn")?;
            u64::from_str_radix(fields.get(at + 4)?, 16).ok()
        })
        .unwrap_or(0);
    assert!(rela < 64 << 10, ".rela.dyn is {rela} bytes");
}

/// Issue 29, 5: no role runs on transparent huge pages. mimalloc asks for them for
/// its arenas, and a 2 MiB page touched for a few kilobytes stays resident whole
/// (18 MiB of a clone's 21 MiB of its own memory): every process `up` starts has
/// them switched off, and so holds none, after serving requests.
#[tokio::test]
async fn no_role_holds_transparent_huge_pages() {
    let data = harness::TempDir::new();
    let up = harness::Up::start(harness::embedded_env(&data), 2);
    let http = harness::client();
    for _ in 0..50 {
        let answer = http
            .get(up.url("/api/products?limit=20"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let roles: Vec<&str> = up.processes.iter().map(|p| p.role.as_str()).collect();
    for role in ["lb", "web", "worker", "email", "push"] {
        assert!(roles.contains(&role), "{role} in {roles:?}");
    }
    for process in &up.processes {
        let status = std::fs::read_to_string(format!("/proc/{}/status", process.pid)).unwrap();
        assert!(
            status
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["THP_enabled:", "0"]),
            "{} {}: {}",
            process.role,
            process.id,
            status
                .lines()
                .find(|l| l.starts_with("THP"))
                .unwrap_or("no THP_enabled line")
        );
        let rollup =
            std::fs::read_to_string(format!("/proc/{}/smaps_rollup", process.pid)).unwrap();
        let huge = rollup
            .lines()
            .find(|l| l.starts_with("AnonHugePages:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok());
        assert_eq!(huge, Some(0), "{} {}: {rollup}", process.role, process.id);
    }
}
