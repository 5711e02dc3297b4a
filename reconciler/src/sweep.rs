//! The event sweep: every few seconds, one call to Stripe's event list says which
//! PaymentIntents have moved (succeeded, canceled, authorized) since the last sweep, for
//! any number of pending payments. A payment we hold whose intent an event shows final is
//! given that status through the one status function, as a webhook of the same event
//! would (a final status is final: the event's rendering of it needs no fresh read); one
//! shown authorized gets its poll at once, ahead of every scheduled one
//! (`PendingState::nudge`). So per-payment polls can back off for long-abandoned payments,
//! and a payment confirmed at Stripe while its webhook is lost resolves within a sweep,
//! whatever the size of the pending set.
//!
//! Stripe's `created` is in whole seconds and an event may be listed a moment after the
//! second it carries, so each sweep lists from `OVERLAP` before the newest event seen, and
//! its walk (newest first) ends at the first page holding an event an earlier sweep read
//! (or older than `LISTED_LATE` before the newest): a busy account costs a page or two a
//! sweep, not its whole overlap. An event is handed on once; one naming a payment not
//! held yet is kept by the engine for its row to arrive through CDC. A sweep never reaches
//! back further than `LOOKBACK` (after a pause, older changes are the scheduled polls' to
//! find).
//! A sweep reads at most `max_pages` pages; when more are left, the next sweep goes on
//! from where it stopped (Stripe's `starting_after` cursor) before starting afresh, so a
//! burst of events is read over a few sweeps rather than skipped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paystream_core::gateway::{GatewayError, IntentEvent, StripeGateway};

use crate::worker::engine::{Now, StripeBudget};

/// The events that say an intent needs our attention now.
pub const TYPES: [&str; 3] = [
    "payment_intent.succeeded",
    "payment_intent.canceled",
    "payment_intent.amount_capturable_updated",
];

pub const OVERLAP_SECS: i64 = 10;
/// How late (seconds after its `created`) an event may appear in Stripe's list and still
/// be read by the sweep after the one that read its neighbours.
pub const LISTED_LATE_SECS: i64 = 3;
const STALLED: Duration = Duration::from_secs(30);
pub const LOOKBACK_SECS: i64 = 300;

/// What one sweep read.
#[derive(Debug, Clone, Default)]
pub struct Swept {
    pub events: Vec<IntentEvent>,
    /// Pages read (one Stripe call each).
    pub calls: u32,
    /// More events were left than `max_pages` allowed: the next sweep goes on after
    /// `last`.
    pub truncated: bool,
    /// The last event read.
    pub last: Option<String>,
}

/// Where a sweep lists from: events created at or after `since`, after the event `after`
/// when it goes on with an earlier sweep's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct From {
    pub since: i64,
    pub after: Option<String>,
    /// Earlier sweeps read everything created before this: the walk ends once its pages
    /// reach older events. The overlap catches an event listed late; re-reading the whole
    /// overlap every sweep would, at hundreds of events a second, cost tens of pages.
    pub read_below: Option<i64>,
    /// Events earlier sweeps read: the walk ends at a page holding one.
    pub known: Arc<HashSet<String>>,
}

/// When to sweep and from where.
#[derive(Debug)]
pub struct Cursor {
    every: Duration,
    next_at: Option<Instant>,
    /// When the sweep reading now started.
    running: Option<Instant>,
    /// The newest event's `created` seen so far.
    newest: Option<i64>,
    /// The list the last sweep did not finish, and where it stopped.
    resume: Option<From>,
    /// Where the sweep running now lists from.
    current: Option<From>,
    /// Events read within `OVERLAP_SECS` of `newest`, by id.
    read: HashMap<String, i64>,
}

impl Cursor {
    /// `every` zero: never sweeps.
    pub fn new(every: Duration) -> Self {
        Cursor {
            every,
            next_at: None,
            running: None,
            newest: None,
            resume: None,
            current: None,
            read: HashMap::new(),
        }
    }

