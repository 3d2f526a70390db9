//! `bakery bench <scenario>`: load generation and reports. Every run ends with one
//! line `result <json>` on stdout and writes its report folder under
//! `$BAKERY_DATA_DIR/bench/`.

use std::path::PathBuf;

use bakery_config::Config;

pub mod jobs;

/// Writes `results.json` into a fresh report folder and prints the `result` line.
fn report(config: &Config, scenario: &str, result: &serde_json::Value) -> anyhow::Result<PathBuf> {
    let dir = config.data_dir.join("bench").join(format!(
        "{scenario}-{}",
        bakery_core::clock::to_rfc3339(bakery_core::now_millis()).replace(':', "-")
    ));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(result)?,
    )?;
    println!("report {}", dir.display());
    println!("result {result}");
    Ok(dir)
}

/// The `p`th percentile of sorted `values`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
