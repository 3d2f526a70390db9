//! RabbitMQ through lapin.
//!
//! One connection per process, made on demand and made again after it breaks (a
//! RabbitMQ restart, a network cut): the topology is declared on every connect, the
//! publisher channel has confirms on, and each consumer re-subscribes by itself.
//! Until then publishes fail fast ([`BrokerError::Unavailable`]) and `is_up` is false.
//!
//! Retries wait in delay queues `retry.<queue>.<attempt>`: a message is published
//! there with a per-message expiration (backoff with jitter) and dead-letters back
//! to its queue through the default exchange when it expires. One delay queue per
//! attempt keeps messages of similar delays together, so a long delay never holds a
//! short one behind it for long (RabbitMQ expires only a queue's head). Dead letters
//! are published to `bakery.dead` (routing key: the queue) with the reason in
//! headers; queues also name `bakery.dead` as their dead-letter exchange, so a
//! message RabbitMQ itself rejects ends there too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bakery_core::now_millis;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::topology::{self, ExchangeKind, dead_queue};
use crate::{
    BrokerError, DeadLetter, Delivery, Handler, Message, Policy, QueueDepth, Routed, STOP_GRACE,
    Settlement, run_handler, settled,
};

/// Longest a connect, a declare or a confirm may take.
const CALL_LIMIT: Duration = Duration::from_secs(5);
/// Dead letters read at most per listing or replay pass.
const DEAD_SCAN_LIMIT: usize = 10_000;

const ATTEMPTS: &str = "x-attempts";
const ERROR: &str = "x-error";
const DIED_AT: &str = "x-died-at";

pub struct Rabbit {
    /// The nodes: one server, or the nodes of one cluster (then every queue is a
    /// quorum queue, replicated on the nodes, and a link goes to whichever answers).
    nodes: Vec<String>,
    /// The node tried first on the next connect (the last that answered).
    next_node: std::sync::atomic::AtomicUsize,
    policy: Arc<Policy>,
    link: Mutex<Option<Link>>,
    up: AtomicBool,
}

/// A live connection and its confirm-mode publisher channel.
#[derive(Clone)]
pub struct Link {
    connection: Arc<Connection>,
    publisher: Channel,
}

fn unavailable(error: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(error.to_string())
}

async fn limited<T>(
    what: &str,
    call: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(CALL_LIMIT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(unavailable(format!("{what}: {error}"))),
        Err(_) => Err(unavailable(format!(
            "{what}: no answer within {CALL_LIMIT:?}"
        ))),
    }
}

fn retry_queue(queue: &str, attempt: u32) -> String {
    format!("retry.{queue}.{attempt}")
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert(ShortString::from(*key), value.clone());
    }
    table
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

fn properties(message: &Message, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message.id.as_str().into())
        .with_correlation_id(message.correlation_id.as_str().into())
        .with_type(message.kind.as_str().into())
        .with_timestamp((now_millis() / 1000) as u64)
        .with_headers(headers)
}

fn header<'a>(properties: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref()?.inner().get(key)
}

