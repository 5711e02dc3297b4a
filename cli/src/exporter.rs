//! `paystream exporter`: Prometheus metrics for the parts of the pipeline that have no
//! `/metrics` of their own (Kafka Connect, Postgres replication, the payments backlog,
//! the reconciler's consumer groups as the broker sees them).
//!
//! Everything is read when Prometheus scrapes, each source under its own deadline and
//! concurrently: a source that fails or hangs shows as `paystream_exporter_source_up 0`
//! (with what it did read) and never holds back the others. Label values only ever come
//! from bounded sets (connector, task, slot, replica, group and topic names); an error's
//! text goes to stderr, once per change of state, never into a label.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use paystream_db::{Primary, Replica};
use paystream_reconciler::config::{KafkaConfig, KafkaConfigError};
use paystream_service::metrics::{ProcessCollector, register_build_info};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::json;

#[derive(clap::Args)]
pub struct ExporterArgs {
    /// Where to serve `/metrics` (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:9187")]
    pub listen: SocketAddr,
    /// The primary (replication slots and walsenders; nothing else is read there).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// A read replica, e.g. nginx's replica port: the payments backlog is read there.
    #[arg(long, env = "REPLICA_URL", hide_env_values = true)]
    pub replica_url: String,
    /// Kafka Connect's REST API.
    #[arg(long, env = "KAFKA_CONNECT_URL", hide_env_values = true)]
    pub kafka_connect_url: String,
    /// Kafka's bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: String,
    /// A librdkafka setting, `NAME=VALUE` (TLS, SASL, ...); repeatable. Those the
    /// exporter's own reading rests on (`group.id`, `enable.auto.commit`, ...) are refused.
    #[arg(short = 'X', long = "property", value_parser = crate::tail::property)]
    pub properties: Vec<(String, String)>,
    /// A consumer group whose lag to show; repeatable. Its offsets are only read: the
    /// exporter never joins the group nor commits.
    #[arg(
        long = "consumer-group",
        default_values = ["paystream-reconciler", "paystream-reconciler-refunds"]
    )]
    pub consumer_groups: Vec<String>,
    /// A topic the groups' lag is measured on; repeatable (default: --cdc-topic and
    /// --refund-cdc-topic).
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// The payments' CDC topic (a default --topic).
    #[arg(long, env = "CDC_TOPIC", default_value = "dbserver1.public.payments")]
    pub cdc_topic: String,
    #[arg(
        long,
        env = "REFUND_CDC_TOPIC",
        default_value = "dbserver1.public.refunds"
    )]
    pub refund_cdc_topic: String,
    /// A payment pending longer than this counts in `paystream_payments_pending_stuck`
    /// (as `paystream report`'s `stuck_pending`).
    #[arg(long, default_value = "1h")]
    pub stuck_after: String,
    /// How long one source (Connect, primary, replica, Kafka) may take per scrape.
    #[arg(long, default_value = "5s")]
    pub source_timeout: String,
}

