//! The decoder against what the real Debezium writes to the real broker.

use std::time::Duration;

use paystream_reconciler::envelope::{Change, Reading, decode, decode_with};
use paystream_reconciler::partition::{cdc_key, partition_for};
use paystream_reconciler::schedule::Schedule;
use paystream_reconciler::state::{Effect, PendingState};
use paystream_testkit::{Stack, cdc};
use rdkafka::Message;
use uuid::Uuid;

#[tokio::test]
async fn real_debezium_events_decode_and_drive_the_state() {
    let stack = Stack::get();
    let consumer = stack.consumer_at_end(stack.var("CDC_TOPIC"));
    let db = stack.pool("DATABASE_URL").await;
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO payments (id, client_id, idempotency_key, amount, currency, metadata) VALUES ($1, $1, $2, 4200, 'gbp', '{\"order\": \"7\"}')")
        .bind(id)
        .bind(format!("cdc-{id}"))
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE payments SET status = 'succeeded', resolved_at = now(), resolution_source = 'poll', version = version + 1 WHERE id = $1")
        .bind(id)
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM payments WHERE id = $1")
        .bind(id)
        .execute(&db)
        .await
        .unwrap();

    let (schedule, mut state) = (Schedule::default(), PendingState::default());
    let mut effects = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while effects.len() < 4 {
        let msg = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .expect("CDC events within 60 s")
            .expect("kafka");
        let change = decode(msg.key(), msg.payload())
            .unwrap_or_else(|e| panic!("a real Debezium record does not decode: {e}"));
        if change.id() != id {
            continue;
        }
        assert_eq!(
            decode_with(Reading::FastOnly, msg.key(), msg.payload()).as_ref(),
            Ok(&change),
            "the fast reader reads what Debezium writes, as serde_json does"
        );
        assert_eq!(
            msg.key(),
            Some(cdc_key(id).as_bytes()),
            "the key bytes recovery hashes"
        );
        if let Change::Upsert { row, lsn, .. } = &change {
            assert_eq!((row.amount, row.currency.as_str()), (4200, "gbp"));
            assert!(*lsn > 0);
            if row.status == "succeeded" {
                let u = change.final_transition().expect("a final transition");
                assert_eq!(u.resolution_source.as_deref(), Some("poll"));
            }
        }
        effects.push(state.apply(&change, &schedule));
    }
    assert_eq!(
        effects,
        [
            Effect::Added,
            Effect::Resolved { published: true },
            Effect::Ignored,
            Effect::Ignored
        ]
    );
    assert!(state.is_empty());
}

/// Recovery splits the replica's rows by partition with Kafka's partitioner: it must put
/// each payment where Debezium's producer did.
#[tokio::test]
async fn recovery_partitions_rows_as_debezium_does() {
    let stack = Stack::get();
    let topic = stack.var("CDC_TOPIC");
    let partitions = stack.partition_count(topic) as i32;
    let consumer = stack.consumer_at_end(topic);
    let db = stack.pool("DATABASE_URL").await;
    let ids: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
    for id in &ids {
        sqlx::query("INSERT INTO payments (id, client_id, idempotency_key, amount, currency, metadata) VALUES ($1, $1, $2, 100, 'usd', '{}')")
            .bind(id)
            .bind(format!("part-{id}"))
            .execute(&db)
            .await
            .unwrap();
    }
    let wanted: std::collections::HashSet<String> = ids.iter().map(Uuid::to_string).collect();
    let seen = cdc::collect(
        &consumer,
        Duration::from_secs(60),
        |k| wanted.contains(k),
        |s| s.len() == wanted.len(),
    )
    .await;
    assert_eq!(seen.len(), ids.len(), "every insert reached the topic");
    let used: std::collections::HashSet<i32> = seen.values().map(|r| r[0].partition).collect();
    assert!(used.len() > 1, "40 ids spread over several partitions");
    for id in &ids {
        assert_eq!(
            seen[&id.to_string()][0].partition,
            partition_for(*id, partitions),
            "{id}"
        );
    }
}
