//! The stream worker: CDC changes in, the pending state per partition, timed Stripe polls,
//! `payment-status-update` out. One loop owns all state; polls and deliveries run
//! concurrently and report back to it.
//!
//! A message's work is done when its change is in the state and, if it carries a final
//! transition, that update is acknowledged by the broker. Only then is its offset stored
//! (and later committed), in consumption order, so a crash at any moment replays from
//! the last message whose work was done.
//!
//! The decisions are `engine`'s (pure, tested without Kafka); this file is the I/O around
//! it: Kafka, the database and Stripe turned into events, its commands carried out, and
//! metrics.

pub mod engine;
pub mod sink;
mod telemetry;
mod unconfirmed;

use std::collections::HashMap;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use paystream_core::gateway::{GatewayError, StripeGateway};
use paystream_service::Metrics;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::DeliveryFuture;
use tokio::task::{JoinError, JoinSet};
use uuid::Uuid;

use self::engine::{Command, DeliveryId, Engine, Event, Halt, Handed, Now, PollAnswer};
use self::sink::{Sink, SinkError};
use crate::config::{KafkaConfig, ReconcilerConfig};
use crate::envelope;
use crate::poll::{self, Outcome, PollError, Rules, Target};
use crate::recovery::{self, RecoveryError};
use crate::source::{self, CdcConsumer, Rebalanced};
use crate::sweep::{self, Swept};

/// The database handles, only ever passed through to `poll` and `recovery`: a change of
/// their pool types is a change of these two lines.
pub type PrimaryDb = paystream_db::Primary;
pub type ReplicaDb = paystream_db::Replica;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("loading state: {0}")]
    Recovery(#[from] RecoveryError),
    #[error("publishing a status update failed: {0}")]
    Publish(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(
        "{0} undecodable CDC records in a row (all in the dead-letter topic): the stream's format changed? stopping rather than skipping every change"
    )]
    Undecodable(u32),
    #[error(
        "the engine asked to dead-letter partition {partition} offset {offset}, which is not the record at hand"
    )]
    NoRecord { partition: i32, offset: i64 },
}

impl WorkerError {
    /// Whether starting the worker again cannot help: a run of undecodable records would
    /// only be read, and dead-lettered, again. Everything else (a lost broker, a replica
    /// that lags) a fresh start from the committed offsets mends.
    pub fn is_permanent(&self) -> bool {
        matches!(self, WorkerError::Undecodable(_))
    }
}

impl From<Halt> for WorkerError {
    fn from(h: Halt) -> Self {
        match h {
            Halt::Publish(e) => WorkerError::Publish(e),
            Halt::Undecodable(n) => WorkerError::Undecodable(n),
        }
    }
}

/// Unconfirmed messages allowed before the loop waits for the broker.
const MAX_UNCONFIRMED: usize = 10_000;
/// How often due polls are looked for (tokens accumulate in between, up to the burst).
const DISPATCH_EVERY: Duration = Duration::from_millis(25);
const GAUGES_EVERY: Duration = Duration::from_secs(2);

