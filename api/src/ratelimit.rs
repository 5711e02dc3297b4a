//! Per-key token buckets (per instance).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use paystream_core::ClientId;
use paystream_core::TokenBucket;

use crate::config::RateLimitConfig;

pub struct RateLimiter {
    cfg: RateLimitConfig,
    buckets: Mutex<HashMap<ClientId, TokenBucket>>,
}

impl RateLimiter {
    pub fn new(cfg: RateLimitConfig) -> Self {
        RateLimiter {
            cfg,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok(())` if `client` may go on, else `Err(whole seconds until it may)`.
    pub fn check(&self, client: ClientId, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry(client)
            .or_insert_with(|| TokenBucket::new(self.cfg.per_second, self.cfg.burst, now));
        bucket
            .take(now)
            .map_err(|wait| wait.as_micros().div_ceil(1_000_000).max(1) as u64)
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
        let c = ClientId::generate();
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.check(c, t0).is_ok()));
        assert_eq!(l.check(c, t0), Err(1));
        assert!(l.check(c, t0 + Duration::from_millis(500)).is_ok());
        assert!(
            l.check(ClientId::generate(), t0).is_ok(),
            "buckets are per key"
        );
    }
}
