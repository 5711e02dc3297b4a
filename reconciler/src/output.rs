//! `payment-status-update` messages: Avro, in the single-object encoding (magic `C3 01`,
//! the writer schema's 8-byte CRC-64-AVRO fingerprint, then the datum), so a consumer can
//! tell which schema wrote each message.

use std::sync::LazyLock;

use apache_avro::rabin::Rabin;
use apache_avro::types::Value;
use apache_avro::{Schema, from_avro_datum, to_avro_datum};
use paystream_core::PaymentStatus;
use uuid::Uuid;

pub const SCHEMA_JSON: &str = include_str!("../../schemas/payment_status_update.avsc");
const MAGIC: [u8; 2] = [0xC3, 0x01];
const SYMBOLS: [PaymentStatus; 3] = [
    PaymentStatus::Succeeded,
    PaymentStatus::Failed,
    PaymentStatus::Canceled,
];

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    Schema::parse_str(SCHEMA_JSON).expect("schemas/payment_status_update.avsc is valid Avro")
});
/// The specification's fingerprint, which Java, Python and Flink readers compute too.
static FINGERPRINT: LazyLock<[u8; 8]> = LazyLock::new(|| {
    crate::fingerprint::fingerprint(SCHEMA_JSON)
        .expect("schemas/payment_status_update.avsc is valid Avro")
});
/// What messages written before it carried (apache-avro 0.21's canonical form keeps
/// logical types): still read, so that a topic's older messages stay readable.
static LEGACY_FINGERPRINT: LazyLock<Vec<u8>> =
    LazyLock::new(|| SCHEMA.fingerprint::<Rabin>().bytes);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub payment_id: Uuid,
    pub status: PaymentStatus,
    pub amount: i64,
    pub currency: String,
    pub stripe_payment_intent_id: Option<String>,
    pub resolution_source: Option<String>,
    pub version: i64,
    pub source_lsn: i64,
    pub committed_at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{0} is not a final status: only final transitions are published")]
    NotFinal(String),
    #[error("not a single-object Avro message of this schema")]
    WrongHeader,
    #[error("avro: {0}")]
    Avro(#[from] apache_avro::Error),
    #[error("the datum does not have the schema's shape")]
    Shape,
}

pub(crate) fn optional(v: &Option<String>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
    }
}

pub fn fingerprint() -> &'static [u8] {
    FINGERPRINT.as_slice()
}

