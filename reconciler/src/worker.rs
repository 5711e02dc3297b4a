//! The stream worker: CDC changes in, the pending state per partition, timed Stripe polls,
//! `payment-status-update` out. One loop owns all state; polls and deliveries run
//! concurrently and report back to it.
//!
//! A message's work is done when its change is in the state and, if it carries a final
//! transition, that update is acknowledged by the broker. Only then is its offset stored
//! (and later committed), in consumption order, so a crash at any moment replays from
//! the last message whose work was done.

use std::collections::HashMap;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use paystream_core::gateway::{GatewayError, StripeGateway};
use paystream_core::ratelimit::TokenBucket;
use paystream_service::Metrics;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use sqlx::PgPool;
use tokio::task::{JoinError, JoinSet};
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::config::{KafkaConfig, PollConfig, ReconcilerConfig};
use crate::envelope;
use crate::output::{self, OutputError, StatusUpdate};
use crate::poll::{self, Outcome, PollError, Rules, Target};
use crate::recovery::{self, RecoveryError};
use crate::source::{self, CdcConsumer, Rebalanced, Rejoin};
use crate::state::{Effect, PendingState};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("loading state: {0}")]
    Recovery(#[from] RecoveryError),
    #[error("publishing a status update failed: {0}")]
    Publish(String),
    #[error("encoding a status update: {0}")]
    Encode(#[from] OutputError),
    #[error(
        "{0} undecodable CDC records in a row (all in the dead-letter topic): the stream's format changed? stopping rather than skipping every change"
    )]
    Undecodable(u32),
}

/// Unconfirmed deliveries allowed before the loop waits for the broker.
const MAX_UNCONFIRMED: usize = 10_000;
/// How often due polls are looked for (tokens accumulate in between, up to the burst).
const DISPATCH_EVERY: Duration = Duration::from_millis(25);
const GAUGES_EVERY: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

struct PollDone {
    partition: i32,
    id: Uuid,
    took: Duration,
    result: Result<Outcome, PollError>,
}

struct Delivered {
    partition: i32,
    offset: i64,
    epoch: u64,
    result: Result<(), String>,
}

/// A delivery confirmation waiting in line.
type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pub struct Worker<G> {
    kafka: KafkaConfig,
    poll_cfg: PollConfig,
    rules: Rules,
    primary: PgPool,
    replica: PgPool,
    stripe: Arc<G>,
    metrics: Arc<Metrics>,
    producer: FutureProducer,
    states: HashMap<i32, PendingState>,
    /// For partitions new to the group: the end offset taken before their state was read
    /// from the replica; older messages are already in that state.
    start_at: HashMap<i32, i64>,
    total_partitions: i32,
    /// Changes at every rebalance, so an old delivery never stores an offset for a
    /// partition that was handed over (and maybe handed back) meanwhile.
    epoch: u64,
    limiter: TokenBucket,
    polls: JoinSet<PollDone>,
    deliveries: FuturesOrdered<Boxed<Delivered>>,
    backoff: Backoff,
    /// Undecodable records in a row (see `PollConfig::halt_after_undecodable`).
    undecodable_run: u32,
    rejoin: Rejoin,
}

