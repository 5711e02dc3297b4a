//! Reading Debezium envelopes off the CDC topic in tests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::StreamConsumer;
use serde_json::Value;

/// One record of `dbserver1.public.payments`: key `{"id": ...}` and the envelope
/// (`None` for the tombstone that follows a delete).
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub id: String,
    pub envelope: Option<Value>,
    pub received_at: Instant,
}

impl Record {
    pub fn op(&self) -> Option<&str> {
        self.envelope.as_ref()?.get("op")?.as_str()
    }
}

/// Collects records whose key id satisfies `wanted` until `done` says so or `timeout`
/// passes; returns them in arrival order, grouped by id.
pub async fn collect(
    consumer: &StreamConsumer,
    timeout: Duration,
    wanted: impl Fn(&str) -> bool,
    done: impl Fn(&HashMap<String, Vec<Record>>) -> bool,
) -> HashMap<String, Vec<Record>> {
    let deadline = Instant::now() + timeout;
    let mut seen: HashMap<String, Vec<Record>> = HashMap::new();
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let msg = match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => panic!("kafka consumer error: {e}"),
            Err(_) => break,
        };
        let key: Value = match msg.key().map(serde_json::from_slice) {
            Some(Ok(k)) => k,
            _ => continue,
        };
        let Some(id) = key.get("id").and_then(Value::as_str) else {
            continue;
        };
        if !wanted(id) {
            continue;
        }
        let envelope = msg
            .payload()
            .map(|p| serde_json::from_slice(p).expect("envelope is JSON"));
        seen.entry(id.to_owned()).or_default().push(Record {
            partition: msg.partition(),
            id: id.to_owned(),
            envelope,
            received_at: Instant::now(),
        });
    }
    seen
}
