//! `paystream tail`: one of the pipeline's topics, decoded with the reconciler's own
//! decoders (Debezium's envelopes of `payments` and `refunds`, the Avro status updates in
//! either framing) and printed one line per record, as an aligned table or JSON lines.
//!
//! It reads without a consumer group: every partition is assigned (at its end, or at its
//! beginning with `--from-beginning`) under a throwaway `group.id` with auto-commit off,
//! so nothing is ever committed and no group's offsets move. A record that does not
//! decode is printed as such, with the error; it never stops the tail.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::DateTime;
use memchr::memmem;
use paystream_reconciler::config::{KafkaConfig, KafkaConfigError};
use paystream_reconciler::envelope::{self, Change};
use paystream_reconciler::output::{self, StatusUpdate};
use paystream_reconciler::refunds::envelope::{self as refund_envelope, RefundChange};
use paystream_reconciler::refunds::output::{self as refund_output, RefundUpdate};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Value, json};
use uuid::Uuid;

/// Which topic: the payments' or refunds' CDC stream, or their status updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Stream {
    /// Debezium's changes of `payments` (`CDC_TOPIC`).
    Cdc,
    /// `payment-status-update`, Avro (`STATUS_TOPIC`).
    Status,
    /// Debezium's changes of `refunds` (`REFUND_CDC_TOPIC`).
    RefundCdc,
    /// `refund-status-update`, Avro (`REFUND_STATUS_TOPIC`).
    RefundStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, a header first.
    Table,
    /// One JSON object per line, with a `kind`.
    Json,
}

#[derive(clap::Args)]
pub struct TailArgs {
    pub stream: Stream,
    /// Read every partition from its first record (default: only what comes from now).
    #[arg(long)]
    pub from_beginning: bool,
    /// Only the records of this payment (refund topics: its refunds).
    #[arg(long)]
    pub payment: Option<Uuid>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Stop after printing this many records.
    #[arg(long)]
    pub max: Option<u64>,
    /// Stop when no record to print came for this many seconds (while a backlog is still
    /// being read, any record counts). Without it, the tail follows until Ctrl-C.
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    /// Kafka's bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub brokers: String,
    /// A librdkafka setting, `NAME=VALUE` (TLS, SASL: `security.protocol=SASL_SSL`, ...);
    /// repeatable. Those the tail's own reading rests on (`group.id`, ...) are refused.
    #[arg(short = 'X', long = "property", value_parser = property)]
    pub properties: Vec<(String, String)>,
    /// The payments' CDC topic (default: the reconciler's, dbserver1.public.payments).
    #[arg(long, env = "CDC_TOPIC")]
    pub cdc_topic: Option<String>,
    /// The payments' status topic (default: the reconciler's, payment-status-update).
    #[arg(long, env = "STATUS_TOPIC")]
    pub status_topic: Option<String>,
    /// The refunds' CDC topic (default: the reconciler's, dbserver1.public.refunds).
    #[arg(long, env = "REFUND_CDC_TOPIC")]
    pub refund_cdc_topic: Option<String>,
    /// The refunds' status topic (default: the reconciler's, refund-status-update).
    #[arg(long, env = "REFUND_STATUS_TOPIC")]
    pub refund_status_topic: Option<String>,
}

pub(crate) fn property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

impl TailArgs {
    /// The reconciler's Kafka settings from these arguments: its topic defaults, its
    /// handling of librdkafka properties (reserved ones refused).
    fn kafka(&self) -> anyhow::Result<KafkaConfig> {
        let mut cfg = json!({
            "brokers": self.brokers,
            "properties": self.properties.iter().cloned().collect::<BTreeMap<_, _>>(),
        });
        for (name, topic) in [
            ("cdc_topic", &self.cdc_topic),
            ("status_topic", &self.status_topic),
            ("refund_cdc_topic", &self.refund_cdc_topic),
            ("refund_status_topic", &self.refund_status_topic),
        ] {
            if let Some(t) = topic {
                cfg[name] = json!(t);
            }
        }
        serde_json::from_value(cfg).context("kafka settings")
    }
}

/// How a CDC record changed its row, from Debezium's `op` (or the null value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    /// `r`: a row as Debezium's snapshot read it, not a change of it.
    Snapshot,
    Delete,
    /// The null value after a delete.
    Tombstone,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Snapshot => "snapshot",
            Op::Delete => "delete",
            Op::Tombstone => "tombstone",
        }
    }

    /// The decoders tell snapshots, deletes and tombstones apart; `c` from `u` only the
    /// envelope's `op` does.
    fn of(upsert: Option<bool>, value: Option<&[u8]>) -> Op {
        #[derive(serde::Deserialize)]
        struct Raw {
            op: String,
        }
        match upsert {
            None if value.is_none() => Op::Tombstone,
            None => Op::Delete,
            Some(true) => Op::Snapshot,
            Some(false) => match value.and_then(|v| serde_json::from_slice::<Raw>(v).ok()) {
                Some(r) if r.op == "c" => Op::Insert,
                _ => Op::Update,
            },
        }
    }
}

