//! The "Clones" chapter, end to end: `bakery up`, requests spread over identical
//! clones, a clone killed under load, draining, and a clean stop.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{Up, client, eventually, process_alive, served_by};

/// Sends GETs to `/api/ping` from `workers` tasks until `stop`; counts failures.
fn load(
    base: String,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let handles = (0..workers)
        .map(|_| {
            let (ok, failed, stop, base) = (ok.clone(), failed.clone(), stop.clone(), base.clone());
            tokio::spawn(async move {
                let http = client();
                while !stop.load(Ordering::Relaxed) {
                    match http.get(format!("{base}/api/ping")).send().await {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(r) => {
                            eprintln!("failed GET: {}", r.status());
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            eprintln!("failed GET: {e}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    (ok, failed, handles)
}

/// The `web` pool of a `/lb/backends` answer.
fn web_pool(backends: &serde_json::Value) -> &serde_json::Value {
    backends["pools"]
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["name"] == "web"))
        .unwrap_or(&serde_json::Value::Null)
}

fn member<'a>(backends: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    web_pool(backends)["backends"]
        .as_array()?
        .iter()
        .find(|b| b["id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_prints_ready_and_sequential_requests_reach_every_clone() {
    let up = Up::start(vec![], 3);
    let roles: Vec<&str> = up.processes.iter().map(|p| p.role.as_str()).collect();
    assert_eq!(
        roles,
        [
            "lb", "web", "web", "web", "push", "email", "worker", "worker"
        ],
        "one started line per process: {:?}",
        up.seen
    );
    assert_eq!(up.processes.iter().filter(|p| p.role == "lb").count(), 1);
    let http = client();
    let mut seen = HashSet::new();
    for _ in 0..30 {
        let response = http.get(up.url("/api/ping")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("x-request-id"));
        let by = served_by(&response);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["pong"], true);
        assert_eq!(
            body["id"],
            by.as_str(),
            "x-served-by names the clone that answered"
        );
        seen.insert(by);
    }
    let expected: HashSet<String> = up.clones().into_iter().map(|c| c.id).collect();
    assert_eq!(
        seen, expected,
        "30 sequential requests reach all three clones"
    );

    // The load balancer's own routes name it, and it keeps a client's request id.
    let response = http
        .get(up.url("/healthz"))
        .header("x-request-id", "it-test-1")
        .send()
        .await
        .unwrap();
    assert_eq!(served_by(&response), "lb-1");
    assert_eq!(response.headers()["x-request-id"], "it-test-1");
    let list = up.backends().await;
    assert_eq!(web_pool(&list)["backends"].as_array().unwrap().len(), 3);
    let served: u64 = web_pool(&list)["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["served"].as_u64().unwrap())
        .sum();
    assert!(
        served >= 30,
        "the load balancer counts what each member served: {list}"
    );
    let metrics = http
        .get(up.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("bakery_http_requests_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_killed_under_load_costs_no_failed_get_and_is_replaced() {
    let mut up = Up::start(vec![], 3);
    let http = client();
    let victim = up
        .clones()
        .into_iter()
        .find(|c| c.id == "web-2")
        .expect("web-2");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, workers) = load(up.base.clone(), 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    kill(Pid::from_raw(victim.pid), Signal::SIGKILL).unwrap();
    let killed_at = Instant::now();
    let marked_down = eventually(Duration::from_secs(3), async || {
        let list = up.backends().await;
        match member(&list, "web-2") {
            Some(m) => m["addr"] != victim.addr.to_string().as_str() || m["healthy"] == false,
            None => true,
        }
    })
    .await;
    assert!(
        marked_down,
        "the load balancer marks the killed clone down within 3 s"
    );
    eprintln!("marked down after {:?}", killed_at.elapsed());

    let restarted = up.wait_line(Duration::from_secs(20), |l| {
        l.starts_with("restarted role=web id=web-2")
    });
    let restarted = restarted.expect("up reports the dead clone");
    assert!(
        restarted.contains(&format!("old_pid={}", victim.pid)),
        "{restarted}"
    );
    let replacement = up
        .wait_line(Duration::from_secs(30), |l| {
            l.starts_with("started role=web id=web-2")
        })
        .expect("up starts a replacement");
    assert!(
        !replacement.contains(&format!("pid={} ", victim.pid)),
        "{replacement}"
    );

    let back = eventually(Duration::from_secs(10), async || {
        let list = up.backends().await;
        member(&list, "web-2")
            .is_some_and(|m| m["healthy"] == true && m["addr"] != victim.addr.to_string().as_str())
    })
    .await;
    assert!(
        back,
        "the load balancer takes the replacement back without a restart"
    );
    let served_by_replacement = eventually(Duration::from_secs(10), async || {
        let r = http.get(up.url("/api/ping")).send().await.unwrap();
        served_by(&r) == "web-2"
    })
    .await;
    assert!(served_by_replacement, "requests reach the replacement");

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(ok.load(Ordering::Relaxed) > 100, "the load ran");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no GET failed while a clone died"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_clone_gets_no_new_requests_and_loses_none() {
    let mut up = Up::start(vec![], 3);
    let victim = up
        .clones()
        .into_iter()
        .find(|c| c.id == "web-1")
        .expect("web-1");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, workers) = load(up.base.clone(), 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // SIGTERM: the clone answers /healthz with 503 "draining" but keeps serving.
    kill(Pid::from_raw(victim.pid), Signal::SIGTERM).unwrap();
    let drained = eventually(Duration::from_secs(3), async || {
        let list = up.backends().await;
        member(&list, "web-1").is_some_and(|m| m["healthy"] == false && m["draining"] == true)
    })
    .await;
    assert!(drained, "the load balancer sees the drain");
    let served_before = member(&up.backends().await, "web-1").unwrap()["served"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let served_after = member(&up.backends().await, "web-1").unwrap()["served"]
        .as_u64()
        .unwrap();
    assert!(
        served_after <= served_before + 4,
        "no new requests once draining ({served_before} -> {served_after})"
    );

    up.wait_line(Duration::from_secs(20), |l| {
        l.starts_with("started role=web id=web-1")
    })
    .expect("replaced");
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(ok.load(Ordering::Relaxed) > 50);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "draining lost no request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_process_and_leaves_none_behind() {
    let mut up = Up::start(vec![], 3);
    let pids: Vec<i32> = up.processes.iter().map(|p| p.pid).collect();
    assert!(pids.iter().all(|&p| process_alive(p)));
    let status = up
        .terminate(Duration::from_secs(30))
        .expect("up exits after SIGTERM");
    assert!(status.success(), "clean exit: {status}");
    for pid in pids {
        assert!(!process_alive(pid), "process {pid} outlived bakery up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_stop_by_themselves_when_up_is_killed_outright() {
    let up = Up::start(vec![], 2);
    let pids: Vec<i32> = up.processes.iter().map(|p| p.pid).collect();
    kill(Pid::from_raw(up.pid()), Signal::SIGKILL).unwrap();
    let all_gone = eventually(Duration::from_secs(15), async || {
        pids.iter().all(|&p| !process_alive(p))
    })
    .await;
    assert!(all_gone, "no orphans after up was SIGKILLed");
}
