//! With a schema registry configured (a real one: Karapace, Confluent's REST API, on a
//! broker of the test's own), the reconciler registers both status schemas at start and
//! publishes in the registry's wire format: the id in each message resolves, at the
//! registry, to a schema whose specification fingerprint is ours, and the datum decodes.

use std::time::Duration;

use paystream_core::{PaymentStatus, RefundStatus};
use paystream_reconciler::config::KafkaConfig;
use paystream_reconciler::fingerprint::fingerprint;
use paystream_reconciler::output::{self, StatusUpdate};
use paystream_reconciler::refunds::output::{self as refund_output, RefundUpdate};
use paystream_reconciler::registry::register_status_schemas;
use paystream_reconciler::worker::sink::Sink;
use paystream_testkit::registry::start_schema_registry;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use uuid::Uuid;

async fn first_message(kafka: &KafkaConfig, topic: &str) -> Vec<u8> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .unwrap()
        .set("group.id", format!("registry-check-{topic}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    for _ in 0..300 {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            return m.payload().expect("a payload").to_vec();
        }
    }
    panic!("nothing on {topic}");
}

/// The schema the registry holds under `id`, as its specification fingerprint.
async fn registered_fingerprint(registry: &str, id: u32) -> [u8; 8] {
    let got: serde_json::Value = reqwest::get(format!("{registry}/schemas/ids/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    fingerprint(got["schema"].as_str().expect("a schema")).expect("valid Avro")
}

#[tokio::test]
async fn status_schemas_are_registered_and_messages_carry_their_ids() {
    let registry = start_schema_registry().await;
    let mut kafka: KafkaConfig = serde_json::from_value(serde_json::json!({
        "brokers": registry.brokers,
        "schema_registry": {"url": registry.url},
    }))
    .unwrap();
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().unwrap().create().unwrap();
    for topic in [&kafka.status_topic, &kafka.refund_status_topic] {
        for r in admin
            .create_topics(
                &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .unwrap()
        {
            r.unwrap();
        }
    }

    register_status_schemas(&mut kafka).await.unwrap();
    let payment_id = kafka.registry_id(&kafka.status_topic).expect("registered");
    let refund_id = kafka
        .registry_id(&kafka.refund_status_topic)
        .expect("registered");
    assert_ne!(payment_id, refund_id);
    assert_eq!(
        registered_fingerprint(&registry.url, payment_id).await,
        output::fingerprint()
    );
    assert_eq!(
        registered_fingerprint(&registry.url, refund_id).await,
        refund_output::fingerprint()
    );
    // Every start registers again: the same schema keeps its id.
    let mut again = kafka.clone();
    register_status_schemas(&mut again).await.unwrap();
    assert_eq!(again.registry_id(&kafka.status_topic), Some(payment_id));

    let update = StatusUpdate {
        payment_id: Uuid::now_v7(),
        status: PaymentStatus::Succeeded,
        amount: 1250,
        currency: "usd".into(),
        stripe_payment_intent_id: Some("pi_1".into()),
        resolution_source: Some("webhook".into()),
        version: 2,
        source_lsn: 42,
        committed_at_ms: 1_700_000_000_000,
    };
    let sink = Sink::new(&kafka).unwrap();
    sink.status(&update).await.unwrap().await.unwrap().unwrap();
    let bytes = first_message(&kafka, &kafka.status_topic).await;
    assert_eq!(bytes[0], 0, "the registry's wire format");
    assert_eq!(bytes[1..5], payment_id.to_be_bytes());
    assert_eq!(output::decode(&bytes).unwrap(), update);

    let refund = RefundUpdate {
        refund_id: Uuid::now_v7(),
        payment_id: update.payment_id,
        status: RefundStatus::Succeeded,
        previous_status: Some("pending".into()),
        amount: 500,
        currency: "usd".into(),
        stripe_refund_id: Some("re_1".into()),
        failure_reason: None,
        resolution_source: Some("poll".into()),
        version: 2,
        source_lsn: 43,
        committed_at_ms: 1_700_000_000_001,
    };
    let refund_sink = Sink::to_topics(
        &kafka,
        &kafka.refund_status_topic,
        &kafka.refund_dead_letter_topic,
    )
    .unwrap();
    let payload = refund_output::encode(&refund).unwrap();
    refund_sink
        .update(&refund.refund_id.to_string(), &payload)
        .await
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let bytes = first_message(&kafka, &kafka.refund_status_topic).await;
    assert_eq!(bytes[1..5], refund_id.to_be_bytes());
    assert_eq!(refund_output::decode(&bytes).unwrap(), refund);

    // An incompatible change of a registered schema is refused, by name.
    let err = paystream_reconciler::registry::register(
        kafka.schema_registry.as_ref().unwrap(),
        &format!("{}-value", kafka.status_topic),
        r#"{"type":"record","name":"PaymentStatusUpdate","namespace":"io.paystream","fields":[{"name":"x","type":"int"}]}"#,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("409"), "{err}");
}
