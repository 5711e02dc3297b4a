//! The CDC source: an rdkafka consumer in the reconciler's consumer group. Offsets are
//! stored by the worker only once a message's work is done and committed from there
//! (periodically and when partitions are revoked), never on receipt.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use paystream_service::Metrics;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::config::KafkaConfig;

/// How long the broker may hold a fetch that finds nothing (`fetch.wait.max.ms`), unless
/// `kafka.properties` sets it. Kafka, and the stack's tansu with third_party/tansu's
/// patch, answer a fetch as soon as data is there, so this wait is not CDC latency: it
/// bounds how often an idle consumer asks (on tansu each fetch reads every partition it
/// holds from SQLite) and how long a consumer's close waits for its last fetch.
const FETCH_WAIT_MS: &str = "100";

/// A rebalance as the worker sees it, in the order the group produced them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalanced {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Runs inside the consumer's `recv`: it records rebalances for the worker (which loads
/// and drops state in its own loop) and reports consumer lag from librdkafka's stats.
pub struct SourceContext {
    topic: String,
    /// The consumer-lag gauge this consumer reports.
    lag_gauge: &'static str,
    metrics: Arc<Metrics>,
    rebalances: Mutex<Vec<Rebalanced>>,
}

impl SourceContext {
    /// Rebalances since the last call, oldest first.
    pub fn take_rebalances(&self) -> Vec<Rebalanced> {
        std::mem::take(&mut *self.rebalances.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn record(&self, r: Rebalanced) {
        self.rebalances
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(r);
    }
}

fn partitions(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect()
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        let Some(topic) = stats.topics.get(&self.topic) else {
            return;
        };
        for (p, s) in &topic.partitions {
            // -1 is librdkafka's internal "unassigned" partition; lag -1 means unknown yet.
            if *p >= 0 && s.consumer_lag >= 0 {
                self.metrics.set_gauge(
                    self.lag_gauge,
                    "messages of the CDC topic not yet consumed, per partition",
                    &[("partition", &p.to_string())],
                    s.consumer_lag,
                );
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                // Hand over what is done before the partitions go to another instance.
                if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                    tracing::debug!(error = %e, "nothing to commit on revoke");
                }
                let ps = partitions(tpl, &self.topic);
                tracing::info!(partitions = ?ps, "partitions revoked");
                for p in &ps {
                    self.metrics
                        .remove_gauge(self.lag_gauge, &[("partition", &p.to_string())]);
                }
                self.record(Rebalanced::Revoked(ps));
            }
            Rebalance::Assign(tpl) => {
                let ps = partitions(tpl, &self.topic);
                tracing::info!(partitions = ?ps, "partitions assigned");
                self.record(Rebalanced::Assigned(ps));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

pub type CdcConsumer = rdkafka::consumer::StreamConsumer<SourceContext>;

/// Decides when an instance that holds no partition should leave and rejoin its group.
///
/// tansu 0.6 can leave a member with an empty assignment for good (a member killed while
/// another joins): the stream then has no reader, and no payment resolves. Apache Kafka
/// reassigns by itself. A rejoin makes any broker compute the assignment again; it is tried
/// after `base` without partitions, then after twice as long each time up to `max`, so an
/// instance that legitimately holds nothing (more instances than partitions) costs the
/// group a rebalance only rarely.
#[derive(Debug, Clone, Copy)]
pub struct Rejoin {
    base: Duration,
    max: Duration,
    wait: Duration,
    since: Option<std::time::Instant>,
}

impl Rejoin {
    pub fn new(base: Duration, max: Duration) -> Self {
        Rejoin {
            base,
            max: max.max(base),
            wait: base,
            since: None,
        }
    }

    /// Whether to rejoin now, given whether the instance holds any partition at `now`.
    pub fn due(&mut self, holding: bool, now: std::time::Instant) -> bool {
        if holding {
            self.since = None;
            self.wait = self.base;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) < self.wait {
            return false;
        }
        self.since = Some(now);
        self.wait = (self.wait * 2).min(self.max);
        true
    }
}

/// The payment worker's consumer of the payments CDC topic.
pub fn consumer(
    cfg: &KafkaConfig,
    metrics: Arc<Metrics>,
) -> rdkafka::error::KafkaResult<CdcConsumer> {
    consumer_of(
        cfg,
        &cfg.group_id,
        &cfg.cdc_topic,
        "reconciler_consumer_lag",
        metrics,
    )
}

/// The refund worker's consumer of the refunds CDC topic, in a group of its own.
pub fn refund_consumer(
    cfg: &KafkaConfig,
    metrics: Arc<Metrics>,
) -> rdkafka::error::KafkaResult<CdcConsumer> {
    consumer_of(
        cfg,
        &cfg.refund_group_id(),
        &cfg.refund_cdc_topic,
        "reconciler_refund_consumer_lag",
        metrics,
    )
}

fn consumer_of(
    cfg: &KafkaConfig,
    group: &str,
    topic: &str,
    lag_gauge: &'static str,
    metrics: Arc<Metrics>,
) -> rdkafka::error::KafkaResult<CdcConsumer> {
    let ctx = SourceContext {
        topic: topic.to_owned(),
        lag_gauge,
        metrics,
        rebalances: Mutex::new(Vec::new()),
    };
    let mut config = cfg
        .client_config()
        .map_err(|e| rdkafka::error::KafkaError::ClientCreation(e.to_string()))?;
    if cfg.properties.get("fetch.wait.max.ms").is_none() {
        config.set("fetch.wait.max.ms", FETCH_WAIT_MS);
    }
    let consumer: CdcConsumer = config
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        // A brand-new group is positioned by the worker (at the end, with state from the
        // replica); earliest is only the safe fallback should that fail.
        .set("auto.offset.reset", "earliest")
        // A killed instance's partitions move after this long.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("statistics.interval.ms", "2000")
        .create_with_context(ctx)?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Blocking broker lookups, run off the async loop's thread budget.
pub fn committed_and_ends(
    consumer: &CdcConsumer,
    topic: &str,
    ps: &[i32],
) -> rdkafka::error::KafkaResult<Vec<(i32, Option<i64>, i64)>> {
    let timeout = Duration::from_secs(10);
    let mut tpl = TopicPartitionList::new();
    for p in ps {
        tpl.add_partition(topic, *p);
    }
    let committed = tokio::task::block_in_place(|| consumer.committed_offsets(tpl, timeout))?;
    let mut out = Vec::new();
    for e in committed.elements_for_topic(topic) {
        let (_, high) = tokio::task::block_in_place(|| {
            consumer.fetch_watermarks(topic, e.partition(), timeout)
        })?;
        let committed = match e.offset() {
            rdkafka::Offset::Offset(o) => Some(o),
            _ => None,
        };
        out.push((e.partition(), committed, high));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn rejoins_when_starved_less_often_each_time_and_never_while_holding() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut r = Rejoin::new(Duration::from_secs(20), Duration::from_secs(120));
        assert!(!r.due(false, s(0)));
        assert!(!r.due(false, s(19)));
        assert!(r.due(false, s(20)), "20 s without a partition");
        assert!(!r.due(false, s(50)));
        assert!(r.due(false, s(60)), "then 40 s later");
        assert!(r.due(false, s(140)), "then 80 s");
        assert!(!r.due(false, s(200)));
        assert!(r.due(false, s(260)), "capped at 120 s");
        assert!(!r.due(true, s(261)), "never while holding partitions");
        assert!(!r.due(false, s(262)));
        assert!(r.due(false, s(282)), "and starved again: from the base");
    }
}