/// Every metric exposed: name and help, in the order they are rendered.
const METRICS: &[(&str, &str)] = &[
    (
        "paystream_connect_up",
        "Whether Kafka Connect's REST API answered the list of connectors (1) or not (0).",
    ),
    (
        "paystream_connect_connector_running",
        "Whether the connector is RUNNING (1) or in another state (0).",
    ),
    (
        "paystream_connect_task_running",
        "Whether the connector's task is RUNNING (1) or in another state (0).",
    ),
    (
        "paystream_pg_replication_slot_retained_wal_bytes",
        "WAL the slot keeps on the primary: pg_current_wal_lsn() - restart_lsn.",
    ),
    (
        "paystream_pg_replication_slot_active",
        "Whether a consumer is attached to the slot (1) or not (0).",
    ),
    (
        "paystream_pg_replica_lag_seconds",
        "Replay lag of a streaming replica (pg_stat_replication.replay_lag; 0 when caught up and idle).",
    ),
    (
        "paystream_pg_replicas_streaming",
        "Physical replicas streaming from the primary.",
    ),
    (
        "paystream_payments_pending_oldest_age_seconds",
        "Age of the oldest pending payment not flagged for an operator (0 when none), read from a replica.",
    ),
    (
        "paystream_payments_pending_stuck",
        "Pending payments not flagged for an operator older than --stuck-after.",
    ),
    (
        "paystream_payments_needing_attention",
        "Payments flagged for an operator (paystream attention list), whatever their status.",
    ),
    (
        "paystream_refunds_pending_oldest_age_seconds",
        "Age of the oldest pending refund not flagged for an operator (0 when none), read from a replica.",
    ),
    (
        "paystream_refunds_pending_stuck",
        "Pending refunds not flagged for an operator older than --stuck-after.",
    ),
    (
        "paystream_refunds_needing_attention",
        "Refunds flagged for an operator, whatever their status.",
    ),
    (
        "paystream_kafka_consumer_group_lag",
        "Records of the topic the group has not committed: the sum over partitions of the high watermark minus the committed offset (the low watermark where none is committed).",
    ),
    (
        "paystream_exporter_source_up",
        "Whether everything the exporter reads from the source was read within its timeout (1) or not (0).",
    ),
    (
        "paystream_exporter_scrape_duration_seconds",
        "How long this scrape took to read every source.",
    ),
];

/// One sample: a metric of `METRICS`, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

fn sample(name: &'static str, labels: &[(&'static str, &str)], value: f64) -> Sample {
    Sample {
        name,
        labels: labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        value,
    }
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// The samples of one scrape, as a `prometheus-client` collector: every metric is a
/// gauge; HELP and TYPE once per metric, before its samples, in `METRICS` order; metrics
/// without samples are left out.
#[derive(Debug)]
struct Scraped(Vec<Sample>);

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for (name, help) in METRICS {
            let mut mine = self.0.iter().filter(|s| s.name == *name).peekable();
            if mine.peek().is_none() {
                continue;
            }
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for s in mine {
                ConstGauge::new(s.value).encode(metric.encode_family(&s.labels)?)?;
            }
        }
        Ok(())
    }
}

/// The text exposition format (0.0.4) of `samples` after what `registry` holds.
fn render_with(mut registry: Registry, samples: &[Sample]) -> String {
    registry.register_collector(Box::new(Scraped(samples.to_vec())));
    let mut out = String::new();
    if let Err(e) = prometheus_text::encode(&mut out, &registry) {
        // Only a failing writer errs, and a String's never does.
        eprintln!("exporter: encoding metrics failed: {e}");
    }
    out
}

