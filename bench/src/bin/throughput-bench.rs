//! Reconciler throughput: a pre-filled CDC topic of N changes (default 1,000,000: half
//! inserts of pending payments, half their final updates, Debezium's JSON shape) read
//! from the beginning by a consumer that decodes each change and applies it to the
//! per-partition state, against the floor of a consumer that only counts the same
//! messages. Same broker, same run, median of several runs. First, the same decode +
//! apply over up to 200,000 changes held in memory, against serde_json merely scanning
//! the same bytes: the reconciler's own CPU per change, no broker competing for the core;
//! once for records of every column (Debezium's default), once for the connector's
//! `column.include.list`.
//!
//!   throughput-bench <brokers> [changes] [runs] [seconds per pass, default 20]
//!   throughput-bench --in-memory [changes] [runs]      (decode + apply only, no broker)
//!
//! The topic (`bench-cdc-v2-<changes>`: records of the connector's columns) is filled
//! once and kept.
#![allow(
    clippy::print_stdout,
    clippy::float_arithmetic,
    clippy::cast_precision_loss
)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use paystream_reconciler::envelope::{self, Reading};
use paystream_reconciler::schedule::Schedule;
use paystream_reconciler::state::PendingState;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::json;
use uuid::Uuid;

const PARTITIONS: i32 = 4;

/// Which columns of `payments` the records carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Columns {
    /// What Debezium writes with no column list: every column of the table.
    Every,
    /// What the stack's connector writes: its `column.include.list` (debezium/connector.json).
    Connector,
}

fn row(
    id: Uuid,
    status: &str,
    version: i64,
    source: Option<&str>,
    columns: Columns,
) -> serde_json::Value {
    let mut row = json!({"id": id, "client_id": id, "amount": 1250, "currency": "usd",
           "status": status, "stripe_payment_intent_id": format!("pi_{}", id.simple()),
           "resolution_source": source, "version": version,
           "created_at": "2026-11-24T10:59:21.123456Z", "attention": null});
    if columns == Columns::Every {
        let rest = json!({"idempotency_key": format!("order-{id}"), "stripe_status": null,
           "last_error": null, "description": null, "customer_email": null, "metadata": "{}",
           "updated_at": "2026-11-24T10:59:21.123456Z", "resolved_at": null, "attention_at": null,
           "capture_method": "automatic", "amount_captured": null, "amount_refunded": 0});
        if let (Some(row), serde_json::Value::Object(rest)) = (row.as_object_mut(), rest) {
            row.extend(rest);
        }
    }
    row
}

/// One value with the fields Debezium 3.1's JSON converter writes (no schemas), source
/// block and all: the fields the reconciler skips cost decoding time too. (Their order is
/// serde_json's, alphabetical, not Debezium's; a decoder matches keys by name either way.)
fn envelope(op: &str, before: serde_json::Value, after: serde_json::Value, lsn: i64) -> String {
    let now = chrono::Utc::now();
    let (ms, us) = (now.timestamp_millis(), now.timestamp_micros());
    json!({"before": before, "after": after,
           "source": {"version": "3.1.1.Final", "connector": "postgresql", "name": "dbserver1",
                      "ts_ms": ms, "snapshot": "false", "db": "paystream",
                      "sequence": format!("[\"{}\",\"{lsn}\"]", lsn - 1), "ts_us": us, "ts_ns": us * 1000,
                      "schema": "public", "table": "payments", "txId": lsn, "lsn": lsn, "xmin": null},
           "transaction": null, "op": op, "ts_ms": ms, "ts_us": us, "ts_ns": us * 1000})
    .to_string()
}

/// `pairs` payments as Debezium writes them: each one's key, its insert as pending and its
/// update to succeeded.
fn changes(pairs: i64, columns: Columns) -> impl Iterator<Item = (String, [String; 2])> {
    (0..pairs).map(move |i| {
        let id = Uuid::now_v7();
        let insert = envelope(
            "c",
            serde_json::Value::Null,
            row(id, "pending", 1, None, columns),
            2 * i,
        );
        let update = envelope(
            "u",
            row(id, "pending", 1, None, columns),
            row(id, "succeeded", 2, Some("webhook"), columns),
            2 * i + 1,
        );
        (json!({"id": id}).to_string(), [insert, update])
    })
}

