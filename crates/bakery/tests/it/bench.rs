//! `bakery bench`: short smoke runs of the lab (seconds each, not timed): the
//! report folder and the `result` line exist and are sane. The figures themselves
//! are for the benchmark runs in docs/benchmarks.md.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::harness;

/// Runs `bakery bench <args>` on embedded defaults in `data`; (exit code, stdout, stderr).
async fn bench(data: &harness::TempDir, args: &[&str]) -> (Option<i32>, String, String) {
    bench_with(data, Vec::new(), args).await
}

/// The same with `extra` environment over the embedded defaults.
async fn bench_with(
    data: &harness::TempDir,
    extra: Vec<(String, String)>,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let mut env = harness::embedded_env(data);
    env.extend(extra);
    let args: Vec<String> = std::iter::once("bench".to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        harness::run_output(&args, env)
    })
    .await
    .unwrap()
}

/// The `result` line (the last line of stdout) and the report folder it names.
pub(crate) fn result_of(out: &str) -> (Value, PathBuf) {
    let line = out
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("result "))
        .unwrap_or_else(|| panic!("no result line last: {out}"));
    let dir = out
        .lines()
        .find_map(|l| l.strip_prefix("report "))
        .unwrap_or_else(|| panic!("no report line: {out}"));
    (serde_json::from_str(line).unwrap(), PathBuf::from(dir))
}

