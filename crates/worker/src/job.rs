//! What a running job may say: how far it got, and why it did not succeed.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Why a job did not succeed.
#[derive(Debug)]
pub enum JobError {
    /// Worth another attempt (a store away, a timeout).
    Transient(String),
    /// Will never succeed as it is (bad input).
    Permanent(String),
}

/// Progress a job reports, 0..100 (its heartbeat reads it).
#[derive(Clone, Default)]
pub struct Progress(Arc<AtomicI64>);

impl Progress {
    pub(crate) fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, percent: i64) {
        self.0.store(percent.clamp(0, 100), Ordering::Relaxed);
    }
}
