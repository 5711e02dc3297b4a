//! `paystream exporter` against the real stack: the built binary on a port of its own,
//! scraped as Prometheus would. Every part of the stack must show up healthy; then, with
//! Kafka Connect's URL pointing where nothing listens, that one source shows down and the
//! others still report.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use paystream_testkit::Stack;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// A running exporter: the child (killed on drop) and where it serves.
struct Exporter {
    child: Child,
    url: String,
    log: tokio::task::JoinHandle<String>,
}

/// Starts the binary with the stack's settings, as an operator who sourced `.stack/env`
/// would, on a port the OS picks (read back from its first line).
async fn start(stack: &Stack, extra: &[&str]) -> Exporter {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_paystream"));
    cmd.args(["exporter", "--listen", "127.0.0.1:0"])
        .args(extra);
    for var in [
        "DATABASE_URL",
        "REPLICA_URL",
        "KAFKA_CONNECT_URL",
        "KAFKA_BROKERS",
        "CDC_TOPIC",
        "REFUND_CDC_TOPIC",
    ] {
        cmd.env(var, stack.var(var));
    }
    cmd.stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().expect("start paystream exporter");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the exporter said nothing for 30s")
        .expect("read its stderr")
        .expect("the exporter exited before listening");
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    // Drained as it comes, so that the child never blocks on a full pipe.
    let log = tokio::spawn(async move {
        let mut log = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    Exporter { child, url, log }
}

impl Exporter {
    async fn scrape(&self) -> Scrape {
        let response = reqwest::get(&self.url).await.expect("GET /metrics");
        assert!(response.status().is_success(), "{}", response.status());
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        Scrape::parse(&response.text().await.expect("body"))
    }

    /// What it wrote to stderr after its first line.
    async fn stop(mut self) -> String {
        self.child.kill().await.expect("kill the exporter");
        self.log.await.expect("log reader")
    }
}

/// A sample's labels and value.
type Sample = (BTreeMap<String, String>, f64);

/// A scrape: each sample by metric name.
struct Scrape {
    text: String,
    samples: BTreeMap<String, Vec<Sample>>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {line}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("{line}: value: {e}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            // Our label values (names of connectors, slots, ...) hold neither `",` nor
            // escapes; the rendering of those is the unit tests'.
            let labels = labels
                .split("\",")
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                    (k.to_owned(), v.trim_end_matches('"').to_owned())
                })
                .collect();
            samples
                .entry(name.to_owned())
                .or_default()
                .push((labels, value));
        }
        Scrape {
            text: text.to_owned(),
            samples,
        }
    }

    fn all(&self, name: &str) -> &[Sample] {
        self.samples.get(name).map_or(&[][..], Vec::as_slice)
    }

    /// The one sample of `name` with (at least) these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .all(name)
            .iter()
            .filter(|(l, _)| {
                labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| *v)
            .collect();
        match found.as_slice() {
            [v] => *v,
            _ => panic!(
                "{} samples of {name}{labels:?} in:\n{}",
                found.len(),
                self.text
            ),
        }
    }
}

#[tokio::test]
async fn every_part_of_the_stack_shows_up_healthy() {
    let stack = Stack::get();
    let exporter = start(stack, &[]).await;
    let m = exporter.scrape().await;

    for source in ["connect", "primary", "replica", "kafka"] {
        assert_eq!(
            m.get("paystream_exporter_source_up", &[("source", source)]),
            1.0,
            "source {source} down:\n{}",
            m.text
        );
    }
    assert!(m.get("paystream_exporter_scrape_duration_seconds", &[]) > 0.0);

    let connector = stack.var("DEBEZIUM_CONNECTOR");
    assert_eq!(m.get("paystream_connect_up", &[]), 1.0);
    assert_eq!(
        m.get(
            "paystream_connect_connector_running",
            &[("connector", connector)]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "paystream_connect_task_running",
            &[("connector", connector), ("task", "0")]
        ),
        1.0
    );

    let slots = m.all("paystream_pg_replication_slot_retained_wal_bytes");
    assert!(!slots.is_empty(), "no replication slot:\n{}", m.text);
    for (labels, bytes) in slots {
        assert!(*bytes >= 0.0, "{labels:?} {bytes}");
        assert_eq!(
            m.get(
                "paystream_pg_replication_slot_active",
                &[("slot", labels["slot"].as_str())]
            ),
            1.0,
            "slot {labels:?} inactive"
        );
    }

    assert_eq!(m.get("paystream_pg_replicas_streaming", &[]), 2.0);
    let lags = m.all("paystream_pg_replica_lag_seconds");
    assert_eq!(lags.len(), 2, "{}", m.text);
    assert!(lags.iter().all(|(_, s)| s.is_finite() && *s >= 0.0));

    for name in [
        "paystream_payments_pending_oldest_age_seconds",
        "paystream_payments_pending_stuck",
        "paystream_payments_needing_attention",
        "paystream_refunds_pending_oldest_age_seconds",
        "paystream_refunds_pending_stuck",
        "paystream_refunds_needing_attention",
    ] {
        let v = m.get(name, &[]);
        assert!(v.is_finite() && v >= 0.0, "{name} {v}");
    }

    let lag = m.get(
        "paystream_kafka_consumer_group_lag",
        &[
            ("group", "paystream-reconciler"),
            ("topic", stack.var("CDC_TOPIC")),
        ],
    );
    assert!(lag >= 0.0);

    // Prometheus refuses a second HELP or TYPE line for one metric.
    let mut typed: Vec<&str> = m
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .collect();
    let n = typed.len();
    typed.sort_unstable();
    typed.dedup();
    assert_eq!(typed.len(), n, "{}", m.text);
    exporter.stop().await;
}

#[tokio::test]
async fn a_dead_kafka_connect_is_down_and_the_rest_still_report() {
    let stack = Stack::get();
    // Nothing listens on port 1: the connection is refused at once.
    let exporter = start(stack, &["--kafka-connect-url", "http://127.0.0.1:1"]).await;
    let m = exporter.scrape().await;

    assert_eq!(
        m.get("paystream_exporter_source_up", &[("source", "connect")]),
        0.0
    );
    assert_eq!(m.get("paystream_connect_up", &[]), 0.0);
    assert!(m.all("paystream_connect_connector_running").is_empty());
    for source in ["primary", "replica", "kafka"] {
        assert_eq!(
            m.get("paystream_exporter_source_up", &[("source", source)]),
            1.0,
            "source {source}:\n{}",
            m.text
        );
    }
    assert_eq!(m.get("paystream_pg_replicas_streaming", &[]), 2.0);
    assert!(m.get("paystream_payments_pending_oldest_age_seconds", &[]) >= 0.0);
    assert!(!m.all("paystream_kafka_consumer_group_lag").is_empty());

    let log = exporter.stop().await;
    assert!(log.contains("source connect down"), "{log}");
    // Errors are logged, with no connection string in them.
    assert!(!log.contains("postgres://"), "{log}");
}
