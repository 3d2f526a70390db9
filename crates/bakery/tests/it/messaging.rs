//! The broker end to end (contract: "Broker topology"; issue "Asynchronism I"): an
//! RSVP commits with its event in the outbox, the relay publishes it, the email
//! service sends one mail through a real SMTP server and publishes `email.sent`,
//! the calendar's follow-up sets `confirmation_sent_at`, and the push service streams
//! both events to every open stream of the user — on the embedded broker and on
//! RabbitMQ. Then the failures: SMTP 451 and 550, dead letters and replay, a killed
//! email service, a RabbitMQ restart, clones killed between commit and publish.

use std::collections::HashSet;
use std::time::Duration;

use bakery_testkit::mail::{SmtpSink, header, mails_to, readable, token_in};
use bakery_testkit::sse::SseStream;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::harness::{self, Engine, Up, eventually};

const LIMIT: Duration = Duration::from_secs(30);

/// `up` with the mail going to `sink`, on `engine`, retrying fast.
async fn start(engine: Engine, sink: &SmtpSink, clones: usize) -> Up {
    start_with(engine, sink, clones, &[]).await
}

/// [`start`], with `extra` variables.
async fn start_with(engine: Engine, sink: &SmtpSink, clones: usize, extra: &[(&str, &str)]) -> Up {
    let mut env = vec![
        ("BAKERY_SMTP_URL".to_string(), sink.url()),
        // These tests are about delivery: every address gets its mail at once.
        ("BAKERY_EMAIL_VERIFICATION".into(), "off".into()),
        ("BAKERY_BROKER_RETRY_BASE_MS".into(), "100".into()),
        ("BAKERY_BROKER_RETRY_CAP_MS".into(), "400".into()),
        ("BAKERY_BROKER_LEASE_SECS".into(), "5".into()),
        ("BAKERY_OUTBOX_SWEEP_AFTER_MS".into(), "500".into()),
    ];
    env.extend(engine.env().await);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Up::start(env, clones)
}

/// Logs in as the admin and creates a class with `capacity` seats.
async fn class(up: &Up, capacity: i64) -> i64 {
    let admin = harness::log_in(&harness::client(), &up.base, "admin", "admin-password").await;
    let title = format!("Sourdough {}", rand::random::<u16>());
    harness::create_class(&up.base, &admin, &title, capacity).await
}

async fn rsvp(up: &Up, cookie: &str, event: i64, request_id: &str) -> i64 {
    let answer = harness::client()
        .post(up.url(&format!("/api/events/{event}/rsvp")))
        .header("cookie", cookie)
        .header("x-request-id", request_id)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201, "RSVP to {event}");
    answer.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap()
}

/// The user's RSVPs whose confirmation was sent.
async fn confirmed(up: &Up, cookie: &str) -> usize {
    let mine: Value = harness::get_json(&up.url("/api/me/rsvps"), cookie).await;
    mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["confirmation_sent_at"].is_string())
        .count()
}

fn kill_9(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
}

/// Waits for `up` to print that it started `id` again after a kill.
fn wait_restarted(up: &mut Up, id: &str) {
    wait_all_restarted(up, &[id]);
}

/// Waits for `up` to print a `started` line for each of `ids`, in any order.
pub(crate) fn wait_all_restarted(up: &mut Up, ids: &[&str]) {
    let mut missing: HashSet<String> = ids.iter().map(|id| format!(" id={id} ")).collect();
    while !missing.is_empty() {
        let line = up.wait_line(LIMIT, |l| {
            l.starts_with("started ") && missing.iter().any(|m| l.contains(m.as_str()))
        });
        let Some(line) = line else {
            panic!("up did not restart {missing:?}");
        };
        missing.retain(|m| !line.contains(m.as_str()));
    }
}

