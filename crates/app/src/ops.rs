//! What the operations view reads from the stores: the process registry, the jobs
//! by kind and state, the broker's queues, and the journey of a request. Read on
//! the primary: an operator sees the present, not a replica's past. The web routes
//! check that the actor is an admin.

use bakery_broker::QueueDepth;
use bakery_db::journey::Hop;
use bakery_db::processes::Process;

use crate::{App, Error};

/// A process not seen for this long is shown gone; older rows are not shown.
pub const SHOWN_FOR_MS: i64 = 60_000;

/// The jobs as the operations view shows them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct JobCounts {
    /// (kind, state, count).
    pub counts: Vec<(String, String, i64)>,
    /// When the oldest queued job was queued (Unix milliseconds).
    pub oldest_queued_at: Option<i64>,
}

impl App {
    /// The registered processes seen in the last minute.
    pub async fn processes(&self) -> Result<Vec<Process>, Error> {
        let since = bakery_core::now_millis() - SHOWN_FOR_MS;
        Ok(self.db().processes(since).await?)
    }

    pub async fn job_counts(&self) -> Result<JobCounts, Error> {
        let (counts, oldest_queued_at) = self.db().job_counts().await?;
        Ok(JobCounts {
            counts,
            oldest_queued_at,
        })
    }

    /// Every queue's depth; a broker that cannot answer is an error the view shows.
    pub async fn queue_depths(&self) -> Result<Vec<QueueDepth>, String> {
        self.broker().depths().await.map_err(|e| e.to_string())
    }

    /// What the request `request_id` caused, hop by hop; `NotFound` when nothing is
    /// recorded under it.
    pub async fn journey(&self, request_id: &str) -> Result<Vec<Hop>, Error> {
        let hops = self.db().journey(request_id).await?;
        if hops.is_empty() {
            return Err(Error::NotFound);
        }
        Ok(hops)
    }

    /// `postgres` or `sqlite`.
    /// Where product reads come from: `tables` or `documents`.
    pub fn read_model(&self) -> &'static str {
        match self.0.read_model {
            bakery_config::ReadModel::Tables => "tables",
            bakery_config::ReadModel::Documents => "documents",
        }
    }

    pub fn database_engine(&self) -> &'static str {
        match self.db().dialect() {
            bakery_db::Dialect::Sqlite => "sqlite",
            bakery_db::Dialect::Postgres => "postgres",
            bakery_db::Dialect::MariaDb => "mariadb",
        }
    }
}