/// Decode + apply over changes held in memory, `runs` passes: the reconciler's own CPU
/// per change, with no broker or consumer threads competing for the core. Its floor in
/// the same run: serde_json only scanning the same bytes, keeping nothing; its baseline:
/// the same decode with serde_json alone. Each figure is the median pass and, because
/// the machine's other tenants slow whole seconds of a pass, also the fastest stretch of
/// `CHUNK` changes over all passes.
fn in_memory(n: i64, runs: usize, columns: Columns) -> anyhow::Result<()> {
    let messages: Vec<(i32, String, String)> = changes(n / 2, columns)
        .enumerate()
        .flat_map(|(i, (key, values))| {
            let partition = (i % PARTITIONS as usize) as i32;
            values.map(|v| (partition, key.clone(), v))
        })
        .collect();
    anyhow::ensure!(!messages.is_empty(), "no changes to decode");
    let schedule = Schedule::default();
    let mut figures: [Timings; 4] = Default::default();
    let [decode, decode_only, serde_only, scan] = &mut figures;
    for _ in 0..runs {
        let mut states: HashMap<i32, PendingState> = HashMap::new();
        decode.pass(&messages, |(partition, key, value)| {
            let change = envelope::decode(Some(key.as_bytes()), Some(value.as_bytes()))?;
            states
                .entry(*partition)
                .or_default()
                .apply(&change, &schedule);
            Ok(())
        })?;
        let left: usize = states.values().map(PendingState::len).sum();
        anyhow::ensure!(
            left == 0,
            "{left} payments still pending after their final updates"
        );
        decode_only.pass(&messages, |(_, key, value)| {
            std::hint::black_box(envelope::decode(
                Some(key.as_bytes()),
                Some(value.as_bytes()),
            )?);
            Ok(())
        })?;
        serde_only.pass(&messages, |(_, key, value)| {
            std::hint::black_box(envelope::decode_with(
                Reading::SerdeOnly,
                Some(key.as_bytes()),
                Some(value.as_bytes()),
            )?);
            Ok(())
        })?;
        scan.pass(&messages, |(_, key, value)| {
            let _: serde::de::IgnoredAny = serde_json::from_slice(key.as_bytes())?;
            let _: serde::de::IgnoredAny = serde_json::from_slice(value.as_bytes())?;
            Ok(())
        })?;
    }
    let [d, o, s, f] = figures.map(|t| t.figures());
    println!(
        "decode + apply in memory, {} changes, {} bytes each on average ({columns:?} columns), {runs} passes, us/change as median pass / best {CHUNK}-change stretch: \
         decode + apply {:.2} / {:.2}; decode alone {:.2} / {:.2}; with serde_json alone {:.2} / {:.2} ({:.2}x / {:.2}x); \
         serde_json scanning the same bytes {:.2} / {:.2}",
        messages.len(),
        messages
            .iter()
            .map(|(_, k, v)| k.len() + v.len())
            .sum::<usize>()
            / messages.len(),
        d.0,
        d.1,
        o.0,
        o.1,
        s.0,
        s.1,
        s.0 / o.0,
        s.1 / o.1,
        f.0,
        f.1,
    );
    Ok(())
}

/// Changes timed together: short enough that some stretches run undisturbed.
const CHUNK: usize = 2_000;

/// One figure's passes: each pass's µs per change, and the fastest stretch seen.
#[derive(Default)]
struct Timings {
    passes: Vec<f64>,
    best: Option<f64>,
}

impl Timings {
    fn pass<T>(
        &mut self,
        messages: &[T],
        mut work: impl FnMut(&T) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut total = Duration::ZERO;
        for chunk in messages.chunks(CHUNK) {
            let t = Instant::now();
            for message in chunk {
                work(message)?;
            }
            let elapsed = t.elapsed();
            total += elapsed;
            let per_change = elapsed.as_secs_f64() * 1e6 / chunk.len() as f64;
            self.best = Some(self.best.map_or(per_change, |b| b.min(per_change)));
        }
        self.passes
            .push(total.as_secs_f64() * 1e6 / messages.len() as f64);
        Ok(())
    }

    /// (median pass, best stretch), in µs per change.
    fn figures(mut self) -> (f64, f64) {
        self.passes.sort_by(f64::total_cmp);
        (
            self.passes[self.passes.len() / 2],
            self.best.unwrap_or(f64::NAN),
        )
    }
}