/// What a record held.
// One record lives at a time (decoded, printed, dropped): its size is no concern.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Payment {
        op: Op,
        change: Change,
    },
    PaymentUpdate(StatusUpdate),
    Refund {
        op: Op,
        change: RefundChange,
    },
    RefundUpdate(RefundUpdate),
    /// The decoder's error, the key as text, and the value's size (`None`: no value).
    Undecodable {
        error: String,
        key: Option<String>,
        value_bytes: Option<usize>,
    },
}

/// One record: where it sits and what it held.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's Kafka timestamp.
    pub timestamp_ms: Option<i64>,
    pub body: Body,
}

/// Decodes a record of `stream`'s topic with the reconciler's decoder for it.
pub fn decode(stream: Stream, key: Option<&[u8]>, value: Option<&[u8]>) -> Body {
    let undecodable = |error: String| Body::Undecodable {
        error,
        key: key.map(|k| String::from_utf8_lossy(k).into_owned()),
        value_bytes: value.map(<[u8]>::len),
    };
    match stream {
        Stream::Cdc => match envelope::decode(key, value) {
            Ok(change) => {
                let upsert = match &change {
                    Change::Upsert { snapshot, .. } => Some(*snapshot),
                    _ => None,
                };
                Body::Payment {
                    op: Op::of(upsert, value),
                    change,
                }
            }
            Err(e) => undecodable(e.to_string()),
        },
        Stream::RefundCdc => match refund_envelope::decode(key, value) {
            Ok(change) => {
                let upsert = match &change {
                    RefundChange::Upsert { snapshot, .. } => Some(*snapshot),
                    _ => None,
                };
                Body::Refund {
                    op: Op::of(upsert, value),
                    change,
                }
            }
            Err(e) => undecodable(e.to_string()),
        },
        Stream::Status => match value.map(output::decode) {
            Some(Ok(u)) => Body::PaymentUpdate(u),
            Some(Err(e)) => undecodable(e.to_string()),
            None => undecodable("record has no value".into()),
        },
        Stream::RefundStatus => match value.map(refund_output::decode) {
            Some(Ok(u)) => Body::RefundUpdate(u),
            Some(Err(e)) => undecodable(e.to_string()),
            None => undecodable("record has no value".into()),
        },
    }
}

impl Body {
    /// The payment the record is about, when it says (a refund's delete or tombstone
    /// names only the refund).
    pub fn payment_id(&self) -> Option<Uuid> {
        match self {
            Body::Payment { change, .. } => Some(change.id()),
            Body::PaymentUpdate(u) => Some(u.payment_id),
            Body::Refund {
                change: RefundChange::Upsert { row, .. },
                ..
            } => Some(row.payment_id),
            Body::Refund { .. } | Body::Undecodable { .. } => None,
            Body::RefundUpdate(u) => Some(u.payment_id),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Body::Payment { .. } => "payment_change",
            Body::PaymentUpdate(_) => "payment_status_update",
            Body::Refund { .. } => "refund_change",
            Body::RefundUpdate(_) => "refund_status_update",
            Body::Undecodable { .. } => "undecodable",
        }
    }
}

/// `--payment`: which records to print.
pub struct Filter {
    payment: Option<Uuid>,
    /// The id as the topics spell it (Debezium's JSON and Avro's uuid: lowercase text).
    finder: Option<memmem::Finder<'static>>,
    /// The payments' CDC topic: its decoder checks that the key names the row, so a
    /// record of the payment has it in its key.
    key_only: bool,
}

impl Filter {
    pub fn new(stream: Stream, payment: Option<Uuid>) -> Filter {
        Filter {
            payment,
            finder: payment.map(|p| memmem::Finder::new(&p.to_string()).into_owned()),
            key_only: stream == Stream::Cdc,
        }
    }

    /// Before decoding: a record about the payment has its id in its key (the payments'
    /// topics are keyed by it) or its value (refund rows and updates carry it). Reading
    /// a large topic for one payment decodes only the few records that pass.
    pub fn may_match(&self, key: Option<&[u8]>, value: Option<&[u8]>) -> bool {
        let Some(finder) = &self.finder else {
            return true;
        };
        let names = |b: Option<&[u8]>| b.is_some_and(|b| finder.find(b).is_some());
        names(key) || (!self.key_only && names(value))
    }

    /// After decoding (of a record that `may_match`): a record naming the payment, or an
    /// undecodable one (which mentions it).
    pub fn keeps(&self, body: &Body) -> bool {
        match (self.payment, body.payment_id()) {
            (None, _) => true,
            (Some(id), Some(p)) => p == id,
            (Some(_), None) => matches!(body, Body::Undecodable { .. }),
        }
    }
}

