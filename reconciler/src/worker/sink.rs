//! What the worker produces: status updates and dead letters, each a delivery the broker
//! confirms later (the engine stores offsets only behind confirmed ones).

use std::time::Duration;

use rdkafka::Message;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::output::{self, OutputError, StatusUpdate};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("encoding a status update: {0}")]
    Encode(#[from] OutputError),
}

pub struct Sink {
    producer: FutureProducer,
    /// The registry's id of the status topic's schema, when a registry is configured.
    registry_id: Option<u32>,
    status_topic: String,
    dead_letter_topic: String,
}

impl Sink {
    /// The payment worker's: `payment-status-update` and the payments' dead letters.
    pub fn new(kafka: &KafkaConfig) -> Result<Sink, KafkaError> {
        Self::to_topics(kafka, &kafka.status_topic, &kafka.dead_letter_topic)
    }

    /// A sink to other topics (the refund worker's).
    pub fn to_topics(
        kafka: &KafkaConfig,
        status_topic: &str,
        dead_letter_topic: &str,
    ) -> Result<Sink, KafkaError> {
        let producer: FutureProducer = kafka
            .client_config()
            .map_err(|e| KafkaError::ClientCreation(e.to_string()))?
            // Retries keep one payment's updates in order.
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()?;
        Ok(Sink {
            producer,
            registry_id: kafka.registry_id(status_topic),
            status_topic: status_topic.to_owned(),
            dead_letter_topic: dead_letter_topic.to_owned(),
        })
    }

    /// A final transition on `payment-status-update`, keyed by payment id (Avro).
    pub async fn status(&self, u: &StatusUpdate) -> Result<DeliveryFuture, SinkError> {
        let payload = output::encode(u)?;
        self.update(&u.payment_id.to_string(), &payload).await
    }

    /// An encoded update on the status topic, under `key`: as encoded (single-object), or
    /// in the registry's wire format when its schema is registered.
    pub async fn update(&self, key: &str, payload: &[u8]) -> Result<DeliveryFuture, SinkError> {
        let framed;
        let payload = match self.registry_id {
            Some(id) => {
                framed = output::registry_framed(id, payload)?;
                &framed[..]
            }
            None => payload,
        };
        Ok(self
            .send(|| {
                FutureRecord::to(&self.status_topic)
                    .key(key.as_bytes())
                    .payload(payload)
            })
            .await?)
    }

    /// An undecodable record, whole, with where it came from and why it failed.
    pub async fn dead_letter(
        &self,
        m: &BorrowedMessage<'_>,
        error: &str,
    ) -> Result<DeliveryFuture, SinkError> {
        let (partition, offset) = (m.partition().to_string(), m.offset().to_string());
        Ok(self
            .send(|| {
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "source_topic",
                        value: Some(m.topic()),
                    })
                    .insert(Header {
                        key: "source_partition",
                        value: Some(&partition),
                    })
                    .insert(Header {
                        key: "source_offset",
                        value: Some(&offset),
                    })
                    .insert(Header {
                        key: "error",
                        value: Some(error),
                    });
                let mut record =
                    FutureRecord::<[u8], [u8]>::to(&self.dead_letter_topic).headers(headers);
                if let Some(k) = m.key() {
                    record = record.key(k);
                }
                if let Some(p) = m.payload() {
                    record = record.payload(p);
                }
                record
            })
            .await?)
    }

    /// Enqueues the record, waiting while the producer's queue is full: a full queue means
    /// the broker is slow, not that the record is bad.
    async fn send<'a>(
        &self,
        record: impl Fn() -> FutureRecord<'a, [u8], [u8]>,
    ) -> Result<DeliveryFuture, KafkaError> {
        loop {
            match self.producer.send_result(record()) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
}
