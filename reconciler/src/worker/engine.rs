//! The worker's decisions, apart from its I/O: events in (records, delivery outcomes,
//! poll answers, rebalances, ticks), commands out (store an offset, publish, dead-letter,
//! start a poll, commit, rejoin, halt). Synchronous, with the time handed in, so that
//! ordering, rebalances and backoff are tested without a broker, a database or a clock.
//!
//! What it keeps:
//! - offsets are stored only once a message's work is done (its change in the state, its
//!   update or dead letter confirmed by the broker), in consumption order per partition;
//! - a message consumed before a rebalance never stores an offset afterwards (epochs): its
//!   partition may have been handed over, and maybe back, meanwhile;
//! - a partition new to the group skips the messages before the end offset taken before
//!   its state was read (they are in that state already);
//! - a run of undecodable records halts instead of dead-lettering every change;
//! - polls stay within the instance's share of the Stripe budget and pause on a 429;
//! - a sweep of Stripe's events puts the polls of payments that moved first (`sweep`);
//! - an instance that holds no partition for a while asks to rejoin its group.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use paystream_core::gateway::{GatewayError, IntentEvent};
use paystream_core::ratelimit::TokenBucket;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::config::PollConfig;
use crate::envelope::{Change, DecodeError};
use crate::output::StatusUpdate;
use crate::poll::Target;
use crate::schedule::Schedule;
use crate::source::Rejoin;
use crate::state::{Effect, PendingState};
use crate::sweep::{self, Swept};

pub use super::unconfirmed::DeliveryId;
use super::unconfirmed::Unconfirmed;

pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
pub const REJOIN_AFTER: Duration = Duration::from_secs(20);
pub const REJOIN_AT_MOST_EVERY: Duration = Duration::from_secs(600);
/// How long, and how many, swept events about payments not yet held are kept for their
/// rows to arrive: CDC is behind by well under a second, or seconds under a burst.
const EARLY_FOR: chrono::Duration = chrono::Duration::minutes(2);
const EARLY_MAX: usize = 20_000;

/// The two clocks the engine reads: monotonic for rates and pauses, wall for the poll
/// schedule (which is anchored to the payments' `created_at`).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall: DateTime<Utc>,
}

impl Now {
    pub fn system() -> Self {
        Now {
            mono: Instant::now(),
            wall: Utc::now(),
        }
    }

    /// `d` later on both clocks.
    pub fn after(self, d: Duration) -> Self {
        Now {
            mono: self.mono + d,
            wall: self.wall + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX),
        }
    }
}

/// What became of a poll, as far as the engine cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollAnswer {
    /// Stripe answered; `usable` says whether the answer counts as one (see `Outcome::usable`).
    Answered { usable: bool },
    /// Stripe said 429.
    RateLimited,
    /// Any other failure: the payment is polled again on its schedule.
    Failed,
}

/// A partition handed to this instance, with its state as read from the replica.
#[derive(Debug, Default)]
pub struct Handed {
    pub partition: i32,
    pub state: PendingState,
    /// Set when the group never committed an offset for it: the end offset taken before
    /// the state was read, where consumption starts.
    pub start_at: Option<i64>,
}

#[derive(Debug)]
pub enum Event {
    Record {
        partition: i32,
        offset: i64,
        change: Result<Change, DecodeError>,
    },
    Delivered {
        delivery: DeliveryId,
        result: Result<(), String>,
    },
    PollDone {
        partition: i32,
        id: Uuid,
        answer: PollAnswer,
    },
    /// A poll task that ended without an answer (it panicked).
    PollLost,
    Revoked(Vec<i32>),
    Assigned {
        /// Partitions of the topic (the engine keeps the last non-empty assignment's).
        total_partitions: i32,
        partitions: Vec<Handed>,
    },
    /// What a sweep of Stripe's events found (see `Command::Sweep`).
    Swept(Result<Swept, GatewayError>),
    Tick,
    /// No more records or polls; finish what is in flight, then commit.
    Shutdown,
}