async fn one_rsvp_reaches_everyone(engine: Engine) {
    let sink = SmtpSink::start();
    let up = start(engine, &sink, 2).await;
    // A second push process of the same deployment: the user's streams on either
    // one get every event.
    let mut env = up.env.clone();
    env.push(("BAKERY_LOG".into(), "warn".into()));
    let push_2 = harness::Role::start(&["push", "--listen", "127.0.0.1:0", "--id", "push-2"], env);
    let http = harness::client();
    let user = format!("ann{:x}", rand::random::<u32>());
    let cookie = harness::sign_up_and_log_in(&http, &up.base, &user).await;
    let mut through_lb = SseStream::open(&up.url("/api/notifications/stream"), &cookie, None).await;
    let mut direct = SseStream::open(&push_2.url("/api/notifications/stream"), &cookie, None).await;

    let event = class(&up, 10).await;
    let rsvp_id = rsvp(&up, &cookie, event, "corr-one-rsvp").await;

    for stream in [&mut through_lb, &mut direct] {
        let got = stream.take(2, LIMIT).await;
        let kinds: Vec<_> = got
            .iter()
            .map(|e| e.event.clone().unwrap_or_default())
            .collect();
        assert_eq!(kinds, ["rsvp.created", "email.sent"], "{engine:?}: {got:?}");
        let created = got[0].json();
        assert_eq!(created["payload"]["rsvp_id"], rsvp_id);
        assert_eq!(
            got[0].id.as_deref(),
            Some(created["id"].to_string().as_str())
        );
        assert_eq!(got[1].json()["payload"]["about"], "rsvp.created");
    }
    assert!(
        eventually(LIMIT, async || confirmed(&up, &cookie).await == 1).await,
        "{engine:?}: confirmation_sent_at was never set"
    );
    let mails = sink.messages();
    assert_eq!(mails.len(), 1, "{engine:?}: exactly one mail: {mails:?}");
    assert!(
        header(&mails[0], "To")
            .unwrap()
            .contains(&format!("{user}@example.com"))
    );
    assert!(header(&mails[0], "Subject").unwrap().contains("Sourdough"));
    // The list answers what the streams carried, newest first.
    let list: Value = harness::get_json(&up.url("/api/notifications"), &cookie).await;
    let kinds: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["email.sent", "rsvp.created"]);
}

#[tokio::test]
async fn one_rsvp_reaches_one_mail_two_push_processes_and_its_follow_up_embedded() {
    one_rsvp_reaches_everyone(Engine::Embedded).await;
}

#[tokio::test]
async fn one_rsvp_reaches_one_mail_two_push_processes_and_its_follow_up_embedded_on_postgres() {
    one_rsvp_reaches_everyone(Engine::EmbeddedPostgres).await;
}

#[tokio::test]
async fn one_rsvp_reaches_one_mail_two_push_processes_and_its_follow_up_embedded_on_mariadb() {
    one_rsvp_reaches_everyone(Engine::EmbeddedMariaDb).await;
}

#[tokio::test]
async fn one_rsvp_reaches_one_mail_two_push_processes_and_its_follow_up_rabbitmq() {
    one_rsvp_reaches_everyone(Engine::RabbitMq).await;
}

#[tokio::test]
async fn an_smtp_server_answering_451_twice_gets_the_mail_once_on_the_third_try() {
    let sink = SmtpSink::start();
    sink.tempfail(2);
    let up = start(Engine::Embedded, &sink, 1).await;
    let http = harness::client();
    let cookie = harness::sign_up_and_log_in(&http, &up.base, "bea451").await;
    let event = class(&up, 10).await;
    rsvp(&up, &cookie, event, "corr-451").await;
    assert!(eventually(LIMIT, async || confirmed(&up, &cookie).await == 1).await);
    assert_eq!(sink.count(), 1);
    let email = up.process("email-1").addr;
    let labels = ["queue=\"email.rsvp\"", "outcome=\"retry\""];
    assert_eq!(
        harness::metric(email, "bakery_broker_consumed_total", &labels).await,
        2.0
    );
    let acked = ["queue=\"email.rsvp\"", "outcome=\"ack\""];
    assert_eq!(
        harness::metric(email, "bakery_broker_consumed_total", &acked).await,
        1.0
    );
}

async fn rejected_mail_is_dead_then_replayed(engine: Engine) {
    let sink = SmtpSink::start();
    sink.reject(true);
    let up = start(engine, &sink, 1).await;
    let http = harness::client();
    let cookie = harness::sign_up_and_log_in(&http, &up.base, "cal550").await;
    let event = class(&up, 10).await;
    let request_id = format!("corr-dead-{:x}", rand::random::<u32>());
    rsvp(&up, &cookie, event, &request_id).await;

    let list = || harness::run_output(&["dead", "list", "--queue", "email.rsvp"], up.env.clone());
    let mut listed = String::new();
    let dead = eventually(LIMIT, async || {
        let (code, out, _) = list();
        listed = out;
        code == Some(0) && listed.contains("1 dead letter(s)")
    })
    .await;
    assert!(dead, "{engine:?}: no dead letter; listed:\n{listed}");
    assert!(
        listed.contains("rsvp.created") && listed.contains("550"),
        "{listed}"
    );
    assert_eq!(sink.count(), 0);
    assert_eq!(confirmed(&up, &cookie).await, 0);
    // The cause is fixed; the operator replays.
    sink.reject(false);
    let (code, out, err) = harness::run_output(
        &["dead", "replay", "--all", "--queue", "email.rsvp"],
        up.env.clone(),
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("replayed 1"), "{out}");
    assert!(eventually(LIMIT, async || confirmed(&up, &cookie).await == 1).await);
    assert_eq!(sink.count(), 1);
    let (_, out, _) = list();
    assert!(out.contains("0 dead letter(s)"), "{out}");
    // A bad queue name is one clear line and exit 2.
    let (code, _, err) = harness::run_output(&["dead", "list", "--queue", "nope"], up.env.clone());
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--queue") && err.contains("email.rsvp"),
        "{err}"
    );
}

