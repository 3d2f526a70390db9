//! Follows the `notifications` table by id and broadcasts each new row to this
//! process's open streams. Ids commit in order (see
//! `Database::store_notification`), so following by id misses nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bakery_db::Database;
use bakery_db::messaging::{NOTIFICATIONS_CHANNEL, Notification};
use tokio::sync::{Notify, broadcast};

/// Rows read per pass.
const BATCH: i64 = 500;
/// Streams fall this far behind the feed before they re-read from the database.
const CAPACITY: usize = 4096;
/// Without a wake-up: SQLite's only way to see other processes' rows; a safety net
/// on PostgreSQL.
const POLL_SQLITE: Duration = Duration::from_millis(50);
const POLL_POSTGRES: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Feed(Arc<Inner>);

struct Inner {
    sender: broadcast::Sender<Arc<Notification>>,
    /// The newest id broadcast.
    position: AtomicI64,
    wake: Notify,
    /// The task that reads new rows, stopped before the database closes.
    follower: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl Feed {
    /// Starts following from the newest row.
    pub async fn start(db: Database) -> Result<Self, bakery_db::DbError> {
        let (sender, _) = broadcast::channel(CAPACITY);
        let feed = Self(Arc::new(Inner {
            sender,
            position: AtomicI64::new(db.last_notification_id().await?),
            wake: Notify::new(),
            follower: std::sync::OnceLock::new(),
        }));
        let poll = if db.is_postgres() {
            let waker = feed.clone();
            db.listen(NOTIFICATIONS_CHANNEL, move |_| waker.wake())
                .await?;
            POLL_POSTGRES
        } else {
            POLL_SQLITE
        };
        let follower = tokio::spawn(feed.clone().follow(db, poll));
        let _ = feed.0.follower.set(follower.abort_handle());
        Ok(feed)
    }

    /// Stops reading new rows (at shutdown, before the database closes: a read then
    /// would only fail and say so).
    pub fn stop(&self) {
        if let Some(follower) = self.0.follower.get() {
            follower.abort();
        }
    }

    /// Something was stored: read now.
    pub fn wake(&self) {
        self.0.wake.notify_one();
    }

    /// The newest id broadcast so far: a fresh stream starts after it.
    pub fn position(&self) -> i64 {
        self.0.position.load(Ordering::Acquire)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Notification>> {
        self.0.sender.subscribe()
    }

    /// Streams open on this process.
    pub fn listeners(&self) -> usize {
        self.0.sender.receiver_count()
    }

    async fn follow(self, db: Database, poll: Duration) {
        loop {
            tokio::select! {
                () = self.0.wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
            loop {
                let after = self.position();
                let rows = match db.notifications_after(after, BATCH).await {
                    Ok(rows) => rows,
                    Err(error) => {
                        tracing::warn!(%error, "cannot read notifications; will try again");
                        break;
                    }
                };
                let full = rows.len() as i64 == BATCH;
                for row in rows {
                    self.0.position.store(row.id, Ordering::Release);
                    // No receiver is not an error: nobody is listening now.
                    let _ = self.0.sender.send(Arc::new(row));
                }
                if !full {
                    break;
                }
            }
        }
    }
}
