//! The message broker: publish with confirms, consume with acks, retry with backoff,
//! dead letters, and the outbox relay that turns committed rows into messages.
//!
//! Two engines behind one [`Broker`], chosen by `BAKERY_BROKER_URL`:
//! - **RabbitMQ** (`amqp://`, through lapin): the contract's topology is declared at
//!   every (re)connect; retries wait in per-attempt delay queues that dead-letter back
//!   to their queue; dead letters go through the `bakery.dead` exchange.
//! - **Embedded** (the default): tables in the configured database, so every process
//!   sharing the database shares the broker, and messages are as durable as its rows.
//!   Routing uses the same bindings ([`topology`]); a delivery is a lease on a row, and
//!   an expired lease (a consumer died) is a redelivery.
//!
//! A consumer is a handler that answers an [`Outcome`]; the broker settles the
//! delivery accordingly, so no handler can ack a message it failed to handle. Every
//! delivery is at least once: handlers are idempotent on the message id.

use std::sync::Arc;
use std::time::Duration;

use bakery_config::{BrokerConfig, BrokerUrl, ConfigError};
use bakery_db::Database;
use futures::future::BoxFuture;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod embedded;
mod in_flight;
mod rabbit;
pub mod relay;
pub use bakery_events::topology;

pub use relay::Relay;

/// One message as the contract describes it: persistent, with a unique id, the
/// correlation id of the request that caused it, its type (= routing key) and a
/// JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub correlation_id: String,
    pub kind: String,
    /// JSON text.
    pub body: String,
}

impl Message {
    /// A fresh message with a new id.
    pub fn new(kind: &str, correlation_id: &str, body: &impl Serialize) -> Self {
        Self {
            id: new_message_id(),
            correlation_id: correlation_id.to_string(),
            kind: kind.to_string(),
            body: serde_json::to_string(body).expect("message bodies serialise"),
        }
    }

    /// The typed event this message carries; an error (the reason to dead-letter
    /// it) when its type or version is unknown or its body malformed.
    pub fn event(&self) -> Result<bakery_events::Incoming, bakery_events::DecodeError> {
        bakery_events::decode(&self.kind, &self.body)
    }
}

/// 128 random bits as 32 hex digits.
pub fn new_message_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Message,
    pub queue: &'static str,
    /// This delivery's number: 1 the first time, more after retries.
    pub attempt: u32,
}

/// What a handler made of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or already done before: a redelivery): remove it.
    Ack,
    /// Failed for now (a server away, SMTP 4xx): deliver again after a backoff, or
    /// dead-letter it once the attempts are used up.
    Retry(String),
    /// Can never succeed as it is (malformed, SMTP 5xx): to the dead-letter queue.
    Dead(String),
}

/// What the broker does with a delivery once its handler answered.
#[derive(Debug, Clone, PartialEq)]
enum Settlement {
    Ack,
    RetryAfter(Duration, String),
    Dead(String),
}

/// A message in a dead-letter queue.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The queue it died in (not `dead.<queue>`).
    pub queue: String,
    pub message_id: String,
    pub kind: String,
    pub correlation_id: String,
    pub attempts: u32,
    pub error: String,
    /// Unix milliseconds.
    pub died_at: i64,
}

/// A queue as the broker sees it now.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QueueDepth {
    pub queue: &'static str,
    /// Waiting to be delivered (embedded: retries waiting out their delay included;
    /// RabbitMQ keeps those in its delay queues).
    pub ready: u64,
    /// Delivered and not yet settled (the embedded broker's leases; AMQP does not
    /// tell a client).
    pub unacked: Option<u64>,
    /// Consumers attached (RabbitMQ's count; the embedded broker does not know).
    pub consumers: Option<u64>,
    /// In its dead-letter queue.
    pub dead: u64,
}

