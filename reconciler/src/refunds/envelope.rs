//! Debezium's change events of `public.refunds`: the same envelope as payments'
//! (`crate::envelope`), with a refund row.

use chrono::{DateTime, Utc};
use paystream_core::RefundStatus;
use serde::Deserialize;
use uuid::Uuid;

use super::output::RefundUpdate;
use crate::envelope::{DecodeError, Keyed, Reading, Record, decode_record, owned, timestamp, uuid};
use crate::json::{Declined, Read, Reader, once};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRow {
    pub id: Uuid,
    pub payment_id: Uuid,
    pub status: String,
    pub stripe_refund_id: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub failure_reason: Option<String>,
    pub resolution_source: Option<String>,
    pub created_at: DateTime<Utc>,
    pub version: i64,
    /// Waits for an operator: not polled meanwhile.
    pub flagged: bool,
}

impl RefundRow {
    /// Pending and not parked for an operator: the reconciler's to poll.
    pub fn is_open(&self) -> bool {
        self.status == RefundStatus::Pending.as_str() && !self.flagged
    }
}

// One change lives at a time (decoded, applied, dropped): its size is no concern.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundChange {
    Upsert {
        row: RefundRow,
        before_status: Option<String>,
        snapshot: bool,
        lsn: i64,
        commit_ts_ms: i64,
    },
    Delete {
        id: Uuid,
    },
    Tombstone {
        id: Uuid,
    },
}

