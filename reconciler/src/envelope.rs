//! Debezium's change events of `public.payments`, as the JSON converter without schemas
//! writes them: key `{"id": ...}`, value `{"before", "after", "source": {"lsn", "ts_ms", ...},
//! "op": "c|u|d|r", "ts_ms"}`, and a null value (tombstone) after each delete.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRow {
    pub id: Uuid,
    pub status: String,
    pub stripe_payment_intent_id: Option<String>,
    pub idempotency_key: String,
    pub amount: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `c` (insert), `u` (update) or `r` (snapshot read): the row as it now is.
    Upsert {
        row: PaymentRow,
        lsn: i64,
        commit_ts_ms: i64,
    },
    /// `d`: the row is gone.
    Delete {
        id: Uuid,
        lsn: i64,
        commit_ts_ms: i64,
    },
    /// The null value Kafka compaction uses after a delete: nothing to do.
    Tombstone { id: Uuid },
}

impl Change {
    pub fn id(&self) -> Uuid {
        match self {
            Change::Upsert { row, .. } => row.id,
            Change::Delete { id, .. } | Change::Tombstone { id } => *id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record has no key")]
    NoKey,
    #[error("key is not {{\"id\": uuid}}: {0}")]
    BadKey(String),
    #[error("value is not a Debezium envelope: {0}")]
    BadEnvelope(String),
    #[error("unknown op {0:?}")]
    UnknownOp(String),
}

#[derive(Deserialize)]
struct Key {
    id: Uuid,
}

#[derive(Deserialize)]
struct Source {
    lsn: i64,
    ts_ms: i64,
}

#[derive(Deserialize)]
struct Envelope {
    after: Option<Value>,
    source: Source,
    op: String,
}

#[derive(Deserialize)]
struct RowJson {
    id: Uuid,
    status: String,
    stripe_payment_intent_id: Option<String>,
    idempotency_key: String,
    amount: i64,
    currency: String,
    /// Debezium renders timestamptz as an ISO-8601 string.
    created_at: DateTime<Utc>,
    version: i64,
}

pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Change, DecodeError> {
    let key: Key = serde_json::from_slice(key.ok_or(DecodeError::NoKey)?)
        .map_err(|e| DecodeError::BadKey(e.to_string()))?;
    let Some(value) = value else {
        return Ok(Change::Tombstone { id: key.id });
    };
    let env: Envelope =
        serde_json::from_slice(value).map_err(|e| DecodeError::BadEnvelope(e.to_string()))?;
    match env.op.as_str() {
        "c" | "u" | "r" => {
            let after = env
                .after
                .ok_or_else(|| DecodeError::BadEnvelope(format!("op {} without after", env.op)))?;
            let r: RowJson = serde_json::from_value(after)
                .map_err(|e| DecodeError::BadEnvelope(e.to_string()))?;
            if r.id != key.id {
                return Err(DecodeError::BadEnvelope(
                    "key and row disagree on the id".into(),
                ));
            }
            let row = PaymentRow {
                id: r.id,
                status: r.status,
                stripe_payment_intent_id: r.stripe_payment_intent_id,
                idempotency_key: r.idempotency_key,
                amount: r.amount,
                currency: r.currency,
                created_at: r.created_at,
                version: r.version,
            };
            Ok(Change::Upsert {
                row,
                lsn: env.source.lsn,
                commit_ts_ms: env.source.ts_ms,
            })
        }
        "d" => Ok(Change::Delete {
            id: key.id,
            lsn: env.source.lsn,
            commit_ts_ms: env.source.ts_ms,
        }),
        other => Err(DecodeError::UnknownOp(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const ID: &str = "01a20d3d-2b8e-77af-b35c-94d4138961c9";

    fn row(status: &str, version: i64) -> Value {
        json!({"id": ID, "client_id": ID, "idempotency_key": "k", "amount": 1250, "currency": "usd", "status": status,
               "stripe_payment_intent_id": "pi_1", "stripe_status": null, "last_error": null, "description": null,
               "customer_email": null, "metadata": "{}", "resolution_source": null, "version": version,
               "created_at": "2026-11-24T10:59:21.123456Z", "updated_at": "2026-11-24T10:59:21.123456Z", "resolved_at": null})
    }

    fn env(op: &str, before: Value, after: Value) -> Vec<u8> {
        json!({"before": before, "after": after, "op": op, "ts_ms": 2,
               "source": {"version": "3.1.1.Final", "connector": "postgresql", "lsn": 42, "txId": 7, "ts_ms": 1, "db": "paystream"}})
        .to_string()
        .into_bytes()
    }

    fn key() -> Vec<u8> {
        json!({"id": ID}).to_string().into_bytes()
    }

    #[test]
    fn every_op() {
        for op in ["c", "r", "u"] {
            let c = decode(Some(&key()), Some(&env(op, Value::Null, row("pending", 3)))).unwrap();
            let Change::Upsert {
                row,
                lsn,
                commit_ts_ms,
            } = c
            else {
                panic!("{op}")
            };
            assert_eq!(
                (
                    row.status.as_str(),
                    row.version,
                    row.amount,
                    lsn,
                    commit_ts_ms
                ),
                ("pending", 3, 1250, 42, 1)
            );
            assert_eq!(row.created_at.timestamp_subsec_micros(), 123_456);
        }
        let d = decode(
            Some(&key()),
            Some(&env("d", row("succeeded", 4), Value::Null)),
        )
        .unwrap();
        assert!(matches!(d, Change::Delete { lsn: 42, .. }));
        assert_eq!(
            decode(Some(&key()), None).unwrap(),
            Change::Tombstone {
                id: Uuid::parse_str(ID).unwrap()
            }
        );
    }

    #[test]
    fn malformed_records_are_errors() {
        assert_eq!(decode(None, None), Err(DecodeError::NoKey));
        assert!(matches!(
            decode(Some(b"{}"), None),
            Err(DecodeError::BadKey(_))
        ));
        assert!(matches!(
            decode(Some(&key()), Some(b"not json")),
            Err(DecodeError::BadEnvelope(_))
        ));
        assert!(matches!(
            decode(Some(&key()), Some(&env("x", Value::Null, Value::Null))),
            Err(DecodeError::UnknownOp(_))
        ));
        assert!(matches!(
            decode(Some(&key()), Some(&env("c", Value::Null, Value::Null))),
            Err(DecodeError::BadEnvelope(_))
        ));
        let other = json!({"id": "01a20d3d-2b8e-77af-b35c-000000000000"}).to_string();
        assert!(matches!(
            decode(
                Some(other.as_bytes()),
                Some(&env("c", Value::Null, row("pending", 1)))
            ),
            Err(DecodeError::BadEnvelope(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(k in proptest::collection::vec(any::<u8>(), 0..64), v in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..256))) {
            let _ = decode(Some(&k), v.as_deref());
        }
    }
}