fn time(ms: Option<i64>) -> Option<String> {
    ms.and_then(DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

/// The record as one JSON object: `kind`, where it sits, then the same keys for every
/// record of a kind (null where a record has no value for one).
pub fn to_json(e: &Entry) -> Value {
    let mut o = json!({
        "kind": e.body.kind(),
        "topic": e.topic,
        "partition": e.partition,
        "offset": e.offset,
        "timestamp": time(e.timestamp_ms),
        "payment_id": e.body.payment_id(),
    });
    let fields = match &e.body {
        Body::Payment { op, change } => {
            let (row, before, lsn, committed) = match change {
                Change::Upsert {
                    row,
                    before_status,
                    lsn,
                    commit_ts_ms,
                    ..
                } => (
                    Some(row),
                    before_status.as_deref(),
                    Some(*lsn),
                    Some(*commit_ts_ms),
                ),
                Change::Delete {
                    lsn, commit_ts_ms, ..
                } => (None, None, Some(*lsn), Some(*commit_ts_ms)),
                Change::Tombstone { .. } => (None, None, None, None),
            };
            json!({
                "op": op.as_str(),
                "status": row.map(|r| &r.status),
                "before_status": before,
                "amount": row.map(|r| r.amount),
                "currency": row.map(|r| &r.currency),
                "version": row.map(|r| r.version),
                "lsn": lsn,
                "committed_at": time(committed),
                "stripe_payment_intent_id": row.and_then(|r| r.stripe_payment_intent_id.as_deref()),
                "resolution_source": row.and_then(|r| r.resolution_source.as_deref()),
                "flagged": row.map(|r| r.flagged),
                "publishes_update": change.final_transition().is_some(),
            })
        }
        Body::Refund { op, change } => {
            let (id, row, before, lsn, committed) = match change {
                RefundChange::Upsert {
                    row,
                    before_status,
                    lsn,
                    commit_ts_ms,
                    ..
                } => (
                    row.id,
                    Some(row),
                    before_status.as_deref(),
                    Some(*lsn),
                    Some(*commit_ts_ms),
                ),
                RefundChange::Delete { id } | RefundChange::Tombstone { id } => {
                    (*id, None, None, None, None)
                }
            };
            json!({
                "op": op.as_str(),
                "refund_id": id,
                "status": row.map(|r| &r.status),
                "before_status": before,
                "amount": row.map(|r| r.amount),
                "currency": row.map(|r| &r.currency),
                "version": row.map(|r| r.version),
                "lsn": lsn,
                "committed_at": time(committed),
                "stripe_refund_id": row.and_then(|r| r.stripe_refund_id.as_deref()),
                "failure_reason": row.and_then(|r| r.failure_reason.as_deref()),
                "resolution_source": row.and_then(|r| r.resolution_source.as_deref()),
                "flagged": row.map(|r| r.flagged),
                "publishes_update": change.final_transition().is_some(),
            })
        }
        Body::PaymentUpdate(u) => json!({
            "status": u.status.as_str(),
            "amount": u.amount,
            "currency": u.currency,
            "version": u.version,
            "lsn": u.source_lsn,
            "committed_at": time(Some(u.committed_at_ms)),
            "stripe_payment_intent_id": u.stripe_payment_intent_id,
            "resolution_source": u.resolution_source,
        }),
        Body::RefundUpdate(u) => json!({
            "refund_id": u.refund_id,
            "status": u.status.as_str(),
            "previous_status": u.previous_status,
            "amount": u.amount,
            "currency": u.currency,
            "version": u.version,
            "lsn": u.source_lsn,
            "committed_at": time(Some(u.committed_at_ms)),
            "stripe_refund_id": u.stripe_refund_id,
            "failure_reason": u.failure_reason,
            "resolution_source": u.resolution_source,
        }),
        Body::Undecodable {
            error,
            key,
            value_bytes,
        } => json!({"error": error, "key": key, "value_bytes": value_bytes}),
    };
    if let (Value::Object(o), Value::Object(fields)) = (&mut o, fields) {
        o.extend(fields);
    }
    o
}

/// The table's columns: name and width (the last one is not padded).
const COLUMNS: [(&str, usize); 10] = [
    ("PART/OFFSET", 12),
    ("TIMESTAMP", 24),
    ("EVENT", 14),
    ("PAYMENT", 36),
    ("STATUS", 21),
    ("AMOUNT", 14),
    ("VERSION", 7),
    ("LSN", 12),
    ("SOURCE", 9),
    ("DETAIL", 0),
];

fn row(cells: [&str; 10]) -> String {
    let mut line = String::new();
    for (i, (cell, (_, width))) in cells.iter().zip(COLUMNS).enumerate() {
        if i + 1 == COLUMNS.len() {
            line.push_str(cell);
        } else {
            line.push_str(&format!("{cell:<width$} "));
        }
    }
    line.truncate(line.trim_end().len());
    line
}

pub fn table_header() -> String {
    row(COLUMNS.map(|(name, _)| name))
}

/// `pending -> succeeded`, or the status alone when it did not change.
fn transition(before: Option<&str>, now: &str) -> String {
    match before {
        Some(b) if b != now => format!("{b} -> {now}"),
        _ => now.to_owned(),
    }
}

/// A table line's cells after the payment's: `-` where a record has nothing to say.
struct Cells {
    event: String,
    status: String,
    amount: String,
    version: String,
    lsn: String,
    source: String,
    detail: String,
}

impl Cells {
    fn of(event: impl Into<String>) -> Cells {
        let dash = || "-".to_owned();
        Cells {
            event: event.into(),
            status: dash(),
            amount: dash(),
            version: dash(),
            lsn: dash(),
            source: dash(),
            detail: String::new(),
        }
    }

    /// Status, amount, version, LSN and source of a row or an update.
    #[allow(clippy::too_many_arguments)]
    fn with(
        mut self,
        before: Option<&str>,
        status: &str,
        amount: i64,
        currency: &str,
        version: i64,
        lsn: i64,
        source: Option<&str>,
    ) -> Cells {
        self.status = transition(before, status);
        self.amount = format!("{amount} {currency}");
        self.version = version.to_string();
        self.lsn = lsn.to_string();
        self.source = source.unwrap_or("-").to_owned();
        self
    }

    fn detail<S: AsRef<str>>(mut self, parts: impl IntoIterator<Item = Option<S>>) -> Cells {
        let parts: Vec<String> = parts
            .into_iter()
            .flatten()
            .map(|p| p.as_ref().to_owned())
            .collect();
        self.detail = parts.join(" ");
        self
    }
}

/// The record as one line of the table.
pub fn table_line(e: &Entry) -> String {
    let c = match &e.body {
        Body::Payment { op, change } => match change {
            Change::Upsert {
                row,
                before_status,
                lsn,
                ..
            } => Cells::of(op.as_str())
                .with(
                    before_status.as_deref(),
                    &row.status,
                    row.amount,
                    &row.currency,
                    row.version,
                    *lsn,
                    row.resolution_source.as_deref(),
                )
                .detail([
                    row.stripe_payment_intent_id.as_deref(),
                    row.flagged.then_some("flagged"),
                ]),
            Change::Delete { lsn, .. } => Cells {
                lsn: lsn.to_string(),
                ..Cells::of(op.as_str())
            },
            Change::Tombstone { .. } => Cells::of(op.as_str()),
        },
        Body::PaymentUpdate(u) => Cells::of("status-update")
            .with(
                None,
                u.status.as_str(),
                u.amount,
                &u.currency,
                u.version,
                u.source_lsn,
                u.resolution_source.as_deref(),
            )
            .detail([u.stripe_payment_intent_id.as_deref()]),
        Body::Refund { op, change } => {
            let event = format!("refund {}", op.as_str());
            match change {
                RefundChange::Upsert {
                    row,
                    before_status,
                    lsn,
                    ..
                } => Cells::of(event)
                    .with(
                        before_status.as_deref(),
                        &row.status,
                        row.amount,
                        &row.currency,
                        row.version,
                        *lsn,
                        row.resolution_source.as_deref(),
                    )
                    .detail([
                        Some(format!("refund {}", row.id)),
                        row.stripe_refund_id.clone(),
                        row.failure_reason.clone(),
                        row.flagged.then(|| "flagged".to_owned()),
                    ]),
                RefundChange::Delete { id } | RefundChange::Tombstone { id } => {
                    Cells::of(event).detail([Some(format!("refund {id}"))])
                }
            }
        }
        Body::RefundUpdate(u) => Cells::of("refund-update")
            .with(
                u.previous_status.as_deref(),
                u.status.as_str(),
                u.amount,
                &u.currency,
                u.version,
                u.source_lsn,
                u.resolution_source.as_deref(),
            )
            .detail([
                Some(format!("refund {}", u.refund_id)),
                u.stripe_refund_id.clone(),
                u.failure_reason.clone(),
            ]),
        Body::Undecodable {
            error,
            key,
            value_bytes,
        } => Cells::of("UNDECODABLE").detail([Some(format!(
            "{error} (key {}, value {})",
            key.as_deref()
                .map_or_else(|| "none".into(), |k| format!("{k:?}")),
            value_bytes.map_or_else(|| "none".into(), |n| format!("{n} bytes"))
        ))]),
    };
    row([
        &format!("{}/{}", e.partition, e.offset),
        &time(e.timestamp_ms).unwrap_or_else(|| "-".into()),
        &c.event,
        &e.body
            .payment_id()
            .map_or_else(|| "-".to_owned(), |p| p.to_string()),
        &c.status,
        &c.amount,
        &c.version,
        &c.lsn,
        &c.source,
        &c.detail,
    ])
}

pub fn line(e: &Entry, format: Format) -> String {
    match format {
        Format::Table => table_line(e),
        Format::Json => to_json(e).to_string(),
    }
}

/// What a tail read and printed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub read: u64,
    pub shown: u64,
}

/// Runs `paystream tail`, writing lines to `out`, until Ctrl-C, `--max` or
/// `--timeout-secs`.
pub async fn run(args: &TailArgs, out: &mut impl Write) -> anyhow::Result<Summary> {
    let kafka = args.kafka()?;
    let topic = match args.stream {
        Stream::Cdc => &kafka.cdc_topic,
        Stream::Status => &kafka.status_topic,
        Stream::RefundCdc => &kafka.refund_cdc_topic,
        Stream::RefundStatus => &kafka.refund_status_topic,
    }
    .clone();
    // A group of its own that is never joined nor committed to: partitions are assigned,
    // and no offset is ever stored.
    let group = format!("paystream-tail-{}", Uuid::now_v7());
    let consumer: StreamConsumer = kafka
        .client_config()
        .map_err(|KafkaConfigError::Reserved(name)| {
            anyhow::anyhow!(
                "-X {name}: the tail sets it itself (a throwaway group, nothing committed)"
            )
        })?
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set(
            "auto.offset.reset",
            if args.from_beginning {
                "earliest"
            } else {
                "latest"
            },
        )
        .set("fetch.wait.max.ms", "100")
        .create()
        .context("kafka consumer")?;
    let partitions = assign(&consumer, &topic, args.from_beginning)?;
    eprintln!(
        "tail {topic}: {partitions} partitions from {}{} (group {group}, nothing committed)",
        if args.from_beginning {
            "the beginning"
        } else {
            "the end"
        },
        args.payment
            .map(|p| format!(", payment {p}"))
            .unwrap_or_default()
    );
    let filter = Filter::new(args.stream, args.payment);
    let mut summary = Summary::default();
    if args.format == Format::Table && !write_line(out, &table_header())? {
        return Ok(summary);
    }
    let timeout = args.timeout_secs.map(Duration::from_secs);
    // Partitions read up to their end at least once: until all are, a backlog is being
    // read and any record keeps the tail alive.
    let mut at_end: HashSet<i32> = HashSet::new();
    let mut caught_up = !args.from_beginning;
    let mut last = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while args.max.is_none_or(|m| summary.shown < m) {
        let wait = timeout.map(|t| t.saturating_sub(last.elapsed()));
        if wait.is_some_and(|w| w.is_zero()) {
            break;
        }
        let next = async {
            match wait {
                Some(w) => tokio::time::timeout(w, consumer.recv()).await.ok(),
                None => Some(consumer.recv().await),
            }
        };
        let m = tokio::select! {
            _ = &mut ctrl_c => break,
            next = next => match next {
                None => break,
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                    caught_up |= at_end.len() >= partitions;
                    continue;
                }
                Some(Err(e)) => {
                    eprintln!("tail {topic}: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Some(Ok(m)) => m,
            },
        };
        summary.read += 1;
        if !caught_up {
            last = Instant::now();
        }
        if !filter.may_match(m.key(), m.payload()) {
            continue;
        }
        let body = decode(args.stream, m.key(), m.payload());
        if !filter.keeps(&body) {
            continue;
        }
        let entry = Entry {
            topic: topic.clone(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            body,
        };
        if !write_line(out, &line(&entry, args.format))? {
            break;
        }
        summary.shown += 1;
        last = Instant::now();
    }
    Ok(summary)
}

/// Writes one line; `false` when the reader went away (`| head`).
fn write_line(out: &mut impl Write, line: &str) -> anyhow::Result<bool> {
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Assigns every partition of `topic`, at its beginning or its current end; returns how
/// many there are.
fn assign(consumer: &StreamConsumer, topic: &str, from_beginning: bool) -> anyhow::Result<usize> {
    let wait = Duration::from_secs(10);
    let meta = consumer
        .fetch_metadata(Some(topic), wait)
        .with_context(|| format!("broker metadata for {topic}"))?;
    let partitions = meta.topics().first().map_or(0, |t| t.partitions().len());
    anyhow::ensure!(
        partitions > 0,
        "topic {topic} has no partitions: does it exist?"
    );
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        let offset = if from_beginning {
            Offset::Beginning
        } else {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, wait)
                .with_context(|| format!("the end of {topic}/{p}"))?;
            Offset::Offset(high)
        };
        tpl.add_partition_offset(topic, p, offset)?;
    }
    consumer.assign(&tpl)?;
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_core::{PaymentStatus, RefundStatus};

    const PAYMENT: &str = "01a20d3d-2b8e-77af-b35c-94d4138961c9";
    const OTHER: &str = "01a20d3d-2b8e-77af-b35c-000000000002";
    const REFUND: &str = "01a20d3d-2b8e-77af-b35c-000000000001";

    fn payment_row(id: &str, status: &str, version: i64) -> Value {
        json!({"id": id, "client_id": id, "idempotency_key": "k", "amount": 2000, "currency": "usd",
               "status": status, "stripe_payment_intent_id": "pi_1", "stripe_status": null, "last_error": null,
               "description": null, "customer_email": null, "metadata": "{}",
               "resolution_source": if status == "pending" { Value::Null } else { json!("webhook") },
               "version": version, "attention": null, "created_at": "2026-12-02T10:59:21.123456Z",
               "updated_at": "2026-12-02T10:59:21.123456Z", "resolved_at": null})
    }

    fn refund_row(status: &str, version: i64) -> Value {
        json!({"id": REFUND, "payment_id": PAYMENT, "requested_by": PAYMENT, "idempotency_key": "k",
               "amount": 500, "currency": "usd", "reason": null, "metadata": "{}", "status": status,
               "stripe_refund_id": "re_1", "stripe_status": status, "failure_reason": null,
               "resolution_source": null, "attention": null, "attention_at": null, "version": version,
               "created_at": "2026-12-02T10:59:21.123456Z", "updated_at": "2026-12-02T10:59:21.123456Z",
               "resolved_at": null})
    }

    fn envelope(op: &str, before: Value, after: Value) -> Vec<u8> {
        json!({"before": before, "after": after, "op": op, "ts_ms": 1_764_673_161_500_i64,
               "source": {"version": "3.1.1.Final", "connector": "postgresql", "lsn": 42,
                          "txId": 7, "ts_ms": 1_764_673_161_456_i64, "db": "paystream"}})
        .to_string()
        .into_bytes()
    }

    fn key(id: &str) -> Vec<u8> {
        json!({ "id": id }).to_string().into_bytes()
    }

    fn entry(body: Body) -> Entry {
        Entry {
            topic: "t".into(),
            partition: 2,
            offset: 17,
            timestamp_ms: Some(1_764_673_161_789),
            body,
        }
    }

    fn update(status: PaymentStatus) -> StatusUpdate {
        StatusUpdate {
            payment_id: PAYMENT.parse().unwrap(),
            status,
            amount: 2000,
            currency: "usd".into(),
            stripe_payment_intent_id: Some("pi_1".into()),
            resolution_source: Some("webhook".into()),
            version: 3,
            source_lsn: 42,
            committed_at_ms: 1_764_673_161_456,
        }
    }

    fn refund_update() -> RefundUpdate {
        RefundUpdate {
            refund_id: REFUND.parse().unwrap(),
            payment_id: PAYMENT.parse().unwrap(),
            status: RefundStatus::Failed,
            previous_status: Some("succeeded".into()),
            amount: 500,
            currency: "usd".into(),
            stripe_refund_id: Some("re_1".into()),
            failure_reason: Some("expired_or_canceled_card".into()),
            resolution_source: Some("poll".into()),
            version: 4,
            source_lsn: 99,
            committed_at_ms: 1_764_673_161_456,
        }
    }

    #[test]
    fn cdc_records_decode_with_their_op() {
        let k = key(PAYMENT);
        for (op, before, want) in [
            ("c", Value::Null, Op::Insert),
            ("u", payment_row(PAYMENT, "pending", 1), Op::Update),
            ("r", Value::Null, Op::Snapshot),
        ] {
            let v = envelope(op, before, payment_row(PAYMENT, "pending", 2));
            let Body::Payment { op: got, .. } = decode(Stream::Cdc, Some(&k), Some(&v)) else {
                panic!("{op} decodes")
            };
            assert_eq!(got, want, "{op}");
        }
        let d = envelope("d", payment_row(PAYMENT, "succeeded", 3), Value::Null);
        assert!(matches!(
            decode(Stream::Cdc, Some(&k), Some(&d)),
            Body::Payment { op: Op::Delete, .. }
        ));
        assert!(matches!(
            decode(Stream::Cdc, Some(&k), None),
            Body::Payment {
                op: Op::Tombstone,
                ..
            }
        ));
        let r = envelope("c", Value::Null, refund_row("pending", 1));
        let body = decode(Stream::RefundCdc, Some(&key(REFUND)), Some(&r));
        assert!(matches!(body, Body::Refund { op: Op::Insert, .. }));
        assert_eq!(body.payment_id(), Some(PAYMENT.parse().unwrap()));
    }

    #[test]
    fn status_updates_decode_in_both_framings() {
        let u = update(PaymentStatus::Succeeded);
        let single = output::encode(&u).unwrap();
        let framed = output::registry_framed(7, &single).unwrap();
        for bytes in [&single, &framed] {
            assert_eq!(
                decode(Stream::Status, None, Some(bytes)),
                Body::PaymentUpdate(u.clone())
            );
        }
        let r = refund_update();
        assert_eq!(
            decode(
                Stream::RefundStatus,
                None,
                Some(&refund_output::encode(&r).unwrap())
            ),
            Body::RefundUpdate(r)
        );
    }

    #[test]
    fn what_does_not_decode_is_shown_with_the_error() {
        let k = key(PAYMENT);
        let body = decode(Stream::Cdc, Some(&k), Some(b"not json"));
        let Body::Undecodable {
            error,
            key,
            value_bytes,
        } = &body
        else {
            panic!("{body:?}")
        };
        assert!(error.contains("not a Debezium envelope"), "{error}");
        assert_eq!(
            (key.as_deref(), *value_bytes),
            (Some(&*String::from_utf8(k.clone()).unwrap()), Some(8))
        );
        // A payment record on the refunds' topic, a refund update on the payments' status
        // topic, a status update without a value: each is undecodable, never a panic.
        let payment = envelope("c", Value::Null, payment_row(PAYMENT, "pending", 1));
        assert!(matches!(
            decode(Stream::RefundCdc, Some(&k), Some(&payment)),
            Body::Undecodable { .. }
        ));
        let refund = refund_output::encode(&refund_update()).unwrap();
        assert!(matches!(
            decode(Stream::Status, None, Some(&refund)),
            Body::Undecodable { .. }
        ));
        assert!(matches!(
            decode(Stream::RefundStatus, None, None),
            Body::Undecodable {
                value_bytes: None,
                ..
            }
        ));
        let line = table_line(&entry(body.clone()));
        assert!(line.starts_with("2/17 "), "{line}");
        assert!(
            line.contains("UNDECODABLE") && line.contains("not a Debezium envelope"),
            "{line}"
        );
        assert!(line.contains("8 bytes"), "{line}");
        let j = to_json(&entry(body));
        assert_eq!(j["kind"], "undecodable");
        assert_eq!(j["value_bytes"], 8);
        assert!(j["payment_id"].is_null());
    }

    #[test]
    fn the_payment_filter_keeps_its_records_and_drops_the_others() {
        let payment = Some(PAYMENT.parse().unwrap());
        let other = Some(OTHER.parse().unwrap());
        let keep = |stream, payment, k: &[u8], v: &[u8]| {
            let filter = Filter::new(stream, payment);
            filter.may_match(Some(k), Some(v)) && filter.keeps(&decode(stream, Some(k), Some(v)))
        };
        let mine = envelope("c", Value::Null, payment_row(PAYMENT, "pending", 1));
        let others = envelope("c", Value::Null, payment_row(OTHER, "pending", 1));
        assert!(keep(Stream::Cdc, payment, &key(PAYMENT), &mine));
        assert!(!keep(Stream::Cdc, payment, &key(OTHER), &others));
        assert!(keep(Stream::Cdc, None, &key(OTHER), &others));
        // Status updates: by the id in the key or the datum.
        let update = output::encode(&update(PaymentStatus::Succeeded)).unwrap();
        assert!(keep(Stream::Status, payment, b"", &update));
        assert!(keep(Stream::Status, payment, PAYMENT.as_bytes(), &update));
        assert!(!keep(Stream::Status, other, b"", &update));
        // Refunds (keyed by refund id) are kept by their payment.
        let refund = envelope("u", refund_row("pending", 1), refund_row("succeeded", 2));
        assert!(keep(Stream::RefundCdc, payment, &key(REFUND), &refund));
        assert!(!keep(Stream::RefundCdc, other, &key(REFUND), &refund));
        let refund_update = refund_output::encode(&refund_update()).unwrap();
        assert!(keep(Stream::RefundStatus, payment, b"", &refund_update));
        assert!(!keep(Stream::RefundStatus, other, b"", &refund_update));
        // A refund record naming the payment but not decoded as its (a delete names
        // only the refund) is not the payment's.
        let delete = envelope("d", refund_row("succeeded", 2), Value::Null);
        assert!(!keep(Stream::RefundCdc, payment, &key(REFUND), &delete));
        // Undecodable: kept when its key (its value, off the payments' CDC topic) names
        // the payment.
        assert!(keep(Stream::Cdc, payment, &key(PAYMENT), b"garbage"));
        assert!(!keep(Stream::Cdc, payment, &key(OTHER), b"garbage"));
        assert!(!keep(Stream::Cdc, payment, b"{}", &mine[..mine.len() - 1]));
        assert!(keep(
            Stream::Status,
            payment,
            b"",
            format!("\x01{PAYMENT}").as_bytes()
        ));
        assert!(!Filter::new(Stream::Status, payment).may_match(None, None));
        assert!(Filter::new(Stream::Status, None).may_match(None, None));
    }

    #[test]
    fn a_cdc_line_shows_the_transition_and_the_json_is_stable() {
        let v = envelope(
            "u",
            payment_row(PAYMENT, "pending", 1),
            payment_row(PAYMENT, "succeeded", 2),
        );
        let e = entry(decode(Stream::Cdc, Some(&key(PAYMENT)), Some(&v)));
        assert_eq!(
            table_line(&e),
            format!(
                "2/17         2025-12-02T10:59:21.789Z update         {PAYMENT} pending -> succeeded  \
                 2000 usd       2       42           webhook   pi_1"
            )
        );
        let j = to_json(&e);
        assert_eq!(
            j,
            json!({"kind": "payment_change", "topic": "t", "partition": 2, "offset": 17,
                   "timestamp": "2025-12-02T10:59:21.789Z", "payment_id": PAYMENT, "op": "update",
                   "status": "succeeded", "before_status": "pending", "amount": 2000, "currency": "usd",
                   "version": 2, "lsn": 42, "committed_at": "2025-12-02T10:59:21.456Z",
                   "stripe_payment_intent_id": "pi_1", "resolution_source": "webhook", "flagged": false,
                   "publishes_update": true})
        );
        // A tombstone has the same keys, null where it has nothing to say.
        let t = to_json(&entry(decode(Stream::Cdc, Some(&key(PAYMENT)), None)));
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&t), keys(&j));
        assert_eq!(
            (&t["op"], &t["status"], &t["lsn"]),
            (&json!("tombstone"), &Value::Null, &Value::Null)
        );
        let tl = table_line(&entry(decode(Stream::Cdc, Some(&key(PAYMENT)), None)));
        assert!(tl.contains("tombstone") && tl.contains(PAYMENT), "{tl}");
    }

    #[test]
    fn status_update_lines() {
        let e = entry(Body::PaymentUpdate(update(PaymentStatus::Succeeded)));
        assert_eq!(
            table_line(&e),
            format!(
                "2/17         2025-12-02T10:59:21.789Z status-update  {PAYMENT} succeeded             \
                 2000 usd       3       42           webhook   pi_1"
            )
        );
        assert_eq!(
            to_json(&e),
            json!({"kind": "payment_status_update", "topic": "t", "partition": 2, "offset": 17,
                   "timestamp": "2025-12-02T10:59:21.789Z", "payment_id": PAYMENT, "status": "succeeded",
                   "amount": 2000, "currency": "usd", "version": 3, "lsn": 42,
                   "committed_at": "2025-12-02T10:59:21.456Z", "stripe_payment_intent_id": "pi_1",
                   "resolution_source": "webhook"})
        );
        let r = entry(Body::RefundUpdate(refund_update()));
        let line = table_line(&r);
        assert!(
            line.contains("refund-update")
                && line.contains("succeeded -> failed")
                && line.contains(&format!("refund {REFUND} re_1 expired_or_canceled_card")),
            "{line}"
        );
        let j = to_json(&r);
        assert_eq!(
            (
                &j["kind"],
                &j["payment_id"],
                &j["refund_id"],
                &j["previous_status"]
            ),
            (
                &json!("refund_status_update"),
                &json!(PAYMENT),
                &json!(REFUND),
                &json!("succeeded")
            )
        );
    }

    #[test]
    fn refund_change_lines() {
        let v = envelope("u", refund_row("pending", 1), refund_row("succeeded", 2));
        let e = entry(decode(Stream::RefundCdc, Some(&key(REFUND)), Some(&v)));
        let line = table_line(&e);
        assert!(
            line.contains("refund update")
                && line.contains(PAYMENT)
                && line.contains("pending -> succeeded")
                && line.contains("500 usd"),
            "{line}"
        );
        let j = to_json(&e);
        assert_eq!(
            (&j["kind"], &j["refund_id"], &j["publishes_update"]),
            (&json!("refund_change"), &json!(REFUND), &json!(true))
        );
        let t = to_json(&entry(decode(Stream::RefundCdc, Some(&key(REFUND)), None)));
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&t), keys(&j));
        assert!(t["payment_id"].is_null());
    }

    #[test]
    fn the_header_lines_up_with_the_rows() {
        let header = table_header();
        let e = entry(Body::PaymentUpdate(update(PaymentStatus::Canceled)));
        let line = table_line(&e);
        for name in [
            "TIMESTAMP",
            "EVENT",
            "PAYMENT",
            "STATUS",
            "AMOUNT",
            "VERSION",
            "LSN",
            "SOURCE",
            "DETAIL",
        ] {
            let at = header.find(name).unwrap();
            assert_eq!(&line[at - 1..at], " ", "{name} starts a column: {line}");
            assert_ne!(&line[at..at + 1], " ", "{name}: {line}");
        }
    }

    #[test]
    fn properties_are_name_value() {
        assert_eq!(
            property("sasl.username=a=b").unwrap(),
            ("sasl.username".into(), "a=b".into())
        );
        assert!(property("nothing").is_err());
        assert!(property("=x").is_err());
    }

    #[test]
    fn topics_default_to_the_reconcilers_and_reserved_properties_are_refused() {
        let args = |properties: &[(&str, &str)], status_topic: Option<&str>| TailArgs {
            stream: Stream::Status,
            from_beginning: false,
            payment: None,
            format: Format::Table,
            max: None,
            timeout_secs: None,
            brokers: "b:9092".into(),
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            cdc_topic: None,
            status_topic: status_topic.map(str::to_owned),
            refund_cdc_topic: None,
            refund_status_topic: None,
        };
        let k = args(&[], None).kafka().unwrap();
        assert_eq!(
            (
                k.cdc_topic.as_str(),
                k.status_topic.as_str(),
                k.refund_cdc_topic.as_str(),
                k.refund_status_topic.as_str()
            ),
            (
                "dbserver1.public.payments",
                "payment-status-update",
                "dbserver1.public.refunds",
                "refund-status-update"
            )
        );
        let k = args(&[("security.protocol", "SSL")], Some("mine"))
            .kafka()
            .unwrap();
        assert_eq!(k.status_topic, "mine");
        let client = k.client_config().unwrap();
        assert_eq!(
            (
                client.get("security.protocol"),
                client.get("bootstrap.servers")
            ),
            (Some("SSL"), Some("b:9092"))
        );
        for reserved in ["group.id", "enable.auto.commit", "auto.offset.reset"] {
            assert!(
                args(&[(reserved, "x")], None)
                    .kafka()
                    .unwrap()
                    .client_config()
                    .is_err(),
                "{reserved}"
            );
        }
    }

    #[test]
    fn the_command_line_parses() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            tail: TailArgs,
        }
        let cli = Cli::try_parse_from([
            "paystream",
            "refund-status",
            "--brokers",
            "b:1",
            "--from-beginning",
            "--payment",
            PAYMENT,
            "--format",
            "json",
            "--max",
            "3",
            "--timeout-secs",
            "5",
            "-X",
            "a.b=c",
            "--refund-status-topic",
            "r",
        ])
        .unwrap()
        .tail;
        assert_eq!(
            (
                cli.stream,
                cli.from_beginning,
                cli.payment,
                cli.format,
                cli.max,
                cli.timeout_secs
            ),
            (
                Stream::RefundStatus,
                true,
                Some(PAYMENT.parse().unwrap()),
                Format::Json,
                Some(3),
                Some(5)
            )
        );
        assert_eq!(cli.properties, [("a.b".to_owned(), "c".to_owned())]);
        assert_eq!(cli.kafka().unwrap().refund_status_topic, "r");
        assert!(Cli::try_parse_from(["paystream", "nope", "--brokers", "b:1"]).is_err());
    }
}