struct PollDone {
    partition: i32,
    id: Uuid,
    took: Duration,
    result: Result<Outcome, PollError>,
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Work running beside the loop, reporting back to it. Not `Sync`: the worker's async
/// methods take `&mut self`, so that the loop's future stays `Send` across their awaits.
#[derive(Default)]
struct InFlight {
    polls: JoinSet<PollDone>,
    sweeps: JoinSet<Result<Swept, GatewayError>>,
    deliveries: FuturesUnordered<Boxed<(DeliveryId, Result<(), String>)>>,
}

pub struct Worker<G> {
    kafka: KafkaConfig,
    rules: Rules,
    primary: Arc<PrimaryDb>,
    replica: ReplicaDb,
    stripe: Arc<G>,
    metrics: Arc<Metrics>,
    sink: Sink,
    engine: Engine,
    in_flight: InFlight,
}

impl<G: StripeGateway + 'static> Worker<G> {
    pub fn new(
        cfg: &ReconcilerConfig,
        primary: PrimaryDb,
        replica: ReplicaDb,
        stripe: Arc<G>,
        metrics: Arc<Metrics>,
        budget: engine::StripeBudget,
    ) -> Result<Self, WorkerError> {
        telemetry::zero(&metrics);
        Ok(Worker {
            kafka: cfg.kafka.clone(),
            rules: cfg.poll.rules(),
            primary: Arc::new(primary),
            replica,
            stripe,
            metrics,
            sink: Sink::new(&cfg.kafka)?,
            engine: Engine::with_budget(cfg.poll, budget),
            in_flight: InFlight::default(),
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
                Some((delivery, result)) = self.in_flight.deliveries.next(), if !self.in_flight.deliveries.is_empty() => {
                    self.step(consumer, Event::Delivered { delivery, result }, None).await?;
                }
                Some(joined) = self.in_flight.polls.join_next(), if !self.in_flight.polls.is_empty() => {
                    let event = self.poll_done(joined);
                    self.step(consumer, event, None).await?;
                }
                Some(joined) = self.in_flight.sweeps.join_next(), if !self.in_flight.sweeps.is_empty() => {
                    let result = joined.unwrap_or_else(|e| Err(GatewayError::Unavailable(format!("the sweep task failed: {e}"))));
                    self.step(consumer, Event::Swept(result), None).await?;
                }
                _ = dispatch.tick() => {
                    self.rebalance(consumer).await?;
                    self.step(consumer, Event::Tick, None).await?;
                }
                _ = gauges.tick() => telemetry::gauges(&self.metrics, &self.engine, self.in_flight.polls.len()),
                msg = consumer.recv() => {
                    self.rebalance(consumer).await?;
                    match msg {
                        Ok(m) => self.record(consumer, &m).await?,
                        Err(e) => tracing::warn!(error = %e, "kafka consumer error"),
                    }
                }
            }
        }
        tracing::info!(
            in_flight_polls = self.in_flight.polls.len(),
            unconfirmed = self.engine.unconfirmed(),
            "draining"
        );
        let mut committed = self.step(consumer, Event::Shutdown, None).await?;
        while !committed {
            let event = tokio::select! {
                Some(joined) = self.in_flight.polls.join_next(), if !self.in_flight.polls.is_empty() => self.poll_done(joined),
                Some((delivery, result)) = self.in_flight.deliveries.next(), if !self.in_flight.deliveries.is_empty() => Event::Delivered { delivery, result },
                else => break,
            };
            committed = self.step(consumer, event, None).await?;
        }
        if !committed {
            tracing::warn!(
                unconfirmed = self.engine.unconfirmed(),
                "nothing left in flight, yet the engine still waits: committing what is stored"
            );
            commit_stored(consumer);
        }
        consumer.unsubscribe();
        Ok(())
    }

    async fn record(
        &mut self,
        consumer: &CdcConsumer,
        m: &BorrowedMessage<'_>,
    ) -> Result<(), WorkerError> {
        let event = Event::Record {
            partition: m.partition(),
            offset: m.offset(),
            change: envelope::decode(m.key(), m.payload()),
        };
        self.step(consumer, event, Some(m)).await?;
        while self.engine.unconfirmed() >= MAX_UNCONFIRMED {
            let Some((delivery, result)) = self.in_flight.deliveries.next().await else {
                break;
            };
            self.step(consumer, Event::Delivered { delivery, result }, None)
                .await?;
        }
        Ok(())
    }

