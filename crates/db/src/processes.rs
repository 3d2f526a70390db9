//! The process registry: every process keeps a row fresh while it runs (its role,
//! where its `/metrics` answers, its host and pid), so the operations view finds
//! every process of the system, on any host, without a list kept by hand. A
//! process that stops cleanly removes its row; one that died leaves a row that
//! ages, and the view shows it gone.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;

use crate::{Database, DbError, journey, now_millis};

/// How often a process says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A start within this long of the last sign of life under the same id is a
/// restart; later, a fresh start (counted from 1 again).
const RESTART_WINDOW_MS: i64 = 30_000;
/// Every this many heartbeats (a minute), a process with full database rights
/// prunes the journey's old hops.
const PRUNE_EVERY: u32 = 30;

/// A registered process, as the operations view lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Process {
    pub id: String,
    pub role: String,
    pub addr: String,
    pub host: String,
    pub pid: i64,
    /// Unix milliseconds.
    pub started_at: i64,
    pub seen_at: i64,
    /// Restarts under this id (a crash and the supervisor's replacement).
    pub restarts: i64,
}

type ProcessTuple = (String, String, String, String, i64, i64, i64, i64);

/// This process's registration: keeps its row fresh until [`Announced::end`].
pub struct Announced {
    db: Database,
    id: String,
    pid: i64,
    beating: JoinHandle<()>,
}

impl Drop for Announced {
    fn drop(&mut self) {
        self.beating.abort();
    }
}

impl Announced {
    /// Removes the row: this process is stopping on purpose.
    pub async fn end(self) {
        self.beating.abort();
        if let Err(error) = self.db.forget_process(&self.id, self.pid).await {
            tracing::debug!(%error, "could not leave the process registry");
        }
    }
}

/// Registers this process (`role`, `metrics_addr`) and keeps its row fresh; also
/// starts its journal (the hops of requests it records). `prunes`: this process
/// may delete old journey hops (a load balancer's role may not).
pub fn announce(db: Database, role: &str, metrics_addr: SocketAddr, prunes: bool) -> Announced {
    journey::start_journal(db.clone());
    let id = bakery_telemetry::process_id().to_string();
    let pid = i64::from(std::process::id());
    let host = bakery_telemetry::host_name();
    let me = Process {
        id: id.clone(),
        role: role.to_string(),
        addr: reachable(metrics_addr, &host),
        host,
        pid,
        started_at: now_millis(),
        seen_at: now_millis(),
        restarts: 0,
    };
    let beating = tokio::spawn({
        let db = db.clone();
        async move {
            let mut registered = false;
            let mut beats = 0u32;
            loop {
                let result = if registered {
                    db.process_seen(&me.id, me.pid).await
                } else {
                    db.register_process(&me).await.map(|()| true)
                };
                match result {
                    Ok(present) => registered = present,
                    Err(error) => {
                        tracing::debug!(%error, "the process registry is out of reach");
                        registered = false;
                    }
                }
                if prunes && beats.is_multiple_of(PRUNE_EVERY) {
                    let _ = db
                        .prune_journey(now_millis() - journey::KEPT.as_millis() as i64)
                        .await;
                }
                beats = beats.wrapping_add(1);
                tokio::time::sleep(HEARTBEAT).await;
            }
        }
    });
    Announced {
        db,
        id,
        pid,
        beating,
    }
}

/// Where other hosts reach `addr`: a process listening on every interface
/// (`0.0.0.0`, `::`) is registered under its host's name, which the others resolve.
fn reachable(addr: SocketAddr, host: &str) -> String {
    if addr.ip().is_unspecified() {
        format!("{host}:{}", addr.port())
    } else {
        addr.to_string()
    }
}

impl Database {
    /// Adds or replaces this process's row; a replacement soon after the last sign
    /// of life under the same id counts a restart. (`starts` is assigned first: on
    /// MariaDB later assignments see the earlier ones' new values.)
    pub async fn register_process(&self, me: &Process) -> Result<(), DbError> {
        crate::sql::query(
            "INSERT INTO processes (id, role, addr, host, pid, started_at, seen_at, starts)
             VALUES ($1, $2, $3, $4, $5, $6, $6, 1)
             ON CONFLICT (id) DO UPDATE SET
                starts = CASE WHEN processes.pid = excluded.pid THEN processes.starts
                              WHEN processes.seen_at > excluded.seen_at - $7 THEN processes.starts + 1
                              ELSE 1 END,
                role = excluded.role, addr = excluded.addr, host = excluded.host,
                pid = excluded.pid, started_at = excluded.started_at, seen_at = excluded.seen_at",
        )
        .bind(&me.id)
        .bind(&me.role)
        .bind(&me.addr)
        .bind(&me.host)
        .bind(me.pid)
        .bind(now_millis())
        .bind(RESTART_WINDOW_MS)
        .execute(self.primary())
        .await?;
        Ok(())
    }

    /// Marks this process alive; false when its row is gone or another process took
    /// the id (then it registers again).
    pub async fn process_seen(&self, id: &str, pid: i64) -> Result<bool, DbError> {
        let updated =
            crate::sql::query("UPDATE processes SET seen_at = $1 WHERE id = $2 AND pid = $3")
                .bind(now_millis())
                .bind(id)
                .bind(pid)
                .execute(self.primary())
                .await?
                .rows_affected();
        Ok(updated > 0)
    }

    async fn forget_process(&self, id: &str, pid: i64) -> Result<(), DbError> {
        crate::sql::query("DELETE FROM processes WHERE id = $1 AND pid = $2")
            .bind(id)
            .bind(pid)
            .execute(self.primary())
            .await?;
        Ok(())
    }

    /// The processes seen since `since` (Unix milliseconds), by role and id.
    pub async fn processes(&self, since: i64) -> Result<Vec<Process>, DbError> {
        let rows: Vec<ProcessTuple> = crate::sql::query_as(
            "SELECT id, role, addr, host, pid, started_at, seen_at, CAST(starts AS BIGINT)
             FROM processes WHERE seen_at >= $1 ORDER BY role, id",
        )
        .bind(since)
        .fetch_all(self.primary())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, role, addr, host, pid, started_at, seen_at, starts)| Process {
                    id,
                    role,
                    addr,
                    host,
                    pid,
                    started_at,
                    seen_at,
                    restarts: (starts - 1).max(0),
                },
            )
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::reachable;

    #[test]
    fn a_process_on_every_interface_is_registered_under_its_host_name() {
        assert_eq!(
            reachable("0.0.0.0:9100".parse().unwrap(), "web-a"),
            "web-a:9100"
        );
        assert_eq!(
            reachable("[::]:9100".parse().unwrap(), "web-a"),
            "web-a:9100"
        );
        assert_eq!(
            reachable("10.0.0.5:9100".parse().unwrap(), "web-a"),
            "10.0.0.5:9100"
        );
    }
}
