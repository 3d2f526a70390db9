//! The command line's edges: bad configuration ends with one line and exit 2.

use crate::harness::{TempDir, run_to_end};

fn env(data: &TempDir, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![("BAKERY_DATA_DIR".to_string(), data.0.display().to_string())];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn assert_exit_2_naming(args: &[&str], extra: &[(&str, &str)], variable: &str) {
    let data = TempDir::new();
    let (code, stderr) = run_to_end(args, env(&data, extra));
    assert_eq!(
        code,
        Some(2),
        "{args:?} {extra:?} should exit 2; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("bakery:"))
        .collect();
    assert_eq!(lines.len(), 1, "one clear line, got: {stderr}");
    assert!(
        lines[0].contains(variable),
        "the line names {variable}: {stderr}"
    );
}

#[test]
fn a_database_url_with_an_unknown_scheme_exits_2() {
    assert_exit_2_naming(
        &["up"],
        &[("BAKERY_DATABASE_URL", "mysql://localhost/bakery")],
        "BAKERY_DATABASE_URL",
    );
}

#[test]
fn an_unreachable_database_exits_2() {
    assert_exit_2_naming(
        &["migrate"],
        &[(
            "BAKERY_DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/bakery",
        )],
        "BAKERY_DATABASE_URL",
    );
}

#[test]
fn a_malformed_value_exits_2() {
    assert_exit_2_naming(
        &["web"],
        &[("BAKERY_DEBUG_HEADERS", "perhaps")],
        "BAKERY_DEBUG_HEADERS",
    );
    assert_exit_2_naming(
        &["web"],
        &[("BAKERY_SESSION_URL", "memcached://127.0.0.1:11211")],
        "BAKERY_SESSION_URL",
    );
    assert_exit_2_naming(&["up", "--listen", "not-an-address"], &[], "--listen");
    assert_exit_2_naming(&["lb", "--backend", "nonsense"], &[], "--backend");
}

#[test]
fn a_clone_started_before_migrations_says_what_to_do() {
    let data = TempDir::new();
    let (code, stderr) = run_to_end(&["web"], env(&data, &[]));
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(stderr.contains("bakery migrate"), "{stderr}");
}

#[test]
fn a_config_file_is_read_and_unknown_keys_are_refused() {
    let data = TempDir::new();
    let file = data.0.join("bakery.toml");
    std::fs::write(&file, "databse_url = \"sqlite://x.db\"\n").unwrap();
    let (code, stderr) = run_to_end(
        &["--config", file.to_str().unwrap(), "migrate"],
        env(&data, &[]),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("databse_url"), "{stderr}");

    let db = data.0.join("from-file.db");
    std::fs::write(
        &file,
        format!("database_url = \"sqlite://{}\"\n", db.display()),
    )
    .unwrap();
    let (code, stderr) = run_to_end(
        &["--config", file.to_str().unwrap(), "migrate"],
        env(&data, &[]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(db.exists(), "the file's database_url was used");
}

#[test]
fn a_short_admin_token_exits_2() {
    assert_exit_2_naming(
        &["lb", "--listen", "127.0.0.1:0"],
        &[("BAKERY_LB_ADMIN_TOKEN", "short-token")],
        "BAKERY_LB_ADMIN_TOKEN",
    );
}

#[test]
fn redis_over_tls_is_refused_at_start_not_spoken_in_clear() {
    for variable in ["BAKERY_SESSION_URL", "BAKERY_CACHE_URL"] {
        assert_exit_2_naming(
            &["migrate"],
            &[(variable, "rediss://127.0.0.1:6380")],
            variable,
        );
    }
}
