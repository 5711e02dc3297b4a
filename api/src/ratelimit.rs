//! Per-key token buckets. Integer milli-tokens: no floats, exact refills.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use uuid::Uuid;

use crate::config::RateLimitConfig;

pub struct RateLimiter {
    cfg: RateLimitConfig,
    buckets: Mutex<HashMap<Uuid, (u64, Instant)>>,
}

impl RateLimiter {
    pub fn new(cfg: RateLimitConfig) -> Self {
        RateLimiter {
            cfg,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok(())` if `client` may go on, else `Err(seconds until it may)`.
    pub fn check(&self, client: Uuid, now: Instant) -> Result<(), u64> {
        let rate = u64::from(self.cfg.per_second.max(1));
        let capacity = u64::from(self.cfg.burst.max(1)) * 1000;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(client).or_insert((capacity, now));
        let refill = now.saturating_duration_since(*last).as_micros() as u64 * rate / 1000;
        if refill > 0 {
            *tokens = (*tokens + refill).min(capacity);
            *last = now;
        }
        if *tokens >= 1000 {
            *tokens -= 1000;
            Ok(())
        } else {
            let missing_milli = 1000 - *tokens;
            Err(missing_milli.div_ceil(rate).div_ceil(1000).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate_then_retry_after() {
        let l = RateLimiter::new(RateLimitConfig {
            per_second: 2,
            burst: 3,
        });
        let c = Uuid::now_v7();
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.check(c, t0).is_ok()));
        assert_eq!(l.check(c, t0), Err(1));
        assert!(l.check(c, t0 + Duration::from_millis(500)).is_ok());
        assert!(l.check(Uuid::now_v7(), t0).is_ok(), "buckets are per key");
    }
}
