//! The reconciler's keyed state: pending payments and their next poll, with a timer queue
//! so that finding due polls never scans the whole state.
//!
//! A partition holds up to a million pending payments, so the layout is chosen for size:
//! each payment is one 80-byte slot in a vector (its intent id inline, times as
//! microseconds), found through a hash table of 4-byte slot numbers; poll timers are
//! (time, slot) pairs of 16 bytes. About 110 bytes per payment in all, against 280 for
//! a `HashMap<Uuid, _>` of boxed strings and `DateTime`s (BENCHMARKS.md).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};

use chrono::{DateTime, Utc};
use hashbrown::HashTable;
use uuid::Uuid;

use crate::envelope::Change;
use crate::schedule::Schedule;

/// A pending payment as the state hands it out (to a poll, to the sweep's checks): only
/// what a poll and the ordering of changes need. What a poll publishes comes from the row
/// Stripe's answer is applied to.
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

/// A Stripe id, inline when it fits: Stripe's are `pi_` and 24 characters. A longer one
/// (Stripe promises no length) is boxed.
#[derive(Debug, Clone, Default)]
enum IntentId {
    #[default]
    None,
    Inline {
        len: u8,
        bytes: [u8; INLINE_ID],
    },
    Boxed(Box<str>),
}

const INLINE_ID: usize = 30;

impl IntentId {
    fn new(id: Option<&str>) -> Self {
        match id {
            None => IntentId::None,
            Some(id) if id.len() <= INLINE_ID => {
                let mut bytes = [0; INLINE_ID];
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                IntentId::Inline {
                    len: id.len() as u8,
                    bytes,
                }
            }
            Some(id) => IntentId::Boxed(id.into()),
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            IntentId::None => None,
            // Only ever filled from a `&str`, cut at its end: always UTF-8.
            IntentId::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).ok()
            }
            IntentId::Boxed(id) => Some(id),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            IntentId::Boxed(id) => id.len(),
            _ => 0,
        }
    }
}

/// A pending payment as a slot of the state holds it.
#[derive(Debug, Clone)]
struct Slot {
    id: Uuid,
    version: i64,
    created_us: i64,
    next_poll_us: i64,
    attempts: u32,
    misses: u8,
    /// A freed slot waits on the free list for the next new payment; timers that still
    /// name it are stale.
    live: bool,
    intent: IntentId,
}

impl Slot {
    fn view(&self) -> Pending {
        Pending {
            intent: self.intent.as_str().map(Box::from),
            version: self.version,
            created_at: time(self.created_us),
            next_poll: time(self.next_poll_us),
            attempts: self.attempts,
            misses: self.misses,
        }
    }
}

/// Microseconds since the epoch: PostgreSQL's precision, so a `created_at` keeps its value.
fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(us: i64) -> DateTime<Utc> {
    // Every stored value came from a `DateTime`, so it converts back.
    DateTime::from_timestamp_micros(us).unwrap_or_default()
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
    slots: Vec<Slot>,
    /// Freed slots, reused before the vector grows.
    free: Vec<u32>,
    /// Slot numbers, hashed by their payment's id.
    index: HashTable<u32>,
    hasher: RandomState,
    /// (due in µs, slot), one heap per tier, in the order they go: polls of payments
    /// Stripe says have moved (`nudge`, from the reconciler's event sweep), polls in a
    /// payment's first `frequent_for` (it may move any moment: the customer is paying),
    /// and later ones (mostly abandoned). A backlog of overdue old polls (a state just
    /// loaded with thousands of long-abandoned payments) never delays a new payment's
    /// poll, and nothing delays the poll of a payment Stripe has just finished. Entries
    /// are not removed when a payment leaves or is rescheduled; a popped entry counts
    /// only if its slot is live with that `next_poll`. (A slot freed and taken by a new
    /// payment due at the very same microsecond makes a duplicate entry, perhaps in
    /// another tier: the first pop polls it, once, and moves its `next_poll`, which makes
    /// the second stale.)
    timers: [Timers; 3],
    /// Highest version seen per id for payments that left the state, so a late replay of
    /// an older `pending` version cannot bring them back. Bounded (oldest forgotten first):
    /// a replay comes in order, so a forgotten payment's final version follows its stale
    /// pending one and removes it again.
    resolved_versions: HashMap<Uuid, i64>,
    resolved_order: VecDeque<Uuid>,
}

/// Poll timers, earliest first: (due in µs, slot).
type Timers = BinaryHeap<Reverse<(i64, u32)>>;

/// How long after its creation a payment's polls go first, in µs.
fn young_for(schedule: &Schedule) -> i64 {
    chrono::Duration::from_std(schedule.frequent_for)
        .ok()
        .and_then(|d| d.num_microseconds())
        .unwrap_or(i64::MAX)
}