impl RefundChange {
    /// The `refund-status-update` this change carries: a refund entering a final status,
    /// or leaving `succeeded` for `failed` (Stripe reported it failed after all). Read
    /// from the change itself, so a replay publishes it again (at least once). A
    /// snapshot read of a final refund is published too, as for payments.
    pub fn final_transition(&self) -> Option<RefundUpdate> {
        let RefundChange::Upsert {
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
            .parse::<RefundStatus>()
            .ok()
            .filter(|s| s.is_final())?;
        if before_status.as_deref() == Some(row.status.as_str()) {
            return None;
        }
        Some(RefundUpdate {
            refund_id: row.id,
            payment_id: row.payment_id,
            status,
            previous_status: before_status.clone(),
            amount: row.amount,
            currency: row.currency.clone(),
            stripe_refund_id: row.stripe_refund_id.clone(),
            failure_reason: row.failure_reason.clone(),
            resolution_source: row.resolution_source.clone(),
            version: row.version,
            source_lsn: *lsn,
            committed_at_ms: *commit_ts_ms,
        })
    }
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct RowJson {
    id: Uuid,
    payment_id: Uuid,
    status: String,
    stripe_refund_id: Option<String>,
    amount: i64,
    currency: String,
    #[serde(default)]
    failure_reason: Option<String>,
    #[serde(default)]
    resolution_source: Option<String>,
    #[serde(deserialize_with = "crate::timestamp::deserialize_utc")]
    created_at: DateTime<Utc>,
    version: i64,
    #[serde(default)]
    attention: Option<String>,
}

impl Keyed for RowJson {
    fn id(&self) -> Uuid {
        self.id
    }

    fn read(r: &mut Reader<'_>) -> Read<Self> {
        let (mut id, mut payment_id, mut status, mut refund_id) = (None, None, None, None);
        let (mut amount, mut currency, mut failure_reason, mut resolution_source) =
            (None, None, None, None);
        let (mut created_at, mut version, mut attention) = (None, None, None);
        r.object(|field, r| match field {
            b"id" => once(&mut id, uuid(r)?),
            b"payment_id" => once(&mut payment_id, uuid(r)?),
            b"status" => once(&mut status, r.plain_string()?.to_owned()),
            b"stripe_refund_id" => once(&mut refund_id, owned(r.optional_string()?)),
            b"amount" => once(&mut amount, r.integer()?),
            b"currency" => once(&mut currency, r.plain_string()?.to_owned()),
            b"failure_reason" => once(&mut failure_reason, owned(r.optional_string()?)),
            b"resolution_source" => once(&mut resolution_source, owned(r.optional_string()?)),
            b"created_at" => once(&mut created_at, timestamp(r)?),
            b"version" => once(&mut version, r.integer()?),
            b"attention" => once(&mut attention, owned(r.optional_string()?)),
            _ => r.skip(),
        })?;
        Ok(RowJson {
            id: id.ok_or(Declined)?,
            payment_id: payment_id.ok_or(Declined)?,
            status: status.ok_or(Declined)?,
            stripe_refund_id: refund_id.flatten(),
            amount: amount.ok_or(Declined)?,
            currency: currency.ok_or(Declined)?,
            failure_reason: failure_reason.flatten(),
            resolution_source: resolution_source.flatten(),
            created_at: created_at.ok_or(Declined)?,
            version: version.ok_or(Declined)?,
            attention: attention.flatten(),
        })
    }
}

pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<RefundChange, DecodeError> {
    Ok(
        match decode_record::<RowJson>(Reading::FastFirst, key, value)? {
            Record::Upsert {
                row: r,
                before_status,
                snapshot,
                lsn,
                commit_ts_ms,
            } => RefundChange::Upsert {
                row: RefundRow {
                    id: r.id,
                    payment_id: r.payment_id,
                    status: r.status,
                    stripe_refund_id: r.stripe_refund_id,
                    amount: r.amount,
                    currency: r.currency,
                    failure_reason: r.failure_reason,
                    resolution_source: r.resolution_source,
                    created_at: r.created_at,
                    version: r.version,
                    flagged: r.attention.is_some(),
                },
                before_status,
                snapshot,
                lsn,
                commit_ts_ms,
            },
            Record::Delete { id, .. } => RefundChange::Delete { id },
            Record::Tombstone { id } => RefundChange::Tombstone { id },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::records::{
        Fields, agree, any_mutation, columns, integer, mutate, nullable_word, record, status,
        timestamp, uuid, word,
    };
    use proptest::prelude::*;
    use serde_json::{Value, json};

    const ID: &str = "01a20d3d-2b8e-77af-b35c-94d4138961c9";
    const PAYMENT: &str = "01a20d3d-2b8e-77af-b35c-000000000001";

    fn row(status: &str, version: i64) -> Value {
        json!({"id": ID, "payment_id": PAYMENT, "requested_by": PAYMENT, "idempotency_key": "k", "amount": 500,
               "currency": "usd", "reason": null, "metadata": "{}", "status": status, "stripe_refund_id": "re_1",
               "stripe_status": status, "failure_reason": if status == "failed" { json!("expired_or_canceled_card") } else { Value::Null },
               "resolution_source": null, "attention": null, "attention_at": null, "version": version,
               "created_at": "2026-12-02T10:59:21.123456Z", "updated_at": "2026-12-02T10:59:21.123456Z", "resolved_at": null})
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

    fn transition(op: &str, before: Value, after: Value) -> Option<RefundUpdate> {
        decode(Some(&key()), Some(&env(op, before, after)))
            .unwrap()
            .final_transition()
    }

    #[test]
    fn decodes_a_refund_row() {
        let RefundChange::Upsert { row, lsn, .. } = decode(
            Some(&key()),
            Some(&env("c", Value::Null, row("pending", 1))),
        )
        .unwrap() else {
            panic!("an upsert")
        };
        assert_eq!(row.payment_id.to_string(), PAYMENT);
        assert_eq!((row.amount, row.version, lsn), (500, 1, 42));
        assert!(row.is_open());
        assert_eq!(
            decode(Some(&key()), None).unwrap(),
            RefundChange::Tombstone {
                id: Uuid::parse_str(ID).unwrap()
            }
        );
    }

    #[test]
    fn final_transitions_and_the_late_failure_are_published_nothing_else() {
        let done = transition("u", row("pending", 1), row("succeeded", 2)).expect("to final");
        assert_eq!(
            (done.status, done.previous_status.as_deref()),
            (RefundStatus::Succeeded, Some("pending"))
        );
        let late = transition("u", row("succeeded", 2), row("failed", 3)).expect("late failure");
        assert_eq!(
            (late.status, late.failure_reason.as_deref()),
            (RefundStatus::Failed, Some("expired_or_canceled_card"))
        );
        assert!(transition("u", row("pending", 1), row("pending", 2)).is_none());
        assert!(transition("u", row("succeeded", 2), row("succeeded", 3)).is_none());
        assert!(transition("c", Value::Null, row("pending", 1)).is_none());
        assert!(transition("r", Value::Null, row("canceled", 4)).is_some());
    }

    #[test]
    fn a_payment_row_is_not_a_refund() {
        let payment = json!({"id": ID, "status": "pending", "amount": 1, "currency": "usd", "version": 1,
            "idempotency_key": "k", "created_at": "2026-12-02T10:59:21Z"});
        assert!(matches!(
            decode(Some(&key()), Some(&env("c", Value::Null, payment))),
            Err(DecodeError::BadEnvelope(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(k in proptest::collection::vec(any::<u8>(), 0..64), v in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..256))) {
            let _ = decode(Some(&k), v.as_deref());
        }
    }

    fn refund_row(odd: bool) -> BoxedStrategy<Fields> {
        let statuses = [
            "pending",
            "requires_action",
            "succeeded",
            "failed",
            "canceled",
        ];
        columns(
            vec![
                ("id", uuid()),
                ("payment_id", uuid()),
                ("status", status(&statuses)),
                ("stripe_refund_id", nullable_word()),
                ("amount", integer()),
                ("currency", word()),
                ("failure_reason", nullable_word()),
                ("resolution_source", nullable_word()),
                ("created_at", timestamp()),
                ("version", integer()),
                ("attention", nullable_word()),
            ],
            odd,
        )
    }

    proptest! {
        #[test]
        fn the_fast_reader_reads_every_refund_record_debezium_writes(text in record(refund_row, false)) {
            prop_assert!(agree::<RowJson>(text.as_bytes())?, "declined {}", text);
        }

        #[test]
        fn the_fast_reader_gives_what_serde_gives_for_refunds_or_declines(
            text in record(refund_row, true),
            (at, byte, how) in any_mutation(),
        ) {
            agree::<RowJson>(&mutate(text, at, byte, how))?;
        }
    }
}
