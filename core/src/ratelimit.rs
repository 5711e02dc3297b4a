//! A token bucket in integer milli-tokens (exact refills, no floats), used for per-key
//! API limits, Stripe's limits in stripe-sim and the reconciler's Stripe call budget.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per second.
    rate: u64,
    capacity_milli: u64,
    tokens_milli: u64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` tokens per second, holding at most `burst` (both at least 1). Starts full.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let capacity_milli = u64::from(burst.max(1)) * 1000;
        TokenBucket {
            rate: u64::from(rate.max(1)),
            capacity_milli,
            tokens_milli: capacity_milli,
            last: now,
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed_us =
            u64::try_from(now.saturating_duration_since(self.last).as_micros()).unwrap_or(u64::MAX);
        let refill = elapsed_us.saturating_mul(self.rate) / 1000;
        if refill > 0 {
            self.tokens_milli = self
                .tokens_milli
                .saturating_add(refill)
                .min(self.capacity_milli);
            self.last = now;
        }
        if self.tokens_milli >= 1000 {
            self.tokens_milli -= 1000;
            Ok(())
        } else {
            let missing_milli = 1000 - self.tokens_milli;
            // milli-tokens / (tokens/s) = ms; rounded up so a caller that waits succeeds.
            Err(Duration::from_micros(
                (missing_milli * 1000).div_ceil(self.rate),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(25, 25, t0);
        assert_eq!((0..100).filter(|_| b.take(t0).is_ok()).count(), 25);
        let wait = b.take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(40));
        assert!(
            b.take(t0 + wait).is_ok(),
            "waiting the advised time is enough"
        );
        assert_eq!(
            (0..100)
                .filter(|_| b.take(t0 + Duration::from_millis(240)).is_ok())
                .count(),
            5
        );
    }

    proptest! {
        /// Over any run, what is granted never exceeds burst + rate x elapsed.
        #[test]
        fn never_exceeds_the_rate(rate in 1_u32..200, burst in 1_u32..200, steps in proptest::collection::vec((0_u64..50_000, 1_usize..20), 1..200)) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate, burst, t0);
            let (mut now_us, mut granted) = (0_u64, 0_u64);
            for (advance_us, tries) in steps {
                now_us += advance_us;
                let now = t0 + Duration::from_micros(now_us);
                granted += (0..tries).filter(|_| b.take(now).is_ok()).count() as u64;
                let allowed_milli = u64::from(burst) * 1000 + now_us * u64::from(rate) / 1000;
                prop_assert!(granted * 1000 <= allowed_milli, "granted {} in {} us", granted, now_us);
            }
        }
    }
}
