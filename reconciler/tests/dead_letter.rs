//! I3: a CDC record the reconciler cannot read is never skipped silently. It goes whole to
//! the dead-letter topic (with where it came from and why) before its offset is stored,
//! the stream goes on, and a run of them stops the reconciler instead of skipping every
//! change.

mod common;

use std::time::{Duration, Instant};

use common::{Reconciler, group};
use paystream_testkit::Stack;
use paystream_testkit::sim::SimWorld;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use uuid::Uuid;

async fn send(producer: &FutureProducer, topic: &str, key: &[u8], value: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
}

fn change(id: Uuid) -> Vec<u8> {
    json!({"before": null, "op": "c", "ts_ms": 2,
           "source": {"lsn": 1, "ts_ms": 1},
           "after": {"id": id, "idempotency_key": "k", "amount": 1250, "currency": "usd", "status": "pending",
                     "stripe_payment_intent_id": null, "version": 1, "created_at": "2026-11-24T10:59:21.123456Z"}})
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn undecodable_records_are_dead_lettered_and_a_run_of_them_stops_the_reconciler() {
    let stack = Stack::get();
    let world = SimWorld::start(stack.pool("DATABASE_URL").await).await;
    let mut g = group(stack, &world).await;
    let tag = Uuid::now_v7().simple().to_string();
    let (cdc, dead) = (format!("cdc-test-{tag}"), format!("dead-letter-test-{tag}"));
    stack.create_topic(&cdc, 1).await;
    stack.create_topic(&dead, 1).await;
    g.env.extend([
        ("APP_KAFKA__CDC_TOPIC".to_owned(), cdc.clone()),
        ("APP_KAFKA__DEAD_LETTER_TOPIC".to_owned(), dead.clone()),
        (
            "APP_POLL__HALT_AFTER_UNDECODABLE".to_owned(),
            "5".to_owned(),
        ),
    ]);
    let mut r = Reconciler::start("rec-dead-letter", g.env.clone());
    r.wait_loaded().await;
    let producer: FutureProducer = stack.kafka_config().create().expect("producer");

    // One bad record between good ones: dead-lettered, and the stream goes on.
    let key = |id: Uuid| json!({"id": id}).to_string().into_bytes();
    let (first, bad, last) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    send(&producer, &cdc, &key(first), &change(first)).await;
    send(&producer, &cdc, &key(bad), b"{\"not\": \"an envelope\"}").await;
    send(&producer, &cdc, &key(last), &change(last)).await;
    let started = Instant::now();
    loop {
        let m = r.metrics().await;
        if m.contains("reconciler_changes_total{effect=\"added\"} 2") {
            assert!(m.contains("reconciler_undecodable_total 1"), "{m}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the good records after the bad one were not applied:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let consumer: StreamConsumer = stack
        .kafka_config()
        .set("group.id", format!("dead-letter-reader-{tag}"))
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&dead, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
        .await
        .expect("a dead letter within 20 s")
        .expect("kafka");
    assert_eq!(
        m.payload(),
        Some(&b"{\"not\": \"an envelope\"}"[..]),
        "kept whole"
    );
    assert_eq!(m.key(), Some(&key(bad)[..]));
    let headers: std::collections::HashMap<String, String> = m
        .headers()
        .expect("headers")
        .iter()
        .map(|h| {
            (
                h.key.to_owned(),
                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    assert_eq!(headers["source_topic"], cdc);
    assert_eq!(headers["source_offset"], "1");
    assert!(headers["error"].contains("envelope"), "{headers:?}");

    // A run of them: the stream's format changed. Stopping beats skipping every change.
    for _ in 0..5 {
        send(&producer, &cdc, &key(bad), b"garbage").await;
    }
    let started = Instant::now();
    let status = loop {
        if let Some(s) = r.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still running after 5 undecodable records in a row"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!status.success(), "it stopped as a failure: {status}");
    let log = std::fs::read_to_string(&r.log).unwrap_or_default();
    assert!(log.contains("undecodable CDC records in a row"), "{log}");
}
