//! Beyond one machine (issue "hosts, partitions, and stores that fail over"): the
//! deployment of `deploy/` — two load balancers, two web hosts, the primary and its
//! streaming replica, the broker, the cache — each on a host of its own (network
//! namespaces made by `scripts/hosts.sh`), every role started by its systemd unit's
//! command line and environment files. Under a running load of reads, logins and
//! RSVPs, hosts are cut away (a web host, the replica, the broker, the primary) and
//! the link to the databases made lossy and slow; the system must go on and lose
//! nothing.
//! One test, in phases: building the hosts costs more than each fault.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bakery_testkit::hosts::{self, Hosts};
use bakery_testkit::mail::{SmtpSink, header, mails_to};
use bakery_testkit::proxy::CuttableProxy;
use bakery_testkit::sse::SseStream;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::harness::{self, eventually};

/// What a load saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    from_replica: AtomicU64,
    from_primary: AtomicU64,
    failed: Mutex<Vec<String>>,
    latencies: Mutex<Vec<Duration>>,
}

/// Reads in a loop from `workers` tasks until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn reads(base: &str, paths: &[String], cookie: &str, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let tasks = (0..workers)
            .map(|w| {
                let (stop, tally) = (stop.clone(), tally.clone());
                let urls: Vec<String> = paths.iter().map(|p| format!("{base}{p}")).collect();
                let cookie = cookie.to_string();
                tokio::spawn(async move {
                    // As a browser would: gives up on an answer after 10 s.
                    let http = harness::client();
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed) {
                        let url = &urls[i % urls.len()];
                        i += 1;
                        let started = Instant::now();
                        match http.get(url).header("cookie", &cookie).send().await {
                            Ok(answer) if answer.status() == 200 => {
                                let db = answer.headers().get("x-db").cloned();
                                let _ = answer.bytes().await;
                                tally.latencies.lock().await.push(started.elapsed());
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                                match db.as_ref().and_then(|v| v.to_str().ok()) {
                                    Some("replica") => {
                                        tally.from_replica.fetch_add(1, Ordering::Relaxed)
                                    }
                                    Some("primary") => {
                                        tally.from_primary.fetch_add(1, Ordering::Relaxed)
                                    }
                                    _ => 0,
                                };
                            }
                            Ok(answer) => tally
                                .failed
                                .lock()
                                .await
                                .push(format!("{url}: {}", answer.status())),
                            Err(e) => tally.failed.lock().await.push(format!("{url}: {e}")),
                        }
                    }
                })
            })
            .collect();
        Self { stop, tally, tasks }
    }

    async fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        self.tally
    }
}