    /// Whether a sweep starts at `now`, and where it lists from.
    pub fn start(&mut self, now: Now) -> Option<From> {
        if self.every.is_zero()
            || self.is_running(now.mono)
            || self.next_at.is_some_and(|t| now.mono < t)
        {
            return None;
        }
        self.running = Some(now.mono);
        let floor = now.wall.timestamp() - LOOKBACK_SECS;
        // A walk being continued may have started up to a lookback earlier; one older than
        // that is given up (a burst longer than the sweeps can read is the polls' to find).
        let from = match self.resume.take() {
            Some(r) if r.since >= floor - LOOKBACK_SECS => r,
            _ => From {
                since: self.newest.map_or(floor, |n| (n - OVERLAP_SECS).max(floor)),
                after: None,
                read_below: self.newest.map(|n| n - LISTED_LATE_SECS),
                known: Arc::new(self.read.keys().cloned().collect()),
            },
        };
        self.current = Some(from.clone());
        Some(from)
    }

    /// Whether a sweep is reading at `now`. One reading for longer than `STALLED` (its
    /// calls time out long before) no longer holds polls back, whatever became of it.
    pub fn is_running(&self, now: Instant) -> bool {
        self.running
            .is_some_and(|since| now.duration_since(since) < STALLED)
    }

    /// Takes what a sweep read; returns the events no earlier sweep read.
    pub fn finish(&mut self, swept: Swept, now: Now) -> Vec<IntentEvent> {
        let current = self.current.take();
        self.done(now);
        let Swept {
            events,
            truncated,
            last,
            ..
        } = swept;
        self.resume = match (truncated, last) {
            (true, Some(after)) => current.map(|c| From {
                after: Some(after),
                ..c
            }),
            _ => None,
        };
        // In a burst the next page is worth a hundred polls: go on at once.
        if self.resume.is_some() {
            self.next_at = Some(now.mono);
        }
        if let Some(max) = events.iter().map(|e| e.created).max() {
            self.newest = Some(self.newest.map_or(max, |n| n.max(max)));
        }
        let fresh: Vec<IntentEvent> = events
            .into_iter()
            .filter(|e| self.read.insert(e.id.clone(), e.created).is_none())
            .collect();
        if let Some(n) = self.newest {
            self.read.retain(|_, created| *created >= n - OVERLAP_SECS);
        }
        fresh
    }

    /// A sweep that failed: the next one is due `every` later, from the same cursor (and,
    /// when it was going on with an earlier sweep's list, from the same place in it).
    pub fn failed(&mut self, now: Now) {
        self.resume = self.current.take().filter(|f| f.after.is_some());
        self.done(now);
    }

    fn done(&mut self, now: Now) {
        self.running = None;
        self.next_at = Some(now.mono + self.every);
    }
}

