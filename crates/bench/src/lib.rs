//! `bakery bench <scenario>`: load generation and reports. Every run ends with one
//! line `result <json>` on stdout and writes its report folder under
//! `$BAKERY_DATA_DIR/bench/`.
//!
//! - [`load`]: the load generator (open and closed models, HDR histograms)
//! - [`scenarios`]: what each scenario prepares and sends
//! - [`topology`]: the system under test, started by the bench (LB + N clones)
//! - [`cgroup`], [`cpu`]: CPU budgets per process, and what each part used
//! - [`usl`]: the Universal Scalability Law fit
//! - [`plot`], [`html`]: charts (PNG, SVG) and the report page
//! - [`ab`]: two sides measured in alternating rounds
//! - [`freshness`]: how long until a changed page is served
//! - [`peers`]: nginx, HAProxy and Varnish, started in the lab to be measured against
//! - [`jobs`], [`scale`], [`latency`], [`lb`], [`compare`]: the commands

use std::path::{Path, PathBuf};

use bakery_config::Config;

pub mod ab;
pub mod cgroup;
pub mod compare;
pub mod cpu;
pub mod freshness;
pub mod html;
pub mod jobs;
pub mod latency;
pub mod lb;
pub mod load;
pub mod peers;
pub mod plot;
pub mod push;
pub mod read_models;
pub mod scale;
pub mod scenarios;
pub mod topology;
pub mod usl;

/// A fresh report folder: `$BAKERY_DATA_DIR/bench/<name>-<time>/`.
pub fn report_dir(config: &Config, name: &str) -> anyhow::Result<PathBuf> {
    let dir = config.data_dir.join("bench").join(format!(
        "{name}-{}",
        bakery_core::clock::to_rfc3339(bakery_core::now_millis()).replace(':', "-")
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes `results.json` into `dir` and prints the `report` and `result` lines.
pub fn write_result(dir: &Path, result: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(result)?,
    )?;
    println!("report {}", dir.display());
    println!("result {result}");
    Ok(())
}

/// `BAKERY_LOG` for the processes a bench starts: their own logs would drown the
/// progress bar, so `warn` unless the operator set one.
fn quiet_log() -> (String, String) {
    (
        "BAKERY_LOG".into(),
        std::env::var("BAKERY_LOG").unwrap_or_else(|_| "warn".into()),
    )
}

/// `--duration` and `--warmup`, given in seconds on the command line: 0 to an hour each.
fn timing(
    duration: f64,
    warmup: f64,
) -> Result<(std::time::Duration, std::time::Duration), bakery_config::ConfigError> {
    let seconds = |flag: &str, value: f64| {
        if !(0.0..=3600.0).contains(&value) {
            return Err(bakery_config::ConfigError::new(
                flag,
                "seconds from 0 to 3600",
            ));
        }
        Ok(std::time::Duration::from_secs_f64(value))
    };
    Ok((
        seconds("--duration", duration)?,
        seconds("--warmup", warmup)?,
    ))
}

/// A CPU share given on the command line (`--cpu-per-clone`, `--cpu-lb`): 0.01 to 64 cores.
fn cpu_share(flag: &str, cores: Option<f64>) -> Result<(), bakery_config::ConfigError> {
    if cores.is_some_and(|c| !(0.01..=64.0).contains(&c)) {
        return Err(bakery_config::ConfigError::new(
            flag,
            "a share of cores from 0.01 to 64",
        ));
    }
    Ok(())
}

/// Stops a peer started in a process group of its own (nginx's workers, Celery's
/// prefork children, HAProxy): `signal` (its graceful stop), up to 10 s for it to
/// leave, then KILL — and KILL for any child its leader left behind.
async fn stop_group(child: &mut tokio::process::Child, signal: nix::sys::signal::Signal) {
    use nix::sys::signal::{Signal, killpg};
    let Some(pid) = child.id() else { return };
    let group = nix::unistd::Pid::from_raw(pid as i32);
    let _ = killpg(group, signal);
    if tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    let _ = killpg(group, Signal::SIGKILL);
}

/// The `p`th percentile of sorted `values`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// Peak memory by process as people read it: `lb-1 28 MB, web-1 41 MB`.
pub(crate) fn megabytes(memory: &serde_json::Map<String, serde_json::Value>) -> String {
    memory
        .iter()
        .map(|(id, bytes)| {
            let mb = bytes.as_u64().unwrap_or(0) as f64 / 1e6;
            format!("{id} {mb:.0} MB")
        })
        .collect::<Vec<_>>()
        .join(", ")
}