/// What a hashbrown table of `capacity` entries of `entry` bytes allocates: a table
/// holds 7/8 of its (power of two) buckets, and has a control byte per bucket.
fn table_bytes(capacity: usize, entry: usize) -> usize {
    let buckets = match capacity {
        0 => 0,
        c if c < 8 => c + 1,
        c => c / 7 * 8,
    };
    buckets * (entry + 1)
}

/// The tiers of `PendingState::timers`.
const MOVED: u8 = 0;
const YOUNG: u8 = 1;
const OLD: u8 = 2;

/// How many resolved payments a partition's state remembers.
const RESOLVED_MEMORY: usize = 65_536;

impl PendingState {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn find(&self, id: &Uuid) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.hasher.hash_one(id), |&s| slots[s as usize].id == *id)
            .copied()
    }

    fn slot_mut(&mut self, id: &Uuid) -> Option<&mut Slot> {
        let s = self.find(id)?;
        Some(&mut self.slots[s as usize])
    }

    pub fn get(&self, id: &Uuid) -> Option<Pending> {
        self.find(id).map(|s| self.slots[s as usize].view())
    }

    fn insert(&mut self, slot: Slot) -> u32 {
        let hash = self.hasher.hash_one(slot.id);
        let at = match self.free.pop() {
            Some(free) => {
                self.slots[free as usize] = slot;
                free
            }
            None => {
                self.slots.push(slot);
                // A partition's state would need 340 GB to run out of slot numbers.
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(hash, at, |&s| hasher.hash_one(slots[s as usize].id));
        at
    }

    /// Takes a payment out; returns its version.
    fn remove(&mut self, id: &Uuid) -> Option<i64> {
        let slots = &self.slots;
        let entry = self
            .index
            .find_entry(self.hasher.hash_one(id), |&s| slots[s as usize].id == *id)
            .ok()?;
        let (at, _) = entry.remove();
        let slot = &mut self.slots[at as usize];
        slot.live = false;
        slot.intent = IntentId::None;
        self.free.push(at);
        Some(slot.version)
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
        self.due_us(micros(now), schedule)
            .map(|(tier, at)| (tier, time(at)))
    }

    fn due_us(&mut self, now: i64, schedule: &Schedule) -> Option<(u8, i64)> {
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
    fn earliest(&mut self, tier: u8, now: i64, young_for: i64) -> Option<i64> {
        while let Some(&Reverse((at, slot))) = self.timers[usize::from(tier)].peek() {
            let s = &self.slots[slot as usize];
            if !(s.live && s.next_poll_us == at) {
                self.timers[usize::from(tier)].pop();
                continue;
            }
            if tier == YOUNG && now.saturating_sub(s.created_us) > young_for {
                self.timers[usize::from(YOUNG)].pop();
                self.timers[usize::from(OLD)].push(Reverse((at, slot)));
                continue;
            }
            return Some(at);
        }
        None
    }

    /// Files a slot's poll at `at` under its tier (a poll within the payment's first
    /// `frequent_for` is young; `due` demotes one whose payment has aged meanwhile).
    fn push(&mut self, slot: u32, at: i64, schedule: &Schedule) {
        let created_us = self.slots[slot as usize].created_us;
        let tier = if at.saturating_sub(created_us) <= young_for(schedule) {
            YOUNG
        } else {
            OLD
        };
        self.timers[usize::from(tier)].push(Reverse((at, slot)));
    }

    /// Stripe says the payment has moved (an event of the sweep): its poll is due at
    /// `now`, ahead of every scheduled one. Returns whether the payment is held.
    pub fn nudge(&mut self, id: Uuid, now: DateTime<Utc>) -> bool {
        let Some(slot) = self.find(&id) else {
            return false;
        };
        let now = micros(now);
        self.slots[slot as usize].next_poll_us = now;
        self.timers[usize::from(MOVED)].push(Reverse((now, slot)));
        true
    }

    /// Records whether a poll's answer was usable; returns the misses in a row so far.
    pub fn note_poll(&mut self, id: Uuid, usable: bool) -> u8 {
        match self.slot_mut(&id) {
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
        if let Some(slot) = self.find(&id) {
            let at = micros(at);
            self.slots[slot as usize].next_poll_us = at;
            self.push(slot, at, schedule);
        }
    }

    /// After an unusable answer (Stripe does not know the intent, or says a status we do
    /// not know), the next poll waits `frequent` x 2^misses, at most `slow`: a payment that
    /// only ever misses stops taking the budget of those that can resolve.
    pub fn back_off(&mut self, id: Uuid, misses: u8, now: DateTime<Utc>, schedule: &Schedule) {
        let Some(slot) = self.find(&id) else {
            return;
        };
        let wait = schedule
            .frequent
            .saturating_mul(1u32 << misses.min(16))
            .min(schedule.slow.max(schedule.frequent));
        let at = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
        if micros(at) > self.slots[slot as usize].next_poll_us {
            self.reschedule(id, at, schedule);
        }
    }

    /// Heap bytes the state holds, from the collections' capacities and the long intent
    /// ids' lengths: what the `reconciler_state_bytes` gauge reports.
    pub fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        let boxed: usize = self.slots.iter().map(|s| s.intent.heap_bytes()).sum();
        self.slots.capacity() * size_of::<Slot>()
            + boxed
            + self.free.capacity() * size_of::<u32>()
            + table_bytes(self.index.capacity(), size_of::<u32>())
            + self.timers.iter().map(BinaryHeap::capacity).sum::<usize>()
                * size_of::<Reverse<(i64, u32)>>()
            + table_bytes(self.resolved_versions.capacity(), size_of::<(Uuid, i64)>())
            + self.resolved_order.capacity() * size_of::<Uuid>()
    }

    pub fn apply(&mut self, change: &Change, schedule: &Schedule) -> Effect {
        match change {
            Change::Tombstone { .. } => Effect::Ignored,
            Change::Delete { id, .. } => match self.remove(id) {
                Some(version) => {
                    self.remember_resolved(*id, version);
                    Effect::Resolved { published: false }
                }
                None => Effect::Ignored,
            },
            Change::Upsert { row, .. } => {
                let held = self
                    .find(&row.id)
                    .map(|s| self.slots[s as usize].version)
                    .or_else(|| self.resolved_versions.get(&row.id).copied());
                if held.is_some_and(|v| row.version <= v) {
                    return Effect::Stale;
                }
                if !row.is_open() {
                    self.remember_resolved(row.id, row.version);
                    return match (self.remove(&row.id), row.status == "pending") {
                        (None, _) => Effect::Ignored,
                        (Some(_), true) => Effect::Parked,
                        (Some(_), false) => Effect::Resolved { published: true },
                    };
                }
                self.hold(
                    row.id,
                    row.stripe_payment_intent_id.as_deref(),
                    row.created_at,
                    row.version,
                    schedule,
                )
            }
        }
    }

    /// Holds an open payment at `version`: a new one is scheduled for its first poll, one
    /// held already takes the newer version (its poll timer and count stay). What `apply`
    /// does with an open row once it is known to be newer, and what recovery does with a
    /// replica's pending rows.
    pub fn hold(
        &mut self,
        id: Uuid,
        intent: Option<&str>,
        created_at: DateTime<Utc>,
        version: i64,
        schedule: &Schedule,
    ) -> Effect {
        match self.find(&id) {
            Some(s) => {
                let p = &mut self.slots[s as usize];
                // The intent is set once: a row that still names it changes nothing.
                if p.intent.as_str() != intent {
                    p.intent = IntentId::new(intent);
                }
                p.version = version;
                Effect::Updated
            }
            None => {
                let next_poll = micros(schedule.next(created_at, None));
                let slot = self.insert(Slot {
                    id,
                    version,
                    created_us: micros(created_at),
                    next_poll_us: next_poll,
                    attempts: 0,
                    misses: 0,
                    live: true,
                    intent: IntentId::new(intent),
                });
                self.push(slot, next_poll, schedule);
                Effect::Added
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
        let now_us = micros(now);
        let mut due = Vec::new();
        while due.len() < max {
            let Some((tier, at)) = self.due_us(now_us, schedule) else {
                break;
            };
            let Some(Reverse((_, slot))) = self.timers[usize::from(tier)].pop() else {
                break;
            };
            let p = &mut self.slots[slot as usize];
            p.attempts += 1;
            let last = time(now_us.max(at));
            let next = micros(schedule.next(time(p.created_us), Some(last)));
            p.next_poll_us = next;
            due.push((p.id, p.view()));
            self.push(slot, next, schedule);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::PaymentRow;
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

    /// The budget the layout is built for (module docs, BENCHMARKS.md): a bigger slot is
    /// 16 bytes more per pending payment, a million times per partition.
    #[test]
    fn a_slot_is_80_bytes_and_a_timer_16() {
        assert_eq!(std::mem::size_of::<Slot>(), 80);
        assert_eq!(std::mem::size_of::<Reverse<(i64, u32)>>(), 16);
    }

    #[test]
    fn table_bytes_counts_every_bucket() {
        for n in [0, 1, 3, 7, 8, 100, 250_000, 1_000_000] {
            let t = HashTable::<u32>::with_capacity(n);
            let buckets = table_bytes(t.capacity(), 4) / 5;
            assert!(buckets == 0 || buckets.is_power_of_two(), "{n}: {buckets}");
            assert!(buckets * 7 / 8 >= n, "{n}: {buckets}");
        }
        assert_eq!(
            table_bytes(HashTable::<u32>::with_capacity(1_000_000).capacity(), 4),
            (1 << 21) * 5
        );
    }

    #[test]
    fn intent_ids_of_any_length_come_back_as_given() {
        let long = format!("pi_{}", "x".repeat(200));
        for id in [
            None,
            Some(""),
            Some("pi_3MtwBwLkdIwHu7ix28a3tqPa"),
            Some("pi_é_ünïcode"),
            Some(&long[..31]),
            Some(&long[..]),
        ] {
            assert_eq!(IntentId::new(id).as_str(), id);
        }
        assert!(matches!(
            IntentId::new(Some("pi_3MtwBwLkdIwHu7ix28a3tqPa")),
            IntentId::Inline { .. }
        ));
        let s = Schedule::default();
        let mut st = PendingState::default();
        let id = Uuid::now_v7();
        st.apply(
            &upsert(PaymentRow {
                stripe_payment_intent_id: Some(long.clone()),
                ..row(id, "pending", 1)
            }),
            &s,
        );
        assert_eq!(st.get(&id).unwrap().intent.as_deref(), Some(&long[..]));
        assert!(st.approx_bytes() >= long.len(), "a boxed id is counted");
    }

    /// Times keep PostgreSQL's precision (microseconds) through the state.
    #[test]
    fn created_at_keeps_its_microseconds() {
        let s = Schedule::default();
        let mut st = PendingState::default();
        let id = Uuid::now_v7();
        let created_at = DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap();
        st.apply(
            &upsert(PaymentRow {
                created_at,
                ..row(id, "pending", 1)
            }),
            &s,
        );
        let p = st.get(&id).unwrap();
        assert_eq!(p.created_at, created_at);
        assert_eq!(p.next_poll, created_at + chrono::Duration::seconds(60));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(usize),
        Resolve(usize),
        Nudge(usize),
        Reschedule(usize, i64),
        Poll(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..12usize).prop_map(Op::Add),
            (0..12usize).prop_map(Op::Resolve),
            (0..12usize).prop_map(Op::Nudge),
            (0..12usize, 0..7200i64).prop_map(|(i, s)| Op::Reschedule(i, s)),
            (0..7200i64).prop_map(Op::Poll),
        ]
    }

    proptest! {
        /// Slots are freed and reused and timers go stale in any order; still, whatever
        /// is held is polled, each payment once per due poll, and nothing else is: a
        /// final sweep far in the future hands out exactly the held payments.
        #[test]
        fn reused_slots_never_lose_or_mix_up_a_poll(ops in proptest::collection::vec(op(), 1..80)) {
            let s = Schedule::default();
            let mut st = PendingState::default();
            let ids: Vec<Uuid> = (0..12).map(|_| Uuid::now_v7()).collect();
            let mut version = 0;
            let mut held = std::collections::BTreeMap::new();
            let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
            for op in ops {
                version += 1;
                match op {
                    Op::Add(i) => {
                        st.apply(&upsert(row(ids[i], "pending", version)), &s);
                        held.insert(ids[i], version);
                    }
                    Op::Resolve(i) => {
                        st.apply(&upsert(row(ids[i], "succeeded", version)), &s);
                        held.remove(&ids[i]);
                    }
                    Op::Nudge(i) => prop_assert_eq!(st.nudge(ids[i], t0), held.contains_key(&ids[i])),
                    Op::Reschedule(i, secs) => st.reschedule(ids[i], t0 + chrono::Duration::seconds(secs), &s),
                    Op::Poll(secs) => {
                        let due = st.take_due(t0 + chrono::Duration::seconds(secs), usize::MAX, &s);
                        let mut seen = std::collections::BTreeSet::new();
                        for (id, p) in &due {
                            prop_assert!(seen.insert(*id), "polled twice in one pass");
                            prop_assert_eq!(held.get(id), Some(&p.version));
                        }
                    }
                }
                prop_assert_eq!(st.len(), held.len());
            }
            let last = st.take_due(t0 + chrono::Duration::days(400), usize::MAX, &s);
            let polled: std::collections::BTreeMap<Uuid, i64> = last.iter().map(|(id, p)| (*id, p.version)).collect();
            prop_assert_eq!(polled.len(), last.len(), "each once");
            prop_assert_eq!(polled, held);
        }
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