/// A final status a sweep read for a payment held here, waiting to be applied.
#[derive(Debug, Clone)]
pub struct SweptStatus {
    pub partition: i32,
    pub id: Uuid,
    pub event: String,
    pub intent: paystream_core::IntentView,
}

/// Why the worker must stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Halt {
    /// Not storing the failed message's offset is not enough: later messages would store
    /// theirs past it. Stopping makes the group replay from the last confirmed message.
    #[error("publishing a status update failed: {0}")]
    Publish(String),
    #[error(
        "{0} undecodable CDC records in a row (all in the dead-letter topic): the stream's format changed? stopping rather than skipping every change"
    )]
    Undecodable(u32),
}

/// What the shell reports as metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Undecodable,
    Applied {
        effect: Effect,
        commit_ts_ms: Option<i64>,
    },
    /// Messages whose work the broker confirmed (updates and the offsets behind them).
    Confirmed(u64),
    /// A dispatch round had a due poll but no token.
    RateLimitWait,
    /// A sweep: its Stripe calls, the events new to it, the polls it put first, and
    /// whether it left events unread.
    Swept {
        calls: u32,
        events: usize,
        nudged: usize,
        truncated: bool,
    },
    SweepFailed,
    /// A swept event that came before its payment's row was acted on when the row came.
    NudgedLate,
}

#[derive(Debug, Clone)]
pub enum Command {
    StoreOffset {
        partition: i32,
        offset: i64,
    },
    Publish {
        delivery: DeliveryId,
        update: StatusUpdate,
    },
    /// The record just handed in goes, whole, to the dead-letter topic.
    DeadLetter {
        delivery: DeliveryId,
        partition: i32,
        offset: i64,
        error: String,
    },
    StartPoll {
        partition: i32,
        target: Target,
    },
    /// Read at most `pages` pages of Stripe's events from where the cursor says; the
    /// answer comes back as `Event::Swept`.
    Sweep {
        from: sweep::From,
        pages: u32,
    },
    /// Apply the final status a swept event says (no Stripe call); the answer comes back
    /// as `Event::PollDone`, like a poll's.
    ApplySwept(SweptStatus),
    /// Position a partition new to the group at its start offset.
    Seek {
        partition: i32,
        offset: i64,
    },
    /// Commit the start offsets of partitions new to the group at once: a later owner that
    /// also found no commit would otherwise start at its own, later end and skip every
    /// change in between, final transitions included (I3).
    CommitStart(Vec<(i32, i64)>),
    /// Everything in flight is finished: commit what is stored.
    Commit,
    Rejoin,
    Halt(Halt),
    Count(Count),
}

/// The instance's Stripe budget: a token bucket every caller draws from (payment polls,
/// refund polls, event sweeps), and one backoff they all obey, because Stripe's rate
/// limit is the account's: a 429 on any call slows every loop of the instance, not just
/// the one that met it. A std mutex: held for a few instructions, never across an await.
#[derive(Debug, Clone)]
pub struct StripeBudget(std::sync::Arc<std::sync::Mutex<(TokenBucket, Backoff)>>);

