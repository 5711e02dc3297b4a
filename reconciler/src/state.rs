//! The reconciler's keyed state: pending payments and their next poll, with a timer queue
//! so that finding due polls never scans the whole state.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::envelope::{Change, PaymentRow};
use crate::schedule::Schedule;

/// A pending payment as the state keeps it: only what a poll and the ordering of changes
/// need (the id is the map's key, the intent id boxed). A million of them are held at
/// once, so nothing the poll does not read is here: what it publishes comes from the
/// row Stripe's answer is applied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub intent: Option<Box<str>>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub next_poll: DateTime<Utc>,
    pub attempts: u32,
    /// Polls in a row whose answer could not be used (Stripe does not know the intent,
    /// or says a status we do not know); past a bound the payment goes to an operator.
    pub misses: u8,
}

impl Pending {
    fn new(row: &PaymentRow, next_poll: DateTime<Utc>) -> Self {
        let mut p = Pending {
            intent: None,
            version: 0,
            created_at: row.created_at,
            next_poll,
            attempts: 0,
            misses: 0,
        };
        p.update(row);
        p
    }

    /// Takes a newer version of the row; the poll timer and count stay.
    fn update(&mut self, row: &PaymentRow) {
        // The intent is set once: a row that still names the one held needs no new box.
        if self.intent.as_deref() != row.stripe_payment_intent_id.as_deref() {
            self.intent = row.stripe_payment_intent_id.as_deref().map(Box::from);
        }
        self.version = row.version;
    }
}

/// What applying a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// A new pending payment.
    Added,
    /// A pending payment's row changed (still pending).
    Updated,
    /// The payment became final (or was deleted): gone from the state. Carries the final
    /// status, to publish, when it is a status change.
    Resolved { published: bool },
    /// Still pending, but flagged for an operator: not polled until the flag is cleared.
    Parked,
    /// Older than what the state holds (a replay after a Debezium restart): ignored.
    Stale,
    /// Not pending and not held: nothing to do.
    Ignored,
}

#[derive(Debug, Default)]
pub struct PendingState {
    entries: HashMap<Uuid, Pending>,
    /// (due, id), one heap per tier, in the order they go: polls of payments Stripe says
    /// have moved (`nudge`, from the reconciler's event sweep), polls in a payment's first
    /// `frequent_for` (it may move any moment: the customer is paying), and later ones
    /// (mostly abandoned). A backlog of overdue old polls (a state just loaded with
    /// thousands of long-abandoned payments) never delays a new payment's poll, and
    /// nothing delays the poll of a payment Stripe has just finished. Entries are not
    /// removed when a payment leaves or is rescheduled; a popped entry counts only if it
    /// still matches the payment's `next_poll`.
    timers: [Timers; 3],
    /// Highest version seen per id for payments that left the state, so a late replay of
    /// an older `pending` version cannot bring them back. Bounded (oldest forgotten first):
    /// a replay comes in order, so a forgotten payment's final version follows its stale
    /// pending one and removes it again.
    resolved_versions: HashMap<Uuid, i64>,
    resolved_order: VecDeque<Uuid>,
}

/// Poll timers, earliest first: (due, payment).
type Timers = BinaryHeap<Reverse<(DateTime<Utc>, Uuid)>>;

/// How long after its creation a payment's polls go first.
fn young_for(schedule: &Schedule) -> chrono::Duration {
    chrono::Duration::from_std(schedule.frequent_for).unwrap_or(chrono::Duration::MAX)
}

/// The tiers of `PendingState::timers`.
const MOVED: u8 = 0;
const YOUNG: u8 = 1;
const OLD: u8 = 2;

/// How many resolved payments a partition's state remembers.
const RESOLVED_MEMORY: usize = 65_536;