#[tokio::test]
async fn an_smtp_550_dead_letters_the_mail_and_replay_delivers_it_embedded() {
    rejected_mail_is_dead_then_replayed(Engine::Embedded).await;
}

#[tokio::test]
async fn an_smtp_550_dead_letters_the_mail_and_replay_delivers_it_embedded_on_postgres() {
    rejected_mail_is_dead_then_replayed(Engine::EmbeddedPostgres).await;
}

#[tokio::test]
async fn an_smtp_550_dead_letters_the_mail_and_replay_delivers_it_rabbitmq() {
    rejected_mail_is_dead_then_replayed(Engine::RabbitMq).await;
}

#[tokio::test]
async fn a_stream_resumes_after_last_event_id_in_order_also_after_a_push_restart() {
    let sink = SmtpSink::start();
    let mut up = start(Engine::Embedded, &sink, 1).await;
    let http = harness::client();
    let cookie = harness::sign_up_and_log_in(&http, &up.base, "dot").await;
    let notifications = async |up: &Up| -> Vec<(i64, String)> {
        let list: Value = harness::get_json(&up.url("/api/notifications"), &cookie).await;
        let mut items: Vec<(i64, String)> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["id"].as_i64().unwrap(),
                    n["kind"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        items.sort();
        items
    };
    let mut events = Vec::new();
    for _ in 0..3 {
        let event = class(&up, 5).await;
        rsvp(&up, &cookie, event, "corr-resume").await;
        events.push(event);
    }
    assert!(eventually(LIMIT, async || notifications(&up).await.len() == 6).await);
    let before = notifications(&up).await;
    let mut resumed = SseStream::open(
        &up.url("/api/notifications/stream"),
        &cookie,
        Some(&before[1].0.to_string()),
    )
    .await;
    let got = resumed.take(4, LIMIT).await;
    let ids: Vec<i64> = got
        .iter()
        .map(|e| e.id.as_ref().unwrap().parse().unwrap())
        .collect();
    let want: Vec<i64> = before[2..].iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, want, "missed notifications, in order");
    drop(resumed);

    // The push process dies; a cancellation happens meanwhile.
    kill_9(up.process("push-1").pid);
    let cancelled = http
        .delete(up.url(&format!("/api/events/{}/rsvp", events[0])))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 204);
    wait_restarted(&mut up, "push-1");
    let last = before.last().unwrap().0.to_string();
    let mut after_restart =
        SseStream::open(&up.url("/api/notifications/stream"), &cookie, Some(&last)).await;
    let got = after_restart.take(2, LIMIT).await;
    let kinds: HashSet<String> = got.iter().filter_map(|e| e.event.clone()).collect();
    assert_eq!(
        kinds,
        HashSet::from(["rsvp.cancelled".to_string(), "email.sent".to_string()]),
        "{got:?}"
    );
    let ids: Vec<i64> = got
        .iter()
        .map(|e| e.id.as_ref().unwrap().parse().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]) && ids[0] > before.last().unwrap().0,
        "{ids:?}"
    );
}

/// Users that each RSVP to `event` (each user once), returning their cookies.
async fn crowd(up: &Up, prefix: &str, n: usize) -> Vec<String> {
    let http = harness::client();
    let mut cookies = Vec::new();
    for i in 0..n {
        cookies.push(harness::sign_up_and_log_in(&http, &up.base, &format!("{prefix}{i}")).await);
    }
    cookies
}

