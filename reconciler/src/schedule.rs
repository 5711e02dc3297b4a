//! When a pending payment is polled: first `first` after its creation, then every
//! `frequent` until `frequent_for` has passed since creation, then every `slow`; and
//! always once exactly at `expire_after`, when a payment still pending is canceled.

use std::time::Duration;

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub first: Duration,
    pub frequent: Duration,
    pub frequent_for: Duration,
    pub slow: Duration,
    pub expire_after: Duration,
}

impl Default for Schedule {
    /// 60 s after creation, then every 5 minutes for the first hour, then hourly.
    fn default() -> Self {
        Schedule {
            first: Duration::from_secs(60),
            frequent: Duration::from_secs(300),
            frequent_for: Duration::from_secs(3600),
            slow: Duration::from_secs(3600),
            expire_after: Duration::from_secs(24 * 3600),
        }
    }
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Schedule {
    /// The poll due after `last` (`None`: the first poll).
    pub fn next(&self, created_at: DateTime<Utc>, last: Option<DateTime<Utc>>) -> DateTime<Utc> {
        let expiry = created_at + chrono(self.expire_after);
        let Some(last) = last else {
            return (created_at + chrono(self.first)).min(expiry);
        };
        let step = if last - created_at < chrono(self.frequent_for) {
            self.frequent
        } else {
            self.slow
        };
        let next = last + chrono(step);
        if last < expiry {
            next.min(expiry)
        } else {
            next
        }
    }

    /// Whether a payment created at `created_at` is past its age limit at `now`.
    pub fn expired(&self, created_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now - created_at >= chrono(self.expire_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_poll_lands_exactly_at_expiry() {
        let s = Schedule {
            expire_after: Duration::from_secs(90 * 60),
            ..Schedule::default()
        };
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut at = s.next(t0, None);
        let mut polls = vec![at];
        while at < t0 + chrono::Duration::hours(3) {
            at = s.next(t0, Some(at));
            polls.push(at);
        }
        let expiry = t0 + chrono::Duration::minutes(90);
        assert!(polls.contains(&expiry));
        assert!(!s.expired(t0, expiry - chrono::Duration::seconds(1)));
        assert!(s.expired(t0, expiry));
        let after = polls
            .iter()
            .skip_while(|p| **p <= expiry)
            .take(2)
            .collect::<Vec<_>>();
        assert_eq!(
            (*after[0] - expiry).num_seconds(),
            3600,
            "hourly after expiry until resolved"
        );
        assert_eq!((*after[1] - *after[0]).num_seconds(), 3600);
        let tiny = Schedule {
            expire_after: Duration::from_secs(10),
            ..Schedule::default()
        };
        assert_eq!(
            (tiny.next(t0, None) - t0).num_seconds(),
            10,
            "expiry before the first poll"
        );
    }

    #[test]
    fn default_schedule() {
        let s = Schedule::default();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let first = s.next(t0, None);
        assert_eq!((first - t0).num_seconds(), 60);
        let second = s.next(t0, Some(first));
        assert_eq!((second - first).num_seconds(), 300);
        let late = t0 + chrono::Duration::seconds(3600);
        assert_eq!((s.next(t0, Some(late)) - late).num_seconds(), 3600);
    }

    proptest! {
        /// Polls move forward, never closer together than the frequent step, and hourly
        /// once past the first hour.
        #[test]
        fn polls_only_move_forward(created in 0_i64..4_000_000_000, polls in 1_usize..40) {
            let s = Schedule::default();
            let t0 = DateTime::from_timestamp(created, 0).unwrap();
            let mut last = s.next(t0, None);
            prop_assert!(last > t0);
            let expiry = t0 + chrono::Duration::hours(24);
            let mut expiry_polled = false;
            for _ in 0..polls {
                let next = s.next(t0, Some(last));
                prop_assert!(next > last);
                if next == expiry {
                    expiry_polled = true;
                    last = next;
                    continue;
                }
                prop_assert!(next - last >= chrono::Duration::seconds(300));
                if last - t0 >= chrono::Duration::seconds(3600) {
                    prop_assert_eq!((next - last).num_seconds(), 3600);
                }
                last = next;
            }
            if last > expiry {
                prop_assert!(expiry_polled, "the expiry poll is never skipped");
            }
        }
    }
}