/// Whether a published message reached any queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    Queued,
    /// No binding matched (published `mandatory`: RabbitMQ returned it).
    Unroutable,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached now; worth trying again.
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the message (a negative confirm).
    #[error("the broker refused the message: {0}")]
    Refused(String),
    #[error("broker error: {0}")]
    Other(String),
}

/// How deliveries are retried and leased.
#[derive(Debug, Clone)]
pub struct Policy {
    pub prefetch: u16,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub lease: Duration,
}

impl Policy {
    pub fn from_config(config: &BrokerConfig) -> Self {
        Self {
            prefetch: config.prefetch,
            max_attempts: config.max_attempts,
            retry_base: config.retry_base,
            retry_cap: config.retry_cap,
            lease: config.lease,
        }
    }

    /// Capped exponential backoff with ±20 % jitter (so retries of many messages that
    /// failed together do not come back together).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let raw = self
            .retry_base
            .saturating_mul(1u32 << exponent)
            .min(self.retry_cap);
        raw.mul_f64(rand::random_range(0.8..1.2))
    }

    /// Turns a handler's outcome into what happens to the delivery.
    fn settle(&self, attempt: u32, outcome: Outcome) -> Settlement {
        match outcome {
            Outcome::Ack => Settlement::Ack,
            Outcome::Dead(reason) => Settlement::Dead(reason),
            Outcome::Retry(reason) if attempt >= self.max_attempts => {
                Settlement::Dead(format!("gave up after {attempt} attempts: {reason}"))
            }
            Outcome::Retry(reason) => Settlement::RetryAfter(self.delay(attempt), reason),
        }
    }
}

/// A consumer's handler: takes a delivery, answers an outcome.
pub type Handler = Arc<dyn Fn(Delivery) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// Wraps an async function as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    Arc::new(move |delivery| Box::pin(f(delivery)))
}

/// Runs the handler in a task of its own, so a panic is a retry, not a lost
/// consumer; inside, the message's correlation id is the current one (follow-up
/// messages keep it) and every log line carries it.
async fn run_handler(handler: &Handler, delivery: Delivery) -> Outcome {
    use tracing::Instrument;
    let queue = delivery.queue;
    let id = delivery.message.id.clone();
    // A second copy of a message being handled here waits for the first to end,
    // then finds it done (every handler checks that first).
    let _turn = in_flight::turn(queue, &id).await;
    let correlation_id = delivery.message.correlation_id.clone();
    let span = tracing::info_span!("message", %correlation_id, queue, message_id = %id, attempt = delivery.attempt);
    let work =
        bakery_telemetry::with_correlation(correlation_id, handler(delivery)).instrument(span);
    match tokio::spawn(work).await {
        Ok(outcome) => outcome,
        Err(error) => {
            tracing::error!(queue, message_id = %id, %error, "a handler failed");
            Outcome::Retry(format!("the handler failed: {error}"))
        }
    }
}

/// What every settlement leaves behind, whichever engine: the count, the log line,
/// and the hop in the journey of the request that caused the message.
fn settled(delivery: &Delivery, settlement: &Settlement) {
    let (outcome, reason) = match settlement {
        Settlement::Ack => ("ack", None),
        Settlement::RetryAfter(_, reason) => ("retry", Some(reason.as_str())),
        Settlement::Dead(reason) => ("dead", Some(reason.as_str())),
    };
    metrics::counter!("bakery_broker_consumed_total", "queue" => delivery.queue, "outcome" => outcome)
        .increment(1);
    log_settlement(delivery, settlement);
    let message = &delivery.message;
    bakery_telemetry::journey::note(
        &message.correlation_id,
        format!(
            "{} delivered from {}: {outcome}",
            message.kind, delivery.queue
        ),
        serde_json::json!({
            "message_id": message.id, "kind": message.kind, "queue": delivery.queue,
            "attempt": delivery.attempt, "outcome": outcome, "reason": reason,
        }),
    );
}