impl<G: StripeGateway + 'static> Worker<G> {
    pub fn new(
        cfg: &ReconcilerConfig,
        primary: PgPool,
        replica: PgPool,
        stripe: Arc<G>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, WorkerError> {
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &cfg.kafka.brokers)
            // Retries keep one payment's updates in order.
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()?;
        Ok(Worker {
            kafka: cfg.kafka.clone(),
            poll_cfg: cfg.poll,
            rules: cfg.poll.rules(),
            primary,
            replica,
            stripe,
            metrics,
            producer,
            states: HashMap::new(),
            start_at: HashMap::new(),
            total_partitions: 1,
            epoch: 0,
            limiter: TokenBucket::new(1, 1, Instant::now()),
            polls: JoinSet::new(),
            deliveries: FuturesOrdered::new(),
            backoff: Backoff::new(MIN_BACKOFF, MAX_BACKOFF),
            undecodable_run: 0,
            rejoin: Rejoin::new(Duration::from_secs(20), Duration::from_secs(600)),
        })
    }

    /// Runs until `shutdown`, then finishes in-flight polls and deliveries, commits and
    /// leaves the group.
    pub async fn run(
        mut self,
        consumer: &CdcConsumer,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), WorkerError> {
        let mut shutdown = pin!(shutdown);
        let mut dispatch = tokio::time::interval(DISPATCH_EVERY);
        dispatch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut gauges = tokio::time::interval(GAUGES_EVERY);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(d) = self.deliveries.next(), if !self.deliveries.is_empty() => {
                    self.delivered(consumer, d)?;
                }
                Some(done) = self.polls.join_next(), if !self.polls.is_empty() => {
                    self.poll_done(done);
                    self.dispatch();
                }
                _ = dispatch.tick() => {
                    self.rebalance(consumer).await?;
                    self.dispatch();
                    if self.rejoin.due(!self.states.is_empty(), Instant::now()) {
                        tracing::warn!("holding no partition for a while: rejoining the consumer group");
                        consumer.unsubscribe();
                        consumer.subscribe(&[&self.kafka.cdc_topic])?;
                    }
                }
                _ = gauges.tick() => self.gauges(),
                msg = consumer.recv() => {
                    self.rebalance(consumer).await?;
                    match msg {
                        Ok(m) => self.handle(consumer, &m).await?,
                        Err(e) => tracing::warn!(error = %e, "kafka consumer error"),
                    }
                }
            }
        }
        tracing::info!(
            in_flight_polls = self.polls.len(),
            unconfirmed = self.deliveries.len(),
            "draining"
        );
        while let Some(done) = self.polls.join_next().await {
            self.poll_done(done);
        }
        while let Some(d) = self.deliveries.next().await {
            self.delivered(consumer, d)?;
        }
        if let Err(e) =
            tokio::task::block_in_place(|| consumer.commit_consumer_state(CommitMode::Sync))
        {
            tracing::debug!(error = %e, "nothing to commit at shutdown");
        }
        consumer.unsubscribe();
        Ok(())
    }

    async fn handle(
        &mut self,
        consumer: &CdcConsumer,
        m: &BorrowedMessage<'_>,
    ) -> Result<(), WorkerError> {
        let (partition, offset) = (m.partition(), m.offset());
        if !self.states.contains_key(&partition) {
            return Ok(());
        }
        if self.start_at.get(&partition).is_some_and(|s| offset < *s) {
            return Ok(());
        }
        let change = match envelope::decode(m.key(), m.payload()) {
            Ok(c) => {
                self.undecodable_run = 0;
                c
            }
            Err(e) => {
                // A record this code cannot read would stop the partition forever if
                // retried: it goes whole to the dead-letter topic, and its offset is
                // stored once the broker has it there. A run of them stops the process.
                self.undecodable_run += 1;
                tracing::error!(partition, offset, error = %e, run = self.undecodable_run, "undecodable CDC record sent to the dead-letter topic");
                self.metrics.inc(
                    "reconciler_undecodable_total",
                    "CDC records that could not be decoded (sent to the dead-letter topic)",
                    &[],
                );
                if self.undecodable_run >= self.poll_cfg.halt_after_undecodable.max(1) {
                    return Err(WorkerError::Undecodable(self.undecodable_run));
                }
                let delivery = self.dead_letter(m, &e.to_string()).await?;
                return self.done(consumer, partition, offset, Some(delivery)).await;
            }
        };
        if let Some(ts) = change.commit_ts_ms() {
            let lag_ms = Utc::now().timestamp_millis().saturating_sub(ts).max(0);
            self.metrics.observe(
                "reconciler_cdc_latency_seconds",
                "from the commit on the primary (source.ts_ms) to the change in the state",
                &[],
                Duration::from_millis(lag_ms.unsigned_abs()),
            );
        }
        let state = self
            .states
            .get_mut(&partition)
            .expect("checked above: the partition is ours");
        let effect = state.apply(&change, &self.rules.schedule);
        self.metrics.inc(
            "reconciler_changes_total",
            "CDC changes applied to the state, by effect",
            &[("effect", effect_label(effect))],
        );
        let delivery = match change.final_transition() {
            Some(update) => Some(self.publish(&update).await?),
            None => None,
        };
        self.done(consumer, partition, offset, delivery).await
    }

    /// Sends an undecodable record, whole, to the dead-letter topic.
    async fn dead_letter(
        &mut self,
        m: &BorrowedMessage<'_>,
        error: &str,
    ) -> Result<DeliveryFuture, WorkerError> {
        use rdkafka::message::{Header, OwnedHeaders};
        let (partition, offset) = (m.partition().to_string(), m.offset().to_string());
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "source_topic",
                    value: Some(m.topic()),
                })
                .insert(Header {
                    key: "source_partition",
                    value: Some(&partition),
                })
                .insert(Header {
                    key: "source_offset",
                    value: Some(&offset),
                })
                .insert(Header {
                    key: "error",
                    value: Some(error),
                });
            let mut record =
                FutureRecord::<[u8], [u8]>::to(&self.kafka.dead_letter_topic).headers(headers);
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            if let Some(p) = m.payload() {
                record = record.payload(p);
            }
            match self.producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    async fn publish(&mut self, u: &StatusUpdate) -> Result<DeliveryFuture, WorkerError> {
        let payload = output::encode(u)?;
        let key = u.payment_id.to_string();
        self.metrics.inc(
            "reconciler_resolutions_total",
            "final transitions seen in the CDC stream and published, by resolution source",
            &[(
                "source",
                u.resolution_source.as_deref().unwrap_or("unknown"),
            )],
        );
        loop {
            let record = FutureRecord::to(&self.kafka.status_topic)
                .key(&key)
                .payload(&payload);
            match self.producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    /// Records that a message's work is done once its delivery (if any) is confirmed;
    /// offsets are stored strictly in consumption order.
    async fn done(
        &mut self,
        consumer: &CdcConsumer,
        partition: i32,
        offset: i64,
        delivery: Option<DeliveryFuture>,
    ) -> Result<(), WorkerError> {
        if delivery.is_none() && self.deliveries.is_empty() {
            self.store(consumer, partition, offset);
            return Ok(());
        }
        let epoch = self.epoch;
        self.deliveries.push_back(Box::pin(async move {
            let result = match delivery {
                None => Ok(()),
                Some(f) => match f.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("the producer went away".into()),
                },
            };
            Delivered {
                partition,
                offset,
                epoch,
                result,
            }
        }));
        while self.deliveries.len() >= MAX_UNCONFIRMED {
            if let Some(d) = self.deliveries.next().await {
                self.delivered(consumer, d)?;
            }
        }
        Ok(())
    }

    fn delivered(&mut self, consumer: &CdcConsumer, d: Delivered) -> Result<(), WorkerError> {
        // Not storing the offset is not enough: later messages would store theirs past
        // it. Stopping makes the group replay from the last confirmed message.
        d.result.map_err(WorkerError::Publish)?;
        self.metrics.inc(
            "reconciler_published_total",
            "messages confirmed by the broker (updates and the offsets behind them)",
            &[],
        );
        if d.epoch == self.epoch {
            self.store(consumer, d.partition, d.offset);
        }
        Ok(())
    }

    fn store(&self, consumer: &CdcConsumer, partition: i32, offset: i64) {
        if let Err(e) = consumer.store_offset(&self.kafka.cdc_topic, partition, offset) {
            // The partition was revoked meanwhile: its new owner replays from the last commit.
            tracing::debug!(partition, offset, error = %e, "offset not stored");
        }
    }

    async fn rebalance(&mut self, consumer: &CdcConsumer) -> Result<(), WorkerError> {
        for r in consumer.context().take_rebalances() {
            self.epoch += 1;
            match r {
                Rebalanced::Revoked(ps) => {
                    for p in &ps {
                        self.states.remove(p);
                        self.start_at.remove(p);
                        self.metrics
                            .remove_gauge("reconciler_pending", &[("partition", &p.to_string())]);
                    }
                }
                Rebalanced::Assigned(ps) => self.assign(consumer, &ps).await?,
            }
            self.share_rate();
        }
        Ok(())
    }

    async fn assign(&mut self, consumer: &CdcConsumer, ps: &[i32]) -> Result<(), WorkerError> {
        if ps.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let topic = self.kafka.cdc_topic.clone();
        let meta = tokio::task::block_in_place(|| {
            consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))
        })?;
        self.total_partitions = meta.topics().first().map_or(1, |t| {
            i32::try_from(t.partitions().len()).unwrap_or(1).max(1)
        });
        // Positions first, state second: the state is then at least as new as them.
        let positions = source::committed_and_ends(consumer, &topic, ps)?;
        let mut attempt = 0;
        let loaded = loop {
            match recovery::load(
                &self.primary,
                &self.replica,
                ps,
                self.total_partitions,
                &self.rules.schedule,
            )
            .await
            {
                Ok(l) => break l,
                Err(e) if attempt < 30 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "state load failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        // A partition the group never committed an offset for starts at its end (its
        // older changes are in the state just read). That starting point is committed at
        // once: a later owner that also found no commit (this instance consumed nothing
        // there before a rebalance) would otherwise start at its own, later end and skip
        // every change in between, final transitions included (I3).
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
            tokio::task::block_in_place(|| consumer.commit(&fresh, CommitMode::Sync))?;
        }
        let pending: usize = loaded.values().map(PendingState::len).sum();
        self.states.extend(loaded);
        let took = started.elapsed();
        self.metrics.observe(
            "reconciler_state_load_seconds",
            "time to rebuild the state of newly assigned partitions from the replica",
            &[],
            took,
        );
        tracing::info!(partitions = ?ps, pending, took_ms = took.as_millis() as u64, "state loaded");
        self.gauges();
        Ok(())
    }

    /// Each instance takes the share of the group's Stripe budget that its share of the
    /// partitions is, so the group as a whole stays under the configured rate.
    fn share_rate(&mut self) {
        let owned = self.states.len() as u64;
        let total = self.total_partitions.max(1) as u64;
        let share = |v: u32| {
            u32::try_from(u64::from(v) * owned / total)
                .unwrap_or(u32::MAX)
                .max(1)
        };
        self.limiter = TokenBucket::new(
            share(self.poll_cfg.rate_per_sec),
            share(self.poll_cfg.burst),
            Instant::now(),
        );
    }

    fn dispatch(&mut self) {
        if self.backoff.paused(Instant::now()) {
            return;
        }
        let wall = Utc::now();
        while self.polls.len() < self.poll_cfg.max_in_flight {
            let due = self
                .states
                .iter_mut()
                .filter_map(|(p, s)| s.next_due().map(|at| (*p, at)))
                .filter(|(_, at)| *at <= wall)
                .min_by_key(|(_, at)| *at);
            let Some((partition, _)) = due else {
                return;
            };
            if self.limiter.take(Instant::now()).is_err() {
                self.metrics.inc(
                    "reconciler_rate_limit_waits_total",
                    "dispatch rounds that had a due poll but no token",
                    &[],
                );
                return;
            }
            let Some((id, p)) = self
                .states
                .get_mut(&partition)
                .and_then(|s| s.take_due(wall, 1, &self.rules.schedule).pop())
            else {
                return;
            };
            let target = Target {
                id,
                intent: p.intent.map(String::from),
                created_at: p.created_at,
                misses: p.misses,
            };
            let (stripe, db, rules) = (self.stripe.clone(), self.primary.clone(), self.rules);
            self.polls.spawn(async move {
                let started = Instant::now();
                let result = poll::poll(&*stripe, &db, &target, &rules, Utc::now()).await;
                PollDone {
                    partition,
                    id: target.id,
                    took: started.elapsed(),
                    result,
                }
            });
        }
    }

    fn poll_done(&mut self, joined: Result<PollDone, JoinError>) {
        let done = match joined {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "a poll task failed");
                return;
            }
        };
        let label = match &done.result {
            Ok(o) => o.label(),
            Err(e) => e.label(),
        };
        self.metrics.inc(
            "reconciler_polls_total",
            "Stripe polls of pending payments, by outcome",
            &[("outcome", label)],
        );
        self.metrics.observe(
            "reconciler_poll_seconds",
            "duration of one poll (Stripe calls and the status change)",
            &[],
            done.took,
        );
        let id = done.id;
        if let (Ok(outcome), Some(s)) = (&done.result, self.states.get_mut(&done.partition)) {
            s.note_poll(id, outcome.usable());
        }
        match &done.result {
            Err(PollError::Stripe(GatewayError::RateLimited)) => {
                let pause = self.backoff.limited(Instant::now());
                let retry_at =
                    Utc::now() + chrono::Duration::from_std(pause).unwrap_or(chrono::Duration::MAX);
                if let Some(s) = self.states.get_mut(&done.partition) {
                    s.reschedule(id, retry_at);
                }
                tracing::warn!(payment_id = %id, backoff_ms = pause.as_millis() as u64, "stripe rate limit: polls paused");
                return;
            }
            Err(e) => {
                tracing::warn!(payment_id = %id, error = %e, "poll failed; next poll on schedule");
            }
            Ok(Outcome::Resolved { to, source }) => {
                tracing::info!(payment_id = %id, status = to.as_str(), source = source.as_str(), "resolved");
            }
            Ok(Outcome::Conflict { ours, stripe }) => {
                tracing::error!(payment_id = %id, ours = %ours, stripe = %stripe, "our final status disagrees with stripe");
            }
            Ok(_) => {}
        }
        self.backoff.succeeded(Instant::now());
    }

    fn gauges(&self) {
        let mut bytes = 0;
        for (p, s) in &self.states {
            bytes += s.approx_bytes();
            self.metrics.set_gauge(
                "reconciler_pending",
                "pending payments held in the state, per partition",
                &[("partition", &p.to_string())],
                i64::try_from(s.len()).unwrap_or(i64::MAX),
            );
        }
        self.metrics.set_gauge(
            "reconciler_state_bytes",
            "approximate heap bytes of the pending state",
            &[],
            i64::try_from(bytes).unwrap_or(i64::MAX),
        );
        self.metrics.set_gauge(
            "reconciler_partitions",
            "CDC partitions this instance holds state for (0 for long: the group gave it none)",
            &[],
            i64::try_from(self.states.len()).unwrap_or(i64::MAX),
        );
        self.metrics.set_gauge(
            "reconciler_polls_in_flight",
            "Stripe polls running now",
            &[],
            i64::try_from(self.polls.len()).unwrap_or(i64::MAX),
        );
    }
}

fn effect_label(e: Effect) -> &'static str {
    match e {
        Effect::Added => "added",
        Effect::Updated => "updated",
        Effect::Resolved { .. } => "resolved",
        Effect::Parked => "parked",
        Effect::Stale => "stale",
        Effect::Ignored => "ignored",
    }
}