impl Tally {
    /// The median and 99th percentile of the answered reads, in ms.
    async fn percentiles(&self) -> (f64, f64) {
        let mut all = self.latencies.lock().await.clone();
        all.sort();
        let at = |q: f64| all[((all.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
        (at(0.5), at(0.99))
    }

    async fn assert_no_failure(&self, phase: &str) {
        let failed = self.failed.lock().await;
        assert!(
            failed.is_empty(),
            "{phase}: {} reads failed, the first: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(
            self.ok.load(Ordering::Relaxed) > 0,
            "{phase}: no read answered"
        );
    }
}

/// The edge's view of one member: (healthy, served).
async fn member(hosts: &Hosts, lb: &str, id: &str) -> (bool, u64) {
    let admin = hosts.addr(lb, "bakery-lb");
    let admin = format!("http://{}:9080/lb/backends", admin.ip());
    let body = harness::get_json(&admin, "").await;
    body["pools"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|pool| pool["backends"].as_array().unwrap().iter())
        .find(|b| b["id"] == id)
        .map(|b| (b["healthy"] == true, b["served"].as_u64().unwrap_or(0)))
        .unwrap_or_else(|| panic!("{lb} has no member {id}: {body}"))
}

async fn sign_up(base: &str, name: &str) -> String {
    harness::sign_up_and_log_in(&harness::client(), base, name).await
}

async fn rsvp(base: &str, cookie: &str, event: i64) -> i64 {
    let answer = harness::client()
        .post(format!("{base}/api/events/{event}/rsvp"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201, "RSVP to {event}");
    answer.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap()
}

async fn my_rsvps(base: &str, cookie: &str) -> Vec<Value> {
    let mine = harness::get_json(&format!("{base}/api/me/rsvps"), cookie).await;
    mine["items"].as_array().unwrap().clone()
}

async fn class(base: &str, admin: &str, title: &str) -> i64 {
    harness::create_class(base, admin, title, 1000).await
}

/// nftables on `host`: its connections to the databases go through `proxies` (on
/// this machine, db-1's then db-2's), so that a test can slow that link.
fn through_proxies(hosts: &Hosts, host: &str, proxies: &[&CuttableProxy; 2]) {
    let rules = format!(
        "table ip bakery_proxy {{
           chain out {{ type nat hook output priority -100;
             ip daddr {db1} tcp dport 5432 dnat to {p1};
             ip daddr {db2} tcp dport 5432 dnat to {p2}; }}
         }}",
        db1 = hosts.address("db-1"),
        db2 = hosts.address("db-2"),
        p1 = proxies[0].addr,
        p2 = proxies[1].addr,
    );
    hosts.nft(host, "proxy", &rules);
}

/// nftables on `host`: drops 1 % of the packets to and from the databases (their
/// port, or the proxies' in front of them).
fn lossy_database_link(hosts: &Hosts, host: &str, proxies: &[&CuttableProxy; 2], on: bool) {
    if !on {
        hosts.exec(host, &["nft", "delete", "table", "inet", "bakery_loss"]);
        return;
    }
    let ports = format!(
        "5432, {}, {}",
        proxies[0].addr.port(),
        proxies[1].addr.port()
    );
    let rules = format!(
        "table inet bakery_loss {{
           chain out {{ type filter hook output priority 0; tcp dport {{ {ports} }} numgen random mod 100 < 1 drop; }}
           chain in {{ type filter hook input priority 0; tcp sport {{ {ports} }} numgen random mod 100 < 1 drop; }}
         }}"
    );
    hosts.nft(host, "loss", &rules);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_deployment_on_eight_hosts_survives_lost_hosts_and_bad_links() {
    let mut hosts = Hosts::create();
    // The site's mail relay is outside the hosts: this machine, on the bridge.
    let sink = SmtpSink::start_at("10.77.0.1", 2525);
    let env = [
        ("BAKERY_ADMIN_PASSWORD", "admin-password"),
        // These checks are about delivery: every address gets its mail at once.
        ("BAKERY_EMAIL_VERIFICATION", "off"),
        ("BAKERY_LOG", "info"),
    ];
    // Every database connection of the web hosts passes a proxy on this machine, so
    // that a phase can slow that link; until then it adds one hop and nothing else.
    let db_proxies = [
        CuttableProxy::start_at("10.77.0.1:0", SocketAddr::new(hosts.address("db-1"), 5432)).await,
        CuttableProxy::start_at("10.77.0.1:0", SocketAddr::new(hosts.address("db-2"), 5432)).await,
    ];
    let proxies = [&db_proxies[0], &db_proxies[1]];
    for host in ["web-a", "web-b"] {
        through_proxies(&hosts, host, &proxies);
    }
    hosts.run_once("web-a", "bakery-migrate", &env);
    for (host, units) in hosts::roles() {
        for unit in units {
            hosts.start(&host, &unit, &env);
        }
    }
    let base = format!("http://{}", hosts.addr("edge", "bakery-lb"));
    let base_b = format!("http://{}", hosts.addr("edge-b", "bakery-lb"));
    for id in ["web-a", "web-b", "web-b-push"] {
        assert!(
            eventually(Duration::from_secs(30), async || member(&hosts, "edge", id)
                .await
                .0)
            .await,
            "edge never saw {id} healthy\n{}",
            hosts.logs()
        );
    }

    let http = harness::client();
    let admin = harness::log_in(&http, &base, "admin", "admin-password").await;
    let product = harness::create_product(&base, &admin, "Rye", "Dark and sour", 450).await;
    let alice = sign_up(&base, "alice").await;
    let first_class = class(&base, &admin, "Rye at dawn").await;
    rsvp(&base, &alice, first_class).await;
    let reads = [
        format!("/api/products/{product}"),
        "/api/me/rsvps".to_string(),
        "/api/notifications".to_string(),
        "/api/ping".to_string(),
    ];

    // 1. A web host's link cut under load: no GET fails, the edge notices, and the
    //    host rejoins once its link is back.
    let load = Load::reads(&base, &reads, &alice, 6);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cut_at = Instant::now();
    hosts.cut("web-a");
    assert!(
        eventually(Duration::from_secs(15), async || !member(
            &hosts, "edge", "web-a"
        )
        .await
        .0)
        .await,
        "the edge never marked web-a down"
    );
    let detected = cut_at.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    hosts.restore("web-a");
    let restored_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(20), async || member(
            &hosts, "edge", "web-a"
        )
        .await
        .0)
        .await,
        "web-a never rejoined"
    );
    let rejoined = restored_at.elapsed();
    let served_before = member(&hosts, "edge", "web-a").await.1;
    assert!(
        eventually(Duration::from_secs(10), async || member(
            &hosts, "edge", "web-a"
        )
        .await
        .1 > served_before + 20)
        .await,
        "web-a rejoined but serves nothing"
    );
    let tally = load.finish().await;
    tally.assert_no_failure("web-a cut").await;
    let (p50, p99) = tally.percentiles().await;
    eprintln!(
        "web host cut: {} GETs, 0 failed, web-a out after {:.2} s, back in {:.2} s after its link; p50 {p50:.1} ms, p99 {p99:.1} ms",
        tally.ok.load(Ordering::Relaxed),
        detected.as_secs_f64(),
        rejoined.as_secs_f64()
    );

    // 2. The replica's host cut: reads go to the primary, none fails, and a user's
    //    own write is visible at once; the replica serves again once it is back.
    let load = Load::reads(&base, &reads, &alice, 6);
    assert!(
        eventually(Duration::from_secs(10), async || load
            .tally
            .from_replica
            .load(Ordering::Relaxed)
            > 0)
        .await,
        "no read came from the replica before the cut"
    );
    hosts.cut("db-2");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second_class = class(&base, &admin, "Rye at noon").await;
    let mine = rsvp(&base, &alice, second_class).await;
    assert!(
        my_rsvps(&base, &alice)
            .await
            .iter()
            .any(|r| r["id"] == mine),
        "alice's own RSVP is not visible while the replica is away"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_restore = load.tally.from_replica.load(Ordering::Relaxed);
    hosts.restore("db-2");
    assert!(
        eventually(Duration::from_secs(20), async || load
            .tally
            .from_replica
            .load(Ordering::Relaxed)
            > before_restore + 5)
        .await,
        "reads never went back to the replica"
    );
    let tally = load.finish().await;
    tally.assert_no_failure("replica cut").await;
    eprintln!(
        "replica host cut: {} reads, 0 failed ({} from the primary, {} from the replica)",
        tally.ok.load(Ordering::Relaxed),
        tally.from_primary.load(Ordering::Relaxed),
        tally.from_replica.load(Ordering::Relaxed)
    );

    // 3. The broker's host cut for 30 s: RSVPs are still accepted (the outbox holds
    //    them); once it is back, every mail and push event arrives, none twice.
    let mut stream =
        SseStream::open(&format!("{base}/api/notifications/stream"), &alice, None).await;
    let load = Load::reads(&base, &reads, &alice, 4);
    hosts.cut("mq");
    let broker_cut = Instant::now();
    let third_class = class(&base, &admin, "Rye at dusk").await;
    let alices = rsvp(&base, &alice, third_class).await;
    let mut guests = Vec::new();
    for i in 0..5 {
        let name = format!("guest{i}");
        let cookie = sign_up(&base, &name).await;
        rsvp(&base, &cookie, third_class).await;
        guests.push(name);
    }
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(broker_cut.elapsed())).await;
    hosts.restore("mq");
    let back = Instant::now();
    for name in &guests {
        let to = format!("{name}@example.com");
        assert!(
            eventually(Duration::from_secs(90), async || !mails_to(&sink, &to)
                .is_empty())
            .await,
            "no mail to {to} after the broker came back\n{}",
            hosts.logs()
        );
    }
    let delivered = back.elapsed();
    // Every event the stream carries about alice's RSVP, until it falls quiet: one
    // `rsvp.created`, and anything more would be a duplicate.
    let mut about_alices = Vec::new();
    while let Some(event) = stream.next(Duration::from_secs(3)).await {
        let body = event.json();
        if body["payload"]["rsvp_id"] == alices {
            about_alices.push(body["kind"].as_str().unwrap_or_default().to_string());
        }
    }
    assert_eq!(
        about_alices.iter().filter(|k| *k == "rsvp.created").count(),
        1,
        "alice's stream: {about_alices:?}"
    );
    for name in guests.iter().chain(["alice".to_string()].iter()) {
        let mails = mails_to(&sink, &format!("{name}@example.com"));
        let expected = if name == "alice" { 3 } else { 1 };
        let seen: Vec<(Option<String>, Option<String>)> = mails
            .iter()
            .map(|m| (header(m, "Subject"), header(m, "Message-ID")))
            .collect();
        assert_eq!(
            mails.len(),
            expected,
            "mails to {name}: one per RSVP, none twice: {seen:?}"
        );
    }
    assert!(
        eventually(Duration::from_secs(20), async || my_rsvps(&base, &alice)
            .await
            .iter()
            .all(|r| r["confirmation_sent_at"].is_string()))
        .await,
        "alice's RSVPs were not all confirmed after the broker came back"
    );
    let tally = load.finish().await;
    tally.assert_no_failure("broker cut").await;
    eprintln!(
        "broker host cut 30 s: 6 RSVPs accepted meanwhile, every mail delivered {:.1} s after the link came back, none twice; {} reads, 0 failed",
        delivered.as_secs_f64(),
        tally.ok.load(Ordering::Relaxed)
    );

    // 4. A second load balancer on its own host serves the same site, the same
    //    sessions and the same edge pages.
    let page = http
        .put(format!("{base}/api/pages/several-hosts"))
        .header("cookie", &admin)
        .json(&json!({"title": "Several hosts", "body_markdown": "Baked on **eight** hosts."}))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 202);
    let mut bodies = Vec::new();
    for (edge, at) in [("edge", &base), ("edge-b", &base_b)] {
        let url = format!("{at}/pages/several-hosts");
        // Served by the balancer's own edge once the render job has put it there.
        assert!(
            eventually(Duration::from_secs(30), async || {
                http.get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200 && harness::served_by(&r) == edge)
            })
            .await,
            "{edge} never served the page from its edge"
        );
        let answer = http.get(&url).send().await.unwrap();
        bodies.push(answer.text().await.unwrap());
        let me = harness::get_json(&format!("{at}/api/me"), &alice).await;
        assert_eq!(me["username"], "alice", "alice's session through {edge}");
    }
    assert_eq!(
        bodies[0], bodies[1],
        "both entry points serve the same page"
    );
    assert!(bodies[0].contains("<strong>eight</strong>"));

    // 5. 1 % packet loss between the web hosts and the databases: correct, slower.
    let clean = Load::reads(&base, &reads, &alice, 4);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let clean = clean.finish().await;
    for host in ["web-a", "web-b"] {
        lossy_database_link(&hosts, host, &proxies, true);
    }
    let lossy = Load::reads(&base, &reads, &alice, 4);
    let lossy_class = class(&base, &admin, "Rye in the fog").await;
    let fog = rsvp(&base, &alice, lossy_class).await;
    assert!(my_rsvps(&base, &alice).await.iter().any(|r| r["id"] == fog));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let lossy = lossy.finish().await;
    for host in ["web-a", "web-b"] {
        lossy_database_link(&hosts, host, &proxies, false);
    }
    clean.assert_no_failure("clean link").await;
    lossy.assert_no_failure("lossy link").await;
    let (c50, c99) = clean.percentiles().await;
    let (l50, l99) = lossy.percentiles().await;
    eprintln!(
        "1% loss to the databases: p50 {l50:.1} ms, p99 {l99:.1} ms ({} reads, 0 failed); clean link: p50 {c50:.1} ms, p99 {c99:.1} ms ({} reads)",
        lossy.ok.load(Ordering::Relaxed),
        clean.ok.load(Ordering::Relaxed)
    );

    // 6. 100 ms more on every request from the web hosts to the databases: correct,
    //    slower by about that much per query (a page makes several).
    for proxy in proxies {
        proxy.set_latency(Duration::from_millis(100));
    }
    let slow = Load::reads(&base, &reads, &alice, 4);
    let slow_class = class(&base, &admin, "Rye far away").await;
    let far = rsvp(&base, &alice, slow_class).await;
    assert!(my_rsvps(&base, &alice).await.iter().any(|r| r["id"] == far));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let slow = slow.finish().await;
    for proxy in proxies {
        proxy.set_latency(Duration::ZERO);
    }
    slow.assert_no_failure("slow link").await;
    let (s50, s99) = slow.percentiles().await;
    eprintln!(
        "100 ms delay to the databases: p50 {s50:.1} ms, p99 {s99:.1} ms ({} reads, 0 failed); clean link: p50 {c50:.1} ms, p99 {c99:.1} ms",
        slow.ok.load(Ordering::Relaxed)
    );

    // 7. The primary's host lost: writes are refused (503), reads go on from the
    //    replica; once the replica is promoted every clone writes there, without a
    //    restart, and no write that was acknowledged is missing. (Synchronous
    //    replication from here on, as an operator who fails over would run it: an
    //    acknowledged commit is on the replica too.)
    let psql = |host: &str, sql: &str| {
        let out = std::process::Command::new("psql")
            .args([
                "-h",
                &hosts.address(host).to_string(),
                "-U",
                "postgres",
                "-d",
                "bakery",
                "-Atqc",
                sql,
            ])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{sql} on {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    psql("db-1", "ALTER SYSTEM SET synchronous_standby_names = '*'");
    psql("db-1", "SELECT pg_reload_conf()");
    let writes = Arc::new(Mutex::new(Vec::<(Instant, Result<i64, String>)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (writes, stop, admin, base) =
            (writes.clone(), stop.clone(), admin.clone(), base.clone());
        tokio::spawn(async move {
            let http = harness::client();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let answer = http
                    .post(format!("{base}/api/products"))
                    .header("cookie", &admin)
                    .json(&json!({"name": format!("Loaf {n}"), "description": "failover", "price_cents": 100 + n}))
                    .send()
                    .await;
                let outcome = match answer {
                    Ok(a) if a.status() == 201 => {
                        Ok(a.json::<Value>().await.unwrap()["id"].as_i64().unwrap())
                    }
                    Ok(a) => {
                        let status = a.status();
                        Err(format!("{status} {}", harness::error_code(a).await))
                    }
                    Err(e) => Err(format!("no answer: {e}")),
                };
                let failed = outcome.is_err();
                writes.lock().await.push((Instant::now(), outcome));
                if failed {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    };
    let load = Load::reads(
        &base,
        &[format!("/api/products/{product}"), "/api/ping".to_string()],
        &alice,
        4,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    hosts.cut("db-1");
    let cut_at = Instant::now();
    // Refused while there is no primary, with the contract's error.
    assert!(
        eventually(Duration::from_secs(20), async || {
            writes
                .lock()
                .await
                .iter()
                .any(|(at, w)| *at > cut_at && w.as_ref().is_err_and(|e| e.starts_with("503")))
        })
        .await,
        "no write was refused with 503 while the primary was away: {:?}",
        writes
            .lock()
            .await
            .iter()
            .rev()
            .take(5)
            .map(|(_, w)| w.clone())
            .collect::<Vec<_>>()
    );
    psql("db-2", "SELECT pg_promote()");
    let promoted_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(30), async || {
            writes
                .lock()
                .await
                .iter()
                .any(|(at, w)| *at > promoted_at && w.is_ok())
        })
        .await,
        "no write succeeded after the replica was promoted\n{}",
        hosts.logs()
    );
    let resumed = promoted_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let reads = load.finish().await;
    let writes = writes.lock().await.clone();
    let acknowledged: Vec<i64> = writes
        .iter()
        .filter_map(|(_, w)| w.as_ref().ok().copied())
        .collect();
    let refused: Vec<&String> = writes
        .iter()
        .filter_map(|(_, w)| w.as_ref().err())
        .collect();
    assert!(
        refused
            .iter()
            .all(|e| e.starts_with("503") || e.starts_with("no answer")),
        "a write failed otherwise than 503: {refused:?}"
    );
    for id in &acknowledged {
        let answer = http
            .get(format!("{base}/api/products/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status(),
            200,
            "acknowledged product {id} is missing after the failover"
        );
    }
    reads.assert_no_failure("primary lost").await;
    eprintln!(
        "primary lost: {} writes acknowledged, all present after the failover; {} refused meanwhile ({} with 503); writes resumed {:.2} s after the promotion; {} reads, 0 failed",
        acknowledged.len(),
        refused.len(),
        refused.iter().filter(|e| e.starts_with("503")).count(),
        resumed.as_secs_f64(),
        reads.ok.load(Ordering::Relaxed)
    );
}