impl StripeBudget {
    pub fn new(bucket: TokenBucket) -> Self {
        StripeBudget(std::sync::Arc::new(std::sync::Mutex::new((
            bucket,
            Backoff::new(MIN_BACKOFF, MAX_BACKOFF),
        ))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (TokenBucket, Backoff)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One call's token, or how long until there may be one (a pause after a 429 first).
    pub fn take(&self, now: Instant) -> Result<(), Duration> {
        let mut g = self.lock();
        if let Some(wait) = g.1.pause_left(now) {
            return Err(wait);
        }
        g.0.take(now)
    }

    /// Whether calls wait at `now` after a 429.
    pub fn paused(&self, now: Instant) -> bool {
        self.lock().1.paused(now)
    }

    /// Stripe answered 429 at `now`: every caller pauses, twice as long as last time.
    pub fn limited(&self, now: Instant) -> Duration {
        self.lock().1.limited(now)
    }

    /// Stripe answered a call without a 429.
    pub fn answered(&self, now: Instant) {
        self.lock().1.succeeded(now);
    }

    /// A new rate, the backoff kept.
    fn replace(&self, bucket: TokenBucket) {
        self.lock().0 = bucket;
    }
}

#[derive(Debug)]
pub struct Engine {
    poll_cfg: PollConfig,
    schedule: Schedule,
    states: HashMap<i32, PendingState>,
    start_at: HashMap<i32, i64>,
    total_partitions: i32,
    /// Changes at every rebalance.
    epoch: u64,
    unconfirmed: Unconfirmed,
    /// The instance's Stripe budget, shared with the refund worker: one rate and one
    /// backoff for every call this instance makes, payments and refunds alike.
    limiter: StripeBudget,
    polls_in_flight: usize,
    /// Undecodable records in a row (see `PollConfig::halt_after_undecodable`).
    undecodable_run: u32,
    rejoin: Rejoin,
    sweep: sweep::Cursor,
    /// Swept events about payments not held when read, by payment (see `act`).
    early: HashMap<Uuid, (IntentEvent, DateTime<Utc>)>,
    /// Final statuses sweeps read, applied as poll slots free up (they need no token).
    swept: std::collections::VecDeque<SweptStatus>,
    /// Pages one sweep may read: at most half of the instance's share of the rate over a
    /// sweep period, so sweeps never starve polls however many instances each read the
    /// account's whole event list.
    sweep_pages: u32,
    draining: bool,
    committed: bool,
}

impl Engine {
    pub fn new(poll_cfg: PollConfig, now: Instant) -> Self {
        Self::with_budget(poll_cfg, StripeBudget::new(TokenBucket::new(1, 1, now)))
    }

    /// The same, drawing on `budget` (shared with the refund worker, and kept across
    /// restarts of the worker).
    pub fn with_budget(poll_cfg: PollConfig, budget: StripeBudget) -> Self {
        Engine {
            poll_cfg,
            schedule: poll_cfg.rules().schedule,
            states: HashMap::new(),
            start_at: HashMap::new(),
            total_partitions: 1,
            epoch: 0,
            unconfirmed: Unconfirmed::default(),
            limiter: budget,
            polls_in_flight: 0,
            undecodable_run: 0,
            rejoin: Rejoin::new(REJOIN_AFTER, REJOIN_AT_MOST_EVERY),
            sweep: sweep::Cursor::new(Duration::from_millis(poll_cfg.sweep_every_ms)),
            swept: std::collections::VecDeque::new(),
            early: HashMap::new(),
            sweep_pages: 1,
            draining: false,
            committed: false,
        }
    }

    pub fn states(&self) -> impl Iterator<Item = (i32, &PendingState)> {
        self.states.iter().map(|(p, s)| (*p, s))
    }

    /// The instance's Stripe budget, for calls made outside the engine (sweep pages).
    pub fn budget(&self) -> StripeBudget {
        self.limiter.clone()
    }

    pub fn partitions(&self) -> usize {
        self.states.len()
    }

    pub fn polls_in_flight(&self) -> usize {
        self.polls_in_flight
    }

    /// Messages consumed whose work is not yet confirmed.
    pub fn unconfirmed(&self) -> usize {
        self.unconfirmed.len()
    }

    pub fn step(&mut self, event: Event, now: Now) -> Vec<Command> {
        let mut out = Vec::new();
        match event {
            Event::Record {
                partition,
                offset,
                change,
            } => self.record(partition, offset, change, now, &mut out),
            Event::Delivered { delivery, result } => {
                self.delivered(delivery, result, &mut out);
                self.finish_if_drained(&mut out);
            }
            Event::PollDone {
                partition,
                id,
                answer,
            } => {
                self.polls_in_flight = self.polls_in_flight.saturating_sub(1);
                self.poll_done(partition, id, answer, now);
                self.dispatch(now, &mut out);
                self.finish_if_drained(&mut out);
            }
            Event::PollLost => {
                self.polls_in_flight = self.polls_in_flight.saturating_sub(1);
                self.dispatch(now, &mut out);
                self.finish_if_drained(&mut out);
            }
            Event::Revoked(ps) => {
                self.epoch += 1;
                for p in &ps {
                    self.states.remove(p);
                    self.start_at.remove(p);
                }
                self.share_rate(now.mono);
            }
            Event::Assigned {
                total_partitions,
                partitions,
            } => self.assigned(total_partitions, partitions, now, &mut out),
            Event::Swept(result) => {
                self.swept(result, now, &mut out);
                self.dispatch(now, &mut out);
            }
            Event::Tick => {
                self.dispatch(now, &mut out);
                self.start_sweep(now, &mut out);
                if self.rejoin.due(!self.states.is_empty(), now.mono) {
                    out.push(Command::Rejoin);
                }
            }
            Event::Shutdown => {
                self.draining = true;
                self.finish_if_drained(&mut out);
            }
        }
        out
    }

    fn record(
        &mut self,
        partition: i32,
        offset: i64,
        change: Result<Change, DecodeError>,
        now: Now,
        out: &mut Vec<Command>,
    ) {
        let Some(state) = self.states.get_mut(&partition) else {
            return;
        };
        if self.start_at.get(&partition).is_some_and(|s| offset < *s) {
            return;
        }
        let change = match change {
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
                out.push(Command::Count(Count::Undecodable));
                if self.undecodable_run >= self.poll_cfg.halt_after_undecodable.max(1) {
                    out.push(Command::Halt(Halt::Undecodable(self.undecodable_run)));
                    return;
                }
                let delivery = self.unconfirmed.wait(partition, offset, self.epoch);
                out.push(Command::DeadLetter {
                    delivery,
                    partition,
                    offset,
                    error: e.to_string(),
                });
                return;
            }
        };
        let effect = state.apply(&change, &self.schedule);
        out.push(Command::Count(Count::Applied {
            effect,
            commit_ts_ms: change.commit_ts_ms(),
        }));
        if matches!(effect, Effect::Added | Effect::Updated)
            && let Some((e, _)) = self.early.remove(&change.id())
            && self.act(change.id(), e, now)
        {
            out.push(Command::Count(Count::NudgedLate));
        }
        match change.final_transition() {
            Some(update) => {
                let delivery = self.unconfirmed.wait(partition, offset, self.epoch);
                out.push(Command::Publish { delivery, update });
            }
            None => {
                if self.unconfirmed.done_now(partition, offset, self.epoch) {
                    out.push(Command::StoreOffset { partition, offset });
                }
            }
        }
    }

    fn delivered(
        &mut self,
        delivery: DeliveryId,
        result: Result<(), String>,
        out: &mut Vec<Command>,
    ) {
        let Some(released) = self.unconfirmed.settle(delivery, result, self.epoch) else {
            tracing::warn!(?delivery, "a delivery outcome for nothing waiting");
            return;
        };
        if released.confirmed > 0 {
            out.push(Command::Count(Count::Confirmed(released.confirmed)));
        }
        if let Some(offset) = released.store {
            out.push(Command::StoreOffset {
                partition: released.partition,
                offset,
            });
        }
        if let Some(e) = released.failed {
            out.push(Command::Halt(Halt::Publish(e)));
        }
    }

    fn assigned(
        &mut self,
        total_partitions: i32,
        partitions: Vec<Handed>,
        now: Now,
        out: &mut Vec<Command>,
    ) {
        self.epoch += 1;
        if !partitions.is_empty() {
            self.total_partitions = total_partitions.max(1);
        }
        let mut fresh = Vec::new();
        for h in partitions {
            if let Some(end) = h.start_at {
                self.start_at.insert(h.partition, end);
                out.push(Command::Seek {
                    partition: h.partition,
                    offset: end,
                });
                fresh.push((h.partition, end));
            }
            self.states.insert(h.partition, h.state);
        }
        if !fresh.is_empty() {
            out.push(Command::CommitStart(fresh));
        }
        self.share_rate(now.mono);
    }

    /// Each instance takes the share of the group's Stripe budget that its share of the
    /// partitions is, so the group as a whole stays under the configured rate.
    fn share_rate(&mut self, now: Instant) {
        let owned = self.states.len() as u64;
        let total = self.total_partitions.max(1) as u64;
        let share = |v: u32| {
            u32::try_from(u64::from(v) * owned / total)
                .unwrap_or(u32::MAX)
                .max(1)
        };
        let rate = share(self.poll_cfg.rate_per_sec);
        self.limiter
            .replace(TokenBucket::new(rate, share(self.poll_cfg.burst), now));
        let per_sweep = u64::from(rate) * self.poll_cfg.sweep_every_ms / 2_000;
        self.sweep_pages = u32::try_from(per_sweep)
            .unwrap_or(u32::MAX)
            .clamp(1, self.poll_cfg.sweep_max_pages.max(1));
    }

    fn dispatch(&mut self, now: Now, out: &mut Vec<Command>) {
        if self.draining {
            return;
        }
        while self.polls_in_flight < self.poll_cfg.max_in_flight {
            let Some(s) = self.swept.pop_front() else {
                break;
            };
            // Its partition may have been revoked meanwhile: the new owner's state has it.
            if self.states.contains_key(&s.partition) {
                self.polls_in_flight += 1;
                out.push(Command::ApplySwept(s));
            }
        }
        // A sweep's page serves up to a hundred payments, a poll one: while a sweep reads,
        // its pages get the tokens (at most half of a period's, see `sweep_pages`).
        if self.limiter.paused(now.mono) || self.sweep.is_running(now.mono) {
            return;
        }
        while self.polls_in_flight < self.poll_cfg.max_in_flight {
            let due = self
                .states
                .iter_mut()
                .filter_map(|(p, s)| s.due(now.wall, &self.schedule).map(|key| (*p, key)))
                .min_by_key(|(_, key)| *key);
            let Some((partition, _)) = due else {
                return;
            };
            if self.limiter.take(now.mono).is_err() {
                out.push(Command::Count(Count::RateLimitWait));
                return;
            }
            let Some((id, p)) = self
                .states
                .get_mut(&partition)
                .and_then(|s| s.take_due(now.wall, 1, &self.schedule).pop())
            else {
                return;
            };
            self.polls_in_flight += 1;
            out.push(Command::StartPoll {
                partition,
                target: Target {
                    id,
                    intent: p.intent.map(String::from),
                    created_at: p.created_at,
                    misses: p.misses,
                },
            });
        }
    }

    /// A sweep is worth its call only while some payment is pending here.
    fn start_sweep(&mut self, now: Now, out: &mut Vec<Command>) {
        if self.draining
            || self.limiter.paused(now.mono)
            || self.states.values().all(PendingState::is_empty)
        {
            return;
        }
        if let Some(from) = self.sweep.start(now) {
            out.push(Command::Sweep {
                from,
                pages: self.sweep_pages,
            });
        }
    }

    /// Each payment held here that one of the swept events names (by our payment id, on
    /// the intent the payment holds, or any while it holds none yet): a final status is
    /// applied as read, at no further Stripe call; anything else (an authorization, a
    /// status we do not know) puts the payment's poll first.
    fn swept(&mut self, result: Result<Swept, GatewayError>, now: Now, out: &mut Vec<Command>) {
        let swept = match result {
            Ok(s) => s,
            Err(e) => {
                self.sweep.failed(now);
                out.push(Command::Count(Count::SweepFailed));
                if e == GatewayError::RateLimited {
                    let pause = self.limiter.limited(now.mono);
                    tracing::warn!(
                        backoff_ms = pause.as_millis() as u64,
                        "stripe rate limit on the event sweep: polls paused"
                    );
                } else {
                    tracing::warn!(error = %e, "event sweep failed; next one on schedule");
                }
                return;
            }
        };
        self.limiter.answered(now.mono);
        let (calls, truncated) = (swept.calls, swept.truncated);
        let fresh = self.sweep.finish(swept, now);
        let events = fresh.len();
        let mut nudged = 0;
        self.early
            .retain(|_, (_, seen)| now.wall - *seen < EARLY_FOR);
        for e in fresh {
            let Some(id) = e
                .intent
                .payment_id
                .as_deref()
                .and_then(|p| p.parse::<Uuid>().ok())
            else {
                continue;
            };
            if self.act(id, e, now) {
                nudged += 1;
            }
        }
        if truncated {
            tracing::info!(
                calls,
                "event sweep stopped at its page limit; the next one goes on"
            );
        }
        out.push(Command::Count(Count::Swept {
            calls,
            events,
            nudged,
            truncated,
        }));
    }

    /// Acts on a swept event about payment `id`: a final status is queued to be applied,
    /// anything else puts the payment's poll first. An event about a payment not held (yet:
    /// its row may reach the state through CDC after Stripe moved it) is kept a while, for
    /// `record` to act on when the row arrives. Returns whether it acted.
    fn act(&mut self, id: Uuid, e: IntentEvent, now: Now) -> bool {
        let held = self.states.iter_mut().find_map(|(partition, state)| {
            let p = state.get(&id)?;
            p.intent
                .as_deref()
                .is_none_or(|pi| pi == e.intent.id)
                .then_some((*partition, state))
        });
        let Some((partition, state)) = held else {
            if self.early.len() < EARLY_MAX {
                self.early.insert(id, (e, now.wall));
            }
            return false;
        };
        if e.intent.status().is_some_and(|s| s.is_final()) {
            tracing::info!(payment_id = %id, event = %e.id, stripe_status = %e.intent.stripe_status, "final at stripe: applied from the event sweep");
            // Its scheduled poll would only find it final: pushed back while the change
            // reaches the state through CDC.
            state.reschedule(id, now.wall + chrono::Duration::seconds(60), &self.schedule);
            self.swept.push_back(SweptStatus {
                partition,
                id,
                event: e.id,
                intent: e.intent,
            });
        } else {
            tracing::info!(payment_id = %id, event = %e.id, stripe_status = %e.intent.stripe_status, "moved at stripe: polled first");
            state.nudge(id, now.wall);
        }
        true
    }

    fn poll_done(&mut self, partition: i32, id: Uuid, answer: PollAnswer, now: Now) {
        match answer {
            PollAnswer::Answered { usable } => {
                if let Some(s) = self.states.get_mut(&partition) {
                    let misses = s.note_poll(id, usable);
                    if !usable {
                        s.back_off(id, misses, now.wall, &self.schedule);
                    }
                }
            }
            PollAnswer::RateLimited => {
                let pause = self.limiter.limited(now.mono);
                let retry_at =
                    now.wall + chrono::Duration::from_std(pause).unwrap_or(chrono::Duration::MAX);
                if let Some(s) = self.states.get_mut(&partition) {
                    s.reschedule(id, retry_at, &self.schedule);
                }
                tracing::warn!(payment_id = %id, backoff_ms = pause.as_millis() as u64, "stripe rate limit: polls paused");
                return;
            }
            // Only a 429 says anything about Stripe's rate.
            PollAnswer::Failed => {}
        }
        self.limiter.answered(now.mono);
    }

    fn finish_if_drained(&mut self, out: &mut Vec<Command>) {
        if self.draining
            && !self.committed
            && self.polls_in_flight == 0
            && self.unconfirmed.is_empty()
        {
            self.committed = true;
            out.push(Command::Commit);
        }
    }
}

#[cfg(test)]
mod tests;
