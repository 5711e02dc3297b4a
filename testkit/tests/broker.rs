//! The stack's broker answers a waiting fetch when a record arrives, not when the fetch's
//! wait runs out (Kafka's long poll; tansu with third_party/tansu's patch). Unpatched
//! tansu 0.6 reads, then sleeps half the wait left (all of it under 250 ms) before it
//! reads again, data or not: the first record here would arrive about 7.5 s after it was
//! sent.

use std::time::{Duration, Instant};

use paystream_testkit::Stack;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use uuid::Uuid;

/// Far longer than any answer the test accepts.
const FETCH_WAIT: Duration = Duration::from_secs(10);
const ANSWERED_WITHIN: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_waiting_fetch_answers_when_a_record_arrives() {
    let stack = Stack::get();
    let topic = format!("test-long-poll-{}", Uuid::now_v7());
    stack.create_topic(&topic, 2).await;
    let consumer: StreamConsumer = stack
        .kafka_config()
        .set("group.id", format!("test-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", FETCH_WAIT.as_millis().to_string())
        .create()
        .expect("kafka consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(&topic, p, Offset::Offset(0))
            .expect("offset");
    }
    consumer.assign(&tpl).expect("assign");
    let producer: FutureProducer = stack
        .kafka_config()
        .set("linger.ms", "0")
        .create()
        .expect("kafka producer");

    for (round, pause_ms) in [(0, 700), (1, 1900), (2, 3300)] {
        // Nothing to read: the consumer's fetch is waiting at the broker by now.
        let nothing = tokio::time::timeout(Duration::from_millis(pause_ms), consumer.recv()).await;
        assert!(
            nothing.is_err(),
            "round {round}: a record before any was sent"
        );
        let sent = Instant::now();
        producer
            .send(
                FutureRecord::to(&topic)
                    .partition(round % 2)
                    .key("k")
                    .payload(&format!("record {round}")),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        let got = tokio::time::timeout(FETCH_WAIT * 2, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("round {round}: no record within twice the fetch wait"))
            .expect("consume");
        let waited = sent.elapsed();
        assert_eq!(got.payload(), Some(format!("record {round}").as_bytes()));
        assert!(
            waited < ANSWERED_WITHIN,
            "round {round}: the record reached the consumer {waited:?} after it was sent: \
             the broker held the fetch for its wait ({FETCH_WAIT:?}) instead of answering"
        );
    }
}