/// The bench's cgroups present now (`bakery-bench-<pid>` under the cpu controller).
fn bench_groups() -> Vec<String> {
    let mut groups: Vec<String> = Path::new("/sys/fs/cgroup/cpu")
        .read_dir()
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("bakery-bench-"))
                .collect()
        })
        .unwrap_or_default();
    groups.sort();
    groups
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| bytes.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_scale_measures_each_point_fits_the_usl_and_writes_its_report() {
    let data = harness::TempDir::new();
    let groups_before = bench_groups();
    let (code, out, err) = bench(
        &data,
        &[
            "scale",
            "--clones",
            "1,2,3",
            "--cpu-per-clone",
            "0.5",
            "--scenario",
            "ping",
            "--connections-per-clone",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--rounds",
            "1",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let (result, dir) = result_of(&out);
    assert_eq!(result["scenario"], "ping");
    let points = result["points"].as_array().unwrap();
    assert_eq!(
        points
            .iter()
            .map(|p| p["clones"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // The one-clone point, every other one's baseline, measured first and again last.
    assert_eq!(
        points
            .iter()
            .map(|p| p["rounds"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [2, 1, 1]
    );
    for point in points {
        assert!(point["rps"].as_f64().unwrap() > 0.0, "{point}");
        assert!(point["p99_ms"].as_f64().unwrap() > 0.0, "{point}");
        assert_eq!(point["errors"], 0, "{point}");
        assert!(point["saturated"].is_string());
        // Every process of the point's topology, with its peak memory.
        let memory = point["peak_rss_bytes"].as_object().unwrap();
        assert_eq!(
            memory.len() as i64,
            point["clones"].as_i64().unwrap() + 1,
            "{point}"
        );
        assert!(
            memory.values().all(|b| b.as_u64().unwrap_or(0) > 1_000_000),
            "{point}"
        );
    }
    assert!(result["efficiency"]["2"].as_f64().unwrap() > 0.0);
    assert!(result["efficiency"]["3"].as_f64().unwrap() > 0.0);
    let usl = &result["usl"];
    for key in ["sigma", "kappa", "r2"] {
        assert!(usl[key].as_f64().is_some(), "usl.{key} in {usl}");
    }
    assert!(usl["sigma"].as_f64().unwrap() >= 0.0 && usl["kappa"].as_f64().unwrap() >= 0.0);
    assert_eq!(result["cgroup"], "v1", "the budgets were applied");

    // Each point explained: a sentence per curve, the limit at the last point.
    let explained = result["explanation"].as_array().unwrap();
    assert!(
        explained[0].as_str().unwrap().starts_with("ping: "),
        "{explained:?}"
    );
    for file in [
        "results.json",
        "points.csv",
        "rounds.json",
        "index.html",
        "summary.md",
        "throughput-ping.svg",
    ] {
        assert!(dir.join(file).is_file(), "{file} in {}", dir.display());
    }
    for png in ["throughput-ping.png", "latency-ping.png", "cpu-ping.png"] {
        assert!(is_png(&dir.join(png)), "{png} is a PNG");
    }
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(html.contains("throughput-ping.svg") && html.contains("<table>"));
    let csv = std::fs::read_to_string(dir.join("points.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "a header and three points:\n{csv}");
    assert_eq!(
        bench_groups(),
        groups_before,
        "every cgroup the run made is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_scale_refuses_what_it_cannot_measure_in_one_line() {
    let data = harness::TempDir::new();
    for (args, variable) in [
        (&["scale", "--clones", "2,4"][..], "--clones"),
        (&["scale", "--scenario", "nope"][..], "--scenario"),
        (&["scale", "--cpu-per-clone", "0"][..], "--cpu-per-clone"),
    ] {
        let (code, out, err) = bench(&data, args).await;
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains(variable), "{args:?} names {variable}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_latency_measures_alone_then_each_rate() {
    let data = harness::TempDir::new();
    let (code, out, err) = bench(
        &data,
        &[
            "latency",
            "--scenario",
            "ping",
            "--clones",
            "1",
            "--rates",
            "100,300",
            "--connections",
            "4",
            "--duration",
            "1.5",
            "--warmup",
            "0.3",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let (result, dir) = result_of(&out);
    assert_eq!(result["scenario"], "ping");
    assert!(result["alone"]["p99_ms"].as_f64().unwrap() > 0.0);
    let points = result["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    for (point, rate) in points.iter().zip([100.0, 300.0]) {
        assert_eq!(point["rate"].as_f64(), Some(rate));
        let served = point["rps"].as_f64().unwrap();
        // An open model serves what it offers when the system keeps up (a
        // generous band: a shared, noisy machine).
        assert!(served > rate * 0.7 && served < rate * 1.1, "{point}");
        assert!(point["p99_ms"].as_f64().unwrap() >= point["p50_ms"].as_f64().unwrap());
    }
    assert!(is_png(&dir.join("latency.png")));
    assert!(dir.join("index.html").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_lb_measures_ours_and_nginx_before_the_same_clones() {
    bench_lb_against("nginx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_lb_measures_ours_and_haproxy_before_the_same_clones() {
    bench_lb_against("haproxy").await;
}

async fn bench_lb_against(peer: &str) {
    let data = harness::TempDir::new();
    let (code, out, err) = bench(
        &data,
        &[
            "lb",
            "--peer",
            peer,
            "--connections",
            "4,8",
            "--clones",
            "1",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--rounds",
            "1",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let (result, dir) = result_of(&out);
    assert_eq!(result["scenario"], "lb");
    assert_eq!(result["peer"], peer);
    let points = result["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    for point in points {
        for side in ["ours", "peer", peer] {
            for key in ["rps", "p99_ms"] {
                let key = format!("{side}_{key}");
                assert!(point[&key].as_f64().unwrap() > 0.0, "{key} in {point}");
            }
            assert_eq!(point[format!("{side}_errors")], 0, "{point}");
            // Each balancer spent some CPU on each request, and not a whole second.
            let key = format!("{side}_cpu_us_per_request");
            let cpu = point[&key].as_f64().unwrap();
            assert!(cpu > 0.0 && cpu < 1e6, "{key} in {point}");
        }
        assert_eq!(point["peer_rps"], point[format!("{peer}_rps")]);
    }
    assert!(is_png(&dir.join("throughput.png")));
    let (code, _, err) = bench(&data, &["lb", "--peer", "envoy"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--peer"), "{err}");
}

/// A cached product read on Redis (the clones' near caches in front of it) against
/// `ping` on the same topology, rounds alternating; and a pair that cannot share a
/// topology is refused in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_compare_measures_a_scenario_against_its_baseline_side_by_side() {
    let data = harness::TempDir::new();
    let redis = vec![
        ("BAKERY_CACHE_URL".to_string(), harness::redis_url()),
        // The visitors' product reads come from the clones' near caches.
        (
            "BAKERY_CACHE_NEAR_MAX_ENTRIES".to_string(),
            "10000".to_string(),
        ),
    ];
    let (code, out, err) = bench_with(
        &data,
        redis,
        &[
            "compare",
            "--scenario",
            "product",
            "--baseline",
            "ping",
            "--clones",
            "1",
            "--connections",
            "2,4",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--rounds",
            "1",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let (result, dir) = result_of(&out);
    assert_eq!(
        (
            &result["scenario"],
            &result["measured"],
            &result["baseline"],
            &result["cache"]
        ),
        (
            &"compare".into(),
            &"product".into(),
            &"ping".into(),
            &"redis".into()
        )
    );
    // Each process's peak memory, beside the figures.
    for id in ["lb-1", "web-1"] {
        let bytes = result["peak_rss_bytes"][id].as_u64().unwrap_or(0);
        assert!(bytes > 1_000_000, "{id}: {}", result["peak_rss_bytes"]);
    }
    let points = result["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    for point in points {
        let (rps, baseline) = (
            point["rps"].as_f64().unwrap(),
            point["baseline_rps"].as_f64().unwrap(),
        );
        assert!(rps > 0.0 && baseline > 0.0, "{point}");
        let ratio = point["ratio"].as_f64().unwrap();
        assert!((ratio - rps / baseline).abs() < 0.01, "{point}");
        assert_eq!(
            (&point["errors"], &point["baseline_errors"]),
            (&0.into(), &0.into()),
            "{point}"
        );
        for key in ["cpu_us_per_request", "baseline_cpu_us_per_request"] {
            let cpu = point[key].as_f64().unwrap();
            assert!(cpu > 0.0 && cpu < 1e6, "{key} in {point}");
        }
    }
    assert!(is_png(&dir.join("throughput.png")));
    assert!(dir.join("runs.json").is_file());

    let (code, out, err) = bench(
        &data,
        &[
            "compare",
            "--scenario",
            "product-uncached",
            "--baseline",
            "ping",
        ],
    )
    .await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("--baseline"), "{err}");
}

/// Issue 29, the lab: several scenarios in one run make one report — each curve
/// with its fit and its sentence, the speed-up of all side by side, the Markdown
/// the docs take unedited — and `hot-write` writes the one hot row with no errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_scale_puts_several_scenarios_in_one_report() {
    let data = harness::TempDir::new();
    let (code, out, err) = bench(
        &data,
        &[
            "scale",
            "--clones",
            "1,2,3",
            "--cpu-per-clone",
            "0.5",
            "--scenario",
            "product,hot-write",
            "--connections-per-clone",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--rounds",
            "1",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let (result, dir) = result_of(&out);
    assert_eq!(result["scenario"], "scale");
    let curves = result["curves"].as_array().unwrap();
    assert_eq!(
        curves
            .iter()
            .map(|c| c["scenario"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["product", "hot-write"]
    );
    for curve in curves {
        let points = curve["points"].as_array().unwrap();
        assert_eq!(points.len(), 3, "{curve}");
        for point in points {
            assert!(point["rps"].as_f64().unwrap() > 0.0, "{point}");
            assert_eq!(point["errors"], 0, "{point}");
            assert!(
                point["cpu_ms_per_request"].as_f64().unwrap() > 0.0,
                "{point}"
            );
        }
        assert!(curve["usl"]["r2"].as_f64().is_some(), "{curve}");
        let name = curve["scenario"].as_str().unwrap();
        assert!(
            curve["explanation"][0]
                .as_str()
                .unwrap()
                .starts_with(&format!("{name}: ")),
            "{curve}"
        );
    }
    assert!(is_png(&dir.join("speedup.png")));
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(
        summary.contains("### product") && summary.contains("### hot-write"),
        "{summary}"
    );
    assert!(summary.contains("one class's seat count"), "{summary}");
}

/// Issue 29, 7: the edge against Varnish caching the same page from the same clones,
/// side by side, and then freshness: price changes timed until each serves the new
/// page (nginx serving a copy as a file is never refreshed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_compare_edge_against_varnish_and_nginx_times_freshness() {
    for peer in ["varnish", "nginx-static"] {
        let data = harness::TempDir::new();
        let (code, out, err) = bench(
            &data,
            &[
                "compare",
                "--scenario",
                "edge",
                "--peer",
                peer,
                "--clones",
                "1",
                "--connections",
                "4",
                "--duration",
                "1",
                "--warmup",
                "0.3",
                "--rounds",
                "1",
                "--changes",
                "2",
            ],
        )
        .await;
        assert_eq!(code, Some(0), "{peer}: {err}");
        let (result, dir) = result_of(&out);
        assert_eq!(
            (&result["measured"], &result["peer"]),
            (&"edge".into(), &peer.into())
        );
        let point = &result["points"][0];
        assert!(point["rps"].as_f64().unwrap() > 0.0, "{point}");
        assert!(point["baseline_rps"].as_f64().unwrap() > 0.0, "{point}");
        assert_eq!(
            (&point["errors"], &point["baseline_errors"]),
            (&0.into(), &0.into()),
            "{point}"
        );
        let fresh = &result["freshness"];
        // Ours re-renders on the change: every change shown, well within the bound.
        let ours = fresh["ours"]["ms"].as_array().unwrap();
        assert_eq!(ours.len(), 2, "{fresh}");
        assert!(
            ours.iter()
                .all(|ms| ms.as_f64().is_some_and(|ms| ms < 15_000.0)),
            "{fresh}"
        );
        let theirs = fresh["peer"]["ms"].as_array().unwrap();
        if peer == "varnish" {
            // A 1 s TTL under steady reads: shown within a TTL and a fetch.
            assert_eq!(theirs.len(), 2, "{fresh}");
            assert!(
                theirs
                    .iter()
                    .all(|ms| ms.as_f64().is_some_and(|ms| ms < 15_000.0)),
                "{fresh}"
            );
        } else {
            assert!(theirs.is_empty(), "a copy is never refreshed: {fresh}");
        }
        assert!(is_png(&dir.join("freshness.png")));
    }
    let data = harness::TempDir::new();
    for (args, flag) in [
        (
            &["compare", "--scenario", "ping", "--peer", "varnish"][..],
            "--peer",
        ),
        (
            &["compare", "--scenario", "edge", "--peer", "haproxy"][..],
            "--peer",
        ),
        (&["lb", "--peer", "varnish"][..], "--peer"),
    ] {
        let (code, out, err) = bench(&data, args).await;
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(flag), "{err}");
    }
}

/// Every scenario prepares its data and is served without errors (a second each,
/// through `bench latency` on one clone: the cheapest command that runs one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_prepares_and_is_served_without_errors() {
    for scenario in [
        "ping",
        "product",
        "product-uncached",
        "product-page",
        "edge",
        "rsvp",
        "hot-write",
        "browse",
    ] {
        let data = harness::TempDir::new();
        let (code, out, err) = bench(
            &data,
            &[
                "latency",
                "--scenario",
                scenario,
                "--clones",
                "1",
                "--rates",
                "50",
                "--connections",
                "2",
                "--duration",
                "1",
                "--warmup",
                "0",
            ],
        )
        .await;
        assert_eq!(code, Some(0), "{scenario}: {err}");
        let (result, _) = result_of(&out);
        assert_eq!(result["scenario"], scenario);
        assert_eq!(result["alone"]["errors"], 0, "{scenario}: {result} {err}");
        assert!(
            result["alone"]["rps"].as_f64().unwrap() > 0.0,
            "{scenario}: {result}"
        );
        assert_eq!(
            result["points"][0]["errors"], 0,
            "{scenario}: {result} {err}"
        );
    }
}

/// Issue 28, 3: a catalog made in bulk, its documents built, and one product read
/// four ways side by side — tables, documents, each with the cache — on SQLite,
/// PostgreSQL and MariaDB; figures for every path, a plot, and a second run on the
/// same database reuses the catalog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_read_models_reads_a_bulk_catalog_four_ways() {
    let postgres = harness::fresh_postgres_database().await;
    let mariadb = harness::fresh_mariadb_database().await;
    for database in [None, Some(postgres), Some(mariadb)] {
        let data = harness::TempDir::new();
        let env: Vec<(String, String)> = database
            .iter()
            .map(|url| ("BAKERY_DATABASE_URL".to_string(), url.clone()))
            .collect();
        let args = [
            "read-models",
            // More products than MariaDB's 1,000 recursive iterations: the catalog is
            // made in slices there.
            "--products",
            "1200",
            "--reviews",
            "3600",
            "--hot",
            "50",
            "--connections",
            "4",
            "--duration",
            "0.5",
            "--warmup",
            "0.3",
            "--rounds",
            "1",
        ];
        let (code, out, err) = bench_with(&data, env.clone(), &args).await;
        assert_eq!(code, Some(0), "{out}{err}");
        let (result, dir) = result_of(&out);
        let engine = match &database {
            None => "sqlite",
            Some(url) if url.starts_with("mysql:") => "mariadb",
            Some(_) => "postgres",
        };
        assert_eq!(result["database"], engine, "{result}");
        assert_eq!(
            (result["products"].as_i64(), result["reviews"].as_i64()),
            (Some(1200), Some(3600))
        );
        assert!(
            result["documents_made"].as_i64().unwrap() >= 1200,
            "{result}"
        );
        let point = &result["points"][0];
        for path in ["tables", "documents", "tables_cache", "documents_cache"] {
            assert!(
                point[format!("{path}_rps")].as_f64().unwrap() > 0.0,
                "{path}: {point}"
            );
            assert_eq!(point[format!("{path}_errors")], 0, "{path}: {point}");
        }
        assert!(is_png(&dir.join("throughput.png")) && is_png(&dir.join("p99.png")));
        assert!(
            std::fs::read_to_string(dir.join("index.html"))
                .unwrap()
                .contains("documents+cache")
        );
        if database.is_some() {
            // The same database again: the catalog and its documents are there.
            let (code, out, err) = bench_with(&data, env, &args).await;
            assert_eq!(code, Some(0), "{out}{err}");
            let (again, _) = result_of(&out);
            assert_eq!(again["products"], 1200);
            assert_eq!(again["documents_made"], 0, "{again}");
        }
    }
}

/// `bench push`: streams opened through the load balancer to a push process, one
/// RSVP per user, and every stream carries its user's event; the figures the
/// contract names, and the push process's memory per stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_push_opens_streams_through_the_balancer_and_times_each_event() {
    let data = harness::TempDir::new();
    let (code, out, err) =
        bench_with(&data, vec![], &["push", "--streams", "60", "--users", "3"]).await;
    assert_eq!(code, Some(0), "{err}");
    let (result, dir) = result_of(&out);
    assert_eq!(result["scenario"], "push");
    assert_eq!(result["streams"], 60);
    // More streams per user than the default cap (8) and all open: the cap is lifted.
    assert_eq!(result["opened"], 60, "{result}");
    assert_eq!(result["delivered"], 60, "{result}");
    let (p50, p99, max) = (
        result["p50_ms"].as_f64().unwrap(),
        result["p99_ms"].as_f64().unwrap(),
        result["max_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{result}");
    assert!(
        result["push_rss_bytes_per_stream"].as_u64().is_some(),
        "{result}"
    );
    assert!(
        result["peak_rss_bytes"]["push-1"].as_u64().unwrap() > 0,
        "{result}"
    );
    assert!(dir.join("results.json").exists());
    let (code, _, err) =
        bench_with(&data, vec![], &["push", "--streams", "2", "--users", "3"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--streams"), "{err}");
}
