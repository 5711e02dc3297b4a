//! Fault injection: the ways real Stripe misbehaves, on demand. Every decision is drawn
//! from the simulator's seeded generator, so a run replays exactly under the same seed
//! and the same sequence of requests.

use serde::{Deserialize, Serialize};

/// Probabilities are in [0, 1]; durations in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// A dropped delivery is never sent and never retried (the event stays undelivered:
    /// `GET /v1/events?delivery_success=false` finds it).
    pub webhook_drop_rate: f64,
    /// A second, independent copy of the delivery.
    pub webhook_duplicate_rate: f64,
    /// Every delivery waits this long before its first attempt.
    pub webhook_delay_ms: u64,
    /// Each delivery gets an extra random delay in [0, window]: deliveries reorder.
    pub webhook_reorder_window_ms: u64,
    /// Signed with a timestamp an hour old (receivers must reject it).
    pub webhook_stale_rate: f64,
    /// Signed with a wrong secret (receivers must reject it).
    pub webhook_bad_signature_rate: f64,
    /// API calls answered 500 `api_error` before the endpoint runs.
    pub api_error_rate: f64,
    /// API calls answered 429 `rate_limit` before the endpoint runs.
    pub api_rate_limit_rate: f64,
    /// Added before every API call is handled.
    pub api_latency_ms: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{name} must be within [0, 1], got {value}")]
pub struct RateOutOfRange {
    pub name: &'static str,
    pub value: f64,
}

impl Faults {
    pub fn validate(&self) -> Result<(), RateOutOfRange> {
        let rates = [
            ("webhook_drop_rate", self.webhook_drop_rate),
            ("webhook_duplicate_rate", self.webhook_duplicate_rate),
            ("webhook_stale_rate", self.webhook_stale_rate),
            (
                "webhook_bad_signature_rate",
                self.webhook_bad_signature_rate,
            ),
            ("api_error_rate", self.api_error_rate),
            ("api_rate_limit_rate", self.api_rate_limit_rate),
        ];
        for (name, value) in rates {
            if !(0.0..=1.0).contains(&value) {
                return Err(RateOutOfRange { name, value });
            }
        }
        Ok(())
    }
}
