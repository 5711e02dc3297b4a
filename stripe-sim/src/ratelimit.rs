//! Stripe-like rate limits: a token bucket per endpoint (method and path shape) and a
//! global one. Real time, not simulated time: they protect the process, as Stripe's do.

use std::collections::HashMap;
use std::time::Instant;

#[derive(Debug)]
struct Bucket {
    tokens_milli: u64,
    last: Instant,
}

#[derive(Debug, Default)]
pub struct Limiter {
    buckets: HashMap<String, Bucket>,
}

impl Limiter {
    /// Takes one token from `key`'s bucket of `rate` per second (burst: one second's worth).
    /// Integer milli-tokens keep the arithmetic exact.
    pub fn take(&mut self, key: &str, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let capacity = u64::from(rate) * 1000;
        let b = self.buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens_milli: capacity,
            last: now,
        });
        let elapsed_us = now.saturating_duration_since(b.last).as_micros() as u64;
        let refill = elapsed_us * u64::from(rate) / 1000;
        if refill > 0 {
            b.tokens_milli = (b.tokens_milli + refill).min(capacity);
            b.last = now;
        }
        if b.tokens_milli >= 1000 {
            b.tokens_milli -= 1000;
            true
        } else {
            false
        }
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
