//! Jobs: slow work done in the back by `bakery worker` (contract: "Jobs").

use serde::{Deserialize, Serialize};

use crate::clock::{serialize_millis, serialize_optional_millis};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Whether the job is over (nothing will change it but a retry).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// A job as `GET /api/jobs/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub state: JobState,
    /// 0..100
    pub progress: i64,
    pub attempts: i64,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    #[serde(serialize_with = "serialize_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(serialize_with = "serialize_optional_millis")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
    /// Who asked for it (the owner may read and cancel it).
    #[serde(skip)]
    pub owner_id: Option<i64>,
    /// The worker that holds (or last held) it, for operators.
    #[serde(skip)]
    pub worker: Option<String>,
}
