//! Publish-with-confirms → consume-with-ack through `bakery_broker` against raw
//! lapin on the same RabbitMQ, side by side, rounds alternating; and the embedded
//! broker (SQLite, PostgreSQL) through the same layer for reference.
//!
//!     cargo bench -p bakery-broker --bench throughput -- [--messages N] [--rounds R]
//!         [--inflight K] [--amqp URL] [--postgres URL]
//!
//! Each run publishes N persistent 200-byte JSON messages with K publishes awaiting
//! their confirm at once, and consumes them with prefetch K, acking each; the figure
//! is messages per second from the first publish to the last ack. Prints medians
//! and the ratio ours / raw lapin (the goal: ≥ 0.9).
//! Needs RabbitMQ (scripts/services.sh) and `rabbitmqctl` for a vhost of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark reports failures by panicking

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bakery_broker::{Broker, Message, Outcome, handler, topology};
use bakery_config::Config;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

struct Args {
    messages: usize,
    rounds: usize,
    inflight: usize,
    amqp: Option<String>,
    postgres: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        messages: 20_000,
        rounds: 3,
        inflight: 64,
        amqp: None,
        postgres: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match flag.as_str() {
            "--messages" => a.messages = value().parse().expect("a number"),
            "--rounds" => a.rounds = value().parse().expect("a number"),
            "--inflight" => a.inflight = value().parse().expect("a number"),
            "--amqp" => a.amqp = Some(value()),
            "--postgres" => a.postgres = Some(value()),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

fn body() -> String {
    format!("{{\"padding\":\"{}\"}}", "x".repeat(180))
}

async fn ours(broker: &Broker, n: usize, inflight: usize) -> f64 {
    let done = Arc::new((AtomicUsize::new(0), Notify::new()));
    let stop = CancellationToken::new();
    let counter = done.clone();
    let consumer = broker.consume(
        topology::JOBS_IMAGE,
        handler(move |_| {
            let counter = counter.clone();
            async move {
                if counter.0.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    counter.1.notify_one();
                }
                Outcome::Ack
            }
        }),
        stop.clone(),
    );
    let body = body();
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|_| {
            let message = Message {
                id: bakery_broker::new_message_id(),
                correlation_id: "bench".into(),
                kind: topology::job_kind::IMAGE.into(),
                body: body.clone(),
            };
            async move {
                broker
                    .publish(topology::JOBS, &message)
                    .await
                    .expect("publish")
            }
        })
        .buffer_unordered(inflight)
        .for_each(|_| async {})
        .await;
    done.1.notified().await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    stop.cancel();
    consumer.await.unwrap();
    rate
}

async fn raw(uri: &str, n: usize, inflight: usize) -> f64 {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .unwrap();
    let publisher = conn.create_channel().await.unwrap();
    let consumer_channel = conn.create_channel().await.unwrap();
    publisher
        .exchange_declare(
            "bench.raw".into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    publisher
        .queue_declare(
            "bench.raw".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    publisher
        .queue_bind(
            "bench.raw".into(),
            "bench.raw".into(),
            topology::job_kind::IMAGE.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    consumer_channel
        .basic_qos(inflight as u16, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_channel
        .basic_consume(
            "bench.raw".into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let counting = tokio::spawn(async move {
        let mut seen = 0;
        while let Some(Ok(delivery)) = consumer.next().await {
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            seen += 1;
            if seen == n {
                break;
            }
        }
    });
    let body = body();
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|_| {
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(bakery_broker::new_message_id().as_str().into())
                .with_correlation_id("bench".into())
                .with_type(topology::job_kind::IMAGE.into());
            let (publisher, body) = (&publisher, body.as_bytes());
            async move {
                let confirm = publisher
                    .basic_publish(
                        "bench.raw".into(),
                        topology::job_kind::IMAGE.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        body,
                        properties,
                    )
                    .await
                    .unwrap();
                assert!(confirm.await.unwrap().is_ack());
            }
        })
        .buffer_unordered(inflight)
        .for_each(|_| async {})
        .await;
    counting.await.unwrap();
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = conn.close(200, "bench done".into()).await;
    rate
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

async fn layer(config: &Config) -> Broker {
    std::fs::create_dir_all(&config.data_dir).unwrap();
    bakery_db::bootstrap(config, false).await.unwrap();
    let db = bakery_db::Database::connect_configured(config)
        .await
        .unwrap();
    Broker::connect(&config.broker, &db).await.unwrap()
}

fn config(data: &std::path::Path, env: &[(&str, &str)], inflight: usize) -> Config {
    let mut vars: Vec<(String, String)> = vec![
        ("BAKERY_DATA_DIR".into(), data.display().to_string()),
        ("BAKERY_BROKER_PREFETCH".into(), inflight.to_string()),
        ("BAKERY_LOG".into(), "warn".into()),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::from_layers(None, vars).unwrap()
}

#[tokio::main]
async fn main() {
    let a = args();
    let data =
        std::env::temp_dir().join(format!("bakery-bench-broker-{:x}", rand::random::<u32>()));
    let uri = a
        .amqp
        .clone()
        .unwrap_or_else(bakery_testkit::fresh_rabbitmq_url);
    let rabbit = layer(&config(
        &data.join("rabbit"),
        &[("BAKERY_BROKER_URL", &uri)],
        a.inflight,
    ))
    .await;
    println!(
        "broker throughput: {} persistent messages per run, {} publishes awaiting confirms, prefetch {}, {} rounds",
        a.messages, a.inflight, a.inflight, a.rounds
    );
    let (mut ours_rates, mut raw_rates) = (Vec::new(), Vec::new());
    // A warm-up of each, then alternating rounds.
    let warm = a.messages / 10;
    ours(&rabbit, warm, a.inflight).await;
    raw(&uri, warm, a.inflight).await;
    for round in 1..=a.rounds {
        let r = raw(&uri, a.messages, a.inflight).await;
        let o = ours(&rabbit, a.messages, a.inflight).await;
        println!(
            "  round {round}: raw lapin {r:>8.0} msg/s   bakery_broker {o:>8.0} msg/s   ratio {:.2}",
            o / r
        );
        raw_rates.push(r);
        ours_rates.push(o);
    }
    let (r, o) = (median(raw_rates), median(ours_rates));
    println!(
        "RabbitMQ median: raw lapin {r:.0} msg/s, bakery_broker {o:.0} msg/s, ratio {:.2} (goal >= 0.90)",
        o / r
    );
    rabbit.close().await;

    let embedded_n = (a.messages / 4).max(1000);
    let sqlite = layer(&config(&data.join("sqlite"), &[], a.inflight)).await;
    let mut rates = Vec::new();
    for _ in 0..a.rounds {
        rates.push(ours(&sqlite, embedded_n, a.inflight).await);
    }
    println!(
        "embedded on SQLite ({embedded_n} per run): median {:.0} msg/s",
        median(rates)
    );
    if let Some(pg) = &a.postgres {
        let postgres = layer(&config(
            &data.join("pg"),
            &[("BAKERY_DATABASE_URL", pg)],
            a.inflight,
        ))
        .await;
        let mut rates = Vec::new();
        for _ in 0..a.rounds {
            rates.push(ours(&postgres, embedded_n, a.inflight).await);
        }
        println!(
            "embedded on PostgreSQL ({embedded_n} per run): median {:.0} msg/s",
            median(rates)
        );
    }
    let _ = std::fs::remove_dir_all(&data);
    std::process::exit(0);
}
