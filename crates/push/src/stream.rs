//! `GET /api/notifications/stream`: the user's notifications as Server-Sent Events
//! (`id:` the notification id, `event:` its kind, `data:` the JSON), a comment at
//! least every 15 s, and — with `Last-Event-ID` — everything missed first, in order.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bakery_db::Database;
use bakery_db::messaging::Notification;
use bakery_service::{ApiError, ApiResult};
use bakery_session::SessionStore;
use futures::{Stream, StreamExt};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::feed::Feed;

/// Missed notifications read per database query.
const BACKLOG_BATCH: i64 = 500;
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the stream handler needs.
#[derive(Clone)]
pub struct Streams {
    pub db: Database,
    /// Who is asking: the session behind the request's cookie.
    pub sessions: SessionStore,
    pub feed: Feed,
    /// Cancelled when the process starts shutting down: every stream ends.
    pub closing: CancellationToken,
}

/// The user behind the request's session cookie: 401 without one, 503 when the
/// session store cannot answer.
async fn session_user(sessions: &SessionStore, headers: &HeaderMap) -> ApiResult<i64> {
    let id = bakery_session::cookie::read(headers).ok_or_else(ApiError::unauthorized)?;
    let session = sessions.load(&id).await?;
    session
        .map(|session| session.user_id)
        .ok_or_else(ApiError::unauthorized)
}

pub async fn open(
    State(Streams {
        db,
        sessions,
        feed,
        closing,
    }): State<Streams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let user_id = session_user(&sessions, &headers).await?;
    // Subscribe before reading what was missed: nothing falls between the two.
    let live = feed.subscribe();
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|id| *id >= 0);
    let follower = Follower {
        db,
        user_id,
        cursor: resume.unwrap_or_else(|| feed.position()),
        backlog: VecDeque::new(),
        catching_up: resume.is_some(),
        live,
    };
    tracing::debug!(
        user_id,
        ?resume,
        listeners = feed.listeners(),
        "stream opened"
    );
    let opening = futures::stream::once(async { Ok(Event::default().comment("connected")) });
    let events = opening
        .chain(follower.into_stream())
        .take_until(closing.cancelled_owned());
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// One open stream: the user's notifications after `cursor`, from the database
/// while catching up, then from the feed.
struct Follower {
    db: Database,
    user_id: i64,
    /// The newest id sent.
    cursor: i64,
    backlog: VecDeque<Notification>,
    /// Reading missed rows from the database (after a resume or a lag).
    catching_up: bool,
    live: broadcast::Receiver<Arc<Notification>>,
}

impl Follower {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        futures::stream::unfold(self, |mut me| async move {
            let next = me.next().await?;
            Some((Ok(event(&next)), me))
        })
    }

    async fn next(&mut self) -> Option<Notification> {
        loop {
            if let Some(row) = self.backlog.pop_front() {
                self.cursor = row.id;
                return Some(row);
            }
            if self.catching_up {
                match self
                    .db
                    .notifications_of(self.user_id, self.cursor, BACKLOG_BATCH)
                    .await
                {
                    Ok(rows) => {
                        self.catching_up = rows.len() as i64 == BACKLOG_BATCH;
                        self.backlog.extend(rows);
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%error, user_id = self.user_id, "cannot read missed notifications; closing the stream");
                        return None; // the browser reconnects with Last-Event-ID
                    }
                }
            }
            match self.live.recv().await {
                Ok(row) if row.user_id == self.user_id && row.id > self.cursor => {
                    self.cursor = row.id;
                    return Some((*row).clone());
                }
                Ok(_) => {}
                // Fell behind the feed: what was skipped is in the database.
                Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

fn event(row: &Notification) -> Event {
    let data = serde_json::to_string(row).unwrap_or_else(|_| "{}".to_string());
    Event::default()
        .id(row.id.to_string())
        .event(row.kind.clone())
        .data(data)
}
