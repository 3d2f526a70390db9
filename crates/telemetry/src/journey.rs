//! The journal of hops: what a process did for a request beyond answering it (a
//! publish, a delivery and its outcome, a mail, a push), noted under the request's
//! correlation id for the journey `/ops` draws. Noting is a channel send that never
//! waits; the database's journal writer (`bakery_db::journey`) drains the channel
//! into the `journey` table in batches. Without a writer, notes are dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use tokio::sync::mpsc;

/// Hops waiting for the writer; beyond, new ones are dropped: the journal never
/// slows the work it records.
const BACKLOG: usize = 16_384;

/// One hop as noted.
#[derive(Debug, Clone)]
pub struct Noted {
    pub correlation_id: String,
    /// Unix milliseconds.
    pub at: i64,
    pub process: String,
    pub what: String,
    /// A JSON object with the hop's particulars.
    pub detail: serde_json::Value,
}

impl Noted {
    /// A hop taken now by this process.
    pub fn now(correlation_id: &str, what: String, detail: serde_json::Value) -> Self {
        Self {
            correlation_id: correlation_id.to_string(),
            at: bakery_core::now_millis(),
            process: crate::process_id().to_string(),
            what,
            detail,
        }
    }
}

/// Whether a writer took the journal: until then nothing is kept.
static WRITING: AtomicBool = AtomicBool::new(false);

struct Journal {
    sender: mpsc::Sender<Noted>,
    receiver: Mutex<Option<mpsc::Receiver<Noted>>>,
}

fn journal() -> &'static Journal {
    static JOURNAL: OnceLock<Journal> = OnceLock::new();
    JOURNAL.get_or_init(|| {
        let (sender, receiver) = mpsc::channel(BACKLOG);
        Journal {
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    })
}

/// The journal's receiving end, to the first caller only (the process's writer).
pub fn take_journal() -> Option<mpsc::Receiver<Noted>> {
    let taken = journal()
        .receiver
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    WRITING.store(true, Ordering::Relaxed);
    taken
}

/// Notes a hop of `correlation_id`'s journey, taken now by this process.
pub fn note(correlation_id: &str, what: String, detail: serde_json::Value) {
    if !WRITING.load(Ordering::Relaxed) {
        return;
    }
    let _ = journal()
        .sender
        .try_send(Noted::now(correlation_id, what, detail));
}
