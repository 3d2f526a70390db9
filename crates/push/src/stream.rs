//! `GET /api/notifications/stream`: the user's notifications as Server-Sent Events
//! (`id:` the notification id, `event:` its kind, `data:` the JSON), a comment at
//! least every 15 s, and — with `Last-Event-ID` — everything missed first, in order.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bakery_db::Database;
use bakery_db::messaging::Notification;
use bakery_service::{ApiError, ApiResult};
use bakery_session::{SessionId, SessionStore};
use futures::{Stream, StreamExt};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::feed::Feed;
use crate::session_watch::SessionWatch;

/// Missed notifications read per database query.
const BACKLOG_BATCH: i64 = 500;
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the stream handler needs.
#[derive(Clone)]
pub struct Streams {
    pub db: Database,
    /// Who is asking: the session behind the request's cookie.
    pub sessions: SessionStore,
    /// Whether it still lives (logout, password change, expiry end it).
    pub watch: SessionWatch,
    pub feed: Feed,
    /// Cancelled when the process starts shutting down: every stream ends.
    pub closing: CancellationToken,
    /// Open streams per user on this process, and how many one user may hold.
    pub open: Arc<OpenStreams>,
    /// A stream ends after this long; the browser reconnects with `Last-Event-ID`.
    pub max_lifetime: Duration,
}

/// Open streams per user on this process.
pub struct OpenStreams {
    per_user: std::sync::Mutex<std::collections::HashMap<i64, usize>>,
    limit: usize,
}

impl OpenStreams {
    pub fn new(limit: usize) -> Self {
        Self {
            per_user: Default::default(),
            limit,
        }
    }

    /// A place for one more stream of `user_id`, held until the guard drops; `None`
    /// when the user holds the most already.
    fn take(self: &Arc<Self>, user_id: i64) -> Option<OpenStream> {
        let mut per_user = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        let open = per_user.entry(user_id).or_default();
        if *open >= self.limit {
            return None;
        }
        *open += 1;
        metrics::gauge!("bakery_push_streams_open").increment(1.0);
        Some(OpenStream {
            streams: self.clone(),
            user_id,
        })
    }
}

/// One open stream's place; given back when the stream ends.
struct OpenStream {
    streams: Arc<OpenStreams>,
    user_id: i64,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut per_user = self
            .streams
            .per_user
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(open) = per_user.get_mut(&self.user_id) {
            metrics::gauge!("bakery_push_streams_open").decrement(1.0);
            *open -= 1;
            if *open == 0 {
                per_user.remove(&self.user_id);
            }
        }
    }
}

/// The session behind the request's cookie and its user: 401 without one, 503 when
/// the session store cannot answer.
async fn session_user(sessions: &SessionStore, headers: &HeaderMap) -> ApiResult<(SessionId, i64)> {
    let id = bakery_session::cookie::read(headers).ok_or_else(ApiError::unauthorized)?;
    let session = sessions.load(&id).await?;
    let user_id = session
        .map(|session| session.user_id)
        .ok_or_else(ApiError::unauthorized)?;
    Ok((id, user_id))
}

pub async fn open(
    State(Streams {
        db,
        sessions,
        watch,
        feed,
        closing,
        open,
        max_lifetime,
    }): State<Streams>,
    headers: HeaderMap,
    query: axum::extract::Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Response> {
    let (session, user_id) = session_user(&sessions, &headers).await?;
    let Some(place) = open.take(user_id) else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many notification streams open for this account; close one first",
        )
        .retry_after(5));
    };
    // Subscribe before reading what was missed: nothing falls between the two.
    let live = feed.subscribe();
    // Where to resume: `Last-Event-ID` (a reconnecting browser), or `?after=` (a
    // page that showed the notifications up to that id when it was rendered).
    let after = query
        .0
        .get("after")
        .map(String::as_str)
        .and_then(|v| v.trim().parse::<i64>().ok());
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or(after)
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
    // A stream ends when the process starts closing, when its session ends, or at
    // its maximum lifetime; its place is given back with it.
    let watched = watch.watch(session);
    let ends = async move {
        tokio::select! {
            () = closing.cancelled_owned() => {}
            () = watched.ended.cancelled() => {
                tracing::debug!(user_id, "session ended; stream closed");
            }
            () = tokio::time::sleep(max_lifetime) => {}
        }
        drop(place);
    };
    let events = opening.chain(follower.into_stream()).take_until(ends);
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
            bakery_telemetry::journey::note(
                &next.correlation_id,
                format!("{} pushed on a stream of user {}", next.kind, next.user_id),
                serde_json::json!({"notification": next.id, "kind": next.kind, "user_id": next.user_id}),
            );
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
