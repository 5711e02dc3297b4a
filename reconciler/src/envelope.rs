//! Debezium's change events of `public.payments`, as the JSON converter without schemas
//! writes them: key `{"id": ...}`, value `{"before", "after", "source": {"lsn", "ts_ms", ...},
//! "op": "c|u|d|r", "ts_ms"}`, and a null value (tombstone) after each delete.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use paystream_core::PaymentStatus;
use serde::Deserialize;
use uuid::Uuid;

use crate::json::{Declined, Read, Reader, once};
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
#[cfg_attr(test, derive(Debug, PartialEq))]
struct Key {
    id: Uuid,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct Source {
    lsn: i64,
    ts_ms: i64,
}

/// Debezium's envelope, for any table whose rows have a `status` (payments, refunds).
/// The row is read straight into `R`, skipping the columns `R` does not name: no tree of
/// JSON values is built for each change, and the op is borrowed from the message.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct Envelope<'a, R> {
    before: Option<BeforeJson>,
    after: Option<R>,
    source: Source,
    #[serde(borrow)]
    op: Cow<'a, str>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct BeforeJson {
    status: Option<String>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
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

// The fast readers (`crate::json`) of the same structs: each must give what serde's
// derived `Deserialize` gives, or decline. The property tests below hold them to it.

impl Key {
    fn read(bytes: &[u8]) -> Read<Self> {
        let mut id = None;
        Reader::whole(bytes, |r| {
            r.object(|field, r| match field {
                b"id" => once(&mut id, uuid(r)?),
                _ => r.skip(),
            })
        })?;
        Ok(Key {
            id: id.ok_or(Declined)?,
        })
    }
}

impl Source {
    fn read(r: &mut Reader<'_>) -> Read<Self> {
        let (mut lsn, mut ts_ms) = (None, None);
        r.object(|field, r| match field {
            b"lsn" => once(&mut lsn, r.integer()?),
            b"ts_ms" => once(&mut ts_ms, r.integer()?),
            _ => r.skip(),
        })?;
        Ok(Source {
            lsn: lsn.ok_or(Declined)?,
            ts_ms: ts_ms.ok_or(Declined)?,
        })
    }
}

impl<'a, R: Keyed> Envelope<'a, R> {
    fn read(bytes: &'a [u8]) -> Read<Self> {
        let (mut before, mut after, mut source, mut op) = (None, None, None, None);
        Reader::whole(bytes, |r| {
            r.object(|field, r| match field {
                b"before" => once(&mut before, nullable(r, BeforeJson::read)?),
                b"after" => once(&mut after, nullable(r, R::read)?),
                b"source" => once(&mut source, Source::read(r)?),
                b"op" => once(&mut op, r.plain_string()?),
                _ => r.skip(),
            })
        })?;
        Ok(Envelope {
            before: before.flatten(),
            after: after.flatten(),
            source: source.ok_or(Declined)?,
            op: Cow::Borrowed(op.ok_or(Declined)?),
        })
    }
}

impl BeforeJson {
    fn read(r: &mut Reader<'_>) -> Read<Self> {
        let mut status = None;
        r.object(|field, r| match field {
            b"status" => once(&mut status, owned(r.optional_string()?)),
            _ => r.skip(),
        })?;
        Ok(BeforeJson {
            status: status.flatten(),
        })
    }
}

impl Keyed for RowJson {
    fn id(&self) -> Uuid {
        self.id
    }