fn header_int(properties: &BasicProperties, key: &str) -> Option<i64> {
    match header(properties, key)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

fn header_text(properties: &BasicProperties, key: &str) -> Option<String> {
    match header(properties, key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn message_of(properties: &BasicProperties, routing_key: &str, data: &[u8]) -> Message {
    let string = |v: &Option<ShortString>| v.as_ref().map(|s| s.to_string()).unwrap_or_default();
    let kind = properties
        .kind()
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_else(|| routing_key.to_string());
    Message {
        id: string(properties.message_id()),
        correlation_id: string(properties.correlation_id()),
        kind,
        body: String::from_utf8_lossy(data).into_owned(),
    }
}

impl Rabbit {
    pub fn new(nodes: Vec<String>, policy: Arc<Policy>) -> Self {
        Self {
            nodes,
            next_node: std::sync::atomic::AtomicUsize::new(0),
            policy,
            link: Mutex::new(None),
            up: AtomicBool::new(false),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The live link, connecting (and declaring the topology) when there is none.
    pub async fn link(&self) -> Result<Link, BrokerError> {
        let mut guard = self.link.lock().await;
        if let Some(link) = guard.as_ref()
            && link.connection.status().connected()
            && link.publisher.status().connected()
        {
            return Ok(link.clone());
        }
        *guard = None;
        self.up.store(false, Ordering::Relaxed);
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("bakery pid {}", std::process::id()).into());
        let connection = self.connect_any(properties).await?;
        let publisher = limited("open a channel", connection.create_channel()).await?;
        self.declare(&publisher).await?;
        limited(
            "enable confirms",
            publisher.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        let link = Link {
            connection: Arc::new(connection),
            publisher,
        };
        *guard = Some(link.clone());
        self.up.store(true, Ordering::Relaxed);
        tracing::info!("connected to RabbitMQ; topology declared");
        Ok(link)
    }

    /// Gives `link`'s connection a new publishing channel (unless another caller
    /// already did); the old one closes when its last publish is done with it.
    async fn renew_publisher(&self, link: &Link) {
        let mut guard = self.link.lock().await;
        let Some(current) = guard.as_mut() else {
            return;
        };
        if current.publisher.id() != link.publisher.id()
            || !Arc::ptr_eq(&current.connection, &link.connection)
        {
            return;
        }
        let renewed = async {
            let channel = limited("open a channel", current.connection.create_channel()).await?;
            limited(
                "enable confirms",
                channel.confirm_select(ConfirmSelectOptions::default()),
            )
            .await?;
            Ok::<_, BrokerError>(channel)
        }
        .await;
        match renewed {
            Ok(channel) => {
                tracing::info!("a publish was refused; publishing on a new channel");
                current.publisher = channel;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot open a new publishing channel; connecting again");
                self.up.store(false, Ordering::Relaxed);
                *guard = None;
            }
        }
    }

    /// Forgets a link that failed, so the next call connects again.
    async fn broken(&self, error: &BrokerError) {
        tracing::warn!(%error, "the RabbitMQ connection is broken");
        self.up.store(false, Ordering::Relaxed);
        *self.link.lock().await = None;
    }

    /// A connection to the first node that answers, from the last that did.
    async fn connect_any(
        &self,
        properties: ConnectionProperties,
    ) -> Result<Connection, BrokerError> {
        let first = self.next_node.load(Ordering::Relaxed);
        let mut last_error = None;
        for i in 0..self.nodes.len() {
            let node = (first + i) % self.nodes.len();
            if self.nodes.len() > 1 && !answers(&self.nodes[node]).await {
                last_error = Some(BrokerError::Unavailable(format!(
                    "{} does not accept connections",
                    bakery_config::redact(&self.nodes[node])
                )));
                continue;
            }
            match limited(
                "connect",
                Connection::connect(&self.nodes[node], properties.clone()),
            )
            .await
            {
                Ok(connection) => {
                    if node != first {
                        tracing::info!(node = %bakery_config::redact(&self.nodes[node]), "connected to another RabbitMQ node");
                    }
                    self.next_node.store(node, Ordering::Relaxed);
                    return Ok(connection);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| BrokerError::Unavailable("no RabbitMQ node given".into())))
    }

    /// Queue arguments for a cluster: quorum queues, replicated on its nodes, so a
    /// node that goes away takes no message with it; what they dead-letter (a retry
    /// whose delay ran out, a message given up) moves at least once.
    fn replicated(&self, mut arguments: FieldTable) -> FieldTable {
        if self.nodes.len() > 1 {
            arguments.insert("x-queue-type".into(), text("quorum"));
            arguments.insert("x-dead-letter-strategy".into(), text("at-least-once"));
            // What at-least-once dead-lettering needs of a quorum queue.
            arguments.insert("x-overflow".into(), text("reject-publish"));
        }
        arguments
    }

    /// The contract's exchanges, queues and bindings, plus retry and dead-letter queues.
    async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for (name, kind) in topology::EXCHANGES {
            let kind = match kind {
                ExchangeKind::Topic => lapin::ExchangeKind::Topic,
                ExchangeKind::Direct => lapin::ExchangeKind::Direct,
            };
            limited(
                "declare an exchange",
                channel.exchange_declare((*name).into(), kind, durable, FieldTable::default()),
            )
            .await?;
        }
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for queue in topology::QUEUES {
            let arguments = table(&[
                ("x-dead-letter-exchange", text(topology::DEAD)),
                ("x-dead-letter-routing-key", text(queue)),
            ]);
            limited(
                "declare a queue",
                channel.queue_declare((*queue).into(), durable_queue, self.replicated(arguments)),
            )
            .await?;
            let dead = dead_queue(queue);
            limited(
                "declare a dead-letter queue",
                channel.queue_declare(
                    dead.as_str().into(),
                    durable_queue,
                    self.replicated(FieldTable::default()),
                ),
            )
            .await?;
            limited(
                "bind a dead-letter queue",
                channel.queue_bind(
                    dead.as_str().into(),
                    topology::DEAD.into(),
                    (*queue).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
            for attempt in 1..self.policy.max_attempts {
                let back = table(&[
                    ("x-dead-letter-exchange", text("")),
                    ("x-dead-letter-routing-key", text(queue)),
                ]);
                limited(
                    "declare a retry queue",
                    channel.queue_declare(
                        retry_queue(queue, attempt).as_str().into(),
                        durable_queue,
                        self.replicated(back),
                    ),
                )
                .await?;
            }
        }
        for (exchange, key, queue) in topology::BINDINGS {
            limited(
                "bind a queue",
                channel.queue_bind(
                    (*queue).into(),
                    (*exchange).into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        }
        Ok(())
    }

    /// Publishes on `link` and waits for the confirm. A refusal also replaces the
    /// link's publishing channel: RabbitMQ 3.10 sets up a channel's client of a
    /// quorum queue at its first publish there, from the leader the queue's record
    /// names; if that node is down, the publish is refused and that client keeps
    /// asking the dead node — every later publish on the channel would be refused
    /// too, although another node has long been elected. A fresh channel asks again.
    async fn publish_on(
        &self,
        link: &Link,
        exchange: &str,
        routing_key: &str,
        message: &Message,
        properties: BasicProperties,
    ) -> Result<Routed, BrokerError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = limited(
            "publish",
            link.publisher.basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                message.body.as_bytes(),
                properties,
            ),
        )
        .await?;
        match limited("confirm", confirm).await? {
            Confirmation::Ack(None) => Ok(Routed::Queued),
            Confirmation::Ack(Some(_)) => Ok(Routed::Unroutable),
            Confirmation::Nack(_) => {
                self.renew_publisher(link).await;
                Err(BrokerError::Refused(format!(
                    "RabbitMQ did not take message {}",
                    message.id
                )))
            }
            Confirmation::NotRequested => Err(BrokerError::Other(
                "the channel is not in confirm mode".into(),
            )),
        }
    }

    pub async fn publish(&self, exchange: &str, message: &Message) -> Result<Routed, BrokerError> {
        let link = self.link().await?;
        let result = self
            .publish_on(
                &link,
                exchange,
                &message.kind,
                message,
                properties(message, FieldTable::default()),
            )
            .await;
        if let Err(error @ BrokerError::Unavailable(_)) = &result {
            self.broken(error).await;
        }
        result
    }

    pub async fn consume(
        self: Arc<Self>,
        queue: &'static str,
        prefetch: u16,
        handler: Handler,
        stop: CancellationToken,
    ) {
        let mut running: JoinSet<()> = JoinSet::new();
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            match self.subscribe(queue, prefetch).await {
                Ok((link, channel, mut consumer)) => {
                    failures = 0;
                    tracing::info!(queue, engine = "rabbitmq", "consuming");
                    loop {
                        let next = tokio::select! {
                            next = consumer.next() => next,
                            Some(_) = running.join_next(), if !running.is_empty() => continue,
                            () = stop.cancelled() => break,
                        };
                        match next {
                            Some(Ok(delivery)) => {
                                let (this, handler, link) =
                                    (self.clone(), handler.clone(), link.clone());
                                running.spawn(async move {
                                    this.handle(queue, link, delivery, &handler).await
                                });
                            }
                            Some(Err(error)) => {
                                self.broken(&unavailable(&error)).await;
                                break;
                            }
                            None => {
                                self.broken(&unavailable("the consumer was cancelled"))
                                    .await;
                                break;
                            }
                        }
                    }
                    if stop.is_cancelled() {
                        let _ = tokio::time::timeout(STOP_GRACE, async {
                            while running.join_next().await.is_some() {}
                        })
                        .await;
                        let _ = channel.close(200, "consumer stopped".into()).await;
                        return;
                    }
                }
                Err(error) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(10) {
                        tracing::warn!(queue, %error, failures, "cannot consume; will try again");
                    }
                    self.broken(&error).await;
                }
            }
            let pause = Duration::from_millis(250 * u64::from(failures.clamp(1, 20)));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => {}
            }
        }
    }

    async fn subscribe(
        &self,
        queue: &'static str,
        prefetch: u16,
    ) -> Result<(Link, Channel, lapin::Consumer), BrokerError> {
        let link = self.link().await?;
        let channel = limited("open a channel", link.connection.create_channel()).await?;
        limited(
            "set the prefetch",
            channel.basic_qos(prefetch, BasicQosOptions::default()),
        )
        .await?;
        let tag = format!(
            "{queue}.{}.{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let consumer = limited(
            "consume",
            channel.basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        Ok((link, channel, consumer))
    }

    async fn handle(
        &self,
        queue: &'static str,
        link: Link,
        delivery: lapin::message::Delivery,
        handler: &Handler,
    ) {
        let retries = header_int(&delivery.properties, ATTEMPTS)
            .unwrap_or(0)
            .max(0) as u32;
        let ours = Delivery {
            message: message_of(
                &delivery.properties,
                delivery.routing_key.as_str(),
                &delivery.data,
            ),
            queue,
            attempt: retries + 1,
        };
        let outcome = run_handler(handler, ours.clone()).await;
        let settlement = self.policy.settle(ours.attempt, outcome);
        settled(&ours, &settlement);
        // Retry and dead letters are published (and confirmed) before the ack: a crash
        // in between delivers the message again, it never loses it.
        let moved = match &settlement {
            Settlement::Ack => Ok(Routed::Queued),
            Settlement::RetryAfter(delay, reason) => {
                let headers = table(&[
                    (ATTEMPTS, AMQPValue::LongLongInt(i64::from(ours.attempt))),
                    (ERROR, text(reason)),
                ]);
                let properties = properties(&ours.message, headers)
                    .with_expiration(delay.as_millis().to_string().as_str().into());
                self.publish_on(
                    &link,
                    "",
                    &retry_queue(queue, ours.attempt),
                    &ours.message,
                    properties,
                )
                .await
            }
            Settlement::Dead(reason) => {
                let headers = table(&[
                    (ATTEMPTS, AMQPValue::LongLongInt(i64::from(ours.attempt))),
                    (ERROR, text(reason)),
                    (DIED_AT, AMQPValue::LongLongInt(now_millis())),
                ]);
                self.publish_on(
                    &link,
                    topology::DEAD,
                    queue,
                    &ours.message,
                    properties(&ours.message, headers),
                )
                .await
            }
        };
        let settled = match moved {
            Ok(Routed::Queued) => delivery.acker.ack(BasicAckOptions::default()).await,
            Ok(Routed::Unroutable) | Err(_) => {
                tracing::warn!(queue, message_id = %ours.message.id, "could not move the message; it goes back to its queue");
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
        };
        if let Err(error) = settled {
            tracing::warn!(queue, message_id = %ours.message.id, %error, "cannot settle; RabbitMQ will deliver it again");
        }
    }

    /// Reads a dead-letter queue without taking anything from it: messages are got
    /// unacknowledged and go back when the channel closes.
    /// Each queue's depth and consumers, asked with passive declares (which change
    /// nothing).
    pub async fn depths(&self) -> Result<Vec<QueueDepth>, BrokerError> {
        let link = self.link().await?;
        let channel = limited("open a channel", link.connection.create_channel()).await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let mut depths = Vec::with_capacity(topology::QUEUES.len());
        for &queue in topology::QUEUES {
            let live = limited(
                "inspect a queue",
                channel.queue_declare(queue.into(), passive, FieldTable::default()),
            )
            .await?;
            let dead = limited(
                "inspect a queue",
                channel.queue_declare(
                    dead_queue(queue).as_str().into(),
                    passive,
                    FieldTable::default(),
                ),
            )
            .await?;
            depths.push(QueueDepth {
                queue,
                ready: u64::from(live.message_count()),
                unacked: None,
                consumers: Some(u64::from(live.consumer_count())),
                dead: u64::from(dead.message_count()),
            });
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(depths)
    }

    pub async fn dead_letters(
        &self,
        queues: &[&'static str],
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        let link = self.link().await?;
        let mut letters = Vec::new();
        for queue in queues {
            let channel = limited("open a channel", link.connection.create_channel()).await?;
            let dead = dead_queue(queue);
            while letters.len() < DEAD_SCAN_LIMIT {
                let got = limited(
                    "read a dead letter",
                    channel.basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false }),
                )
                .await?;
                let Some(got) = got else { break };
                let p = &got.delivery.properties;
                let message = message_of(p, "", &got.delivery.data);
                letters.push(DeadLetter {
                    queue: queue.to_string(),
                    message_id: message.id,
                    kind: message.kind,
                    correlation_id: message.correlation_id,
                    attempts: header_int(p, ATTEMPTS).unwrap_or(0) as u32,
                    error: header_text(p, ERROR).unwrap_or_default(),
                    died_at: header_int(p, DIED_AT).unwrap_or(0),
                });
            }
            let _ = channel.close(200, "listed".into()).await;
        }
        Ok(letters)
    }

    /// Moves dead letters back to their queue, attempts reset: each is published
    /// (confirmed) before it is acked in the dead-letter queue.
    pub async fn replay(
        &self,
        queues: &[&'static str],
        message_id: Option<&str>,
    ) -> Result<usize, BrokerError> {
        let link = self.link().await?;
        let mut replayed = 0;
        for queue in queues {
            let channel = limited("open a channel", link.connection.create_channel()).await?;
            let dead = dead_queue(queue);
            for _ in 0..DEAD_SCAN_LIMIT {
                let got = limited(
                    "read a dead letter",
                    channel.basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false }),
                )
                .await?;
                let Some(got) = got else { break };
                let message = message_of(&got.delivery.properties, "", &got.delivery.data);
                if message_id.is_some_and(|id| id != message.id) {
                    continue; // stays unacked: back in the queue when the channel closes
                }
                let properties = properties(&message, FieldTable::default());
                match self
                    .publish_on(&link, "", queue, &message, properties)
                    .await?
                {
                    Routed::Queued => {
                        limited("ack", got.delivery.acker.ack(BasicAckOptions::default())).await?;
                        replayed += 1;
                    }
                    Routed::Unroutable => {
                        return Err(BrokerError::Other(format!("queue {queue} does not exist")));
                    }
                }
            }
            let _ = channel.close(200, "replayed".into()).await;
        }
        Ok(replayed)
    }

    pub async fn close(&self) {
        if let Some(link) = self.link.lock().await.take() {
            let _ = link.connection.close(200, "bye".into()).await;
        }
    }
}

/// Whether a node's port takes a TCP connection within a second. Asked before
/// lapin's own connect, which does not give up on a node that refuses or is gone
/// within its time limit — and then holds up the connect to the next node.
async fn answers(node: &str) -> bool {
    let Ok(uri) = node.parse::<lapin::uri::AMQPUri>() else {
        return true;
    };
    let addr = (uri.authority.host.as_str(), uri.authority.port);
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}
