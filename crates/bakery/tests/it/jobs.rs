//! Jobs end to end (contract: "Jobs"): queued by the API, claimed by a worker with a
//! lease kept alive by heartbeats, retried with backoff, failed, cancelled, queued
//! again from the command line, taken over when their worker is killed — each ending
//! once, with one `job.finished` notification for its owner.

use std::collections::HashMap;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::harness::{self, Engine, Up, eventually};

const LIMIT: Duration = Duration::from_secs(40);

async fn start(engine: Engine) -> Up {
    let mut env = vec![
        ("BAKERY_BROKER_RETRY_BASE_MS".to_string(), "100".to_string()),
        ("BAKERY_BROKER_RETRY_CAP_MS".into(), "400".into()),
        ("BAKERY_JOB_LEASE_SECS".into(), "2".into()),
        ("BAKERY_OUTBOX_SWEEP_AFTER_MS".into(), "500".into()),
    ];
    env.extend(engine.env().await);
    Up::start(env, 1)
}

async fn enqueue(up: &Up, admin: &str, payload: Value) -> i64 {
    enqueue_for(
        up,
        admin,
        payload,
        &format!("job-{:x}", rand::random::<u64>()),
    )
    .await
}

/// Queues a noop job in a request whose id is `request_id`; the job's id.
async fn enqueue_for(up: &Up, admin: &str, payload: Value, request_id: &str) -> i64 {
    let answer = harness::client()
        .post(up.url("/api/jobs"))
        .header("cookie", admin)
        .header("x-request-id", request_id)
        .json(&json!({"kind": "noop", "payload": payload}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    answer.json::<Value>().await.unwrap()["job_id"]
        .as_i64()
        .unwrap()
}

pub(crate) async fn job(up: &Up, cookie: &str, id: i64) -> Value {
    harness::get_json(&up.url(&format!("/api/jobs/{id}")), cookie).await
}

async fn wait_state(up: &Up, cookie: &str, id: i64, state: &str) -> Value {
    let mut last = Value::Null;
    let reached = eventually(LIMIT, async || {
        last = job(up, cookie, id).await;
        last["state"] == state
    })
    .await;
    assert!(reached, "job {id} never became {state}: {last}");
    last
}

/// Waits for the job to succeed or fail; answers it then.
pub(crate) async fn ended(up: &Up, cookie: &str, id: i64) -> Value {
    let mut last = Value::Null;
    let done = eventually(LIMIT, async || {
        last = job(up, cookie, id).await;
        last["state"] == "succeeded" || last["state"] == "failed"
    })
    .await;
    assert!(done, "job {id} did not end: {last}");
    last
}

/// `job.finished` notifications of the user, counted by job id.
pub(crate) async fn finished(up: &Up, cookie: &str) -> HashMap<i64, usize> {
    let list: Value = harness::get_json(&up.url("/api/notifications"), cookie).await;
    let mut counts = HashMap::new();
    for n in list["items"].as_array().unwrap() {
        if n["kind"] == "job.finished" {
            *counts
                .entry(n["payload"]["job_id"].as_i64().unwrap())
                .or_default() += 1;
        }
    }
    counts
}

#[tokio::test]
async fn jobs_succeed_retry_fail_cancel_and_are_queued_again() {
    lifecycle(Engine::Embedded).await;
}

#[tokio::test]
async fn jobs_succeed_retry_fail_cancel_and_are_queued_again_on_postgres() {
    lifecycle(Engine::EmbeddedPostgres).await;
}

#[tokio::test]
async fn jobs_succeed_retry_fail_cancel_and_are_queued_again_on_mariadb() {
    lifecycle(Engine::EmbeddedMariaDb).await;
}

#[tokio::test]
async fn concurrent_requests_each_get_their_own_job() {
    requests_together(Engine::Embedded).await;
}

#[tokio::test]
async fn concurrent_requests_each_get_their_own_job_on_postgres() {
    requests_together(Engine::EmbeddedPostgres).await;
}

#[tokio::test]
async fn concurrent_requests_each_get_their_own_job_on_mariadb() {
    requests_together(Engine::EmbeddedMariaDb).await;
}

/// Requests at the same moment share the enqueuer's transactions (its group
/// commit): each answer still names its own job — the one with its payload — and
/// each job ends under its own request's id (its `job.finished` is staged in that
/// request's journey, whichever request's message woke the worker).
async fn requests_together(engine: Engine) {
    let up = start(engine).await;
    let http = harness::client();
    let admin = harness::log_in(&http, &up.base, "admin", "admin-password").await;
    let requests = (1..=40).map(|ms| {
        let (up, admin) = (&up, &admin);
        async move {
            let request_id = format!("together-{ms}-{:x}", rand::random::<u64>());
            let id = enqueue_for(up, admin, json!({"ms": ms}), &request_id).await;
            (ms, id, request_id)
        }
    });
    let jobs = futures::future::join_all(requests).await;
    let ids: std::collections::HashSet<i64> = jobs.iter().map(|(_, id, _)| *id).collect();
    assert_eq!(ids.len(), jobs.len(), "one job each: {jobs:?}");
    for (ms, id, _) in &jobs {
        let done = ended(&up, &admin, *id).await;
        assert_eq!(
            done["result"]["slept_ms"], *ms,
            "job {id} was answered to the request for {ms} ms: {done}"
        );
    }
    let has = |journey: &Value, what: &str| {
        journey["hops"].as_array().is_some_and(|hops| {
            hops.iter()
                .any(|hop| hop["what"].as_str().is_some_and(|w| w.contains(what)))
        })
    };
    for (_, id, request_id) in &jobs {
        let url = up.url(&format!("/api/ops/journey/{request_id}"));
        let mut journey = Value::Null;
        let whole = eventually(LIMIT, async || {
            journey = harness::get_json(&url, &admin).await;
            has(&journey, "noop staged") && has(&journey, "job.finished staged")
        })
        .await;
        assert!(
            whole,
            "job {id}: its request's journey has its dispatch and its end: {journey}"
        );
    }
}

async fn lifecycle(engine: Engine) {
    let up = start(engine).await;
    let http = harness::client();
    let admin = harness::log_in(&http, &up.base, "admin", "admin-password").await;

    let ok = enqueue(&up, &admin, json!({"ms": 100})).await;
    let flaky = enqueue(
        &up,
        &admin,
        json!({"fail": "transient", "fail_attempts": 2}),
    )
    .await;
    let broken = enqueue(&up, &admin, json!({"fail": "permanent"})).await;
    let hopeless = enqueue(&up, &admin, json!({"fail": "transient"})).await;
    let long = enqueue(&up, &admin, json!({"ms": 3000})).await;

    let done = wait_state(&up, &admin, ok, "succeeded").await;
    assert_eq!(
        (done["progress"].as_i64(), done["attempts"].as_i64()),
        (Some(100), Some(1))
    );
    assert_eq!(done["result"]["slept_ms"], 100);
    assert!(done["finished_at"].is_string());
    let done = wait_state(&up, &admin, flaky, "succeeded").await;
    assert_eq!(
        done["attempts"], 3,
        "two transient failures, then success: {done}"
    );
    let failed = wait_state(&up, &admin, broken, "failed").await;
    assert_eq!(failed["attempts"], 1, "a permanent failure is not retried");
    assert!(failed["error"].as_str().unwrap().contains("for good"));
    let failed = wait_state(&up, &admin, hopeless, "failed").await;
    assert_eq!(
        failed["attempts"], 5,
        "transient failures until the attempts are used up"
    );

    // Cancelling: 204, the job ends cancelled and stays so (its worker stops).
    let cancel = http
        .delete(up.url(&format!("/api/jobs/{long}")))
        .header("cookie", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 204);
    assert_eq!(job(&up, &admin, long).await["state"], "cancelled");
    let again = http
        .delete(up.url(&format!("/api/jobs/{long}")))
        .header("cookie", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(harness::error_code(again).await, "job_finished");
    tokio::time::sleep(Duration::from_millis(3500)).await; // longer than the job would run
    assert_eq!(job(&up, &admin, long).await["state"], "cancelled");

    // Another user sees none of them.
    let other = harness::sign_up_and_log_in(&http, &up.base, "nosy").await;
    let hidden = http
        .get(up.url(&format!("/api/jobs/{ok}")))
        .header("cookie", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(hidden.status(), 404);

    // The operator queues the cancelled job again; it runs to its end.
    let (code, out, err) =
        harness::run_output(&["jobs", "retry", &long.to_string()], up.env.clone());
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("queued job {long} again")), "{out}");
    let done = wait_state(&up, &admin, long, "succeeded").await;
    assert_eq!(done["attempts"], 1);
    let (code, _, err) = harness::run_output(&["jobs", "retry", &ok.to_string()], up.env.clone());
    assert_eq!(code, Some(2), "a succeeded job is not queued again: {err}");
    let (code, out, _) =
        harness::run_output(&["jobs", "list", "--state", "failed"], up.env.clone());
    assert_eq!(code, Some(0));
    assert!(out.contains("2 job(s)"), "{out}");

    // One job.finished per ended job (cancelled ones end without one).
    assert!(
        eventually(LIMIT, async || finished(&up, &admin).await.len() == 5).await,
        "{:?}",
        finished(&up, &admin).await
    );
    assert!(finished(&up, &admin).await.values().all(|n| *n == 1));
}

async fn killed_worker_loses_its_job_to_another(engine: Engine) {
    let mut up = start(engine).await;
    let http = harness::client();
    let admin = harness::log_in(&http, &up.base, "admin", "admin-password").await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(enqueue(&up, &admin, json!({"ms": 1500})).await);
    }
    // Kill the worker that holds the first job, mid-job (its row names it).
    assert!(
        eventually(LIMIT, async || job(&up, &admin, ids[0]).await["state"]
            == "running")
        .await
    );
    let (_, listed, _) =
        harness::run_output(&["jobs", "list", "--state", "running"], up.env.clone());
    let holder = listed
        .lines()
        .find(|l| l.split_whitespace().next() == Some(ids[0].to_string().as_str()))
        .and_then(|l| l.split_whitespace().nth(5))
        .unwrap_or_else(|| panic!("no running row for job {}: {listed}", ids[0]))
        .to_string();
    kill(Pid::from_raw(up.process(&holder).pid), Signal::SIGKILL).unwrap();
    for id in &ids {
        wait_state(&up, &admin, *id, "succeeded").await;
    }
    let restarted = format!("started role=worker id={holder} ");
    assert!(
        up.wait_line(LIMIT, |l| l.starts_with(&restarted)).is_some(),
        "up restarts {holder}"
    );
    // Exactly one end per job, whoever finished it.
    assert!(eventually(LIMIT, async || finished(&up, &admin).await.len() == 6).await);
    let counts = finished(&up, &admin).await;
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    // The killed attempt counted: the job ran again, under a new fencing token.
    assert_eq!(job(&up, &admin, ids[0]).await["attempts"], 2);
}

#[tokio::test]
async fn a_worker_killed_mid_job_loses_it_to_another_and_each_job_ends_once_embedded() {
    killed_worker_loses_its_job_to_another(Engine::Embedded).await;
}

#[tokio::test]
async fn a_worker_killed_mid_job_loses_it_to_another_and_each_job_ends_once_embedded_on_postgres() {
    killed_worker_loses_its_job_to_another(Engine::EmbeddedPostgres).await;
}

#[tokio::test]
async fn a_worker_killed_mid_job_loses_it_to_another_and_each_job_ends_once_embedded_on_mariadb() {
    killed_worker_loses_its_job_to_another(Engine::EmbeddedMariaDb).await;
}

#[tokio::test]
async fn a_worker_killed_mid_job_loses_it_to_another_and_each_job_ends_once_rabbitmq() {
    killed_worker_loses_its_job_to_another(Engine::RabbitMq).await;
}

#[tokio::test]
async fn bench_jobs_runs_its_workers_and_ends_with_a_result_line() {
    let data = harness::TempDir::new();
    let mut env = harness::embedded_env(&data);
    env.push(("BAKERY_OUTBOX_SWEEP_AFTER_MS".into(), "500".into()));
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        harness::run_output(
            &[
                "bench",
                "jobs",
                "--jobs",
                "300",
                "--workers",
                "2",
                "--batch",
                "100",
            ],
            env,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let (result, _) = crate::bench::result_of(&out);
    assert_eq!(result["scenario"], "jobs");
    assert_eq!(
        (result["jobs"].as_i64(), result["workers"].as_i64()),
        (Some(300), Some(2))
    );
    assert_eq!(result["failed"], 0);
    assert!(result["jobs_per_s"].as_f64().unwrap() > 0.0);
    assert!(result["p99_ms"].as_f64().unwrap() >= result["p50_ms"].as_f64().unwrap());
    let reports = std::fs::read_dir(data.0.join("bench")).unwrap().count();
    assert_eq!(reports, 1, "one report folder per run");
    let (code, _, err) = harness::run_output(
        &["bench", "jobs", "--kind", "nope"],
        harness::embedded_env(&data),
    );
    assert_eq!(code, Some(2), "{err}");
}

/// `bench jobs --peer celery`: our workers and Celery's on the same RabbitMQ, one
/// round each, 16 producers enqueuing one job per transaction; both sides' figures,
/// their ratio and a plot of the rounds. A peer that cannot run here is refused with
/// the flag named, before anything starts.
#[tokio::test]
async fn bench_jobs_runs_against_celery_on_the_same_rabbitmq() {
    let data = harness::TempDir::new();
    let mut env = harness::embedded_env(&data);
    env.extend(Engine::RabbitMq.env().await);
    let args = [
        "bench",
        "jobs",
        "--jobs",
        "300",
        "--workers",
        "1",
        "--producers",
        "16",
        "--batch",
        "1",
        "--peer",
        "celery",
        "--rounds",
        "1",
    ];
    let run_env = env.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || harness::run_output(&args, run_env))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let (result, report) = crate::bench::result_of(&out);
    assert_eq!(result["peer"], "celery");
    assert_eq!(result["producers"], 16);
    assert_eq!(result["failed"], 0);
    let (ours, theirs) = (
        result["jobs_per_s"].as_f64().unwrap(),
        result["peer_jobs_per_s"].as_f64().unwrap(),
    );
    assert!(ours > 0.0 && theirs > 0.0, "{result}");
    let ratio = result["ratio"].as_f64().unwrap();
    assert!((ratio - ours / theirs).abs() < 0.01, "{result}");
    assert!(result["peer_p99_ms"].as_f64().unwrap() >= result["peer_p50_ms"].as_f64().unwrap());
    assert!(
        result["peak_rss_bytes"]["worker-1"].as_u64().unwrap() > 0,
        "{result}"
    );
    assert!(report.join("jobs.png").exists());
    // Celery only on RabbitMQ, and only peers that exist.
    for (args, env) in [
        (
            vec!["bench", "jobs", "--peer", "celery"],
            harness::embedded_env(&data),
        ),
        (vec!["bench", "jobs", "--peer", "sidekiq"], env.clone()),
        (vec!["bench", "jobs", "--producers", "0"], env),
    ] {
        let (code, _, err) = harness::run_output(&args, env);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("--"), "{err}");
    }
}