fn log_settlement(delivery: &Delivery, settlement: &Settlement) {
    let (queue, id, correlation_id, attempt) = (
        delivery.queue,
        &delivery.message.id,
        &delivery.message.correlation_id,
        delivery.attempt,
    );
    match settlement {
        Settlement::Ack => {
            tracing::debug!(queue, message_id = %id, %correlation_id, attempt, "handled")
        }
        Settlement::RetryAfter(delay, reason) => {
            tracing::warn!(queue, message_id = %id, %correlation_id, attempt, ?delay, reason, "will retry")
        }
        Settlement::Dead(reason) => {
            tracing::error!(queue, message_id = %id, %correlation_id, attempt, reason, "dead-lettered")
        }
    }
}

fn record_published(exchange: &str) {
    metrics::counter!("bakery_broker_published_total", "exchange" => exchange.to_string())
        .increment(1);
}

#[derive(Clone)]
enum Engine {
    Embedded(Arc<embedded::Embedded>),
    Rabbit(Arc<rabbit::Rabbit>),
}

/// The broker: cheap to clone, shared by a process's publishers and consumers.
#[derive(Clone)]
pub struct Broker {
    engine: Engine,
    policy: Arc<Policy>,
}

impl Broker {
    /// Connects to the broker named in `config` (the embedded one lives in `db`) and
    /// declares the topology. A RabbitMQ that cannot be reached now is not an error
    /// here: publishers keep their messages in the outbox until it can, so a web
    /// clone starts (and serves) through a broker outage. Roles that cannot work
    /// without it call [`Broker::check`].
    pub async fn connect(config: &BrokerConfig, db: &Database) -> Result<Self, ConfigError> {
        let policy = Arc::new(Policy::from_config(config));
        let engine = match &config.url {
            BrokerUrl::Embedded => Engine::Embedded(Arc::new(
                embedded::Embedded::open(db, policy.clone())
                    .await
                    .map_err(|e| ConfigError::new("BAKERY_BROKER_URL", e.to_string()))?,
            )),
            BrokerUrl::Amqp(nodes) => {
                let rabbit = rabbit::Rabbit::new(nodes.clone(), policy.clone());
                if let Err(error) = rabbit.link().await {
                    tracing::warn!(%error, "RabbitMQ is not reachable yet; events wait in the outbox");
                }
                Engine::Rabbit(Arc::new(rabbit))
            }
        };
        Ok(Self { engine, policy })
    }

    /// Fails with a [`ConfigError`] naming `BAKERY_BROKER_URL` unless the broker
    /// answers now: for roles that exist to consume, and for the CLI.
    pub async fn check(&self, config: &BrokerConfig) -> Result<(), ConfigError> {
        let result = match &self.engine {
            Engine::Embedded(e) => match e.is_up().await {
                true => Ok(()),
                false => Err("the database does not answer".to_string()),
            },
            Engine::Rabbit(r) => r.link().await.map(|_| ()).map_err(|e| e.to_string()),
        };
        result.map_err(|problem| {
            let url = match &config.url {
                BrokerUrl::Amqp(_) => config.url.redacted(),
                BrokerUrl::Embedded => "the embedded broker".to_string(),
            };
            ConfigError::new("BAKERY_BROKER_URL", format!("cannot use {url}: {problem}"))
        })
    }

