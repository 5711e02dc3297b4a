//! The refund worker: the refunds CDC topic in, pending refunds per partition, timed
//! Stripe polls (drawing on the payment worker's Stripe budget), `refund-status-update`
//! out.
//!
//! Refunds are few beside payments, so this loop is the plain form of the payment
//! worker's: one message at a time, its update awaited at the broker before its offset is
//! stored. The guarantees are the same: an offset is stored only once its message's work
//! is done, so a crash replays from the last message whose work was done; a partition new
//! to the group starts at the end taken before its state was read from the replica.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use paystream_core::RefundId;
use paystream_core::gateway::{GatewayError, StripeGateway};
use paystream_db::{Primary, Replica, replica};
use paystream_service::Metrics;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::DeliveryFuture;
use rdkafka::producer::future_producer::Delivery;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::envelope::{self, RefundChange, RefundRow};
use super::output;
use super::poll::{self, RefundOutcome, RefundTarget};
use super::state::{RefundEffect, RefundState};
use crate::config::{KafkaConfig, ReconcilerConfig};
use crate::partition::partition_for;
use crate::poll::{PollError, Rules};
use crate::source::{self, CdcConsumer, Rebalanced, Rejoin};
use crate::worker::engine::StripeBudget;
use crate::worker::sink::{Sink, SinkError};

