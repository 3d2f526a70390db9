//! Whether the sessions behind open streams still live, asked by one task of the
//! process: each session once per [`SESSION_CHECK`], however many streams it has
//! open, instead of every stream asking for itself (10,000 streams of one session
//! were 10,000 questions a second to the session store).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bakery_session::{SessionId, SessionStore};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// How often each watched session is asked about.
const SESSION_CHECK: Duration = Duration::from_secs(1);
/// Sessions asked about at once.
const ASKING_AT_ONCE: usize = 32;

/// The watched sessions: each one's token (cancelled when it ends) and its watchers.
type Watched = Arc<Mutex<HashMap<SessionId, (CancellationToken, usize)>>>;

#[derive(Clone)]
pub struct SessionWatch {
    watched: Watched,
}

/// One stream's watch of its session; dropping it stops watching.
pub struct Watch {
    watched: Watched,
    id: SessionId,
    pub ended: CancellationToken,
}

impl SessionWatch {
    /// Asks about the watched sessions until `stop`. A store that cannot answer
    /// ends nothing.
    pub fn start(sessions: SessionStore, stop: CancellationToken) -> Self {
        let watched: Watched = Arc::default();
        let task = watched.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(SESSION_CHECK) => {}
                    () = stop.cancelled() => return,
                }
                let ids: Vec<SessionId> = lock(&task).keys().cloned().collect();
                let ended: Vec<SessionId> = futures::stream::iter(ids)
                    .map(|id| {
                        let sessions = sessions.clone();
                        async move { matches!(sessions.is_live(&id).await, Ok(false)).then_some(id) }
                    })
                    .buffer_unordered(ASKING_AT_ONCE)
                    .filter_map(std::future::ready)
                    .collect()
                    .await;
                let mut watched = lock(&task);
                for id in ended {
                    if let Some((token, _)) = watched.remove(&id) {
                        token.cancel();
                    }
                }
            }
        });
        Self { watched }
    }

    /// Watches session `id` for one more stream.
    pub fn watch(&self, id: SessionId) -> Watch {
        let mut watched = lock(&self.watched);
        let entry = watched
            .entry(id.clone())
            .or_insert_with(|| (CancellationToken::new(), 0));
        entry.1 += 1;
        Watch {
            watched: self.watched.clone(),
            id,
            ended: entry.0.clone(),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = lock(&self.watched);
        if let Some(entry) = watched.get_mut(&self.id) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                watched.remove(&self.id);
            }
        }
    }
}

fn lock(
    watched: &Watched,
) -> std::sync::MutexGuard<'_, HashMap<SessionId, (CancellationToken, usize)>> {
    watched.lock().unwrap_or_else(|p| p.into_inner())
}
