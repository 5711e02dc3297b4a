//! `refund-status-update` messages: Avro in the single-object encoding, like
//! `payment-status-update` (`crate::output`), with a schema of their own
//! (`schemas/refund_status_update.avsc`).
//!
//! Why a topic and schema of their own rather than one evolved schema: a refund is
//! another entity with its own key (several per payment) and its own life (a succeeded
//! refund can still fail), and every field of `payment-status-update` is required;
//! folding refunds in would change what its existing consumers must accept.

use std::sync::LazyLock;

use apache_avro::Schema;
use apache_avro::types::Value;
use paystream_core::RefundStatus;
use uuid::Uuid;

use crate::output::{OutputError, optional, read_single_object, single_object};

pub const SCHEMA_JSON: &str = include_str!("../../../schemas/refund_status_update.avsc");
const SYMBOLS: [RefundStatus; 3] = [
    RefundStatus::Succeeded,
    RefundStatus::Failed,
    RefundStatus::Canceled,
];

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    Schema::parse_str(SCHEMA_JSON).expect("schemas/refund_status_update.avsc is valid Avro")
});
static FINGERPRINT: LazyLock<[u8; 8]> = LazyLock::new(|| {
    crate::fingerprint::fingerprint(SCHEMA_JSON)
        .expect("schemas/refund_status_update.avsc is valid Avro")
});

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundUpdate {
    pub refund_id: Uuid,
    pub payment_id: Uuid,
    pub status: RefundStatus,
    pub previous_status: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub stripe_refund_id: Option<String>,
    pub failure_reason: Option<String>,
    pub resolution_source: Option<String>,
    pub version: i64,
    pub source_lsn: i64,
    pub committed_at_ms: i64,
}

pub fn fingerprint() -> &'static [u8] {
    FINGERPRINT.as_slice()
}

pub fn encode(u: &RefundUpdate) -> Result<Vec<u8>, OutputError> {
    let index = SYMBOLS
        .iter()
        .position(|s| *s == u.status)
        .ok_or_else(|| OutputError::NotFinal(u.status.to_string()))?;
    let record = Value::Record(vec![
        ("refund_id".into(), Value::Uuid(u.refund_id)),
        ("payment_id".into(), Value::Uuid(u.payment_id)),
        (
            "status".into(),
            Value::Enum(index as u32, u.status.as_str().into()),
        ),
        ("previous_status".into(), optional(&u.previous_status)),
        ("amount".into(), Value::Long(u.amount)),
        ("currency".into(), Value::String(u.currency.clone())),
        ("stripe_refund_id".into(), optional(&u.stripe_refund_id)),
        ("failure_reason".into(), optional(&u.failure_reason)),
        ("resolution_source".into(), optional(&u.resolution_source)),
        ("version".into(), Value::Long(u.version)),
        ("source_lsn".into(), Value::Long(u.source_lsn)),
        (
            "committed_at".into(),
            Value::TimestampMillis(u.committed_at_ms),
        ),
    ]);
    single_object(&SCHEMA, fingerprint(), record)
}

pub fn decode(bytes: &[u8]) -> Result<RefundUpdate, OutputError> {
    let f = read_single_object(&SCHEMA, &[fingerprint()], bytes)?;
    let status = match f.get("status") {
        Some(Value::Enum(i, _)) => *SYMBOLS.get(i as usize).ok_or(OutputError::Shape)?,
        _ => return Err(OutputError::Shape),
    };
    Ok(RefundUpdate {
        refund_id: f.uuid("refund_id")?,
        payment_id: f.uuid("payment_id")?,
        status,
        previous_status: f.text("previous_status")?,
        amount: f.long("amount")?,
        currency: f.text("currency")?.ok_or(OutputError::Shape)?,
        stripe_refund_id: f.text("stripe_refund_id")?,
        failure_reason: f.text("failure_reason")?,
        resolution_source: f.text("resolution_source")?,
        version: f.long("version")?,
        source_lsn: f.long("source_lsn")?,
        committed_at_ms: f.long("committed_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(status: RefundStatus) -> RefundUpdate {
        RefundUpdate {
            refund_id: Uuid::now_v7(),
            payment_id: Uuid::now_v7(),
            status,
            previous_status: Some("pending".into()),
            amount: 500,
            currency: "usd".into(),
            stripe_refund_id: Some("re_1".into()),
            failure_reason: (status == RefundStatus::Failed)
                .then(|| "expired_or_canceled_card".into()),
            resolution_source: Some("webhook".into()),
            version: 2,
            source_lsn: 987_654,
            committed_at_ms: 1_800_000_000_123,
        }
    }

    #[test]
    fn final_updates_round_trip_with_the_specs_fingerprint() {
        for status in SYMBOLS {
            let u = update(status);
            let bytes = encode(&u).unwrap();
            assert_eq!(&bytes[2..10], fingerprint());
            assert_eq!(decode(&bytes).unwrap(), u);
        }
        assert_ne!(fingerprint(), crate::output::fingerprint());
    }

    #[test]
    fn pending_is_never_published_and_payment_updates_are_refused() {
        assert!(matches!(
            encode(&update(RefundStatus::Pending)),
            Err(OutputError::NotFinal(_))
        ));
        let payment = crate::output::encode(&crate::output::StatusUpdate {
            payment_id: Uuid::now_v7(),
            status: paystream_core::PaymentStatus::Succeeded,
            amount: 1,
            currency: "usd".into(),
            stripe_payment_intent_id: None,
            resolution_source: None,
            version: 1,
            source_lsn: 1,
            committed_at_ms: 1,
        })
        .unwrap();
        assert!(matches!(decode(&payment), Err(OutputError::WrongHeader)));
    }
}
