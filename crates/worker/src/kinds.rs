//! What each kind of job does.

use std::time::Duration;

use bakery_app::App;
use bakery_db::jobs::Claimed;
use bakery_events::topology::job_kind;
use serde::Deserialize;

use crate::job::{JobError, Progress};

/// Whether jobs of `kind` keep a core busy while they run (so run one per core at
/// most by default), rather than mostly wait.
pub fn cpu_bound(kind: &str) -> bool {
    matches!(kind, job_kind::IMAGE | job_kind::RENDER)
}

/// Runs one job of its kind; the value is the job's `result`.
pub async fn run(
    app: &App,
    job: &Claimed,
    progress: &Progress,
) -> Result<serde_json::Value, JobError> {
    match job.kind.as_str() {
        job_kind::NOOP => noop(job, progress).await,
        job_kind::IMAGE => crate::image::run(app, job, progress).await,
        job_kind::RENDER => crate::render::run(app, job, progress).await,
        other => Err(JobError::Permanent(format!(
            "this worker cannot run {other} jobs"
        ))),
    }
}

/// `noop`: does nothing for `ms` milliseconds (progress as it goes), or fails as
/// told — for measuring the machinery and for exercising its failure paths.
#[derive(Deserialize)]
struct Noop {
    #[serde(default)]
    ms: u64,
    /// `"transient"` or `"permanent"`: fail that way ...
    #[serde(default)]
    fail: Option<String>,
    /// ... on the first this many attempts (all of them when absent).
    #[serde(default)]
    fail_attempts: Option<i64>,
}

async fn noop(job: &Claimed, progress: &Progress) -> Result<serde_json::Value, JobError> {
    let spec: Noop = serde_json::from_str(&job.payload).map_err(|e| {
        JobError::Permanent(format!(
            "a noop payload is {{ms, fail, fail_attempts}}: {e}"
        ))
    })?;
    let ms = spec.ms.min(600_000);
    let steps = 10u64;
    for step in 1..=steps {
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms / steps)).await;
        }
        progress.set((step * 100 / steps) as i64);
    }
    let failing = spec.fail_attempts.is_none_or(|n| job.attempt <= n);
    match spec.fail.as_deref() {
        Some("transient") if failing => Err(JobError::Transient(format!(
            "told to fail (attempt {})",
            job.attempt
        ))),
        Some("permanent") if failing => Err(JobError::Permanent("told to fail for good".into())),
        _ => Ok(serde_json::json!({ "slept_ms": ms })),
    }
}
