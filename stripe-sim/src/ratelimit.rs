//! Stripe-like rate limits: a token bucket per endpoint (method and path shape) and a
//! global one. Real time, not simulated time: they protect the process, as Stripe's do.

use std::collections::HashMap;
use std::time::Instant;

use paystream_core::TokenBucket;

#[derive(Debug, Default)]
pub struct Limiter {
    buckets: HashMap<String, TokenBucket>,
}

impl Limiter {
    /// Takes one token from `key`'s bucket of `rate` per second (burst: one second's
    /// worth); a rate of 0 means unlimited.
    pub fn take(&mut self, key: &str, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        self.buckets
            .entry(key.to_owned())
            .or_insert_with(|| TokenBucket::new(rate, rate, now))
            .take(now)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_a_burst_of_one_second_then_the_rate() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let burst = (0..100).filter(|_| l.take("k", 25, t0)).count();
        assert_eq!(burst, 25);
        // 200 ms later: 5 more tokens.
        let later = t0 + Duration::from_millis(200);
        assert_eq!((0..100).filter(|_| l.take("k", 25, later)).count(), 5);
        // Other keys have their own bucket.
        assert!(l.take("other", 25, later));
    }

    #[test]
    fn never_exceeds_the_rate_over_a_long_run() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let mut granted = 0;
        for ms in 0..10_000u64 {
            let now = t0 + Duration::from_millis(ms);
            granted += (0..3).filter(|_| l.take("k", 25, now)).count();
        }
        // 10 s at 25/s plus the initial one-second burst.
        assert!(granted <= 25 * 10 + 25, "{granted}");
        assert!(granted >= 25 * 10, "{granted}");
    }
}
