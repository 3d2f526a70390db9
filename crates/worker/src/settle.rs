//! Records the ends of jobs in batches: the jobs that end while one batch is being
//! written make the next one — one transaction for many jobs under load, one for
//! each when it is quiet, and no timer to wait for.

use bakery_app::App;
use bakery_db::jobs::{Claimed, Ending, Settle};
use tokio::sync::{mpsc, oneshot};

/// At most this many jobs' ends in one transaction.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<bool, String>>;

pub(crate) struct Settler(mpsc::UnboundedSender<(Settle, Reply)>);

impl Settler {
    pub fn start(app: App) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(app, receiver));
        Self(sender)
    }

    /// Records how `job` ended (fenced by its attempt); false when the attempt no
    /// longer held it. `job.finished` carries the current correlation id.
    pub async fn settle(&self, job: Claimed, ending: Ending) -> Result<bool, String> {
        let (reply, answer) = oneshot::channel();
        let settle = Settle {
            job,
            ending,
            correlation_id: bakery_telemetry::correlation_id(),
        };
        self.0
            .send((settle, reply))
            .map_err(|_| "the worker is stopping".to_string())?;
        answer
            .await
            .map_err(|_| "the worker is stopping".to_string())?
    }
}

async fn write_batches(app: App, mut receiver: mpsc::UnboundedReceiver<(Settle, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (endings, replies): (Vec<Settle>, Vec<Reply>) = batch.drain(..).unzip();
        match app.settle_jobs(endings).await {
            Ok(held) => {
                for (reply, held) in replies.into_iter().zip(held) {
                    let _ = reply.send(Ok(held));
                }
            }
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(error.to_string()));
                }
            }
        }
    }
}
