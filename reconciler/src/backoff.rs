//! How the poller slows down when Stripe says 429, and how it speeds up again.
//!
//! Polls run concurrently, so a success that was already in flight when a 429 arrived
//! says nothing about the rate now: it must not undo the backoff (it used to reset it to
//! zero, so under a 429 storm the pause never grew). The backoff doubles on every 429 and
//! only halves after a whole quiet period (twice the current backoff) without one.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    paused_until: Option<Instant>,
    last_limited: Option<Instant>,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            current: Duration::ZERO,
            paused_until: None,
            last_limited: None,
        }
    }

    /// The current pause length (zero when Stripe has been quiet).
    pub fn current(&self) -> Duration {
        self.current
    }

    /// Whether polls must wait at `now`.
    pub fn paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|until| now < until)
    }

    /// How long polls must still wait at `now`, if they must.
    pub fn pause_left(&self, now: Instant) -> Option<Duration> {
        self.paused_until
            .filter(|until| now < *until)
            .map(|until| until - now)
    }

    /// Stripe answered 429 at `now`: pause, for twice as long as last time. A 429 during a
    /// pause is the same wave (calls already in flight when it began, from any loop of the
    /// instance): it does not double the pause again, only makes it last `current` from
    /// itself. Returns the pause.
    pub fn limited(&mut self, now: Instant) -> Duration {
        self.last_limited = Some(now);
        if let Some(until) = self.paused_until.filter(|until| now < *until) {
            self.paused_until = Some(until.max(now + self.current));
            return self.current;
        }
        self.current = (self.current * 2).clamp(self.min, self.max);
        self.paused_until = Some(now + self.current);
        self.current
    }

    /// A poll succeeded at `now`: the backoff halves once a quiet period has passed since
    /// the last 429, and not before.
    pub fn succeeded(&mut self, now: Instant) {
        let Some(last) = self.last_limited else {
            return;
        };
        if now.duration_since(last) >= self.current * 2 {
            self.current /= 2;
            if self.current < self.min {
                self.current = Duration::ZERO;
                self.last_limited = None;
            } else {
                // The next halving needs another quiet period.
                self.last_limited = Some(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn doubles_to_the_cap_and_decays_only_after_quiet_periods() {
        let t0 = Instant::now();
        let mut b = Backoff::new(MIN, MAX);
        assert!(!b.paused(t0));
        assert_eq!(b.limited(t0), MIN);
        assert!(b.paused(t0 + Duration::from_millis(499)));
        assert!(!b.paused(t0 + MIN));
        assert_eq!(
            b.limited(t0 + Duration::from_millis(100)),
            MIN,
            "a 429 during the pause is the same wave"
        );
        assert!(
            b.paused(t0 + Duration::from_millis(599)),
            "lasting MIN from itself"
        );
        let mut t = t0 + Duration::from_millis(600);
        assert_eq!(b.limited(t), Duration::from_secs(1));
        for _ in 0..10 {
            t += b.current();
            b.limited(t);
        }
        assert_eq!(b.current(), MAX);
        // A success just after the 429 changes nothing.
        b.succeeded(t + Duration::from_secs(1));
        assert_eq!(b.current(), MAX);
        // After a quiet period (2 x 30 s) it halves; the next halving needs another one.
        b.succeeded(t + Duration::from_secs(60));
        assert_eq!(b.current(), Duration::from_secs(15));
        b.succeeded(t + Duration::from_secs(61));
        assert_eq!(b.current(), Duration::from_secs(15));
        let mut t = t + Duration::from_secs(61);
        while b.current() > Duration::ZERO {
            t += b.current() * 2;
            b.succeeded(t);
        }
        assert_eq!(b.current(), Duration::ZERO, "back to full speed");
        assert_eq!(b.limited(t), MIN, "and starts over from the floor");
    }

    proptest! {
        /// Under a storm (a 429 at most 400 ms after each pause ends, more 429s and successes
        /// of calls already in flight at any moment in between), the pause never shrinks and
        /// reaches the cap; 429s within a pause never lengthen it.
        #[test]
        fn a_storm_escalates_to_the_cap(storm in proptest::collection::vec((1_u64..400, proptest::collection::vec((any::<bool>(), 0_u64..30_000), 0..5)), 7..200)) {
            let mut b = Backoff::new(MIN, MAX);
            let mut t = Instant::now();
            let mut last = Duration::ZERO;
            for (gap, within) in storm {
                let pause = b.current();
                let mut at: Vec<(bool, u64)> = within
                    .into_iter()
                    .map(|(is_429, o)| (is_429, o % u64::try_from(pause.as_millis()).unwrap_or(1).max(1)))
                    .collect();
                at.sort_unstable_by_key(|(_, o)| *o);
                let started = t;
                let mut end = started + pause;
                for (is_429, o) in at {
                    let when = started + Duration::from_millis(o);
                    if is_429 && b.paused(when) {
                        prop_assert_eq!(b.limited(when), pause, "a 429 within a pause");
                        end = end.max(when + pause);
                    } else if !is_429 {
                        b.succeeded(when);
                    }
                    prop_assert!(b.current() >= last, "nothing in a storm shrinks the pause");
                }
                t = end + Duration::from_millis(gap);
                b.limited(t);
                prop_assert!(b.current() >= last);
                last = b.current();
            }
            prop_assert_eq!(b.current(), MAX);
        }

        /// Whatever happens, the pause stays within [0, max] and is at least min after a 429.
        #[test]
        fn bounded(events in proptest::collection::vec((any::<bool>(), 0_u64..120_000), 0..100)) {
            let t0 = Instant::now();
            let mut b = Backoff::new(MIN, MAX);
            let mut t = t0;
            for (is_429, gap) in events {
                t += Duration::from_millis(gap);
                if is_429 {
                    let p = b.limited(t);
                    prop_assert!(p >= MIN && p <= MAX);
                } else {
                    b.succeeded(t);
                }
                prop_assert!(b.current() <= MAX);
            }
        }
    }
}
