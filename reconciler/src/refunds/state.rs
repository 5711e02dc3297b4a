//! The refund worker's state: pending refunds and their next poll, with a timer queue so
//! that finding due polls never scans the whole state.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::envelope::{RefundChange, RefundRow};
use crate::schedule::Schedule;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRefund {
    pub payment_id: Uuid,
    pub stripe_refund_id: Option<Box<str>>,
    pub created_at: DateTime<Utc>,
    pub version: i64,
    pub next_poll: DateTime<Utc>,
    pub last_poll: Option<DateTime<Utc>>,
    /// Polls in a row whose answer could not be used (Stripe does not know the refund,
    /// or says a status we do not know); past a bound it goes to an operator.
    pub misses: u8,
}

/// What applying a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundEffect {
    Added,
    Updated,
    /// Final, flagged, or deleted: gone from the state.
    Removed,
    /// Not newer than what the state holds (a replay): ignored.
    Stale,
    /// Not pending and not held.
    Ignored,
}

impl RefundEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Updated => "updated",
            Self::Removed => "removed",
            Self::Stale => "stale",
            Self::Ignored => "ignored",
        }
    }
}

#[derive(Debug, Default)]
pub struct RefundState {
    pending: HashMap<Uuid, PendingRefund>,
    /// (due, id); an entry whose time no longer matches the refund's is stale and skipped.
    timers: BinaryHeap<Reverse<(DateTime<Utc>, Uuid)>>,
    /// The last version seen of refunds no longer pending, so that a replayed older change
    /// cannot bring one back. Bounded by `forget_resolved`.
    resolved: HashMap<Uuid, i64>,
}

impl RefundState {
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn get(&self, id: &Uuid) -> Option<&PendingRefund> {
        self.pending.get(id)
    }

    pub fn apply(&mut self, change: &RefundChange, schedule: &Schedule) -> RefundEffect {
        match change {
            RefundChange::Upsert { row, .. } => self.upsert(row, schedule),
            RefundChange::Delete { id } => {
                if self.pending.remove(id).is_some() {
                    RefundEffect::Removed
                } else {
                    RefundEffect::Ignored
                }
            }
            RefundChange::Tombstone { .. } => RefundEffect::Ignored,
        }
    }

    fn upsert(&mut self, row: &RefundRow, schedule: &Schedule) -> RefundEffect {
        let known = self
            .pending
            .get(&row.id)
            .map(|p| p.version)
            .or_else(|| self.resolved.get(&row.id).copied());
        if known.is_some_and(|v| row.version <= v) {
            return RefundEffect::Stale;
        }
        if !row.is_open() {
            self.resolved.insert(row.id, row.version);
            return if self.pending.remove(&row.id).is_some() {
                RefundEffect::Removed
            } else {
                RefundEffect::Ignored
            };
        }
        if let Some(p) = self.pending.get_mut(&row.id) {
            p.version = row.version;
            p.stripe_refund_id = row.stripe_refund_id.as_deref().map(Box::from);
            return RefundEffect::Updated;
        }
        let next_poll = schedule.next(row.created_at, None);
        self.pending.insert(
            row.id,
            PendingRefund {
                payment_id: row.payment_id,
                stripe_refund_id: row.stripe_refund_id.as_deref().map(Box::from),
                created_at: row.created_at,
                version: row.version,
                next_poll,
                last_poll: None,
                misses: 0,
            },
        );
        self.timers.push(Reverse((next_poll, row.id)));
        RefundEffect::Added
    }

