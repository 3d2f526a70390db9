//! The broker layer on a RabbitMQ cluster of three nodes (quorum queues).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests report failures by panicking

use std::time::Duration;

use bakery_broker::{Broker, BrokerError, Message, Routed, topology};
use bakery_config::Config;
use bakery_testkit::rabbit_cluster::RabbitCluster;
use bakery_testkit::{TempDir, eventually};

async fn broker(data: &TempDir, url: &str) -> Broker {
    let config = Config::from_layers(
        None,
        vec![
            ("BAKERY_DATA_DIR".into(), data.0.display().to_string()),
            ("BAKERY_BROKER_URL".into(), url.to_string()),
        ],
    )
    .unwrap();
    bakery_db::bootstrap(&config, false).await.unwrap();
    let db = bakery_db::Database::connect_configured(&config)
        .await
        .unwrap();
    Broker::connect(&config.broker, &db).await.unwrap()
}

fn job_message() -> Message {
    Message::new(
        bakery_events::topology::job_kind::NOOP,
        "corr-cluster",
        &serde_json::json!({"ids": [1]}),
    )
}

/// A publish refused while its quorum queue had no reachable leader is taken once
/// the queue has one again. (RabbitMQ 3.10 refuses a channel's first publish to a
/// quorum queue whose recorded leader is down, and that channel then keeps asking
/// the dead node: unless the publisher moves to a new channel, every later publish
/// is refused too, however long ago another leader was elected. In the suite this
/// showed as an RSVP never mailed after a node was killed under load.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_refused_while_a_queue_had_no_leader_is_taken_once_it_has_one_rabbitmq() {
    let mut cluster = RabbitCluster::start();
    let data = TempDir::new();
    // Linked to the first node, which declares the queues and so leads them.
    let broker = broker(&data, &cluster.url()).await;
    assert_eq!(
        broker
            .publish(topology::JOBS, &job_message())
            .await
            .unwrap(),
        Routed::Queued
    );
    // The leader and one more member gone: the one left cannot elect anyone.
    cluster.kill(0);
    cluster.kill(2);
    // The first tries meet the broken link; the one after it links to the node left.
    let mut last = None;
    let refused = eventually(Duration::from_secs(30), async || {
        let published = broker.publish(topology::JOBS, &job_message()).await;
        assert!(
            published.is_err(),
            "a queue without a leader took a message"
        );
        let refused = matches!(published, Err(BrokerError::Refused(_)));
        last = Some(published);
        refused
    })
    .await;
    assert!(refused, "never refused, only: {last:?}");
    // A majority again: a new leader is elected, and the next publishes are taken.
    cluster.restart(2);
    let taken = eventually(Duration::from_secs(60), async || {
        let published = broker.publish(topology::JOBS, &job_message()).await;
        let ok = matches!(published, Ok(Routed::Queued));
        last = Some(published);
        if !ok {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        ok
    })
    .await;
    assert!(
        taken,
        "still refused 60 s after a majority was back: {last:?}"
    );
}