pub fn encode(u: &StatusUpdate) -> Result<Vec<u8>, OutputError> {
    let index = SYMBOLS
        .iter()
        .position(|s| *s == u.status)
        .ok_or_else(|| OutputError::NotFinal(u.status.to_string()))?;
    let record = Value::Record(vec![
        ("payment_id".into(), Value::Uuid(u.payment_id)),
        (
            "status".into(),
            Value::Enum(index as u32, u.status.as_str().into()),
        ),
        ("amount".into(), Value::Long(u.amount)),
        ("currency".into(), Value::String(u.currency.clone())),
        (
            "stripe_payment_intent_id".into(),
            optional(&u.stripe_payment_intent_id),
        ),
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

/// Avro's single-object encoding of `record`: magic, the writer schema's fingerprint,
/// the datum.
pub(crate) fn single_object(
    schema: &Schema,
    fingerprint: &[u8],
    record: Value,
) -> Result<Vec<u8>, OutputError> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(fingerprint);
    out.extend(to_avro_datum(schema, record)?);
    Ok(out)
}

const SINGLE_OBJECT_HEADER: usize = MAGIC.len() + 8;
/// A schema registry's wire format: a zero byte, then the schema's id (4 bytes).
const REGISTRY_MAGIC: u8 = 0;
const REGISTRY_HEADER: usize = 5;

/// A single-object message of ours in a schema registry's wire format, for registry-aware
/// consumers: the same datum, under the id the registry gave its schema.
pub fn registry_framed(schema_id: u32, single_object: &[u8]) -> Result<Vec<u8>, OutputError> {
    let datum = single_object
        .get(SINGLE_OBJECT_HEADER..)
        .filter(|_| single_object[..2] == MAGIC)
        .ok_or(OutputError::WrongHeader)?;
    let mut out = Vec::with_capacity(REGISTRY_HEADER + datum.len());
    out.push(REGISTRY_MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
    Ok(out)
}

/// The record of a message of ours: single-object with one of `fingerprints` in its
/// header, or in a registry's wire format (whose id only the registry can resolve: our
/// own readers know which schema a status topic is written with).
pub(crate) fn read_single_object(
    schema: &Schema,
    fingerprints: &[&[u8]],
    bytes: &[u8],
) -> Result<Fields, OutputError> {
    let datum = if bytes.first() == Some(&REGISTRY_MAGIC) && bytes.len() > REGISTRY_HEADER {
        &bytes[REGISTRY_HEADER..]
    } else if bytes.len() >= SINGLE_OBJECT_HEADER
        && bytes[..2] == MAGIC
        && fingerprints
            .iter()
            .any(|f| bytes[2..SINGLE_OBJECT_HEADER] == **f)
    {
        &bytes[SINGLE_OBJECT_HEADER..]
    } else {
        return Err(OutputError::WrongHeader);
    };
    match from_avro_datum(schema, &mut &datum[..], None)? {
        Value::Record(fields) => Ok(Fields(fields)),
        _ => Err(OutputError::Shape),
    }
}

pub fn decode(bytes: &[u8]) -> Result<StatusUpdate, OutputError> {
    let f = read_single_object(&SCHEMA, &[fingerprint(), &LEGACY_FINGERPRINT], bytes)?;
    let status = match f.get("status") {
        Some(Value::Enum(i, _)) => *SYMBOLS.get(i as usize).ok_or(OutputError::Shape)?,
        _ => return Err(OutputError::Shape),
    };
    Ok(StatusUpdate {
        payment_id: f.uuid("payment_id")?,
        status,
        amount: f.long("amount")?,
        currency: f.text("currency")?.ok_or(OutputError::Shape)?,
        stripe_payment_intent_id: f.text("stripe_payment_intent_id")?,
        resolution_source: f.text("resolution_source")?,
        version: f.long("version")?,
        source_lsn: f.long("source_lsn")?,
        committed_at_ms: f.long("committed_at")?,
    })
}

/// A decoded record's fields, read by name and type.
pub(crate) struct Fields(pub(crate) Vec<(String, Value)>);

impl Fields {
    pub(crate) fn get(&self, name: &str) -> Option<Value> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    pub(crate) fn long(&self, name: &str) -> Result<i64, OutputError> {
        match self.get(name) {
            Some(Value::Long(v)) | Some(Value::TimestampMillis(v)) => Ok(v),
            _ => Err(OutputError::Shape),
        }
    }

    /// A string, or an optional one (`["null", "string"]`).
    pub(crate) fn text(&self, name: &str) -> Result<Option<String>, OutputError> {
        match self.get(name) {
            Some(Value::String(s)) => Ok(Some(s)),
            Some(Value::Union(_, inner)) => match *inner {
                Value::String(s) => Ok(Some(s)),
                Value::Null => Ok(None),
                _ => Err(OutputError::Shape),
            },
            _ => Err(OutputError::Shape),
        }
    }

    pub(crate) fn uuid(&self, name: &str) -> Result<Uuid, OutputError> {
        match self.get(name) {
            Some(Value::Uuid(u)) => Ok(u),
            Some(Value::String(s)) => Uuid::parse_str(&s).map_err(|_| OutputError::Shape),
            _ => Err(OutputError::Shape),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(status: PaymentStatus) -> StatusUpdate {
        StatusUpdate {
            payment_id: Uuid::now_v7(),
            status,
            amount: 1250,
            currency: "usd".into(),
            stripe_payment_intent_id: Some("pi_1".into()),
            resolution_source: None,
            version: 3,
            source_lsn: 987_654,
            committed_at_ms: 1_800_000_000_123,
        }
    }

    #[test]
    fn registry_framing_carries_the_same_datum_under_the_schema_id() {
        let u = update(PaymentStatus::Succeeded);
        let single = encode(&u).unwrap();
        let framed = registry_framed(7, &single).unwrap();
        assert_eq!(framed[..5], [0, 0, 0, 0, 7]);
        assert_eq!(framed[5..], single[10..]);
        assert_eq!(decode(&framed).unwrap(), u);
        assert!(matches!(
            registry_framed(7, &framed),
            Err(OutputError::WrongHeader)
        ));
    }

    #[test]
    fn final_updates_round_trip_with_the_schema_fingerprint() {
        for status in SYMBOLS {
            let u = update(status);
            let bytes = encode(&u).unwrap();
            assert_eq!(&bytes[..2], &MAGIC);
            assert_eq!(&bytes[2..10], fingerprint());
            assert_eq!(decode(&bytes).unwrap(), u);
        }
        assert_eq!(fingerprint().len(), 8);
    }

    /// Messages written before the header carried the specification's fingerprint (the
    /// topic keeps them) still decode.
    #[test]
    fn messages_with_the_earlier_fingerprint_still_decode() {
        let u = update(PaymentStatus::Canceled);
        let mut bytes = encode(&u).unwrap();
        assert_ne!(LEGACY_FINGERPRINT.as_slice(), fingerprint());
        bytes[2..10].copy_from_slice(&LEGACY_FINGERPRINT);
        assert_eq!(decode(&bytes).unwrap(), u);
    }

    #[test]
    fn pending_is_never_published_and_foreign_bytes_are_refused() {
        assert!(matches!(
            encode(&update(PaymentStatus::Pending)),
            Err(OutputError::NotFinal(_))
        ));
        let mut bytes = encode(&update(PaymentStatus::Succeeded)).unwrap();
        bytes[3] ^= 0xff;
        assert!(matches!(decode(&bytes), Err(OutputError::WrongHeader)));
        assert!(matches!(decode(b"\xC3\x01"), Err(OutputError::WrongHeader)));
    }
}