    /// Hands `event` to the engine and carries out its commands; `record` is the message
    /// the event came from, if any. Returns whether the final commit was made.
    async fn step(
        &mut self,
        consumer: &CdcConsumer,
        event: Event,
        record: Option<&BorrowedMessage<'_>>,
    ) -> Result<bool, WorkerError> {
        let mut committed = false;
        for command in self.engine.step(event, Now::system()) {
            match command {
                Command::StoreOffset { partition, offset } => {
                    if let Err(e) = consumer.store_offset(&self.kafka.cdc_topic, partition, offset)
                    {
                        // The partition was revoked meanwhile: its new owner replays from
                        // the last commit.
                        tracing::debug!(partition, offset, error = %e, "offset not stored");
                    }
                }
                Command::Publish { delivery, update } => {
                    telemetry::published(&self.metrics, &update);
                    let f = self.sink.status(&update).await?;
                    let published = Published {
                        payment_id: update.payment_id,
                        status: update.status.as_str(),
                        source: update.resolution_source.clone(),
                        version: update.version,
                    };
                    self.track(delivery, f, Some(published));
                }
                Command::DeadLetter {
                    delivery,
                    partition,
                    offset,
                    error,
                } => {
                    let m = record
                        .filter(|m| m.partition() == partition && m.offset() == offset)
                        .ok_or(WorkerError::NoRecord { partition, offset })?;
                    let f = self.sink.dead_letter(m, &error).await?;
                    self.track(delivery, f, None);
                }
                Command::StartPoll { partition, target } => self.spawn_poll(partition, target),
                Command::ApplySwept(s) => {
                    let db = self.primary.clone();
                    self.in_flight.polls.spawn(async move {
                        let started = Instant::now();
                        let result = poll::apply_swept(&db, s.id, &s.event, &s.intent).await;
                        PollDone {
                            partition: s.partition,
                            id: s.id,
                            took: started.elapsed(),
                            result,
                        }
                    });
                }
                Command::Sweep { from, pages } => {
                    let (stripe, budget) = (self.stripe.clone(), self.engine.budget());
                    self.in_flight
                        .sweeps
                        .spawn(async move { sweep::fetch(&*stripe, &budget, from, pages).await });
                }
                Command::Seek { partition, offset } => {
                    let seek = tokio::task::block_in_place(|| {
                        consumer.seek(
                            &self.kafka.cdc_topic,
                            partition,
                            rdkafka::Offset::Offset(offset),
                            Duration::from_secs(2),
                        )
                    });
                    if let Err(e) = seek {
                        tracing::debug!(partition, error = %e, "seek failed; older messages are skipped instead");
                    }
                }
                Command::CommitStart(starts) => {
                    let mut tpl = rdkafka::TopicPartitionList::new();
                    for (p, offset) in starts {
                        tpl.add_partition_offset(
                            &self.kafka.cdc_topic,
                            p,
                            rdkafka::Offset::Offset(offset),
                        )?;
                    }
                    tokio::task::block_in_place(|| consumer.commit(&tpl, CommitMode::Sync))?;
                }
                Command::Commit => {
                    commit_stored(consumer);
                    committed = true;
                }
                Command::Rejoin => {
                    tracing::warn!(
                        "holding no partition for a while: rejoining the consumer group"
                    );
                    consumer.unsubscribe();
                    consumer.subscribe(&[&self.kafka.cdc_topic])?;
                }
                Command::Halt(h) => return Err(h.into()),
                Command::Count(c) => telemetry::count(&self.metrics, c),
            }
        }
        Ok(committed)
    }

    /// Follows a delivery; a status update's (`published`) gets one log line once the
    /// broker confirms it, with where it landed.
    fn track(&mut self, delivery: DeliveryId, f: DeliveryFuture, published: Option<Published>) {
        let topic = self.kafka.status_topic.clone();
        self.in_flight.deliveries.push(Box::pin(async move {
            let result = match f.await {
                Ok(Ok(d)) => {
                    if let Some(p) = &published {
                        tracing::info!(
                            payment_id = %p.payment_id,
                            status = p.status,
                            source = p.source.as_deref().unwrap_or_default(),
                            version = p.version,
                            topic = %topic,
                            partition = d.partition,
                            offset = d.offset,
                            "status update published"
                        );
                    }
                    Ok(())
                }
                Ok(Err((e, _))) => Err(e.to_string()),
                Err(_) => Err("the producer went away".into()),
            };
            if let (Err(e), Some(p)) = (&result, &published) {
                tracing::warn!(payment_id = %p.payment_id, status = p.status, error = %e, "status update not delivered");
            }
            (delivery, result)
        }));
    }

    async fn rebalance(&mut self, consumer: &CdcConsumer) -> Result<(), WorkerError> {
        for r in consumer.context().take_rebalances() {
            match r {
                Rebalanced::Revoked(ps) => {
                    for p in &ps {
                        self.metrics
                            .remove_gauge("reconciler_pending", &[("partition", &p.to_string())]);
                    }
                    self.step(consumer, Event::Revoked(ps), None).await?;
                }
                Rebalanced::Assigned(ps) if ps.is_empty() => {
                    let event = Event::Assigned {
                        total_partitions: 1,
                        partitions: Vec::new(),
                    };
                    self.step(consumer, event, None).await?;
                }
                Rebalanced::Assigned(ps) => {
                    let started = Instant::now();
                    let (total_partitions, partitions) = self.load(consumer, &ps).await?;
                    let pending: usize = partitions.iter().map(|h| h.state.len()).sum();
                    let event = Event::Assigned {
                        total_partitions,
                        partitions,
                    };
                    self.step(consumer, event, None).await?;
                    let took = started.elapsed();
                    self.metrics.observe(
                        "reconciler_state_load_seconds",
                        "time to rebuild the state of newly assigned partitions from the replica",
                        &[],
                        took,
                    );
                    tracing::info!(partitions = ?ps, pending, took_ms = took.as_millis() as u64, "state loaded");
                    telemetry::gauges(&self.metrics, &self.engine, self.in_flight.polls.len());
                }
            }
        }
        Ok(())
    }