/// Every member got exactly one mail, and every RSVP its confirmation.
async fn each_exactly_once(up: &Up, sink: &SmtpSink, prefix: &str, cookies: &[String]) {
    let n = cookies.len();
    let all_confirmed = eventually(Duration::from_secs(60), async || {
        for cookie in cookies {
            if confirmed(up, cookie).await != 1 {
                return false;
            }
        }
        true
    })
    .await;
    assert!(
        all_confirmed,
        "not every RSVP was confirmed; {} mails",
        sink.count()
    );
    let mails = sink.messages();
    let recipients: Vec<String> = mails.iter().filter_map(|m| header(m, "To")).collect();
    let distinct: HashSet<&String> = recipients.iter().collect();
    assert_eq!(
        mails.len(),
        n,
        "one mail per RSVP, none twice: {recipients:?}; {}",
        sink.log()
    );
    assert_eq!(distinct.len(), n);
    assert!(recipients.iter().all(|r| r.contains(prefix)));
}

/// What a killed email service can promise: every member got their mail, and any
/// second copy is the same mail — the same `Message-ID` — sent again because the
/// process died between the SMTP server's acceptance and its record of it (the one
/// window at-least-once delivery leaves; at most the messages in flight at the kill).
async fn each_at_least_once_as_one_mail(
    up: &Up,
    sink: &SmtpSink,
    prefix: &str,
    cookies: &[String],
    in_flight: usize,
) {
    let n = cookies.len();
    let all_confirmed = eventually(Duration::from_secs(60), async || {
        for cookie in cookies {
            if confirmed(up, cookie).await != 1 {
                return false;
            }
        }
        true
    })
    .await;
    assert!(
        all_confirmed,
        "not every RSVP was confirmed; {} mails",
        sink.count()
    );
    let mails = sink.messages();
    let mut ids_by_recipient: std::collections::HashMap<String, HashSet<String>> =
        std::collections::HashMap::new();
    for mail in &mails {
        let to = header(mail, "To").unwrap_or_default();
        let id = header(mail, "Message-ID").unwrap_or_default();
        assert!(to.contains(prefix), "{to}");
        ids_by_recipient.entry(to).or_default().insert(id);
    }
    assert_eq!(
        ids_by_recipient.len(),
        n,
        "every member got a mail: {}",
        sink.log()
    );
    for (to, ids) in &ids_by_recipient {
        assert_eq!(
            ids.len(),
            1,
            "copies to {to} are one mail (one Message-ID): {ids:?}"
        );
    }
    assert!(
        mails.len() <= n + in_flight,
        "{} mails for {n} RSVPs with {in_flight} in flight at the kill",
        mails.len()
    );
}

async fn killed_email_service_sends_each_mail_once(engine: Engine) {
    let sink = SmtpSink::start();
    let mut up = start(engine, &sink, 1).await;
    let prefix = format!("k{:x}x", rand::random::<u16>());
    let cookies = crowd(&up, &prefix, 8).await;
    let event = class(&up, 50).await;
    // The SMTP server holds every message before answering: the kill lands
    // mid-message, with no mail accepted yet.
    sink.hold(true);
    for cookie in &cookies {
        rsvp(&up, cookie, event, "corr-kill-email").await;
    }
    assert!(
        eventually(LIMIT, async || sink.held() > 0).await,
        "no mail in flight"
    );
    let email = up.process("email-1").pid;
    kill_9(email);
    let in_flight = sink.held();
    // Gone for good (its sockets closed) before the server answers anything.
    assert!(eventually(LIMIT, async || !harness::process_alive(email)).await);
    sink.hold(false);
    wait_restarted(&mut up, "email-1");
    each_at_least_once_as_one_mail(&up, &sink, &prefix, &cookies, in_flight).await;
}

#[tokio::test]
async fn killing_the_email_service_mid_message_delivers_every_mail_under_one_message_id_embedded() {
    killed_email_service_sends_each_mail_once(Engine::Embedded).await;
}

#[tokio::test]
async fn killing_the_email_service_mid_message_delivers_every_mail_under_one_message_id_embedded_on_postgres()
 {
    killed_email_service_sends_each_mail_once(Engine::EmbeddedPostgres).await;
}

#[tokio::test]
async fn killing_the_email_service_mid_message_delivers_every_mail_under_one_message_id_embedded_on_mariadb()
 {
    killed_email_service_sends_each_mail_once(Engine::EmbeddedMariaDb).await;
}

#[tokio::test]
async fn killing_the_email_service_mid_message_delivers_every_mail_under_one_message_id_rabbitmq() {
    killed_email_service_sends_each_mail_once(Engine::RabbitMq).await;
}

pub(crate) fn rabbitmqctl(command: &str) {
    let status = std::process::Command::new("rabbitmqctl")
        .args(["-q", command])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {command}");
}

