//! When a role should stop: on SIGINT or SIGTERM, or when the supervisor that
//! started it is gone (even if it was killed with SIGKILL and could not tell us).

use std::time::Duration;

/// Resolves when this process should drain and exit. The signal handlers are
/// installed by this call, before the role starts serving.
pub fn requested() -> impl Future<Output = ()> + Send + 'static {
    let signal = bakery_telemetry::shutdown_signal();
    async move {
        tokio::select! {
            () = signal => {}
            () = supervisor_gone() => tracing::warn!("the supervisor is gone; shutting down"),
        }
    }
}

/// Never resolves unless `BAKERY_SUPERVISOR_PID` names our parent and the parent
/// changes (we were re-parented because it died).
async fn supervisor_gone() {
    let Some(expected) = std::env::var("BAKERY_SUPERVISOR_PID")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        if nix::unistd::getppid().as_raw() != expected {
            return;
        }
    }
}
