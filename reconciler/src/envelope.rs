//! Debezium's change events of `public.payments`, as the JSON converter without schemas
//! writes them: key `{"id": ...}`, value `{"before", "after", "source": {"lsn", "ts_ms", ...},
//! "op": "c|u|d|r", "ts_ms"}`, and a null value (tombstone) after each delete.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use paystream_core::PaymentStatus;
use serde::Deserialize;
use uuid::Uuid;

use crate::output::StatusUpdate;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRow {
    pub id: Uuid,
    pub status: String,
    pub stripe_payment_intent_id: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub version: i64,
    pub resolution_source: Option<String>,
    /// The payment waits for an operator (`attention` is set): it is not polled meanwhile.
    pub flagged: bool,
}

/// A row as the tests of the state and of the worker's engine build them.
#[cfg(test)]
pub(crate) fn test_row(
    id: Uuid,
    status: &str,
    created_at: DateTime<Utc>,
    version: i64,
) -> PaymentRow {
    PaymentRow {
        id,
        status: status.into(),
        stripe_payment_intent_id: Some("pi_1".into()),
        amount: 100,
        currency: "usd".into(),
        created_at,
        version,
        resolution_source: None,
        flagged: false,
    }
}

impl PaymentRow {
    /// Pending and not parked for an operator: the reconciler's to poll.
    pub fn is_open(&self) -> bool {
        self.status == PaymentStatus::Pending.as_str() && !self.flagged
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `c` (insert), `u` (update) or `r` (snapshot read): the row as it now is.
    Upsert {
        row: PaymentRow,
        /// The status before this change (`None` for an insert or a snapshot read).
        before_status: Option<String>,
        /// An `r` from Debezium's snapshot: the row's state, not a change of it.
        snapshot: bool,
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

    /// Debezium's commit time of the change (`source.ts_ms`); none for a tombstone.
    pub fn commit_ts_ms(&self) -> Option<i64> {
        match self {
            Change::Upsert { commit_ts_ms, .. } | Change::Delete { commit_ts_ms, .. } => {
                Some(*commit_ts_ms)
            }
            Change::Tombstone { .. } => None,
        }
    }

    /// The `payment-status-update` this change carries: a payment entering a final status.
    /// Read from the change itself (before and after images), not from the state, so a
    /// replay after a crash publishes it again (at least once) whatever the state held.
    /// A snapshot read of a final payment is published too: Debezium snapshots again
    /// after its slot was lost, and a payment that went final inside that gap has no
    /// other record of its transition (I3; consumers dedupe by payment id and version).
    pub fn final_transition(&self) -> Option<StatusUpdate> {
        let Change::Upsert {
            row,
            before_status,
            snapshot: _,
            lsn,
            commit_ts_ms,
        } = self
        else {
            return None;
        };
        let status = row
            .status
            .parse::<PaymentStatus>()
            .ok()
            .filter(|s| s.is_final())?;
        if before_status.as_deref() == Some(row.status.as_str()) {
            return None;
        }
        Some(StatusUpdate {
            payment_id: row.id,
            status,
            amount: row.amount,
            currency: row.currency.clone(),
            stripe_payment_intent_id: row.stripe_payment_intent_id.clone(),
            resolution_source: row.resolution_source.clone(),
            version: row.version,
            source_lsn: *lsn,
            committed_at_ms: *commit_ts_ms,
        })
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

/// Debezium's envelope, for any table whose rows have a `status` (payments, refunds).
/// The row is read straight into `R`, skipping the columns `R` does not name: no tree of
/// JSON values is built for each change, and the op is borrowed from the message.
#[derive(Deserialize)]
struct Envelope<'a, R> {
    before: Option<BeforeJson>,
    after: Option<R>,
    source: Source,
    #[serde(borrow)]
    op: Cow<'a, str>,
}

#[derive(Deserialize)]
struct BeforeJson {
    status: Option<String>,
}

#[derive(Deserialize)]
struct RowJson {
    id: Uuid,
    status: String,
    stripe_payment_intent_id: Option<String>,
    amount: i64,
    currency: String,
    /// Debezium renders timestamptz as an ISO-8601 string.
    #[serde(deserialize_with = "crate::timestamp::deserialize_utc")]
    created_at: DateTime<Utc>,
    version: i64,
    #[serde(default)]
    resolution_source: Option<String>,
    /// Only whether it is set matters.
    #[serde(default)]
    attention: Option<serde::de::IgnoredAny>,
}

/// One Debezium record of a table with an `id` key and a `status` column, its row read
/// as `R`: what the payments' and the refunds' decoders share.
pub(crate) enum Record<R> {
    Upsert {
        row: R,
        before_status: Option<String>,
        snapshot: bool,
        lsn: i64,
        commit_ts_ms: i64,
    },
    Delete {
        id: Uuid,
        lsn: i64,
        commit_ts_ms: i64,
    },
    Tombstone {
        id: Uuid,
    },
}

/// A row that names its own id, checked against the record's key.
pub(crate) trait Keyed: serde::de::DeserializeOwned {
    fn id(&self) -> Uuid;
}

pub(crate) fn decode_record<R: Keyed>(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<Record<R>, DecodeError> {
    let key: Key = serde_json::from_slice(key.ok_or(DecodeError::NoKey)?)
        .map_err(|e| DecodeError::BadKey(e.to_string()))?;
    let Some(value) = value else {
        return Ok(Record::Tombstone { id: key.id });
    };
    let env: Envelope<'_, R> =
        serde_json::from_slice(value).map_err(|e| DecodeError::BadEnvelope(e.to_string()))?;
    match env.op.as_ref() {
        "c" | "u" | "r" => {
            let row = env
                .after
                .ok_or_else(|| DecodeError::BadEnvelope(format!("op {} without after", env.op)))?;
            if row.id() != key.id {
                return Err(DecodeError::BadEnvelope(
                    "key and row disagree on the id".into(),
                ));
            }
            Ok(Record::Upsert {
                row,
                before_status: env.before.and_then(|b| b.status),
                snapshot: env.op == "r",
                lsn: env.source.lsn,
                commit_ts_ms: env.source.ts_ms,
            })
        }
        "d" => Ok(Record::Delete {
            id: key.id,
            lsn: env.source.lsn,
            commit_ts_ms: env.source.ts_ms,
        }),
        other => Err(DecodeError::UnknownOp(other.to_owned())),
    }
}

impl Keyed for RowJson {
    fn id(&self) -> Uuid {
        self.id
    }
}

pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Change, DecodeError> {
    Ok(match decode_record::<RowJson>(key, value)? {
        Record::Upsert {
            row: r,
            before_status,
            snapshot,
            lsn,
            commit_ts_ms,
        } => Change::Upsert {
            row: PaymentRow {
                id: r.id,
                status: r.status,
                stripe_payment_intent_id: r.stripe_payment_intent_id,
                amount: r.amount,
                currency: r.currency,
                created_at: r.created_at,
                version: r.version,
                resolution_source: r.resolution_source,
                flagged: r.attention.is_some(),
            },
            before_status,
            snapshot,
            lsn,
            commit_ts_ms,
        },
        Record::Delete {
            id,
            lsn,
            commit_ts_ms,
        } => Change::Delete {
            id,
            lsn,
            commit_ts_ms,
        },
        Record::Tombstone { id } => Change::Tombstone { id },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

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
                ..
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
    fn only_a_change_into_a_final_status_is_published() {
        let transition = |op: &str, before: Value, after: Value| {
            decode(Some(&key()), Some(&env(op, before, after)))
                .unwrap()
                .final_transition()
        };
        let u = transition("u", row("pending", 2), row("succeeded", 3)).expect("u to final");
        assert_eq!(
            (u.status, u.version, u.source_lsn, u.committed_at_ms),
            (PaymentStatus::Succeeded, 3, 42, 1)
        );
        assert!(
            transition("c", Value::Null, row("failed", 1)).is_some(),
            "inserted final"
        );
        assert!(
            transition("u", row("pending", 1), row("pending", 2)).is_none(),
            "still pending"
        );
        assert!(
            transition("u", row("succeeded", 3), row("succeeded", 4)).is_none(),
            "final already"
        );
        assert!(
            transition("r", Value::Null, row("canceled", 4)).is_some(),
            "a snapshot read of a final payment is published (after a lost slot, nothing else would)"
        );
        assert!(
            transition("r", Value::Null, row("pending", 4)).is_none(),
            "a snapshot read of a pending payment is no transition"
        );
        let d = decode(
            Some(&key()),
            Some(&env("d", row("pending", 1), Value::Null)),
        )
        .unwrap();
        assert!(d.final_transition().is_none());
        assert!(
            Change::Tombstone { id: Uuid::nil() }
                .final_transition()
                .is_none()
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