#[derive(Debug, thiserror::Error)]
pub enum RefundWorkerError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("loading refund state: {0}")]
    Recovery(#[from] paystream_db::DbError),
    #[error("publishing a refund update failed: {0}")]
    Publish(String),
    #[error("encoding a refund update: {0}")]
    Encode(#[from] crate::output::OutputError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

const DISPATCH_EVERY: Duration = Duration::from_millis(100);
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Resolved refunds remembered against replays, per partition.
const REMEMBER_RESOLVED: usize = 100_000;

struct PollDone {
    partition: i32,
    id: Uuid,
    result: Result<RefundOutcome, PollError>,
}

pub struct RefundWorker<G> {
    kafka: KafkaConfig,
    rules: Rules,
    max_in_flight: usize,
    primary: Arc<Primary>,
    replica: Replica,
    stripe: Arc<G>,
    budget: StripeBudget,
    metrics: Arc<Metrics>,
    sink: Sink,
    states: HashMap<i32, RefundState>,
    /// Per partition new to the group: records before this offset are in its state.
    start_at: HashMap<i32, i64>,
    polls: JoinSet<PollDone>,
    rejoin: Rejoin,
}

/// Waits for the broker to acknowledge a message (at most `DELIVERY_TIMEOUT`).
async fn confirmed(delivery: DeliveryFuture) -> Result<Delivery, RefundWorkerError> {
    match tokio::time::timeout(DELIVERY_TIMEOUT, delivery).await {
        Ok(Ok(Ok(d))) => Ok(d),
        Ok(Ok(Err((e, _)))) => Err(RefundWorkerError::Publish(e.to_string())),
        Ok(Err(_)) => Err(RefundWorkerError::Publish("the producer went away".into())),
        Err(_) => Err(RefundWorkerError::Publish(format!(
            "no acknowledgement within {DELIVERY_TIMEOUT:?}"
        ))),
    }
}

const REFUND_UNDECODABLE: (&str, &str) = (
    "reconciler_refund_undecodable_total",
    "refund CDC records that could not be read",
);

impl<G: StripeGateway + 'static> RefundWorker<G> {
    pub fn new(
        cfg: &ReconcilerConfig,
        primary: Primary,
        replica: Replica,
        stripe: Arc<G>,
        budget: StripeBudget,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RefundWorkerError> {
        let sink = Sink::to_topics(
            &cfg.kafka,
            &cfg.kafka.refund_status_topic,
            &cfg.kafka.refund_dead_letter_topic,
        )?;
        // Zero from the start: a dashboard reads 0, not no data (worker::telemetry::zero).
        metrics.add(REFUND_UNDECODABLE.0, REFUND_UNDECODABLE.1, &[], 0);
        Ok(RefundWorker {
            kafka: cfg.kafka.clone(),
            rules: cfg.poll.refund_rules(),
            max_in_flight: cfg.poll.max_in_flight.max(1),
            primary: Arc::new(primary),
            replica,
            stripe,
            budget,
            metrics,
            sink,
            states: HashMap::new(),
            start_at: HashMap::new(),
            polls: JoinSet::new(),
            rejoin: Rejoin::new(
                crate::worker::engine::REJOIN_AFTER,
                crate::worker::engine::REJOIN_AT_MOST_EVERY,
            ),
        })
    }

    pub async fn run(
        mut self,
        consumer: &CdcConsumer,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RefundWorkerError> {
        let mut shutdown = pin!(shutdown);
        let mut dispatch = tokio::time::interval(DISPATCH_EVERY);
        dispatch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(joined) = self.polls.join_next(), if !self.polls.is_empty() => {
                    if let Ok(done) = joined {
                        self.poll_done(done);
                    }
                }
                _ = dispatch.tick() => {
                    self.rebalance(consumer).await?;
                    self.dispatch();
                    self.gauges();
                    if self.rejoin.due(!self.states.is_empty(), Instant::now()) {
                        tracing::warn!("refund worker holds no partition: rejoining its group");
                        consumer.unsubscribe();
                        consumer.subscribe(&[&self.kafka.refund_cdc_topic])?;
                    }
                }
                msg = consumer.recv() => {
                    self.rebalance(consumer).await?;
                    match msg {
                        Ok(m) => self.record(consumer, &m).await?,
                        Err(e) => tracing::warn!(error = %e, "kafka consumer error (refunds)"),
                    }
                }
            }
        }
        // Every stored offset is behind finished work; polls in flight change only the
        // database (their change comes back through CDC to whoever owns it next).
        while self.polls.join_next().await.is_some() {}
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "nothing to commit (refunds)");
        }
        consumer.unsubscribe();
        Ok(())
    }

    async fn record(
        &mut self,
        consumer: &CdcConsumer,
        m: &BorrowedMessage<'_>,
    ) -> Result<(), RefundWorkerError> {
        let (partition, offset) = (m.partition(), m.offset());
        if !self.states.contains_key(&partition)
            || self.start_at.get(&partition).is_some_and(|s| offset < *s)
        {
            return Ok(());
        }
        match envelope::decode(m.key(), m.payload()) {
            Ok(change) => {
                let effect = self
                    .states
                    .get_mut(&partition)
                    .map_or(RefundEffect::Ignored, |s| {
                        s.apply(&change, &self.rules.schedule)
                    });
                self.metrics.inc(
                    "reconciler_refund_changes_total",
                    "refund CDC changes by their effect on the state",
                    &[("effect", effect.as_str())],
                );
                if let Some(update) = change.final_transition() {
                    self.publish(&update).await?;
                }
            }
            Err(e) => {
                // Retried, it would stop the partition forever: it goes whole to the
                // dead-letter topic, and on.
                tracing::error!(partition, offset, error = %e, "undecodable refund CDC record sent to the dead-letter topic");
                self.metrics
                    .inc(REFUND_UNDECODABLE.0, REFUND_UNDECODABLE.1, &[]);
                self.dead_letter(m, &e.to_string()).await?;
            }
        }
        if let Err(e) = consumer.store_offset(&self.kafka.refund_cdc_topic, partition, offset) {
            tracing::debug!(partition, offset, error = %e, "offset not stored (revoked meanwhile)");
        }
        Ok(())
    }

    async fn publish(&self, u: &output::RefundUpdate) -> Result<(), RefundWorkerError> {
        let payload = output::encode(u)?;
        let delivery = self.sink.update(&u.refund_id.to_string(), &payload).await?;
        let d = confirmed(delivery).await?;
        tracing::info!(
            payment_id = %u.payment_id,
            refund_id = %u.refund_id,
            status = u.status.as_str(),
            version = u.version,
            topic = %self.kafka.refund_status_topic,
            partition = d.partition,
            offset = d.offset,
            "refund update published"
        );
        self.metrics.inc(
            "reconciler_refund_updates_published_total",
            "refund-status-update messages acknowledged by the broker, by status",
            &[("status", u.status.as_str())],
        );
        Ok(())
    }

    async fn dead_letter(
        &self,
        m: &BorrowedMessage<'_>,
        error: &str,
    ) -> Result<(), RefundWorkerError> {
        confirmed(self.sink.dead_letter(m, error).await?).await?;
        Ok(())
    }

    async fn rebalance(&mut self, consumer: &CdcConsumer) -> Result<(), RefundWorkerError> {
        for r in consumer.context().take_rebalances() {
            match r {
                Rebalanced::Revoked(ps) => {
                    for p in ps {
                        self.states.remove(&p);
                        self.start_at.remove(&p);
                    }
                }
                Rebalanced::Assigned(ps) if ps.is_empty() => {}
                Rebalanced::Assigned(ps) => self.load(consumer, &ps).await?,
            }
        }
        Ok(())
    }

    /// Takes `ps` over: positions first, state (from the replica, caught up with the
    /// primary) second, so the state is at least as new as the positions.
    async fn load(&mut self, consumer: &CdcConsumer, ps: &[i32]) -> Result<(), RefundWorkerError> {
        let started = Instant::now();
        let topic = self.kafka.refund_cdc_topic.clone();
        let meta = tokio::task::block_in_place(|| {
            consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))
        })?;
        let total = meta.topics().first().map_or(1, |t| {
            i32::try_from(t.partitions().len()).unwrap_or(1).max(1)
        });
        let positions = source::committed_and_ends(consumer, &topic, ps)?;
        let mut states: HashMap<i32, RefundState> =
            ps.iter().map(|p| (*p, RefundState::default())).collect();
        let mut attempt = 0;
        loop {
            let position = self.primary.wal_position().await?;
            let schedule = self.rules.schedule;
            let loaded = replica::pending_refunds(&self.replica, &position, CATCH_UP_LIMIT, |r| {
                let Some(state) = states.get_mut(&partition_for(r.id.as_uuid(), total)) else {
                    return;
                };
                let row = RefundRow {
                    id: r.id.as_uuid(),
                    payment_id: r.payment_id.as_uuid(),
                    status: "pending".into(),
                    stripe_refund_id: r.stripe_refund_id,
                    amount: 0,
                    currency: String::new(),
                    failure_reason: None,
                    resolution_source: None,
                    created_at: r.created_at,
                    version: r.version,
                    flagged: false,
                };
                state.apply(
                    &RefundChange::Upsert {
                        row,
                        before_status: None,
                        snapshot: true,
                        lsn: 0,
                        commit_ts_ms: 0,
                    },
                    &schedule,
                );
            })
            .await;
            match loaded {
                Ok(_) => break,
                Err(e) if attempt < 30 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "refund state load failed; retrying");
                    for s in states.values_mut() {
                        *s = RefundState::default();
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut fresh = rdkafka::TopicPartitionList::new();
        for (p, committed, end) in positions {
            if committed.is_none() {
                self.start_at.insert(p, end);
                fresh.add_partition_offset(&topic, p, rdkafka::Offset::Offset(end))?;
                let seek = tokio::task::block_in_place(|| {
                    consumer.seek(
                        &topic,
                        p,
                        rdkafka::Offset::Offset(end),
                        Duration::from_secs(2),
                    )
                });
                if let Err(e) = seek {
                    tracing::debug!(partition = p, error = %e, "seek failed; older messages are skipped instead");
                }
            }
        }
        if fresh.count() > 0 {
            // A later owner that also found no commit would start at its own, later end.
            tokio::task::block_in_place(|| consumer.commit(&fresh, CommitMode::Sync))?;
        }
        let pending: usize = states.values().map(RefundState::len).sum();
        self.states.extend(states);
        tracing::info!(partitions = ?ps, pending, took_ms = started.elapsed().as_millis() as u64, "refund state loaded");
        Ok(())
    }

    fn dispatch(&mut self) {
        if self.budget.paused(Instant::now()) {
            return;
        }
        let now = Utc::now();
        while self.polls.len() < self.max_in_flight {
            let due = self
                .states
                .iter_mut()
                .filter_map(|(p, s)| s.next_due().map(|at| (*p, at)))
                .filter(|(_, at)| *at <= now)
                .min_by_key(|(_, at)| *at);
            let Some((partition, _)) = due else {
                return;
            };
            if self.budget.take(Instant::now()).is_err() {
                return;
            }
            let Some((id, p)) = self
                .states
                .get_mut(&partition)
                .and_then(|s| s.take_due(now, 1, &self.rules.schedule).pop())
            else {
                return;
            };
            let target = RefundTarget {
                id: RefundId::from_uuid(id),
                created_at: p.created_at,
                misses: p.misses,
            };
            let (stripe, db, rules) = (self.stripe.clone(), self.primary.clone(), self.rules);
            self.polls.spawn(async move {
                let result = poll::poll(&*stripe, &db, &target, &rules, Utc::now()).await;
                PollDone {
                    partition,
                    id,
                    result,
                }
            });
        }
    }

    fn poll_done(&mut self, done: PollDone) {
        let label = match &done.result {
            Ok(o) => o.label(),
            Err(e) => e.label(),
        };
        self.metrics.inc(
            "reconciler_refund_polls_total",
            "refund polls by outcome",
            &[("outcome", label)],
        );
        let Some(state) = self.states.get_mut(&done.partition) else {
            return;
        };
        match done.result {
            Ok(o) => {
                self.budget.answered(Instant::now());
                if let RefundOutcome::Resolved(to) = &o {
                    tracing::info!(refund_id = %done.id, to = to.as_str(), "refund resolved by poll");
                }
                state.note_poll(done.id, o.usable());
            }
            Err(PollError::Stripe(GatewayError::RateLimited)) => {
                // The whole instance slows down: the limit is the account's.
                let pause = self.budget.limited(Instant::now());
                tracing::warn!(refund_id = %done.id, backoff_ms = pause.as_millis() as u64, "stripe rate limit: polls paused");
                state.reschedule(
                    done.id,
                    Utc::now() + chrono::Duration::from_std(pause).unwrap_or_default(),
                );
            }
            Err(e) => {
                tracing::warn!(refund_id = %done.id, error = %e, "refund poll failed; polled again on schedule")
            }
        }
    }

    fn gauges(&mut self) {
        let mut pending = 0;
        for s in self.states.values_mut() {
            pending += s.len();
            s.forget_resolved(REMEMBER_RESOLVED);
        }
        self.metrics.set_gauge(
            "reconciler_refunds_pending",
            "pending refunds held in the refund worker's state",
            &[],
            i64::try_from(pending).unwrap_or(i64::MAX),
        );
        self.metrics.set_gauge(
            "reconciler_refund_partitions",
            "refund CDC partitions this instance holds state for (0 for long: the group gave it none)",
            &[],
            i64::try_from(self.states.len()).unwrap_or(i64::MAX),
        );
    }
}
