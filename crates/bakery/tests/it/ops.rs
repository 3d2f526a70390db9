//! The operations view (issue 26; contract: "Operations"): `/ops` and
//! `/api/ops/snapshot` show every process by role from the processes' own metrics
//! — the rotation over the clones, restarts, queues, jobs, push streams — and only
//! to admins; `/api/ops/journey/{request_id}` draws what one RSVP caused across
//! processes, on the embedded broker and on RabbitMQ.

use std::time::Duration;

use bakery_testkit::mail::SmtpSink;
use bakery_testkit::sse::SseStream;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::harness::{self, Engine, Up, eventually};

const LIMIT: Duration = Duration::from_secs(30);

/// `GET /api/ops/snapshot` as `cookie` (an admin's).
pub async fn snapshot(up: &Up, cookie: &str) -> Value {
    harness::get_json(&up.url("/api/ops/snapshot"), cookie).await
}

/// An HTML page an admin opens: 200, its text.
async fn admin_page(up: &Up, path: &str, cookie: &str) -> String {
    let page = harness::client()
        .get(up.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "{path}");
    page.text().await.unwrap()
}

fn process<'a>(picture: &'a Value, id: &str) -> &'a Value {
    picture["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("{id} is not in the picture: {picture}"))
}

/// Requests served by each member of the web pool, as the load balancer counts them.
fn served(picture: &Value) -> Vec<(String, i64)> {
    let pools = picture["pools"].as_array().unwrap();
    let web = pools
        .iter()
        .find(|p| p["name"] == "web")
        .unwrap_or_else(|| panic!("no web pool: {picture}"));
    web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["served"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_shows_every_process_and_the_numbers_move_to_admins_only() {
    let mut up = Up::start(vec![], 2);
    let http = harness::client();
    let admin = harness::log_in(&http, &up.base, "admin", "admin-password").await;
    let user =
        harness::sign_up_and_log_in(&http, &up.base, &format!("op{:x}", rand::random::<u32>()))
            .await;

    // Who may look: a visitor is sent to log in, a customer is refused.
    let visitor = http
        .get(up.url("/ops"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert!(visitor.status().is_redirection(), "{}", visitor.status());
    assert_eq!(visitor.headers()["location"], "/login");
    for path in [
        "/ops",
        "/ops/live",
        "/api/ops/snapshot",
        "/api/ops/journey/anything",
    ] {
        let customer = http
            .get(up.url(path))
            .header("cookie", &user)
            .send()
            .await
            .unwrap();
        assert_eq!(customer.status(), 403, "a customer at {path}");
    }
    let anonymous = http.get(up.url("/api/ops/snapshot")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // Every process of `up`, by role, up, from the registry and its own metrics.
    let ids = [
        "lb-1", "web-1", "web-2", "push-1", "email-1", "worker-1", "worker-2",
    ];
    let all_up = eventually(LIMIT, async || {
        let picture = snapshot(&up, &admin).await;
        ids.iter().all(|id| {
            picture["processes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["id"] == *id && p["up"] == true)
        })
    })
    .await;
    assert!(
        all_up,
        "every process is shown up: {}",
        snapshot(&up, &admin).await
    );
    let before = snapshot(&up, &admin).await;
    assert_eq!(process(&before, "worker-1")["role"], "worker");
    assert_eq!(process(&before, "lb-1")["role"], "lb");
    let queues: Vec<&str> = before["broker"]["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    for queue in [
        "email.rsvp",
        "push.notifications",
        "jobs.noop",
        "calendar.followups",
    ] {
        assert!(queues.contains(&queue), "{queue} in {queues:?}");
    }

    // Load: the rotation shows in what each clone served, the totals move, and a
    // job shows by kind and state.
    for _ in 0..40 {
        let pong = http.get(up.url("/api/ping")).send().await.unwrap();
        assert_eq!(pong.status(), 200);
    }
    let job = http
        .post(up.url("/api/jobs"))
        .header("cookie", &admin)
        .json(&json!({"kind": "noop", "payload": {"ms": 10}}))
        .send()
        .await
        .unwrap();
    assert_eq!(job.status(), 202);
    let job = job.json::<Value>().await.unwrap()["job_id"]
        .as_i64()
        .unwrap();
    // Reads of a route whose label holds braces (`/api/jobs/{id}`): counted too.
    for _ in 0..20 {
        let read = http
            .get(up.url(&format!("/api/jobs/{job}")))
            .header("cookie", &admin)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200);
    }
    let moved = eventually(LIMIT, async || {
        let after = snapshot(&up, &admin).await;
        let rotated = served(&before)
            .iter()
            .zip(served(&after))
            .all(|((id, was), (_, now))| id.starts_with("web-") && now >= was + 15);
        let requests = |p: &Value, id: &str| process(p, id)["requests"].as_f64().unwrap();
        let grown = |id: &str| requests(&after, id) - requests(&before, id);
        let counted =
            grown("web-1") > 0.0 && grown("web-2") > 0.0 && grown("web-1") + grown("web-2") >= 61.0;
        let job_done = after["jobs"]["counts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["kind"] == "noop" && j["state"] == "succeeded" && j["count"] == 1);
        rotated && counted && job_done && after["jobs"]["ended"].as_f64().unwrap() >= 1.0
    })
    .await;
    assert!(
        moved,
        "the pings rotate over both clones and the job ends: before {} after {}",
        before,
        snapshot(&up, &admin).await
    );

    // The page, and its live part: a picture a second, with rates from the second.
    let html = admin_page(&up, "/ops", &admin).await;
    for id in ids {
        assert!(html.contains(id), "{id} on /ops");
    }
    let mut live = SseStream::open(&up.url("/ops/live"), &admin, None).await;
    let pictures = live.take(2, Duration::from_secs(10)).await;
    assert_eq!(pictures.len(), 2, "two pictures within 10 s");
    assert!(
        pictures
            .iter()
            .all(|p| p.event.as_deref() == Some("picture"))
    );
    assert!(
        pictures[0]
            .data
            .contains("rates show from the next picture")
    );
    assert!(
        !pictures[1]
            .data
            .contains("rates show from the next picture")
    );
    assert!(pictures[1].data.contains("web-2") && pictures[1].data.contains("email.rsvp"));

    // A crash and the supervisor's replacement count as a restart.
    let worker = up.process("worker-1");
    let old_pid = process(&before, "worker-1")["pid"].clone();
    assert_eq!(old_pid, worker.pid);
    kill(Pid::from_raw(worker.pid), Signal::SIGKILL).unwrap();
    up.wait_line(LIMIT, |l| {
        l.starts_with("started ") && l.contains(" id=worker-1 ")
    })
    .expect("up restarts worker-1");
    let restarted = eventually(LIMIT, async || {
        let picture = snapshot(&up, &admin).await;
        let worker = process(&picture, "worker-1");
        worker["restarts"] == 1 && worker["up"] == true && worker["pid"] != old_pid
    })
    .await;
    assert!(restarted, "{}", snapshot(&up, &admin).await);
}

/// The kinds of hops recorded, as `process-role: what` lines, for failure messages.
fn lines(journey: &Value) -> String {
    journey["hops"]
        .as_array()
        .map(|hops| {
            hops.iter()
                .map(|h| format!("{} {} {}", h["at"], h["process"], h["what"]))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_else(|| journey.to_string())
}

async fn one_rsvp_journey(engine: Engine) {
    let sink = SmtpSink::start();
    let mut env = vec![
        ("BAKERY_SMTP_URL".to_string(), sink.url()),
        ("BAKERY_EMAIL_VERIFICATION".into(), "off".into()),
    ];
    env.extend(engine.env().await);
    let up = Up::start(env, 2);
    let http = harness::client();
    let admin = harness::log_in(&http, &up.base, "admin", "admin-password").await;
    let user =
        harness::sign_up_and_log_in(&http, &up.base, &format!("j{:x}", rand::random::<u32>()))
            .await;
    let mut stream = SseStream::open(&up.url("/api/notifications/stream"), &user, None).await;
    let class = http
        .post(up.url("/api/events"))
        .header("cookie", &admin)
        .json(&json!({"title": "Croissants", "starts_at": "2031-05-01T10:00:00Z", "capacity": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(class.status(), 201);
    let class = class.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let request_id = format!("journey-{:x}", rand::random::<u64>());
    let rsvp = http
        .post(up.url(&format!("/api/events/{class}/rsvp")))
        .header("cookie", &user)
        .header("x-request-id", &request_id)
        .send()
        .await
        .unwrap();
    assert_eq!(rsvp.status(), 201);
    assert_eq!(rsvp.headers()["x-request-id"], request_id.as_str());
    assert_eq!(
        stream.take(2, LIMIT).await.len(),
        2,
        "{engine:?}: both events pushed"
    );

    let url = up.url(&format!("/api/ops/journey/{request_id}"));
    let wanted = [
        ("web-", "rsvp.created staged in the outbox"),
        ("web-", "rsvp.created published to bakery.events"),
        ("email-1", "rsvp.created delivered from email.rsvp: ack"),
        ("email-1", "mailed "),
        ("email-1", "email.sent staged in the outbox"),
        (
            "push-1",
            "rsvp.created delivered from push.notifications: ack",
        ),
        ("push-1", "rsvp.created pushed on a stream"),
        ("push-1", "email.sent pushed on a stream"),
        ("web-", "email.sent delivered from calendar.followups: ack"),
    ];
    let complete = eventually(LIMIT, async || {
        let journey = harness::get_json(&url, &admin).await;
        let Some(hops) = journey["hops"].as_array() else {
            return false;
        };
        wanted.iter().all(|(process, what)| {
            hops.iter().any(|h| {
                h["process"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(process)
                    && h["what"].as_str().unwrap_or_default().contains(what)
            })
        })
    })
    .await;
    let journey = harness::get_json(&url, &admin).await;
    assert!(
        complete,
        "{engine:?}: the whole journey is drawn:\n{}",
        lines(&journey)
    );
    assert_eq!(journey["request_id"], request_id.as_str());
    let hops = journey["hops"].as_array().unwrap();
    let times: Vec<time::OffsetDateTime> = hops
        .iter()
        .map(|h| {
            let at = h["at"].as_str().unwrap();
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|e| panic!("{at} is RFC 3339: {e}"))
        })
        .collect();
    assert!(times.is_sorted(), "in time order:\n{}", lines(&journey));
    let first = &hops[0];
    assert!(
        first["what"]
            .as_str()
            .unwrap()
            .contains("staged in the outbox")
            && first["kind"] == "rsvp.created",
        "the write comes first: {}",
        lines(&journey)
    );
    let mailed = hops
        .iter()
        .find(|h| h["what"].as_str().unwrap().starts_with("mailed "))
        .unwrap();
    assert!(mailed["to"].as_str().unwrap().ends_with("@example.com"));
    // The page draws the same.
    let html = admin_page(&up, &format!("/ops?journey={request_id}"), &admin).await;
    assert!(html.contains("pushed on a stream of user") && html.contains("email-1"));
    let unknown = http
        .get(up.url("/api/ops/journey/never-seen-id"))
        .header("cookie", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(harness::error_code(unknown).await, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journey_of_one_rsvp_is_drawn_from_its_request_id_embedded() {
    one_rsvp_journey(Engine::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journey_of_one_rsvp_is_drawn_from_its_request_id_rabbitmq() {
    one_rsvp_journey(Engine::RabbitMq).await;
}
