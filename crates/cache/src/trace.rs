//! What the cache did for the current request, for `x-cache` and the metrics.

use std::cell::Cell;

/// The outcome of one cached read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    /// The cache was down, slow or off: the database answered.
    Bypass,
}

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Hit => 1,
            Self::Miss => 2,
            Self::Bypass => 3,
        }
    }
}

tokio::task_local! {
    /// The least favourable outcome of the request's cached reads (bypass > miss > hit).
    static OUTCOME: Cell<u8>;
}

/// Runs `work` and tells what the cache did for it, if it was asked at all.
pub async fn trace_cache<F: Future>(work: F) -> (F::Output, Option<CacheResult>) {
    OUTCOME
        .scope(Cell::new(0), async move {
            let output = work.await;
            let outcome = match OUTCOME.with(Cell::get) {
                1 => Some(CacheResult::Hit),
                2 => Some(CacheResult::Miss),
                3 => Some(CacheResult::Bypass),
                _ => None,
            };
            (output, outcome)
        })
        .await
}

/// Counts one cached read (`cache` is `object` or `query`) and notes it for `x-cache`.
pub(crate) fn record(cache: &'static str, result: CacheResult) {
    metrics::counter!("bakery_cache_requests_total", "cache" => cache, "result" => result.as_str())
        .increment(1);
    let _ = OUTCOME.try_with(|cell| cell.set(cell.get().max(result.code())));
}

/// Counts a value rebuilt from the database.
pub(crate) fn record_fill(cache: &'static str) {
    metrics::counter!("bakery_cache_fills_total", "cache" => cache).increment(1);
}