/// Runs the exporter until Ctrl-C.
pub async fn run(args: ExporterArgs) -> anyhow::Result<()> {
    let parse = |flag: &str, s: &str| -> anyhow::Result<Duration> {
        paystream_report::window::duration(s)
            .ok()
            .and_then(|d| d.to_std().ok())
            .with_context(|| format!("--{flag} {s}: not a duration like 30s, 5m, 1h"))
    };
    let timeout = parse("source-timeout", &args.source_timeout)?;
    anyhow::ensure!(!timeout.is_zero(), "--source-timeout must be more than 0s");
    let topics = if args.topics.is_empty() {
        vec![args.cdc_topic.clone(), args.refund_cdc_topic.clone()]
    } else {
        args.topics.clone()
    };
    let connect_url =
        reqwest::Url::parse(&args.kafka_connect_url).context("--kafka-connect-url")?;
    anyhow::ensure!(
        !connect_url.cannot_be_a_base(),
        "--kafka-connect-url must be an http(s) URL"
    );
    let exporter = Exporter {
        connect: Connect {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .context("http client")?,
            base: connect_url,
        },
        // Lazy: the exporter starts (and reports the primary down) while it is down.
        primary: Primary::connect_lazy(&args.database_url, 2).context("primary")?,
        replica: Replica::new(&args.replica_url, 2).context("replica")?,
        kafka: Arc::new(Kafka::new(&args, topics)?),
        stuck_after: parse("stuck-after", &args.stuck_after)?,
        timeout,
        up: Mutex::new(HashMap::new()),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    eprintln!(
        "exporter listening on http://{}/metrics",
        listener.local_addr()?
    );
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .with_state(Arc::new(exporter));
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving /metrics")?;
    Ok(())
}

/// The scrape's samples, and the exporter's own build and process. The Prometheus text
/// format rather than OpenMetrics: every sample is a gauge, so nothing is lost.
async fn metrics(State(exporter): State<Arc<Exporter>>) -> impl IntoResponse {
    let mut registry = Registry::default();
    register_build_info(&mut registry, "exporter", env!("CARGO_PKG_VERSION"));
    registry.register_collector(Box::new(ProcessCollector));
    (
        [(CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        render_with(registry, &exporter.scrape().await),
    )
}

struct Exporter {
    connect: Connect,
    primary: Primary,
    replica: Replica,
    kafka: Arc<Kafka>,
    stuck_after: Duration,
    timeout: Duration,
    /// Each source's last state, so that a failure is logged when it starts (and its end
    /// when it ends), not at every scrape.
    up: Mutex<HashMap<&'static str, bool>>,
}

impl Exporter {
    async fn scrape(&self) -> Vec<Sample> {
        let started = Instant::now();
        let t = self.timeout;
        let connect = async {
            let mut out = Vec::new();
            let r = within(t, self.connect.collect(&mut out)).await;
            if !out.iter().any(|s| s.name == "paystream_connect_up") {
                out.push(sample("paystream_connect_up", &[], 0.0));
            }
            (out, r)
        };
        let primary = async {
            let mut out = Vec::new();
            let r = within(t, primary(&self.primary, &mut out)).await;
            (out, r)
        };
        let replica = async {
            let mut out = Vec::new();
            let r = within(t, replica(&self.replica, self.stuck_after, &mut out)).await;
            (out, r)
        };
        let kafka = async {
            let kafka = Arc::clone(&self.kafka);
            let deadline = Instant::now() + t;
            // librdkafka's calls block: they run on the blocking pool, each bounded by
            // what is left of the deadline, so a dead broker never pins a thread long.
            let job = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                let r = kafka.collect(deadline, &mut out);
                (out, r)
            });
            match tokio::time::timeout(t + Duration::from_millis(500), job).await {
                Ok(Ok(collected)) => collected,
                Ok(Err(e)) => (
                    Vec::new(),
                    Err(anyhow::anyhow!("kafka lookup panicked: {e}")),
                ),
                Err(_) => (Vec::new(), Err(anyhow::anyhow!("timed out after {t:?}"))),
            }
        };
        let (connect, primary, replica, kafka) = tokio::join!(connect, primary, replica, kafka);
        let mut samples = Vec::new();
        for (source, (out, result)) in [
            ("connect", connect),
            ("primary", primary),
            ("replica", replica),
            ("kafka", kafka),
        ] {
            samples.extend(out);
            self.note(source, &result);
            samples.push(sample(
                "paystream_exporter_source_up",
                &[("source", source)],
                flag(result.is_ok()),
            ));
        }
        samples.push(sample(
            "paystream_exporter_scrape_duration_seconds",
            &[],
            started.elapsed().as_secs_f64(),
        ));
        samples
    }

    fn note(&self, source: &'static str, result: &anyhow::Result<()>) {
        let mut up = self.up.lock().unwrap_or_else(|e| e.into_inner());
        let was = up.insert(source, result.is_ok());
        match result {
            Err(e) if was != Some(false) => eprintln!("exporter: source {source} down: {e:#}"),
            Ok(()) if was == Some(false) => eprintln!("exporter: source {source} up again"),
            _ => {}
        }
    }
}

async fn within(
    t: Duration,
    f: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tokio::time::timeout(t, f)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {t:?}")))
}

struct Connect {
    http: reqwest::Client,
    base: reqwest::Url,
}

#[derive(Deserialize)]
struct ConnectorStatus {
    connector: ConnectorState,
    #[serde(default)]
    tasks: Vec<TaskStatus>,
}

#[derive(Deserialize)]
struct ConnectorState {
    state: String,
}

#[derive(Deserialize)]
struct TaskStatus {
    id: u32,
    state: String,
}

impl Connect {
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &[&str]) -> anyhow::Result<T> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("--kafka-connect-url cannot take a path"))?
            .pop_if_empty()
            .extend(path);
        let what = path.join("/");
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| http_error(&what, e))?
            .error_for_status()
            .map_err(|e| http_error(&what, e))?;
        response.json().await.map_err(|e| http_error(&what, e))
    }

    /// `connect_up` from the list of connectors; a connector whose status cannot be read
    /// is left out, and makes the source down.
    async fn collect(&self, out: &mut Vec<Sample>) -> anyhow::Result<()> {
        let names: Vec<String> = match self.get(&["connectors"]).await {
            Ok(names) => names,
            Err(e) => {
                out.push(sample("paystream_connect_up", &[], 0.0));
                return Err(e);
            }
        };
        out.push(sample("paystream_connect_up", &[], 1.0));
        let mut failed = None;
        for name in &names {
            let status: ConnectorStatus = match self.get(&["connectors", name, "status"]).await {
                Ok(s) => s,
                Err(e) => {
                    failed = failed.or(Some(e));
                    continue;
                }
            };
            out.push(sample(
                "paystream_connect_connector_running",
                &[("connector", name)],
                flag(status.connector.state == "RUNNING"),
            ));
            for task in &status.tasks {
                out.push(sample(
                    "paystream_connect_task_running",
                    &[("connector", name), ("task", &task.id.to_string())],
                    flag(task.state == "RUNNING"),
                ));
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// reqwest's errors carry the URL, which may hold Connect's credentials: it goes.
fn http_error(what: &str, e: reqwest::Error) -> anyhow::Error {
    anyhow::Error::new(e.without_url()).context(format!("kafka connect GET {what}"))
}

async fn primary(db: &Primary, out: &mut Vec<Sample>) -> anyhow::Result<()> {
    use paystream_db::health;
    for slot in health::replication_slots(db).await? {
        let labels = [("slot", slot.name.as_str())];
        if let Some(bytes) = slot.retained_wal_bytes {
            out.push(sample(
                "paystream_pg_replication_slot_retained_wal_bytes",
                &labels,
                bytes as f64,
            ));
        }
        out.push(sample(
            "paystream_pg_replication_slot_active",
            &labels,
            flag(slot.active),
        ));
    }
    let replicas = health::streaming_replicas(db).await?;
    for r in &replicas {
        out.push(sample(
            "paystream_pg_replica_lag_seconds",
            &[("replica", &r.name)],
            r.replay_lag.as_secs_f64(),
        ));
    }
    out.push(sample(
        "paystream_pg_replicas_streaming",
        &[],
        replicas.len() as f64,
    ));
    Ok(())
}

async fn replica(
    replica: &Replica,
    stuck_after: Duration,
    out: &mut Vec<Sample>,
) -> anyhow::Result<()> {
    let (payments, refunds) = paystream_db::replica::backlogs(replica, stuck_after).await?;
    for (b, [age, stuck, attention]) in [
        (
            payments,
            [
                "paystream_payments_pending_oldest_age_seconds",
                "paystream_payments_pending_stuck",
                "paystream_payments_needing_attention",
            ],
        ),
        (
            refunds,
            [
                "paystream_refunds_pending_oldest_age_seconds",
                "paystream_refunds_pending_stuck",
                "paystream_refunds_needing_attention",
            ],
        ),
    ] {
        out.push(sample(
            age,
            &[],
            b.oldest_pending.unwrap_or_default().as_secs_f64(),
        ));
        out.push(sample(stuck, &[], b.stuck as f64));
        out.push(sample(attention, &[], b.needing_attention as f64));
    }
    Ok(())
}

/// One consumer per group, created once: librdkafka clients are costly to start, and a
/// consumer that is never subscribed nor assigned never joins its group.
struct Kafka {
    groups: Vec<(String, BaseConsumer)>,
    topics: Vec<String>,
}

impl Kafka {
    fn new(args: &ExporterArgs, topics: Vec<String>) -> anyhow::Result<Kafka> {
        let cfg: KafkaConfig = serde_json::from_value(json!({
            "brokers": args.kafka_brokers,
            "properties": args.properties.iter().cloned().collect::<BTreeMap<_, _>>(),
        }))
        .context("kafka settings")?;
        anyhow::ensure!(
            !args.consumer_groups.is_empty(),
            "give at least one --consumer-group"
        );
        let groups = args
            .consumer_groups
            .iter()
            .map(|group| {
                let consumer: BaseConsumer = cfg
                    .client_config()
                    .map_err(|KafkaConfigError::Reserved(name)| {
                        anyhow::anyhow!("-X {name}: the exporter sets it itself")
                    })?
                    .set("group.id", group)
                    // Belt and braces: nothing is ever assigned, so nothing could be
                    // committed anyway.
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    .create()
                    .with_context(|| format!("kafka client for group {group}"))?;
                Ok((group.clone(), consumer))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Kafka { groups, topics })
    }

    /// Lag per (group, topic). (No member count: tansu 0.6 fails DescribeGroups, which
    /// librdkafka's group list needs, and drops the connection.) A group is shown on a topic where it
    /// has committed at least once (the default topics are each consumed by one of the
    /// default groups, and the other group's "lag" would be the whole log); a group that
    /// has committed on none of them is shown on all, whole logs, so that a group that
    /// never commits does not vanish from the lag alerts.
    fn collect(&self, deadline: Instant, out: &mut Vec<Sample>) -> anyhow::Result<()> {
        // The first failure is the one reported: those after it are mostly its
        // consequence (the deadline it spent).
        let mut failed: Option<anyhow::Error> = None;
        let (_, meta) = &self.groups[0];
        let mut ends: Vec<(&str, Vec<Watermarks>)> = Vec::new();
        for topic in &self.topics {
            match watermarks(meta, topic, deadline) {
                Ok(parts) => ends.push((topic, parts)),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        for (group, consumer) in &self.groups {
            let mut lags: Vec<(&str, i64, bool)> = Vec::new();
            for (topic, parts) in &ends {
                match committed(consumer, topic, parts, deadline) {
                    Ok((lag, any)) => lags.push((topic, lag, any)),
                    Err(e) => failed = failed.or(Some(e.context(format!("group {group}")))),
                }
            }
            let committed_somewhere = lags.iter().any(|(_, _, any)| *any);
            for (topic, lag, any) in lags {
                if any || !committed_somewhere {
                    out.push(sample(
                        "paystream_kafka_consumer_group_lag",
                        &[("group", group), ("topic", topic)],
                        lag as f64,
                    ));
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

fn left(deadline: Instant) -> anyhow::Result<Duration> {
    let t = deadline.saturating_duration_since(Instant::now());
    anyhow::ensure!(!t.is_zero(), "timed out");
    Ok(t)
}

/// A partition's first and next offsets.
struct Watermarks {
    partition: i32,
    low: i64,
    high: i64,
}

fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    deadline: Instant,
) -> anyhow::Result<Vec<Watermarks>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), left(deadline)?)
        .with_context(|| format!("topic {topic}: metadata"))?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("topic {topic}: not in the metadata"))?;
    if let Some(e) = t.error() {
        anyhow::bail!(
            "topic {topic}: {}",
            rdkafka::error::RDKafkaErrorCode::from(e)
        );
    }
    t.partitions()
        .iter()
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), left(deadline)?)
                .with_context(|| format!("topic {topic} partition {}: watermarks", p.id()))?;
            Ok(Watermarks {
                partition: p.id(),
                low,
                high,
            })
        })
        .collect()
}

/// The group's lag on `topic` and whether it has committed on any of its partitions.
fn committed(
    consumer: &BaseConsumer,
    topic: &str,
    parts: &[Watermarks],
    deadline: Instant,
) -> anyhow::Result<(i64, bool)> {
    let mut tpl = TopicPartitionList::new();
    for w in parts {
        tpl.add_partition(topic, w.partition);
    }
    let committed = consumer
        .committed_offsets(tpl, left(deadline)?)
        .with_context(|| format!("topic {topic}: committed offsets"))?;
    let mut lag = 0;
    let mut any = false;
    for &Watermarks {
        partition: p,
        low,
        high,
    } in parts
    {
        let offset = committed
            .find_partition(topic, p)
            .map(|e| e.error().map(|()| e.offset()))
            .transpose()
            .with_context(|| format!("topic {topic} partition {p}: committed offset"))?;
        // Below the low watermark (the log was truncated past it) the group resumes at
        // the low watermark too.
        let from = match offset {
            Some(Offset::Offset(o)) => {
                any = true;
                o.max(low)
            }
            _ => low,
        };
        lag += (high - from).max(0);
    }
    Ok((lag, any))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text exposition format (0.0.4) of `samples` alone.
    fn render(samples: &[Sample]) -> String {
        render_with(Registry::default(), samples)
    }

    #[test]
    fn help_and_type_once_per_metric_in_order() {
        let text = render(&[
            sample("paystream_exporter_source_up", &[("source", "kafka")], 1.0),
            sample("paystream_connect_up", &[], 0.0),
            sample(
                "paystream_exporter_source_up",
                &[("source", "connect")],
                0.0,
            ),
        ]);
        assert_eq!(
            text,
            "# HELP paystream_connect_up Whether Kafka Connect's REST API answered the list of connectors (1) or not (0).\n\
             # TYPE paystream_connect_up gauge\n\
             paystream_connect_up 0.0\n\
             # HELP paystream_exporter_source_up Whether everything the exporter reads from the source was read within its timeout (1) or not (0).\n\
             # TYPE paystream_exporter_source_up gauge\n\
             paystream_exporter_source_up{source=\"kafka\"} 1.0\n\
             paystream_exporter_source_up{source=\"connect\"} 0.0\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let text = render(&[sample(
            "paystream_connect_task_running",
            &[("connector", "a\"b\\c\nd"), ("task", "0")],
            1.0,
        )]);
        assert!(
            text.contains(
                "paystream_connect_task_running{connector=\"a\\\"b\\\\c\\nd\",task=\"0\"} 1.0\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn numbers_as_prometheus_reads_them() {
        let value = |v: f64| {
            let text = render(&[sample("paystream_pg_replica_lag_seconds", &[], v)]);
            let line = text.lines().last().unwrap_or_default().to_owned();
            line.rsplit_once(' ').unwrap().1.to_owned()
        };
        assert_eq!(value(0.0), "0.0");
        assert_eq!(value(1_038_328.0), "1038328.0");
        assert_eq!(value(0.001282), "0.001282");
        assert_eq!(value(f64::INFINITY), "+Inf");
        assert_eq!(value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(value(f64::NAN), "NaN");
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ExporterArgs,
    }

    fn args(extra: &[&str]) -> ExporterArgs {
        use clap::Parser;
        let mut argv = vec![
            "paystream",
            "--database-url=postgres://primary",
            "--replica-url=postgres://replica",
            "--kafka-connect-url=http://127.0.0.1:8083",
            "--kafka-brokers=127.0.0.1:9092",
        ];
        argv.extend(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn the_reconcilers_groups_by_default_and_reserved_properties_refused() {
        let a = args(&["--topic", "t1", "--topic", "t2"]);
        assert_eq!(
            a.consumer_groups,
            ["paystream-reconciler", "paystream-reconciler-refunds"]
        );
        assert_eq!(a.topics, ["t1", "t2"]);
        let a = args(&["--consumer-group", "g"]);
        assert_eq!(a.consumer_groups, ["g"]);
        let a = args(&["-X", "enable.auto.commit=true"]);
        let e = Kafka::new(&a, vec!["t".into()]).err().unwrap();
        assert!(e.to_string().contains("enable.auto.commit"), "{e}");
    }

    #[test]
    fn every_metric_has_one_help() {
        let mut names: Vec<_> = METRICS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
        assert!(
            METRICS
                .iter()
                .all(|(n, h)| n.starts_with("paystream_") && !h.is_empty())
        );
    }
}