    fn read(r: &mut Reader<'_>) -> Read<Self> {
        let (mut id, mut status, mut intent, mut amount, mut currency) =
            (None, None, None, None, None);
        let (mut created_at, mut version, mut resolution_source, mut attention) =
            (None, None, None, None);
        r.object(|field, r| match field {
            b"id" => once(&mut id, uuid(r)?),
            b"status" => once(&mut status, r.plain_string()?.to_owned()),
            b"stripe_payment_intent_id" => once(&mut intent, owned(r.optional_string()?)),
            b"amount" => once(&mut amount, r.integer()?),
            b"currency" => once(&mut currency, r.plain_string()?.to_owned()),
            b"created_at" => once(&mut created_at, timestamp(r)?),
            b"version" => once(&mut version, r.integer()?),
            b"resolution_source" => once(&mut resolution_source, owned(r.optional_string()?)),
            b"attention" => once(&mut attention, set(r)?),
            _ => r.skip(),
        })?;
        Ok(RowJson {
            id: id.ok_or(Declined)?,
            status: status.ok_or(Declined)?,
            // serde reads a missing `Option` field as `None`, like `#[serde(default)]`.
            stripe_payment_intent_id: intent.flatten(),
            amount: amount.ok_or(Declined)?,
            currency: currency.ok_or(Declined)?,
            created_at: created_at.ok_or(Declined)?,
            version: version.ok_or(Declined)?,
            resolution_source: resolution_source.flatten(),
            attention: attention.flatten(),
        })
    }
}

/// `null` as `None`, anything else read by `read`.
pub(crate) fn nullable<'a, T>(
    r: &mut Reader<'a>,
    read: impl FnOnce(&mut Reader<'a>) -> Read<T>,
) -> Read<Option<T>> {
    if r.null()? {
        Ok(None)
    } else {
        read(r).map(Some)
    }
}

pub(crate) fn owned(s: Option<&str>) -> Option<String> {
    s.map(str::to_owned)
}

pub(crate) fn uuid(r: &mut Reader<'_>) -> Read<Uuid> {
    // Only hex digits and hyphens parse, so unchecked UTF-8 cannot.
    Uuid::try_parse_ascii(r.plain_bytes()?).map_err(|_| Declined)
}

pub(crate) fn timestamp(r: &mut Reader<'_>) -> Read<DateTime<Utc>> {
    crate::timestamp::parse_utc(r.plain_string()?).map_err(|_| Declined)
}

/// Whether a value is set (not `null`), as `Option<IgnoredAny>` reads it.
fn set(r: &mut Reader<'_>) -> Read<Option<serde::de::IgnoredAny>> {
    nullable(r, |r| r.skip().map(|()| serde::de::IgnoredAny))
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
    /// The row read by the fast reader: what `Deserialize` reads, or `Declined`.
    fn read(r: &mut Reader<'_>) -> Read<Self>;
}

/// How a record's JSON is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// The fast reader, and serde_json where it declines: what the reconciler does.
    FastFirst,
    /// The fast reader alone, what it declines an error: for tests that real records
    /// take the fast path.
    FastOnly,
    /// serde_json alone: the benchmark's baseline.
    SerdeOnly,
}

/// `bytes` read by `fast` or, where it declines, by serde_json, as `reading` says.
fn read_with<'a, T: Deserialize<'a>>(
    reading: Reading,
    bytes: &'a [u8],
    fast: impl FnOnce(&'a [u8]) -> Read<T>,
) -> Result<T, String> {
    if reading != Reading::SerdeOnly {
        match fast(bytes) {
            Ok(value) => return Ok(value),
            Err(Declined) if reading == Reading::FastOnly => {
                return Err("declined by the fast reader".into());
            }
            Err(Declined) => {}
        }
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

pub(crate) fn decode_record<R: Keyed>(
    reading: Reading,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<Record<R>, DecodeError> {
    let key = key.ok_or(DecodeError::NoKey)?;
    let key = read_with(reading, key, Key::read).map_err(DecodeError::BadKey)?;
    let Some(value) = value else {
        return Ok(Record::Tombstone { id: key.id });
    };
    let env: Envelope<'_, R> =
        read_with(reading, value, Envelope::read).map_err(DecodeError::BadEnvelope)?;
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

pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Change, DecodeError> {
    decode_with(Reading::FastFirst, key, value)
}

/// `decode`, its JSON read as `reading` says.
pub fn decode_with(
    reading: Reading,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<Change, DecodeError> {
    Ok(match decode_record::<RowJson>(reading, key, value)? {
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

/// Records for the property tests of the fast readers: Debezium's envelope around a
/// table's row, its fields in any order, and (when `odd`) any JSON in any field, fields
/// missing or repeated.
#[cfg(test)]
pub(crate) mod records {
    use super::*;
    use crate::json::tests::any_json;
    use proptest::prelude::*;
    use proptest::sample::Index;

    pub(crate) type Fields = Vec<(String, String)>;

    /// A field's value: as Debezium writes it, or, when `odd`, sometimes any JSON at all.
    pub(crate) fn value(canonical: BoxedStrategy<String>, odd: bool) -> BoxedStrategy<String> {
        if odd {
            prop_oneof![4 => canonical, 1 => any_json().prop_map(|v| v.to_string())].boxed()
        } else {
            canonical
        }
    }

    pub(crate) fn word() -> BoxedStrategy<String> {
        "[a-z_]{1,12}".prop_map(|s| format!("\"{s}\"")).boxed()
    }

    pub(crate) fn nullable_word() -> BoxedStrategy<String> {
        prop_oneof![Just("null".to_owned()), word()].boxed()
    }

    pub(crate) fn uuid() -> BoxedStrategy<String> {
        any::<u128>()
            .prop_map(|n| format!("\"{}\"", Uuid::from_u128(n)))
            .boxed()
    }

    pub(crate) fn integer() -> BoxedStrategy<String> {
        any::<i64>().prop_map(|n| n.to_string()).boxed()
    }

    pub(crate) fn timestamp() -> BoxedStrategy<String> {
        (0i64..4_102_444_800_000_000)
            .prop_map(|us| {
                let t = DateTime::<Utc>::from_timestamp_micros(us).unwrap_or_default();
                format!(
                    "\"{}\"",
                    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                )
            })
            .boxed()
    }

    /// Columns the reader does not keep, as the connector's list or a wider one carries.
    fn extras(odd: bool) -> BoxedStrategy<Fields> {
        // Prefixed, so that only `edit` repeats a field the reader keeps.
        let extra = ("x_[a-z_]{0,8}", value(nullable_word(), odd));
        prop::collection::vec(extra, 0..6).boxed()
    }

    /// Drops (`1`) or repeats (`2`) one of the fields, or neither.
    fn edit(mut fields: Fields, at: Index, how: u8) -> Fields {
        if fields.is_empty() {
            return fields;
        }
        let i = at.index(fields.len());
        match how {
            1 => {
                fields.remove(i);
            }
            2 => fields.push(fields[i].clone()),
            _ => {}
        }
        fields
    }

    fn object(fields: Fields, space: &'static str) -> String {
        let body: Vec<String> = fields
            .into_iter()
            .map(|(k, v)| format!("{}:{space}{v}", serde_json::Value::from(k)))
            .collect();
        format!("{{{space}{}{space}}}", body.join(&format!(",{space}")))
    }

    /// A record's value. `table_row` gives a row's own fields.
    pub(crate) fn record(
        table_row: fn(bool) -> BoxedStrategy<Fields>,
        odd: bool,
    ) -> BoxedStrategy<String> {
        let edits = move || (any::<Index>(), if odd { 0..3u8 } else { 0..1u8 });
        let space = prop::sample::select(vec!["", " ", "\n  "]);
        let row_of = move || {
            (table_row(odd), extras(odd), edits()).prop_flat_map(
                |(mut fields, extra, (at, how))| {
                    fields.extend(extra);
                    Just(edit(fields, at, how)).prop_shuffle()
                },
            )
        };
        let op = prop::sample::select(vec!["c", "u", "r", "d"]);
        let source = (integer(), integer(), extras(odd)).prop_flat_map(|(lsn, ts, mut f)| {
            f.extend([("lsn".into(), lsn), ("ts_ms".into(), ts)]);
            Just(f).prop_shuffle()
        });
        (
            row_of(),
            row_of(),
            0..3u8,
            op,
            source,
            integer(),
            edits(),
            space,
        )
            .prop_flat_map(
                move |(before, after, shape, op, source, ts, (at, how), space)| {
                    let image = |fields: Fields| object(fields, space);
                    let (before, after) = match shape {
                        0 => ("null".to_owned(), image(after)),
                        1 => (image(before), image(after)),
                        _ => (image(before), "null".to_owned()),
                    };
                    let fields = vec![
                        ("before".to_owned(), before),
                        ("after".to_owned(), after),
                        ("source".to_owned(), image(source)),
                        ("op".to_owned(), format!("\"{op}\"")),
                        ("ts_ms".to_owned(), ts),
                        ("transaction".to_owned(), "null".to_owned()),
                    ];
                    Just(edit(fields, at, how))
                        .prop_shuffle()
                        .prop_map(move |fields| object(fields, space))
                },
            )
            .boxed()
    }

    /// What the fast reader makes of a value: serde's reading of it, or nothing.
    pub(crate) fn agree<R: Keyed + std::fmt::Debug + PartialEq>(
        value: &[u8],
    ) -> Result<bool, TestCaseError> {
        let Ok(fast) = Envelope::<R>::read(value) else {
            return Ok(false);
        };
        let serde: Envelope<'_, R> = serde_json::from_slice(value)
            .map_err(|e| TestCaseError::fail(format!("read where serde_json fails ({e})")))?;
        prop_assert_eq!(fast, serde);
        Ok(true)
    }

    /// One byte of `text` replaced or inserted (`how` 1, 2), or none.
    pub(crate) fn mutate(text: String, at: Index, byte: u8, how: u8) -> Vec<u8> {
        let mut bytes = text.into_bytes();
        match how {
            1 => {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            2 => bytes.insert(at.index(bytes.len() + 1), byte),
            _ => {}
        }
        bytes
    }

    pub(crate) fn any_mutation() -> impl Strategy<Value = (Index, u8, u8)> {
        (
            any::<Index>(),
            prop::sample::select(b"{}[]\",:\\0-.eEnu \x01\xc3".to_vec()),
            0..3u8,
        )
    }

    /// A row of `columns`, each value from its strategy (through `value`).
    pub(crate) fn columns(
        columns: Vec<(&'static str, BoxedStrategy<String>)>,
        odd: bool,
    ) -> BoxedStrategy<Fields> {
        let (names, values): (Vec<_>, Vec<_>) = columns
            .into_iter()
            .map(|(name, strategy)| (name, value(strategy, odd)))
            .unzip();
        values
            .prop_map(move |values| names.iter().map(|n| n.to_string()).zip(values).collect())
            .boxed()
    }

    /// One of `statuses`, as a JSON string.
    pub(crate) fn status(statuses: &[&'static str]) -> BoxedStrategy<String> {
        prop::sample::select(statuses.to_vec())
            .prop_map(|s| format!("\"{s}\""))
            .boxed()
    }

    pub(crate) fn payment_row(odd: bool) -> BoxedStrategy<Fields> {
        columns(
            vec![
                ("id", uuid()),
                (
                    "status",
                    status(&["pending", "succeeded", "failed", "canceled"]),
                ),
                ("stripe_payment_intent_id", nullable_word()),
                ("amount", integer()),
                ("currency", word()),
                ("created_at", timestamp()),
                ("version", integer()),
                ("resolution_source", nullable_word()),
                ("attention", nullable_word()),
            ],
            odd,
        )
    }

    proptest! {
        #[test]
        fn the_fast_reader_reads_every_record_debezium_writes(text in record(payment_row, false)) {
            prop_assert!(agree::<RowJson>(text.as_bytes())?, "declined {}", text);
        }

        #[test]
        fn the_fast_reader_gives_what_serde_gives_or_declines(
            text in record(payment_row, true),
            (at, byte, how) in any_mutation(),
        ) {
            agree::<RowJson>(&mutate(text, at, byte, how))?;
        }

        #[test]
        fn keys_too(id in uuid(), extra in value(nullable_word(), true), (at, byte, how) in any_mutation()) {
            let text = mutate(format!("{{\"id\":{id},\"x\":{extra}}}"), at, byte, how);
            if let Ok(fast) = Key::read(&text) {
                prop_assert_eq!(Some(fast), serde_json::from_slice::<Key>(&text).ok());
            }
        }
    }
}