    /// What the engine needs to take `ps` over: the topic's partition count, and for each
    /// partition its state from the replica and, if new to the group, where it starts.
    async fn load(
        &mut self,
        consumer: &CdcConsumer,
        ps: &[i32],
    ) -> Result<(i32, Vec<Handed>), WorkerError> {
        let topic = &self.kafka.cdc_topic;
        let meta = tokio::task::block_in_place(|| {
            consumer.fetch_metadata(Some(topic), Duration::from_secs(10))
        })?;
        let total_partitions = meta.topics().first().map_or(1, |t| {
            i32::try_from(t.partitions().len()).unwrap_or(1).max(1)
        });
        // Positions first, state second: the state is then at least as new as them.
        let positions = source::committed_and_ends(consumer, topic, ps)?;
        let mut attempt = 0;
        let loaded = loop {
            match recovery::load(
                &self.primary,
                &self.replica,
                ps,
                total_partitions,
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
        // A partition the group never committed an offset for starts at its end: its
        // older changes are in the state just read.
        let fresh: HashMap<i32, i64> = positions
            .into_iter()
            .filter(|(_, committed, _)| committed.is_none())
            .map(|(p, _, end)| (p, end))
            .collect();
        let mut partitions: Vec<Handed> = loaded
            .into_iter()
            .map(|(partition, state)| Handed {
                partition,
                state,
                start_at: fresh.get(&partition).copied(),
            })
            .collect();
        partitions.sort_by_key(|h| h.partition);
        Ok((total_partitions, partitions))
    }

    fn spawn_poll(&mut self, partition: i32, target: Target) {
        let (stripe, db, rules) = (self.stripe.clone(), self.primary.clone(), self.rules);
        self.in_flight.polls.spawn(async move {
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

    /// A finished poll task as an event, with its metrics and logs.
    fn poll_done(&self, joined: Result<PollDone, JoinError>) -> Event {
        let done = match joined {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "a poll task failed");
                return Event::PollLost;
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
        let took_ms = u64::try_from(done.took.as_millis()).unwrap_or(u64::MAX);
        let answer = match &done.result {
            Err(PollError::Stripe(GatewayError::RateLimited)) => {
                tracing::info!(payment_id = %id, outcome = label, took_ms, "poll rate limited; polls paused");
                PollAnswer::RateLimited
            }
            Err(e) => {
                tracing::warn!(payment_id = %id, outcome = label, took_ms, error = %e, "poll failed; next poll on schedule");
                PollAnswer::Failed
            }
            Ok(outcome) => {
                // One line per poll, whatever it found.
                match outcome {
                    Outcome::Resolved { to, source } => {
                        tracing::info!(payment_id = %id, outcome = label, took_ms, status = to.as_str(), source = source.as_str(), "resolved");
                    }
                    Outcome::Conflict { ours, stripe } => {
                        tracing::error!(payment_id = %id, outcome = label, took_ms, ours = %ours, stripe = %stripe, "our final status disagrees with stripe");
                    }
                    _ => {
                        tracing::info!(payment_id = %id, outcome = label, took_ms, "polled");
                    }
                }
                PollAnswer::Answered {
                    usable: outcome.usable(),
                }
            }
        };
        Event::PollDone {
            partition: done.partition,
            id,
            answer,
        }
    }
}

/// What a status update said, for its log line once delivered.
struct Published {
    payment_id: Uuid,
    status: &'static str,
    source: Option<String>,
    version: i64,
}

fn commit_stored(consumer: &CdcConsumer) {
    if let Err(e) = tokio::task::block_in_place(|| consumer.commit_consumer_state(CommitMode::Sync))
    {
        tracing::debug!(error = %e, "nothing to commit at shutdown");
    }
}