/// RSVPs keep coming while RabbitMQ is away; the clones that took them are killed
/// after their commits and before any publish could happen. Once RabbitMQ is back,
/// every RSVP yields exactly one mail and one confirmation.
#[tokio::test]
async fn a_rabbitmq_restart_and_clones_killed_between_commit_and_publish_lose_nothing() {
    let sink = SmtpSink::start();
    let mut up = start(Engine::RabbitMq, &sink, 2).await;
    let prefix = format!("r{:x}x", rand::random::<u16>());
    let cookies = crowd(&up, &prefix, 10).await;
    let event = class(&up, 50).await;
    for cookie in &cookies[..4] {
        rsvp(&up, cookie, event, "corr-before-restart").await;
    }
    rabbitmqctl("stop_app");
    let email = up.process("email-1").addr;
    let health = async || {
        harness::client()
            .get(format!("http://{email}/healthz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let unhealthy = eventually(LIMIT, async || health().await == 503).await;
    for cookie in &cookies[4..] {
        rsvp(&up, cookie, event, "corr-during-restart").await;
    }
    // Commits are in; no relay could publish them. The clones die now (they come
    // back once RabbitMQ does: a clone does not start without its broker).
    let clones: Vec<i32> = up.clones().iter().map(|c| up.process(&c.id).pid).collect();
    for pid in clones {
        kill_9(pid);
    }
    rabbitmqctl("start_app");
    wait_all_restarted(&mut up, &["web-1", "web-2"]);
    assert!(
        unhealthy,
        "the email service's /healthz stayed 200 while RabbitMQ was away"
    );
    assert!(
        eventually(LIMIT, async || health().await == 200).await,
        "healthz did not recover"
    );
    each_exactly_once(&up, &sink, &prefix, &cookies).await;
}

/// Stages a message in the deployment's outbox, as a write of another build would:
/// the relay publishes it like any other.
async fn stage_raw(up: &Up, kind: &str, body: &str) {
    use sqlx::Connection;
    let data = up
        .env
        .iter()
        .find(|(k, _)| k == "BAKERY_DATA_DIR")
        .map(|(_, v)| v.clone())
        .unwrap();
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{data}/bakery.db"))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO outbox (exchange, message_id, correlation_id, kind, body, created_at)
         VALUES ('bakery.events', $1, 'corr-unknown', $2, $3, 0)",
    )
    .bind(format!("{:032x}", rand::random::<u128>()))
    .bind(kind)
    .bind(body)
    .execute(&mut db)
    .await
    .unwrap();
}

/// A message whose version or type no consumer of this build knows is not dropped
/// and not retried for ever: it goes to its queue's dead letters with a reason that
/// says so, and what follows it is delivered as usual.
async fn unknown_messages_are_dead_with_their_reason(engine: Engine) {
    let sink = SmtpSink::start();
    let up = start(engine, &sink, 1).await;
    // As from a newer build: version 2 of rsvp.created, and a type this build has
    // never heard of that the bindings (rsvp.*) still route to email and push.
    stage_raw(
        &up,
        "rsvp.created",
        r#"{"v": 2, "rsvp_id": 1, "seat": "A1"}"#,
    )
    .await;
    stage_raw(&up, "rsvp.teleported", r#"{"v": 1, "rsvp_id": 1}"#).await;
    let list =
        |queue: &str| harness::run_output(&["dead", "list", "--queue", queue], up.env.clone()).1;
    let mut listed = String::new();
    let dead = eventually(LIMIT, async || {
        listed = list("email.rsvp");
        listed.contains("2 dead letter(s)")
    })
    .await;
    assert!(dead, "{engine:?}: listed:\n{listed}");
    assert!(
        listed.contains("unknown version 2") && listed.contains("unknown message type"),
        "{listed}"
    );
    let mut pushed = String::new();
    assert!(
        eventually(LIMIT, async || {
            pushed = list("push.notifications");
            pushed.contains("2 dead letter(s)")
        })
        .await,
        "{pushed}"
    );
    // Dead at once, on the first delivery, not after every retry.
    let attempts: Vec<&str> = listed
        .lines()
        .filter(|l| l.starts_with("email.rsvp"))
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(attempts, ["1", "1"], "{listed}");
    // The consumers go on: a real RSVP is mailed and confirmed.
    let http = harness::client();
    let cookie = harness::sign_up_and_log_in(&http, &up.base, "newer").await;
    let event = class(&up, 3).await;
    rsvp(&up, &cookie, event, "corr-after-unknown").await;
    assert!(eventually(LIMIT, async || confirmed(&up, &cookie).await == 1).await);
}

#[tokio::test]
async fn messages_of_an_unknown_type_or_version_are_dead_with_their_reason_embedded() {
    unknown_messages_are_dead_with_their_reason(Engine::Embedded).await;
}

#[tokio::test]
async fn messages_of_an_unknown_type_or_version_are_dead_with_their_reason_rabbitmq() {
    unknown_messages_are_dead_with_their_reason(Engine::RabbitMq).await;
}

/// The mails in `sink` to `address`.
/// Issue 25, 4 (contract, third round): a new address gets one verification mail
/// with a single-use link; RSVP mail goes only to verified addresses (the RSVP and
/// its push event happen either way); a changed address is unverified again and
/// gets a new mail; and a user who RSVPs and cancels over and over is not mailed
/// each time.
#[tokio::test]
async fn addresses_are_verified_before_mail_goes_to_them() {
    addresses_are_verified(Engine::Embedded).await;
}

/// The same on MariaDB (a token used once, the mail budget under a row lock).
#[tokio::test]
async fn addresses_are_verified_before_mail_goes_to_them_on_mariadb() {
    addresses_are_verified(Engine::EmbeddedMariaDb).await;
}

async fn addresses_are_verified(engine: Engine) {
    let sink = SmtpSink::start();
    let mut env = vec![
        ("BAKERY_SMTP_URL".to_string(), sink.url()),
        ("BAKERY_PUBLIC_URL".into(), "https://bakery.example/".into()),
        ("BAKERY_EMAIL_MAX_PER_USER_PER_HOUR".into(), "3".into()),
    ];
    env.extend(engine.env().await);
    let up = Up::start(env, 1);
    let http = harness::client();
    let name = format!("verify{:x}", rand::random::<u32>());
    let address = format!("{name}@example.com");
    let cookie = harness::sign_up_and_log_in(&http, &up.base, &name).await;
    let me: Value = harness::get_json(&up.url("/api/me"), &cookie).await;
    assert_eq!(me["email_verified"], false, "{me}");

    // One verification mail, its link absolute on the public URL.
    assert!(eventually(LIMIT, async || mails_to(&sink, &address).len() == 1).await);
    let mail = mails_to(&sink, &address).remove(0);
    assert!(
        readable(&mail).contains("https://bakery.example/verify-email?token="),
        "{mail}"
    );
    let token = token_in(&mail);
    assert!(token.len() >= 40, "{token}");

    // Unverified: the RSVP and its push event happen, the mail does not.
    let mut stream =
        harness::sse::SseStream::open(&up.url("/api/notifications/stream"), &cookie, None).await;
    let event = class(&up, 5).await;
    rsvp(&up, &cookie, event, "corr-unverified").await;
    let pushed = stream.take(1, LIMIT).await;
    assert_eq!(pushed.len(), 1, "the push event arrives");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        mails_to(&sink, &address).len(),
        1,
        "no RSVP mail to an unverified address"
    );
    assert_eq!(confirmed(&up, &cookie).await, 0);

    // The link, in a browser: verified, once.
    let page = http
        .get(up.url(&format!("/verify-email?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("confirmed"));
    let me: Value = harness::get_json(&up.url("/api/me"), &cookie).await;
    assert_eq!(me["email_verified"], true, "{me}");
    let again = http
        .post(up.url("/api/users/verify-email"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);
    assert_eq!(harness::error_code(again).await, "invalid_token");
    let made_up = http
        .post(up.url("/api/users/verify-email"))
        .json(&json!({"token": "A".repeat(43)}))
        .send()
        .await
        .unwrap();
    assert_eq!(made_up.status(), 400);
    let page = http
        .get(up.url("/verify-email?token=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 400);

    // Verified: the next RSVP is mailed and confirmed.
    let second = class(&up, 5).await;
    rsvp(&up, &cookie, second, "corr-verified").await;
    assert!(eventually(LIMIT, async || confirmed(&up, &cookie).await == 1).await);
    assert_eq!(mails_to(&sink, &address).len(), 2);

    // RSVP and cancel, again and again: at most the hourly budget of mails (3, of
    // which the confirmation above was one).
    for _ in 0..4 {
        let cancelled = http
            .delete(up.url(&format!("/api/events/{second}/rsvp")))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(cancelled.status(), 204);
        rsvp(&up, &cookie, second, "corr-loop").await;
    }
    // The budget's last two mails arrive; no more come after them.
    assert!(eventually(LIMIT, async || mails_to(&sink, &address).len() == 4).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rsvp_mails = mails_to(&sink, &address).len() - 1;
    assert_eq!(rsvp_mails, 3, "the budget held: {rsvp_mails} RSVP mails");

    // A new address is unverified again and gets its own mail, with the API's link.
    let other = format!("{name}-new@example.com");
    let changed = http
        .patch(up.url("/api/me"))
        .header("cookie", &cookie)
        .json(&json!({"email": other, "current_password": "password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let me: Value = harness::get_json(&up.url("/api/me"), &cookie).await;
    assert_eq!(me["email_verified"], false, "{me}");
    assert!(eventually(LIMIT, async || mails_to(&sink, &other).len() == 1).await);
    let token = token_in(&mails_to(&sink, &other)[0]);
    let verified = http
        .post(up.url("/api/users/verify-email"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), 200);
    let body: Value = verified.json().await.unwrap();
    assert_eq!(body["email_verified"], true);
}

/// Issue 26 (a part): what arrived before the account page was opened is on it, and
/// its stream follows on from the newest one shown (`?after=`), missing nothing.
#[tokio::test]
async fn the_account_page_shows_what_came_before_and_follows_on() {
    let sink = SmtpSink::start();
    let up = start(Engine::Embedded, &sink, 1).await;
    let http = harness::client();
    let cookie =
        harness::sign_up_and_log_in(&http, &up.base, &format!("acct{:x}", rand::random::<u32>()))
            .await;
    let event = class(&up, 4).await;
    rsvp(&up, &cookie, event, "corr-before-page").await;
    let stored = eventually(LIMIT, async || {
        let list: Value = harness::get_json(&up.url("/api/notifications"), &cookie).await;
        // `rsvp.created` and, the mail sent, `email.sent`: all there is to come.
        list["items"]
            .as_array()
            .is_some_and(|items| items.len() >= 2)
    })
    .await;
    assert!(stored, "the RSVP's notifications were not stored");
    let list: Value = harness::get_json(&up.url("/api/notifications"), &cookie).await;
    let newest = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_i64())
        .max()
        .unwrap();
    let page = http
        .get(up.url("/account"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("You have a seat"), "{page}");
    assert!(page.contains(&format!("data-after=\"{newest}\"")), "{page}");
    // The page's stream, from the start: the backlog first, in order.
    let mut stream =
        harness::sse::SseStream::open(&up.url("/api/notifications/stream?after=0"), &cookie, None)
            .await;
    let first = stream.take(1, LIMIT).await;
    assert_eq!(first.len(), 1, "the backlog was not replayed");
    // From the newest shown: only what comes next.
    let mut after = harness::sse::SseStream::open(
        &up.url(&format!("/api/notifications/stream?after={newest}")),
        &cookie,
        None,
    )
    .await;
    assert!(
        after.next(Duration::from_millis(500)).await.is_none(),
        "an old one came again"
    );
}

/// RabbitMQ as a cluster (issue "Beyond one machine"; contract, third round:
/// `BAKERY_BROKER_URL` naming several nodes): three nodes, every queue a quorum queue;
/// the node every process is linked to is killed under a stream of RSVPs and jobs. Every
/// process moves to a surviving node by itself, and every RSVP is mailed exactly once
/// and confirmed, and every job succeeds — nothing lost, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_killed_under_rsvps_and_jobs_loses_nothing_and_mails_nothing_twice_rabbitmq()
{
    use bakery_testkit::rabbit_cluster::RabbitCluster;

    let mut cluster = RabbitCluster::start();
    let sink = SmtpSink::start();
    let up = Up::start(
        vec![
            ("BAKERY_SMTP_URL".to_string(), sink.url()),
            ("BAKERY_EMAIL_VERIFICATION".into(), "off".into()),
            ("BAKERY_BROKER_URL".into(), cluster.url()),
            ("BAKERY_BROKER_RETRY_BASE_MS".into(), "100".into()),
            ("BAKERY_BROKER_RETRY_CAP_MS".into(), "400".into()),
            ("BAKERY_OUTBOX_SWEEP_AFTER_MS".into(), "500".into()),
        ],
        1,
    );
    let listed = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "-n",
            cluster.node_name(1),
            "list_queues",
            "name",
            "type",
        ])
        .output()
        .expect("run rabbitmqctl");
    let listed = String::from_utf8_lossy(&listed.stdout);
    for queue in [
        "email.rsvp",
        "push.notifications",
        "dead.email.rsvp",
        "retry.email.rsvp.1",
    ] {
        let line = listed
            .lines()
            .find(|l| l.split_whitespace().next() == Some(queue))
            .unwrap_or_else(|| panic!("{queue} is declared: {listed}"));
        assert!(line.trim_end().ends_with("quorum"), "{line}");
    }
    let event = class(&up, 100).await;
    let http = harness::client();
    let admin = harness::log_in(&http, &up.base, "admin", "admin-password").await;
    let mut cookies = Vec::new();
    let mut jobs = Vec::new();
    let mut killed_at = None;
    for i in 0..12 {
        let cookie = harness::sign_up_and_log_in(&http, &up.base, &format!("quorum{i}")).await;
        rsvp(&up, &cookie, event, &format!("corr-quorum-{i}")).await;
        cookies.push(cookie);
        // And a job each time: a page for the workers to render.
        let page = http
            .put(up.url(&format!("/api/pages/quorum-{i}")))
            .header("cookie", &admin)
            .json(
                &json!({"title": format!("Quorum {i}"), "body_markdown": "Baked on three nodes."}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 202);
        jobs.push(page.json::<Value>().await.unwrap()["job_id"].clone());
        if i == 3 {
            // The first node named: the one every process linked to.
            cluster.kill(0);
            killed_at = Some(std::time::Instant::now());
            let addr = cluster.addr(0);
            assert!(
                eventually(Duration::from_secs(10), async || {
                    std::net::TcpStream::connect(addr).is_err()
                })
                .await,
                "the killed node still takes connections"
            );
        }
    }
    each_exactly_once(&up, &sink, "quorum", &cookies).await;
    for job in &jobs {
        let url = up.url(&format!("/api/jobs/{job}"));
        assert!(
            eventually(
                LIMIT,
                async || harness::get_json(&url, &admin).await["state"] == "succeeded"
            )
            .await,
            "job {job} did not succeed after the node was killed: {}",
            harness::get_json(&url, &admin).await
        );
    }
    eprintln!(
        "a cluster node killed under RSVPs and jobs: 12 RSVPs and 12 render jobs (8 of each after the kill), 12 mails, none twice, every job succeeded; all confirmed {:.2} s after the kill",
        killed_at.map_or(0.0, |at| at.elapsed().as_secs_f64())
    );
}

/// Streams through the load balancer share its few HTTP/2 connections to the push
/// process (not a connection, and two of the balancer's descriptors, each); a stream
/// whose client goes ends at the push process at once, and those left still get
/// their events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_share_the_balancers_connections_to_push_and_end_with_their_clients() {
    const STREAMS: usize = 40;
    let sink = SmtpSink::start();
    let up = start_with(
        Engine::Embedded,
        &sink,
        1,
        &[("BAKERY_PUSH_MAX_STREAMS_PER_USER", "64")],
    )
    .await;
    let push: std::net::SocketAddr = up.backends().await["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pool| pool["name"] == "push")
        .and_then(|pool| pool["backends"][0]["addr"].as_str())
        .expect("a push member")
        .parse()
        .unwrap();
    let cookie = harness::sign_up_and_log_in(&harness::client(), &up.base, "streamer").await;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(SseStream::open(&up.url("/api/notifications/stream"), &cookie, None).await);
    }
    let open = async || harness::metric(push, "bakery_push_streams_open", &[]).await;
    assert!(
        eventually(LIMIT, async || open().await == STREAMS as f64).await,
        "the push process counts {} streams open",
        open().await
    );
    // Over HTTP/1 each stream would be a connection of its own.
    let connections = connections_to(push.port());
    assert!(
        (1..STREAMS / 4).contains(&connections),
        "{connections} connections to the push process carry {STREAMS} streams"
    );

    // Clients that go: their streams end at the push process, not at its next write
    // (a keep-alive comment every 15 s).
    streams.truncate(10);
    assert!(
        eventually(Duration::from_secs(5), async || open().await == 10.0).await,
        "the push process still counts {} streams open after 30 of 40 went",
        open().await
    );
    let event = class(&up, 10).await;
    rsvp(&up, &cookie, event, "corr-shared-streams").await;
    for stream in &mut streams {
        let got = stream.take(1, LIMIT).await;
        assert_eq!(got[0].event.as_deref(), Some("rsvp.created"), "{got:?}");
    }
}

/// Established TCP connections on this machine to local port `port` (IPv4).
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local address, remote address, state (01: established)
            fields.len() > 3 && fields[2].ends_with(&port) && fields[3] == "01"
        })
        .count()
}
