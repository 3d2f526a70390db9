//! A Server-Sent Events client for tests: opens a stream and hands its events over
//! as they come.

use std::time::Duration;

use tokio::sync::mpsc;

/// One event of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

/// An open stream; closed on drop.
pub struct SseStream {
    events: mpsc::UnboundedReceiver<SseEvent>,
    reader: tokio::task::JoinHandle<()>,
}

impl SseStream {
    /// Opens `url` with the session `cookie`, resuming after `last_event_id` if given;
    /// panics unless it answers 200 `text/event-stream`.
    pub async fn open(url: &str, cookie: &str, last_event_id: Option<&str>) -> Self {
        let client = reqwest::Client::new();
        let mut request = client.get(url).header("cookie", cookie);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let mut response = request.send().await.expect("open the event stream");
        assert_eq!(response.status(), 200, "the event stream at {url}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let (tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    if let Some(event) = parse(&block)
                        && tx.send(event).is_err()
                    {
                        return;
                    }
                }
            }
        });
        Self { events, reader }
    }

    /// The next event, or `None` when none comes within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<SseEvent> {
        tokio::time::timeout(limit, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Whether the server ends the stream within `limit` (events meanwhile are
    /// passed over).
    pub async fn ends_within(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async { while self.events.recv().await.is_some() {} })
            .await
            .is_ok()
    }

    /// Events until `n` have come or `limit` passed.
    pub async fn take(&mut self, n: usize, limit: Duration) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(event) => got.push(event),
                None => break,
            }
        }
        got
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// One `\n\n`-terminated block; comments only (`: ...`) are no event.
fn parse(block: &str) -> Option<SseEvent> {
    let (mut id, mut event, mut data) = (None, None, Vec::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim_start().to_string());
        } else if let Some(v) = line.strip_prefix("event:") {
            event = Some(v.trim_start().to_string());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
        }
    }
    (id.is_some() || event.is_some() || !data.is_empty()).then(|| SseEvent {
        id,
        event,
        data: data.join("\n"),
    })
}
