//! The stack's broker, as its consumers rely on it (tansu with third_party/tansu's
//! patches):
//! - a waiting fetch is answered when a record arrives, not when the fetch's wait runs out
//!   (Kafka's long poll). Unpatched tansu 0.6 reads, then sleeps half the wait left (all
//!   of it under 250 ms) before it reads again, data or not: the first record here would
//!   arrive about 7.5 s after it was sent;
//! - records come back whole and once while SQLite statements are reused.

use std::time::{Duration, Instant};

use paystream_testkit::Stack;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
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

/// A record's key, value and headers.
type Sent = (String, String, Vec<(String, String)>);

/// Every record comes back exactly once, at its own offset, with its own key, value and
/// headers, while producers write and a consumer reads the same partitions in small
/// fetches; the group's committed offsets read back as committed. The stack's tansu runs
/// each SQLite statement's compiled program again rather than compiling it per call
/// (third_party/tansu's statement cache): a statement reused without being reset, or
/// reset while its rows are read, shows here as a record with another record's headers,
/// a missed or repeated offset, or a fetch that stops seeing new records.
#[tokio::test]
async fn records_come_back_whole_and_once_under_concurrent_produce_and_fetch() {
    use rdkafka::message::{Header, Headers, OwnedHeaders};
    use std::collections::BTreeMap;

    const PRODUCERS: usize = 4;
    const PER_PRODUCER: usize = 150;
    const PARTITIONS: i32 = 3;

    let stack = Stack::get();
    let topic = format!("test-whole-records-{}", Uuid::now_v7());
    stack.create_topic(&topic, PARTITIONS).await;
    let group = format!("test-{}", Uuid::now_v7());
    let consumer_config = || {
        let mut c = stack.kafka_config();
        c.set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "100")
            // Small fetches: each answer stops part-way through a partition's records, so
            // the next fetch starts at an offset the last one left.
            .set("max.partition.fetch.bytes", "1024")
            .set("fetch.max.bytes", "2048")
            .set("message.max.bytes", "2048");
        c
    };
    let consumer: StreamConsumer = consumer_config().create().expect("kafka consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&topic, p, Offset::Offset(0))
            .expect("offset");
    }
    consumer.assign(&tpl).expect("assign");

    // What a record must come back as: its value and headers, by key.
    let expected = |producer: usize, n: usize| {
        let key = format!("p{producer}-r{n}");
        let value = format!("{key} {}", "x".repeat(n % 97));
        let headers: Vec<(String, String)> = (0..n % 4)
            .map(|h| (format!("h{h}"), format!("{key}/{h}")))
            .collect();
        (key, value, headers)
    };
    let producers = (0..PRODUCERS).map(|producer| {
        let mut config = stack.kafka_config();
        let topic = topic.clone();
        tokio::spawn(async move {
            let sink: FutureProducer = config
                .set("linger.ms", "5")
                .create()
                .expect("kafka producer");
            for n in 0..PER_PRODUCER {
                let (key, value, headers) = expected(producer, n);
                let mut owned = OwnedHeaders::new();
                for (k, v) in &headers {
                    owned = owned.insert(Header {
                        key: k,
                        value: Some(v),
                    });
                }
                let record = FutureRecord::to(&topic)
                    .partition(((producer + n) % PARTITIONS as usize) as i32)
                    .key(&key)
                    .payload(&value)
                    .headers(owned);
                // Sent without waiting for the last one, so batches hold several records.
                let delivery = sink.send_result(record).expect("queue a record");
                if n % 10 == 9 {
                    delivery.await.expect("delivery").expect("produce");
                }
            }
            sink.flush(Duration::from_secs(10)).expect("flush");
        })
    });
    let producers: Vec<_> = producers.collect();

    let mut seen: BTreeMap<(i32, i64), Sent> = BTreeMap::new();
    let total = PRODUCERS * PER_PRODUCER;
    while seen.len() < total {
        let message = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {total} records came back", seen.len()))
            .expect("consume");
        let text = |b: Option<&[u8]>| String::from_utf8(b.expect("present").to_vec()).unwrap();
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), text(h.value)))
                    .collect()
            })
            .unwrap_or_default();
        let previous = seen.insert(
            (message.partition(), message.offset()),
            (text(message.key()), text(message.payload()), headers),
        );
        assert!(
            previous.is_none(),
            "offset {}/{} came back twice",
            message.partition(),
            message.offset()
        );
    }
    for producer in producers {
        producer.await.expect("producer task");
    }

    // Each partition's end, once its offsets are known to be dense: what the group commits.
    let mut ends = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        let offsets: Vec<i64> = seen.range((p, 0)..(p + 1, 0)).map(|(k, _)| k.1).collect();
        let dense: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, dense, "partition {p}'s offsets have a gap");
        ends.add_partition_offset(&topic, p, Offset::Offset(offsets.len() as i64))
            .expect("offset");
    }
    let mut keys = std::collections::HashSet::new();
    for ((p, offset), (key, value, headers)) in &seen {
        let (producer, n) = key
            .strip_prefix('p')
            .and_then(|k| k.split_once("-r"))
            .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
            .unwrap_or_else(|| panic!("{p}/{offset}: a key nobody sent: {key}"));
        let (_, want_value, want_headers) = expected(producer, n);
        assert_eq!(value, &want_value, "{p}/{offset} ({key}): value");
        assert_eq!(headers, &want_headers, "{p}/{offset} ({key}): headers");
        assert!(keys.insert(key.clone()), "{key} came back at two offsets");
    }
    assert_eq!(keys.len(), total);

    // The group's offsets: committed, then read back by a new member of the group.
    consumer
        .commit(&ends, rdkafka::consumer::CommitMode::Sync)
        .expect("commit");
    let reader: StreamConsumer = consumer_config().create().expect("kafka consumer");
    let committed = reader
        .committed_offsets(ends.clone(), Duration::from_secs(10))
        .expect("committed offsets");
    assert_eq!(
        committed.to_topic_map(),
        ends.to_topic_map(),
        "the group's committed offsets"
    );
}
