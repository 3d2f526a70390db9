//! Test-only helpers shared by every crate's black-box tests: the real services
//! ([`services`]), the built binary started and always stopped ([`process`]), a
//! client ([`http`]), a TCP proxy a test can cut ([`proxy`]), temporary directories
//! and waiting for a condition instead of sleeping.

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub mod browser;
pub mod hosts;
pub mod http;
pub mod mail;
pub mod process;
pub mod proxy;
pub mod rabbit_cluster;
pub mod sentinel;
pub mod services;
pub mod sse;

pub use http::*;
pub use process::*;
pub use services::*;

/// A temporary data directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "bakery-it-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `check` holds, up to `limit`.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A path in the temporary directory for a file that no other test uses.
pub fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "bakery-{name}-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ))
}