/// Issue 25, 8: an image job reads only an uploaded original: a payload naming any
/// other file (absolute, climbing out, hidden) is refused when it is queued.
#[tokio::test]
async fn an_image_job_cannot_name_a_file_outside_the_originals() {
    let up = Up::start(vec![], 1);
    let http = harness::client();
    let admin = harness::log_in(&http, &up.base, "admin", "admin-password").await;
    for original in [
        "/etc/passwd",
        "originals/../bakery.db",
        "originals/../../etc/passwd",
        "../bakery.db",
        "originals/.hidden",
        "originals/",
        "products/1/x.jpg",
    ] {
        let answer = http
            .post(up.url("/api/jobs"))
            .header("cookie", &admin)
            .json(&json!({"kind": "image", "payload": {"product_id": 1, "original": original}}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{original}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_payload", "{original}");
    }
    // A name in the originals is queued (and fails cleanly: there is no such file).
    let answer = http
        .post(up.url("/api/jobs"))
        .header("cookie", &admin)
        .json(&json!({"kind": "image", "payload": {"product_id": 1, "original": "originals/none.png"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let id = answer.json::<Value>().await.unwrap()["job_id"]
        .as_i64()
        .unwrap();
    let job = ended(&up, &admin, id).await;
    assert_eq!(job["state"], "failed", "{job}");
}
