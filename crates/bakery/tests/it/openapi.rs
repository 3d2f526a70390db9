//! The JSON API's OpenAPI 3.1 document (`GET /api/openapi.json`), and a
//! property-based fuzzer (Schemathesis) run against a live system from it: no
//! 5xx, no answer outside the document (status, content type, body schema), bad
//! input refused, and no "(user)" route that answers without a session.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{self, Up, client, log_in};

/// Every route of the contract's JSON API, by method and path.
const CONTRACT: &[(&str, &str)] = &[
    ("post", "/api/users"),
    ("post", "/api/session"),
    ("delete", "/api/session"),
    ("get", "/api/me"),
    ("patch", "/api/me"),
    ("get", "/api/products"),
    ("post", "/api/products"),
    ("get", "/api/products/{id}"),
    ("patch", "/api/products/{id}"),
    ("delete", "/api/products/{id}"),
    ("get", "/api/products/{id}/reviews"),
    ("post", "/api/products/{id}/reviews"),
    ("post", "/api/products/{id}/images"),
    ("patch", "/api/reviews/{id}"),
    ("delete", "/api/reviews/{id}"),
    ("get", "/api/events"),
    ("post", "/api/events"),
    ("get", "/api/events/{id}"),
    ("post", "/api/events/{id}/rsvp"),
    ("delete", "/api/events/{id}/rsvp"),
    ("get", "/api/me/rsvps"),
    ("get", "/api/jobs/{id}"),
    ("delete", "/api/jobs/{id}"),
    ("get", "/api/notifications"),
    ("put", "/api/pages/{slug}"),
    ("get", "/api/ping"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_openapi_3_1_and_names_every_route_of_the_contract() {
    let up = Up::start(vec![], 1);
    let answer = client()
        .get(up.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "application/json");
    let document: Value = answer.json().await.unwrap();
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        document["openapi"]
    );
    for (method, path) in CONTRACT {
        let operation = &document["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is documented");
        let responses = operation["responses"].as_object().unwrap();
        assert!(
            responses.iter().any(
                |(status, answer)| status.starts_with('2') && answer["description"].is_string()
            ),
            "{method} {path} names its success"
        );
        assert!(
            *path == "/api/ping" || responses.contains_key("503"),
            "{method} {path} names the answer when a backend is down"
        );
    }
    // Errors have the contract's shape, and "(user)" routes name the session cookie.
    let error = &document["components"]["schemas"]["ErrorBody"];
    assert_eq!(
        error["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );
    assert_eq!(
        document["components"]["securitySchemes"]["session"]["name"],
        "bakery_session"
    );
    assert!(document["paths"]["/api/me"]["get"]["security"].is_array());
    assert!(
        document["paths"]["/api/products"]["get"]["security"].is_null(),
        "the catalog is public"
    );
}

/// Schemathesis (PyPI; `scripts/services.sh` installs it) fuzzes every operation
/// of the document against a whole topology on embedded defaults, logged in as
/// the admin (so admin writes are reached too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fuzzer_finds_no_5xx_and_no_answer_outside_the_document() {
    let version = Command::new("schemathesis").arg("--version").output();
    assert!(
        version.is_ok_and(|v| v.status.success()),
        "schemathesis is needed (scripts/services.sh installs it from PyPI)"
    );
    let up = Up::start(vec![], 2);
    let admin = log_in(&client(), &up.base, "admin", "admin-password").await;
    let report = bakery_testkit::temp_path("schemathesis");
    let mut fuzzer = Command::new("schemathesis");
    fuzzer
        .args(["run", &up.url("/api/openapi.json"), "--url", &up.base])
        .args(["--checks", CHECKS])
        // Logging out would end the admin session the rest of the run uses.
        .args(["--exclude-operation-id", "log_out"])
        .args(["--header", &format!("Cookie: {admin}")])
        .args(["--generation-with-security-parameters", "false"])
        .args(["--phases", "examples,coverage,fuzzing"])
        // One worker: hypothesis is not thread-safe in every Python (an AST
        // recursion-depth error with two on 3.11).
        .args(["--max-examples", "100", "--workers", "1", "--no-color"])
        .args(["--request-timeout", "10"])
        .args(["--generation-database", "none"])
        .arg("--report-dir")
        .arg(&report)
        .current_dir(std::env::temp_dir());
    let (code, stdout, stderr) = harness::output_within(&mut fuzzer, Duration::from_secs(600));
    assert_eq!(
        code,
        Some(0),
        "schemathesis found problems (or ran out of time):\n{stdout}\n{stderr}"
    );
    // The system still serves a normal visitor after the run.
    let ping = client().get(up.url("/api/ping")).send().await.unwrap();
    assert_eq!(ping.status(), 200);
}

/// What the fuzzer checks of every answer.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
    response_headers_conformance,response_schema_conformance,negative_data_rejection,\
    missing_required_header,unsupported_method,allow_header_conformance,ignored_auth";
