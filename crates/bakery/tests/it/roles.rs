//! Each role opens only the stores it uses (issue "One front door for every role"):
//! the email service and the workers start and report healthy while the session
//! store is away (and the email service while the cache is away too), because they
//! never use them; the roles that do use them still refuse to start without them.

use std::time::Duration;

use crate::harness::{self, Role, TempDir, eventually, run_to_end};

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

    // The stores really are away: the roles that use them do not start.
    for (role, variable) in [
        ("web", "BAKERY_SESSION_URL"),
        ("push", "BAKERY_SESSION_URL"),
    ] {
        let (code, err) = run_to_end(
            &[role, "--listen", "127.0.0.1:0"],
            env(&data, &[("BAKERY_SESSION_URL", NOWHERE)]),
        );
        assert_eq!(code, Some(2), "{role}: {err}");
        assert!(err.contains(variable), "{role}: {err}");
    }
}