    pub fn engine(&self) -> &'static str {
        match self.engine {
            Engine::Embedded(_) => "embedded",
            Engine::Rabbit(_) => "rabbitmq",
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Publishes persistently and waits for the broker's confirm.
    pub async fn publish(&self, exchange: &str, message: &Message) -> Result<Routed, BrokerError> {
        let routed = match &self.engine {
            Engine::Embedded(e) => e.publish(exchange, message).await?,
            Engine::Rabbit(r) => r.publish(exchange, message).await?,
        };
        record_published(exchange);
        if routed == Routed::Unroutable {
            tracing::warn!(exchange, kind = %message.kind, message_id = %message.id, "no queue is bound for this message");
        }
        Ok(routed)
    }

    /// Whether the broker's connection is up now (for `/healthz`).
    pub async fn is_up(&self) -> bool {
        match &self.engine {
            Engine::Embedded(e) => e.is_up().await,
            Engine::Rabbit(r) => r.is_up(),
        }
    }

    /// Consumes `queue` with `handler` until `stop`, through any number of broker
    /// restarts; at most the configured prefetch of deliveries are handled at once.
    pub fn consume(
        &self,
        queue: &'static str,
        handler: Handler,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        self.consume_at_most(queue, self.policy.prefetch, handler, stop)
    }

    /// [`Broker::consume`] holding at most `prefetch` deliveries at once: a consumer
    /// takes only what it can start, and the rest goes to other consumers.
    pub fn consume_at_most(
        &self,
        queue: &'static str,
        prefetch: u16,
        handler: Handler,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let prefetch = prefetch.max(1);
        match &self.engine {
            Engine::Embedded(e) => tokio::spawn(e.clone().consume(queue, prefetch, handler, stop)),
            Engine::Rabbit(r) => tokio::spawn(r.clone().consume(queue, prefetch, handler, stop)),
        }
    }

    /// Every queue's depth, consumers and dead letters, in the topology's order.
    pub async fn depths(&self) -> Result<Vec<QueueDepth>, BrokerError> {
        match &self.engine {
            Engine::Embedded(e) => e.depths().await,
            Engine::Rabbit(r) => r.depths().await,
        }
    }

    /// Dead letters, of one queue or of all.
    pub async fn dead_letters(
        &self,
        queue: Option<&'static str>,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        let queues = queue
            .map(|q| vec![q])
            .unwrap_or_else(|| topology::QUEUES.to_vec());
        match &self.engine {
            Engine::Embedded(e) => e.dead_letters(&queues).await,
            Engine::Rabbit(r) => r.dead_letters(&queues).await,
        }
    }

    /// Puts dead letters back on their queue (all of them, or the one with
    /// `message_id`), attempts reset; answers how many.
    pub async fn replay(
        &self,
        queue: Option<&'static str>,
        message_id: Option<&str>,
    ) -> Result<usize, BrokerError> {
        let queues = queue
            .map(|q| vec![q])
            .unwrap_or_else(|| topology::QUEUES.to_vec());
        match &self.engine {
            Engine::Embedded(e) => e.replay(&queues, message_id).await,
            Engine::Rabbit(r) => r.replay(&queues, message_id).await,
        }
    }

    /// Closes connections (RabbitMQ) so the server sees a clean goodbye.
    pub async fn close(&self) {
        if let Engine::Rabbit(r) = &self.engine {
            r.close().await;
        }
    }
}

/// Grace for in-flight handlers when a consumer stops.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            prefetch: 8,
            max_attempts: 3,
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_millis(350),
            lease: Duration::from_secs(5),
        }
    }

    #[test]
    fn retries_back_off_up_to_a_cap_then_die() {
        let p = policy();
        let Settlement::RetryAfter(first, _) = p.settle(1, Outcome::Retry("x".into())) else {
            panic!("a first failure is retried")
        };
        assert!((80..=120).contains(&first.as_millis()), "{first:?}");
        let Settlement::RetryAfter(second, _) = p.settle(2, Outcome::Retry("x".into())) else {
            panic!("a second failure is retried")
        };
        assert!((160..=240).contains(&second.as_millis()), "{second:?}");
        assert!(p.delay(10) <= Duration::from_millis(420));
        assert_eq!(
            p.settle(3, Outcome::Retry("smtp 451".into())),
            Settlement::Dead("gave up after 3 attempts: smtp 451".into())
        );
        assert_eq!(
            p.settle(1, Outcome::Dead("bad".into())),
            Settlement::Dead("bad".into())
        );
        assert_eq!(p.settle(1, Outcome::Ack), Settlement::Ack);
    }
}
