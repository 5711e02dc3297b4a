//! Stripe-like rate limits: a token bucket per endpoint (method and path shape) and a
//! global one. Real time, not simulated time: they protect the process, as Stripe's do.

use std::collections::HashMap;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use paystream_core::TokenBucket;

use crate::Sim;
use crate::error::StripeError;

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

pub async fn limit(State(sim): State<Sim>, req: Request, next: Next) -> Response {
    let (global_rate, per_endpoint_rate) = {
        let st = sim.state();
        (st.world().global_rate, st.world().per_endpoint_rate)
    };
    let shape = path_shape(req.method(), req.uri().path());
    let allowed = {
        let now = Instant::now();
        let mut limiter = sim.inner.limiter.lock().unwrap_or_else(|p| p.into_inner());
        // A request refused globally takes nothing from its endpoint's budget.
        limiter.take("global", global_rate, now) && limiter.take(&shape, per_endpoint_rate, now)
    };
    if !allowed {
        return StripeError::rate_limited().into_response();
    }
    next.run(req).await
}

/// `POST /v1/payment_intents/pi_123/confirm` -> `POST /v1/payment_intents/:id/confirm`:
/// the unit Stripe's per-endpoint limits count.
fn path_shape(method: &Method, path: &str) -> String {
    let segments: Vec<&str> = path
        .split('/')
        .map(|s| match s.split_once('_') {
            Some((prefix, _))
                if ["pi", "evt", "we", "ch", "re", "txn", "frr", "file"].contains(&prefix) =>
            {
                ":id"
            }
            _ => s,
        })
        .collect();
    format!("{method} {}", segments.join("/"))
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

    #[test]
    fn ids_collapse_into_endpoint_shapes() {
        assert_eq!(
            path_shape(&Method::POST, "/v1/payment_intents/pi_3QabcdefGHIJ/confirm"),
            "POST /v1/payment_intents/:id/confirm"
        );
        assert_eq!(
            path_shape(&Method::GET, "/v1/payment_intents"),
            "GET /v1/payment_intents"
        );
        assert_eq!(
            path_shape(&Method::GET, "/v1/payment_intents/pi_a1/x"),
            path_shape(&Method::GET, "/v1/payment_intents/pi_b2/x")
        );
    }
}