impl PendingState {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, id: &Uuid) -> Option<&Pending> {
        self.entries.get(id)
    }

    fn remember_resolved(&mut self, id: Uuid, version: i64) {
        if self.resolved_versions.insert(id, version).is_none() {
            self.resolved_order.push_back(id);
            if self.resolved_order.len() > RESOLVED_MEMORY
                && let Some(old) = self.resolved_order.pop_front()
            {
                self.resolved_versions.remove(&old);
            }
        }
    }

    /// The tier (0: moved at Stripe, 1: young, 2: old) and time of the poll to make first,
    /// if one is due at `now`: a due poll of a lower tier before any of a higher one, the
    /// earliest within a tier. Stale timer entries are dropped on the way, and young polls
    /// of payments no longer young at `now` (a state just loaded holds thousands, all with
    /// long-overdue first polls) move to the old tier.
    pub fn due(&mut self, now: DateTime<Utc>, schedule: &Schedule) -> Option<(u8, DateTime<Utc>)> {
        let young_for = young_for(schedule);
        for tier in [MOVED, YOUNG, OLD] {
            if let Some(at) = self.earliest(tier, now, young_for)
                && at <= now
            {
                return Some((tier, at));
            }
        }
        None
    }

    /// The earliest poll of a tier, due or not.
    fn earliest(
        &mut self,
        tier: u8,
        now: DateTime<Utc>,
        young_for: chrono::Duration,
    ) -> Option<DateTime<Utc>> {
        while let Some(&Reverse((at, id))) = self.timers[usize::from(tier)].peek() {
            match self.entries.get(&id) {
                Some(p) if p.next_poll == at => {
                    if tier == YOUNG && now - p.created_at > young_for {
                        self.timers[usize::from(YOUNG)].pop();
                        self.timers[usize::from(OLD)].push(Reverse((at, id)));
                        continue;
                    }
                    return Some(at);
                }
                _ => {
                    self.timers[usize::from(tier)].pop();
                }
            }
        }
        None
    }

    /// Files a payment's poll at `at` under its tier (a poll within the payment's first
    /// `frequent_for` is young; `due` demotes one whose payment has aged meanwhile).
    fn push(
        &mut self,
        id: Uuid,
        created_at: DateTime<Utc>,
        at: DateTime<Utc>,
        schedule: &Schedule,
    ) {
        let tier = if at - created_at <= young_for(schedule) {
            YOUNG
        } else {
            OLD
        };
        self.timers[usize::from(tier)].push(Reverse((at, id)));
    }

    /// Stripe says the payment has moved (an event of the sweep): its poll is due at
    /// `now`, ahead of every scheduled one. Returns whether the payment is held.
    pub fn nudge(&mut self, id: Uuid, now: DateTime<Utc>) -> bool {
        let Some(p) = self.entries.get_mut(&id) else {
            return false;
        };
        p.next_poll = now;
        self.timers[usize::from(MOVED)].push(Reverse((now, id)));
        true
    }

    /// Records whether a poll's answer was usable; returns the misses in a row so far.
    pub fn note_poll(&mut self, id: Uuid, usable: bool) -> u8 {
        match self.entries.get_mut(&id) {
            Some(p) if usable => {
                p.misses = 0;
                0
            }
            Some(p) => {
                p.misses = p.misses.saturating_add(1);
                p.misses
            }
            None => 0,
        }
    }

    /// Moves a payment's next poll, e.g. sooner than its schedule after Stripe said 429.
    pub fn reschedule(&mut self, id: Uuid, at: DateTime<Utc>, schedule: &Schedule) {
        if let Some(p) = self.entries.get_mut(&id) {
            p.next_poll = at;
            let created_at = p.created_at;
            self.push(id, created_at, at, schedule);
        }
    }

    /// After an unusable answer (Stripe does not know the intent, or says a status we do
    /// not know), the next poll waits `frequent` x 2^misses, at most `slow`: a payment that
    /// only ever misses stops taking the budget of those that can resolve.
    pub fn back_off(&mut self, id: Uuid, misses: u8, now: DateTime<Utc>, schedule: &Schedule) {
        let Some(p) = self.entries.get(&id) else {
            return;
        };
        let wait = schedule
            .frequent
            .saturating_mul(1u32 << misses.min(16))
            .min(schedule.slow.max(schedule.frequent));
        let at = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
        if at > p.next_poll {
            self.reschedule(id, at, schedule);
        }
    }

    /// Heap bytes the state holds, from the collections' capacities and the strings'
    /// lengths: what the `reconciler_state_bytes` gauge reports.
    pub fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        // hashbrown stores one control byte per bucket beside each slot.
        let strings: usize = self
            .entries
            .values()
            .map(|p| p.intent.as_ref().map_or(0, |i| i.len()))
            .sum();
        self.entries.capacity() * (size_of::<(Uuid, Pending)>() + 1)
            + strings
            + self.timers.iter().map(BinaryHeap::capacity).sum::<usize>()
                * size_of::<Reverse<(DateTime<Utc>, Uuid)>>()
            + self.resolved_versions.capacity() * (size_of::<(Uuid, i64)>() + 1)
            + self.resolved_order.capacity() * size_of::<Uuid>()
    }

    pub fn apply(&mut self, change: &Change, schedule: &Schedule) -> Effect {
        match change {
            Change::Tombstone { .. } => Effect::Ignored,
            Change::Delete { id, .. } => match self.entries.remove(id) {
                Some(p) => {
                    self.remember_resolved(*id, p.version);
                    Effect::Resolved { published: false }
                }
                None => Effect::Ignored,
            },
            Change::Upsert { row, .. } => {
                let held = self
                    .entries
                    .get(&row.id)
                    .map(|p| p.version)
                    .or_else(|| self.resolved_versions.get(&row.id).copied());
                if held.is_some_and(|v| row.version <= v) {
                    return Effect::Stale;
                }
                if !row.is_open() {
                    self.remember_resolved(row.id, row.version);
                    return match (self.entries.remove(&row.id), row.status == "pending") {
                        (None, _) => Effect::Ignored,
                        (Some(_), true) => Effect::Parked,
                        (Some(_), false) => Effect::Resolved { published: true },
                    };
                }
                match self.entries.get_mut(&row.id) {
                    Some(p) => {
                        p.update(row);
                        Effect::Updated
                    }
                    None => {
                        let next_poll = schedule.next(row.created_at, None);
                        self.push(row.id, row.created_at, next_poll, schedule);
                        self.entries.insert(row.id, Pending::new(row, next_poll));
                        Effect::Added
                    }
                }
            }
        }
    }

    /// Pending payments whose poll is due at `now`, at most `max`; each is rescheduled
    /// for its following poll as it is handed out.
    pub fn take_due(
        &mut self,
        now: DateTime<Utc>,
        max: usize,
        schedule: &Schedule,
    ) -> Vec<(Uuid, Pending)> {
        let mut due = Vec::new();
        while due.len() < max {
            let Some((tier, at)) = self.due(now, schedule) else {
                break;
            };
            let Some(Reverse((_, id))) = self.timers[usize::from(tier)].pop() else {
                break;
            };
            let Some(p) = self.entries.get_mut(&id) else {
                continue;
            };
            p.attempts += 1;
            p.next_poll = schedule.next(p.created_at, Some(now.max(at)));
            let (next, created_at) = (p.next_poll, p.created_at);
            due.push((id, p.clone()));
            self.push(id, created_at, next, schedule);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row(id: Uuid, status: &str, version: i64) -> PaymentRow {
        let created_at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        crate::envelope::test_row(id, status, created_at, version)
    }

    #[test]
    fn a_flagged_payment_is_parked_until_the_flag_is_cleared() {
        let s = Schedule::default();
        let mut st = PendingState::default();
        let id = Uuid::now_v7();
        st.apply(&upsert(row(id, "pending", 1)), &s);
        assert_eq!((st.note_poll(id, false), st.note_poll(id, false)), (1, 2));
        assert_eq!(
            st.note_poll(id, true),
            0,
            "a usable answer resets the count"
        );
        let flagged = PaymentRow {
            flagged: true,
            ..row(id, "pending", 2)
        };
        assert_eq!(st.apply(&upsert(flagged), &s), Effect::Parked);
        assert!(st.get(&id).is_none(), "not polled while an operator looks");
        assert_eq!(
            st.apply(&upsert(row(id, "pending", 2)), &s),
            Effect::Stale,
            "an older replay does not bring it back"
        );
        assert_eq!(
            st.apply(&upsert(row(id, "pending", 3)), &s),
            Effect::Added,
            "cleared: polled again"
        );
        assert_eq!(st.get(&id).map(|p| p.misses), Some(0));
    }

    fn upsert(r: PaymentRow) -> Change {
        Change::Upsert {
            lsn: r.version * 10,
            commit_ts_ms: 0,
            before_status: None,
            snapshot: false,
            row: r,
        }
    }

    #[test]
    fn pending_enters_final_leaves_and_replays_are_ignored() {
        let s = Schedule::default();
        let mut st = PendingState::default();
        let id = Uuid::now_v7();
        assert_eq!(st.apply(&upsert(row(id, "pending", 1)), &s), Effect::Added);
        assert_eq!(
            st.apply(&upsert(row(id, "pending", 1)), &s),
            Effect::Stale,
            "a duplicate"
        );
        assert_eq!(
            st.apply(&upsert(row(id, "pending", 2)), &s),
            Effect::Updated
        );
        assert_eq!(
            st.apply(&upsert(row(id, "succeeded", 3)), &s),
            Effect::Resolved { published: true }
        );
        assert!(st.is_empty());
        assert_eq!(
            st.apply(&upsert(row(id, "pending", 2)), &s),
            Effect::Stale,
            "a replay cannot resurrect it"
        );
        assert_eq!(
            st.apply(&upsert(row(Uuid::now_v7(), "failed", 2)), &s),
            Effect::Ignored
        );
        let other = Uuid::now_v7();
        st.apply(&upsert(row(other, "pending", 1)), &s);
        assert_eq!(
            st.apply(
                &Change::Delete {
                    id: other,
                    lsn: 0,
                    commit_ts_ms: 0
                },
                &s
            ),
            Effect::Resolved { published: false }
        );
        assert_eq!(
            st.apply(&Change::Tombstone { id: other }, &s),
            Effect::Ignored
        );
    }

    #[test]
    fn due_polls_follow_the_schedule() {
        let s = Schedule::default();
        let mut st = PendingState::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        st.apply(&upsert(row(a, "pending", 1)), &s);
        st.apply(&upsert(row(b, "pending", 1)), &s);
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert!(
            st.take_due(t0 + chrono::Duration::seconds(59), 10, &s)
                .is_empty()
        );
        let due = st.take_due(t0 + chrono::Duration::seconds(60), 1, &s);
        assert_eq!(due.len(), 1, "bounded by max");
        assert_eq!(
            st.take_due(t0 + chrono::Duration::seconds(60), 10, &s)
                .len(),
            1
        );
        assert!(
            st.take_due(t0 + chrono::Duration::seconds(61), 10, &s)
                .is_empty(),
            "rescheduled"
        );
        assert_eq!(
            st.take_due(t0 + chrono::Duration::seconds(360), 10, &s)
                .len(),
            2
        );
        st.apply(&upsert(row(a, "canceled", 2)), &s);
        let due = st.take_due(t0 + chrono::Duration::seconds(660), 10, &s);
        assert_eq!(
            due.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [b],
            "a resolved payment is never polled"
        );
        assert_eq!(due[0].1.attempts, 3);
        let kept = st.get(&b).unwrap();
        assert_eq!(kept.intent.as_deref(), Some("pi_1"));
    }

    #[test]
    fn due_skips_stale_timers_and_reschedule_moves_a_poll() {
        let s = Schedule::default();
        let mut st = PendingState::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        st.apply(&upsert(row(a, "pending", 1)), &s);
        st.apply(&upsert(row(b, "pending", 1)), &s);
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let later = t0 + chrono::Duration::days(1);
        assert_eq!(st.due(t0, &s), None, "nothing due yet");
        assert_eq!(
            st.due(t0 + chrono::Duration::seconds(60), &s),
            Some((YOUNG, t0 + chrono::Duration::seconds(60))),
            "a minute old: young"
        );
        assert_eq!(
            st.due(later, &s),
            Some((OLD, t0 + chrono::Duration::seconds(60))),
            "a day old: the old tier"
        );
        st.reschedule(a, t0 + chrono::Duration::seconds(5), &s);
        assert_eq!(
            st.due(later, &s),
            Some((OLD, t0 + chrono::Duration::seconds(5)))
        );
        st.apply(&upsert(row(a, "succeeded", 2)), &s);
        assert_eq!(
            st.due(later, &s),
            Some((OLD, t0 + chrono::Duration::seconds(60))),
            "a's timer is stale"
        );
        st.reschedule(Uuid::now_v7(), t0, &s);
        assert_eq!(
            st.due(later, &s),
            Some((OLD, t0 + chrono::Duration::seconds(60))),
            "unknown ids are not scheduled"
        );
        assert!(st.approx_bytes() > std::mem::size_of::<Pending>());
    }

    /// A new payment's poll goes before every overdue poll of old payments (a state just
    /// loaded with a backlog of abandoned ones), however long those have been due.
    #[test]
    fn a_young_payments_poll_goes_before_a_backlog_of_old_ones() {
        let s = Schedule::default();
        let mut st = PendingState::default();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let now = t0 + chrono::Duration::days(1);
        // A day-old backlog, as a state loaded from the replica holds it: every first
        // poll a day overdue.
        for _ in 0..50 {
            st.apply(&upsert(row(Uuid::now_v7(), "pending", 1)), &s);
        }
        let fresh = Uuid::now_v7();
        let young = PaymentRow {
            created_at: now - chrono::Duration::seconds(61),
            ..row(fresh, "pending", 1)
        };
        st.apply(&upsert(young), &s);
        assert_eq!(st.due(now, &s).map(|(tier, _)| tier), Some(YOUNG));
        let first = st.take_due(now, 1, &s);
        assert_eq!(first.first().map(|(id, _)| *id), Some(fresh));
        let rest = st.take_due(now, 100, &s);
        assert_eq!(rest.len(), 50, "then the backlog, each once");
    }

    /// A payment Stripe says has moved is polled before every due poll, young or old, and
    /// once: after that poll it is back on its own schedule.
    #[test]
    fn a_nudged_payment_goes_first_then_back_to_its_schedule() {
        let s = Schedule::default();
        let mut st = PendingState::default();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let now = t0 + chrono::Duration::days(1);
        let mut ids = Vec::new();
        for _ in 0..20 {
            let id = Uuid::now_v7();
            st.apply(&upsert(row(id, "pending", 1)), &s);
            ids.push(id);
        }
        let young = Uuid::now_v7();
        st.apply(
            &upsert(PaymentRow {
                created_at: now - chrono::Duration::seconds(61),
                ..row(young, "pending", 1)
            }),
            &s,
        );
        let moved = ids[17];
        assert!(st.nudge(moved, now));
        assert!(!st.nudge(Uuid::now_v7(), now), "not held: nothing to poll");
        assert_eq!(st.due(now, &s), Some((MOVED, now)));
        let order: Vec<Uuid> = st
            .take_due(now, 2, &s)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(order, [moved, young]);
        let rest = st.take_due(now, 100, &s);
        assert_eq!(rest.len(), 19, "the backlog, without the nudged one again");
        assert!(rest.iter().all(|(id, _)| *id != moved));
        assert!(
            st.get(&moved).unwrap().next_poll > now,
            "rescheduled as usual"
        );
    }

    /// A payment whose polls only miss (Stripe does not know its intent) backs off
    /// exponentially, up to `slow`, and a usable answer ends that.
    #[test]
    fn misses_back_off_up_to_slow() {
        let s = Schedule::default();
        let mut st = PendingState::default();
        let id = Uuid::now_v7();
        st.apply(&upsert(row(id, "pending", 1)), &s);
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let now = t0 + chrono::Duration::seconds(60);
        let mut waits = Vec::new();
        for _ in 0..6 {
            st.take_due(now, 1, &s);
            let misses = st.note_poll(id, false);
            st.back_off(id, misses, now, &s);
            waits.push((st.get(&id).unwrap().next_poll - now).num_seconds());
        }
        assert_eq!(waits, [600, 1200, 2400, 3600, 3600, 3600]);
        assert_eq!(st.note_poll(id, true), 0);
    }

    proptest! {
        /// Whatever the order and duplication of a payment's versions (at-least-once CDC),
        /// the state ends as the highest version says.
        #[test]
        fn any_delivery_order_ends_at_the_latest_version(order in proptest::sample::subsequence((1_i64..=6).collect::<Vec<_>>(), 1..=6), dups in proptest::collection::vec(1_i64..=6, 0..6), final_at in 1_i64..=7) {
            let s = Schedule::default();
            let mut st = PendingState::default();
            let id = Uuid::now_v7();
            let status = |v: i64| if v >= final_at { "succeeded" } else { "pending" };
            let mut seq: Vec<i64> = order.clone();
            seq.extend(dups.iter().filter(|d| order.contains(d)));
            for v in &seq {
                st.apply(&upsert(row(id, status(*v), *v)), &s);
            }
            let max = *order.iter().max().unwrap();
            prop_assert_eq!(st.get(&id).is_some(), status(max) == "pending");
            if let Some(p) = st.get(&id) {
                prop_assert_eq!(p.version, max);
            }
        }
    }
}