/// Messages in the topic now (sum of high watermarks).
fn size(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<i64> {
    let mut total = 0;
    for p in 0..PARTITIONS {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        total += high;
    }
    Ok(total)
}

async fn fill(config: &ClientConfig, topic: &str, n: i64) -> anyhow::Result<()> {
    let admin: AdminClient<_> = config.create()?;
    let _ = admin
        .create_topics(
            &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?;
    let probe: BaseConsumer = config
        .clone()
        .set("group.id", "throughput-bench-probe")
        .create()?;
    let have = size(&probe, topic).unwrap_or(0);
    if have >= n {
        return Ok(());
    }
    println!("filling {topic} with {} changes", n - have);
    let producer: FutureProducer = config
        .clone()
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let started = Instant::now();
    let mut pending = Vec::new();
    for (key, values) in changes((n - have) / 2, Columns::Connector) {
        for value in values {
            let record = FutureRecord::to(topic).key(&key).payload(&value);
            pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
        }
        if pending.len() >= 50_000 {
            for f in pending.drain(..) {
                f.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for f in pending {
        f.await?.map_err(|(e, _)| e)?;
    }
    println!("filled in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// One pass over the topic from its beginning, for `window` at most (the broker delivers
/// about 12,000 messages a second, so a whole 1 M pass takes over a minute); with `apply`,
/// decodes each change and applies it to its partition's state.
struct Pass {
    per_sec: f64,
    /// Time spent decoding and applying, per message.
    work_us: f64,
}

fn read_all(
    config: &ClientConfig,
    topic: &str,
    total: i64,
    apply: bool,
    window: Duration,
) -> anyhow::Result<Pass> {
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", format!("throughput-bench-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let schedule = Schedule::default();
    let mut states: HashMap<i32, PendingState> = HashMap::new();
    let mut seen = 0i64;
    let mut work = Duration::ZERO;
    let started = Instant::now();
    while seen < total && started.elapsed() < window {
        let Some(msg) = consumer.poll(Duration::from_secs(5)) else {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(900),
                "stalled at {seen}"
            );
            continue;
        };
        let msg = msg?;
        if apply {
            let t = Instant::now();
            let change = envelope::decode(msg.key(), msg.payload())?;
            states
                .entry(msg.partition())
                .or_default()
                .apply(&change, &schedule);
            work += t.elapsed();
        }
        seen += 1;
    }
    let per_sec = seen as f64 / started.elapsed().as_secs_f64();
    if apply && seen == total {
        let left: usize = states.values().map(PendingState::len).sum();
        anyhow::ensure!(
            left == 0,
            "{left} payments still pending after their final updates"
        );
    }
    Ok(Pass {
        per_sec,
        work_us: work.as_secs_f64() * 1e6 / seen.max(1) as f64,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let brokers = args
        .get(1)
        .context("usage: throughput-bench BROKERS|--in-memory [N] [RUNS] [SECS]")?;
    let n: i64 = args.get(2).map_or(Ok(1_000_000), |s| s.parse())?;
    let runs: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;
    let window_secs: u64 = args.get(4).map_or(Ok(20), |s| s.parse())?;
    for columns in [Columns::Every, Columns::Connector] {
        in_memory(n.min(200_000), runs.max(3), columns)?;
    }
    if brokers == "--in-memory" {
        return Ok(());
    }
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    // The shape is in the name: a topic filled by an older shape is not reused.
    let topic = format!("bench-cdc-v2-{n}");
    fill(&config, &topic, n).await?;
    let probe: BaseConsumer = config
        .clone()
        .set("group.id", "throughput-bench-probe")
        .create()?;
    let total = size(&probe, &topic)?;

    let window = Duration::from_secs(window_secs);
    let mut counting = Vec::new();
    let mut applying = Vec::new();
    let mut work = Vec::new();
    for run in 0..runs {
        let c = read_all(&config, &topic, total, false, window)?;
        let a = read_all(&config, &topic, total, true, window)?;
        println!(
            "run {run}: counting consumer {:.0} msg/s, decode + apply {:.0} msg/s ({:.1} us of work per message)",
            c.per_sec, a.per_sec, a.work_us
        );
        counting.push(c.per_sec);
        applying.push(a.per_sec);
        work.push(a.work_us);
    }
    for v in [&mut counting, &mut applying, &mut work] {
        v.sort_by(f64::total_cmp);
    }
    let (c, a, w) = (counting[runs / 2], applying[runs / 2], work[runs / 2]);
    println!(
        "reconciler throughput on a {total}-change topic ({window_secs} s passes): decode + apply {a:.0} msg/s; \
         counting consumer {c:.0} msg/s; ratio {:.2}; decode + apply alone {w:.1} us/message (= {:.0} msg/s of one core)",
        a / c,
        1e6 / w
    );
    Ok(())
}