/// One sweep: the event list `from`, newest first, at most `max_pages` pages, each paid
/// for from the instance's Stripe budget.
pub async fn fetch<G: StripeGateway>(
    stripe: &G,
    budget: &StripeBudget,
    from: From,
    max_pages: u32,
) -> Result<Swept, GatewayError> {
    let mut swept = Swept {
        last: from.after,
        ..Swept::default()
    };
    loop {
        while let Err(wait) = budget.take(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        swept.calls += 1;
        let page = stripe
            .intent_events(&TYPES, from.since, swept.last.as_deref())
            .await?;
        let oldest = page.data.iter().map(|e| e.created).min();
        let reached_known = page.data.iter().any(|e| from.known.contains(&e.id));
        swept.events.extend(page.data);
        if page.last.is_some() {
            swept.last = page.last;
        }
        let caught_up = from.read_below.zip(oldest).is_some_and(|(b, o)| o < b) || reached_known;
        if !page.has_more || swept.last.is_none() || caught_up {
            return Ok(swept);
        }
        if swept.calls >= max_pages.max(1) {
            swept.truncated = true;
            return Ok(swept);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use paystream_core::gateway::IntentView;

    fn event(id: &str, created: i64) -> IntentEvent {
        IntentEvent {
            id: id.into(),
            created,
            intent: IntentView {
                id: "pi_1".into(),
                stripe_status: "succeeded".into(),
                amount: 100,
                currency: "usd".into(),
                payment_id: None,
                client_secret: None,
                last_error: None,
                created,
                amount_capturable: 0,
                amount_received: 100,
            },
        }
    }

    fn read(events: Vec<IntentEvent>) -> Swept {
        Swept {
            events,
            calls: 1,
            truncated: false,
            last: None,
        }
    }

    /// Where a sweep lists from, without the ids it knows.
    type Pos = (i64, Option<String>, Option<i64>);

    fn pos(f: Option<From>) -> Option<Pos> {
        f.map(|f| (f.since, f.after, f.read_below))
    }

    fn from(since: i64) -> Option<Pos> {
        Some((since, None, None))
    }

    fn from_newest(newest: i64) -> Option<Pos> {
        Some((newest - OVERLAP_SECS, None, Some(newest - LISTED_LATE_SECS)))
    }

    fn at(secs: i64, base: Instant) -> Now {
        Now {
            mono: base + Duration::from_secs(u64::try_from(secs).unwrap()),
            wall: DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap(),
        }
    }

    #[test]
    fn sweeps_every_period_one_at_a_time_from_the_newest_event_less_the_overlap() {
        let base = Instant::now();
        let t0 = 1_800_000_000;
        let mut c = Cursor::new(Duration::from_secs(2));
        assert_eq!(
            pos(c.start(at(0, base))),
            from(t0 - LOOKBACK_SECS),
            "first: the lookback"
        );
        assert_eq!(pos(c.start(at(1, base))), None, "one at a time");
        let fresh = c.finish(
            read(vec![event("evt_a", t0 - 5), event("evt_b", t0 - 1)]),
            at(1, base),
        );
        assert_eq!(fresh.len(), 2);
        assert_eq!(pos(c.start(at(2, base))), None, "not before the period");
        let next = c.start(at(3, base)).unwrap();
        assert_eq!(
            next.known
                .iter()
                .map(String::as_str)
                .collect::<HashSet<_>>(),
            HashSet::from(["evt_a", "evt_b"]),
            "its walk ends where the earlier one's began"
        );
        assert_eq!(pos(Some(next)), from_newest(t0 - 1));
        let fresh = c.finish(
            read(vec![event("evt_b", t0 - 1), event("evt_c", t0 + 2)]),
            at(3, base),
        );
        assert_eq!(
            fresh.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["evt_c"],
            "an event read before is handed on once"
        );
        c.start(at(5, base));
        c.failed(at(5, base));
        assert_eq!(pos(c.start(at(6, base))), None);
        assert_eq!(
            pos(c.start(at(7, base))),
            from_newest(t0 + 2),
            "a failure keeps the cursor"
        );
        c.finish(read(Vec::new()), at(7, base));
        assert_eq!(
            c.start(at(1_000, base)).map(|f| f.since),
            Some(t0 + 1_000 - LOOKBACK_SECS),
            "never further back than the lookback"
        );
        assert!(
            Cursor::new(Duration::ZERO).start(at(0, base)).is_none(),
            "off"
        );
    }

    #[test]
    fn read_ids_are_forgotten_once_out_of_the_overlap() {
        let base = Instant::now();
        let mut c = Cursor::new(Duration::from_secs(1));
        c.start(at(0, base));
        let all: Vec<IntentEvent> = (0..100)
            .map(|i| event(&format!("evt_{i}"), 1_800_000_000 - 100 + i))
            .collect();
        assert_eq!(c.finish(read(all.clone()), at(0, base)).len(), 100);
        assert_eq!(c.read.len(), usize::try_from(OVERLAP_SECS).unwrap() + 1);
        c.start(at(1, base));
        c.finish(read(vec![event("evt_new", 1_800_000_100)]), at(1, base));
        assert_eq!(c.read.len(), 1, "all older than the overlap");
    }

    /// A sweep that stopped at its page limit is gone on with by the next one, from the
    /// same `since` after its last event; then sweeps start afresh from the newest.
    #[test]
    fn a_truncated_sweep_is_continued_then_the_cursor_moves_on() {
        let base = Instant::now();
        let t0 = 1_800_000_000;
        let mut c = Cursor::new(Duration::from_secs(1));
        let first = c.start(at(0, base)).unwrap();
        c.finish(
            Swept {
                events: vec![event("evt_9", t0 - 1), event("evt_8", t0 - 2)],
                calls: 10,
                truncated: true,
                last: Some("evt_8".into()),
            },
            at(0, base),
        );
        let again = Some((first.since, Some("evt_8".to_owned()), first.read_below));
        assert_eq!(
            pos(c.start(at(0, base))),
            again,
            "at once, without waiting for the period"
        );
        c.failed(at(1, base));
        assert_eq!(
            pos(c.start(at(2, base))),
            again,
            "a failed continuation is tried again from the same place"
        );
        c.finish(read(vec![event("evt_1", t0 - 200)]), at(2, base));
        assert_eq!(pos(c.start(at(3, base))), from_newest(t0 - 1));
    }
}