    /// The refunds due at `now`, at most `max`, soonest first; each is moved to its next
    /// poll time as it is taken (a poll that never answers is simply polled again later).
    pub fn take_due(
        &mut self,
        now: DateTime<Utc>,
        max: usize,
        schedule: &Schedule,
    ) -> Vec<(Uuid, PendingRefund)> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(Reverse((at, id))) = self.timers.peek().copied() else {
                break;
            };
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            if p.next_poll != at {
                continue;
            }
            let taken = p.clone();
            p.last_poll = Some(at);
            p.next_poll = schedule.next(p.created_at, Some(at.max(p.created_at)));
            self.timers.push(Reverse((p.next_poll, id)));
            out.push((id, taken));
        }
        out
    }

    /// The earliest poll due, if any refund is pending.
    pub fn next_due(&mut self) -> Option<DateTime<Utc>> {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if self.pending.get(&id).is_some_and(|p| p.next_poll == at) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    /// A poll's answer was usable (resets the misses) or not (counts one more).
    pub fn note_poll(&mut self, id: Uuid, usable: bool) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.misses = if usable {
                0
            } else {
                p.misses.saturating_add(1)
            };
        }
    }

    /// Polls `id` again at `at` (Stripe asked us to slow down).
    pub fn reschedule(&mut self, id: Uuid, at: DateTime<Utc>) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.next_poll = at;
            self.timers.push(Reverse((at, id)));
        }
    }

    /// Drops what the state remembers of resolved refunds (it only guards against
    /// replays, which come right after a restart or rebalance).
    pub fn forget_resolved(&mut self, keep: usize) {
        if self.resolved.len() > keep {
            self.resolved.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn schedule() -> Schedule {
        Schedule {
            first: Duration::from_secs(60),
            frequent: Duration::from_secs(300),
            frequent_for: Duration::from_secs(3600),
            slow: Duration::from_secs(3600),
            expire_after: Duration::from_secs(10 * 365 * 24 * 3600),
        }
    }

    fn t0() -> DateTime<Utc> {
        "2026-12-02T10:00:00Z".parse().unwrap()
    }

    fn row(id: Uuid, status: &str, version: i64) -> RefundChange {
        RefundChange::Upsert {
            row: RefundRow {
                id,
                payment_id: Uuid::nil(),
                status: status.into(),
                stripe_refund_id: None,
                amount: 100,
                currency: "usd".into(),
                failure_reason: None,
                resolution_source: None,
                created_at: t0(),
                version,
                flagged: false,
            },
            before_status: None,
            snapshot: false,
            lsn: 0,
            commit_ts_ms: 0,
        }
    }

    #[test]
    fn a_pending_refund_is_held_polled_on_schedule_and_dropped_when_final() {
        let s = schedule();
        let mut st = RefundState::default();
        let id = Uuid::now_v7();
        assert_eq!(st.apply(&row(id, "pending", 1), &s), RefundEffect::Added);
        assert_eq!(st.apply(&row(id, "pending", 1), &s), RefundEffect::Stale);
        assert!(st.take_due(t0(), 10, &s).is_empty(), "not before `first`");
        let first = t0() + chrono::Duration::seconds(60);
        assert_eq!(st.next_due(), Some(first));
        let due = st.take_due(first, 10, &s);
        assert_eq!(due.len(), 1);
        assert_eq!(
            st.next_due(),
            Some(first + chrono::Duration::seconds(300)),
            "then every `frequent`"
        );
        assert_eq!(
            st.apply(&row(id, "succeeded", 2), &s),
            RefundEffect::Removed
        );
        assert!(st.is_empty());
        assert_eq!(st.next_due(), None);
        assert_eq!(
            st.apply(&row(id, "pending", 1), &s),
            RefundEffect::Stale,
            "a replay of an older change cannot bring it back"
        );
    }

    #[test]
    fn a_flagged_refund_is_not_polled() {
        let s = schedule();
        let mut st = RefundState::default();
        let id = Uuid::now_v7();
        st.apply(&row(id, "pending", 1), &s);
        let RefundChange::Upsert { mut row, .. } = row(id, "pending", 2) else {
            unreachable!()
        };
        row.flagged = true;
        let flagged = RefundChange::Upsert {
            row,
            before_status: Some("pending".into()),
            snapshot: false,
            lsn: 0,
            commit_ts_ms: 0,
        };
        assert_eq!(st.apply(&flagged, &s), RefundEffect::Removed);
        assert!(
            st.take_due(t0() + chrono::Duration::days(1), 10, &s)
                .is_empty()
        );
    }

    proptest! {
        /// Whatever the order and duplication of changes, the state holds exactly the
        /// refunds whose newest version is pending, and each is due exactly once per take.
        #[test]
        fn state_matches_the_newest_version(ops in proptest::collection::vec((0usize..6, 1i64..5, any::<bool>()), 0..60)) {
            let s = schedule();
            let ids: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
            let mut st = RefundState::default();
            let mut newest: HashMap<Uuid, (i64, bool)> = HashMap::new();
            for (i, v, pending) in ops {
                let id = ids[i];
                st.apply(&row(id, if pending { "pending" } else { "succeeded" }, v), &s);
                let e = newest.entry(id).or_insert((v, pending));
                if v > e.0 { *e = (v, pending); }
            }
            for id in &ids {
                let expect = newest.get(id).is_some_and(|(_, p)| *p);
                // A refund that was final at some newer version never returns to pending.
                if st.get(id).is_some() {
                    prop_assert!(expect, "{id} held but its newest version is final");
                }
            }
            // Past the first poll, before the second: every pending refund is due once.
            let due = st.take_due(t0() + chrono::Duration::seconds(61), 100, &s);
            let mut seen: Vec<Uuid> = due.iter().map(|(id, _)| *id).collect();
            seen.sort();
            seen.dedup();
            prop_assert_eq!(seen.len(), due.len());
            prop_assert_eq!(due.len(), st.len());
        }
    }
}
