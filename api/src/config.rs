//! The API's settings: the service basics plus Stripe, limits and the idempotency lease.

use paystream_service::config::{DatabaseConfig, LogFormat};
pub use paystream_stripe::StripeConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct ApiConfig {
    pub listen_addr: std::net::SocketAddr,
    pub instance: String,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub log_format: LogFormat,
    pub stripe: StripeConfig,
    /// The replicas (e.g. nginx's replica port), for operator reports.
    #[serde(default)]
    pub replica: Option<DatabaseConfig>,
    /// Largest amount accepted, in minor units (Stripe's own ceiling is 99,999,999).
    #[serde(default = "default_max_amount")]
    pub max_amount: i64,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// How long a request holds its idempotency key before a retry may take it over.
    #[serde(default = "default_lease_secs")]
    pub idempotency_lease_secs: u64,
    #[serde(default)]
    pub analytics: AnalyticsConfig,
}

/// Analytics read the replicas: how much lag they accept, what they do beyond it, and how
/// often this instance refreshes the hourly rollups on the primary (0: never).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default)]
pub struct AnalyticsConfig {
    pub max_lag_ms: u64,
    pub on_lag: paystream_analytics::OnLag,
    pub refresh_ms: u64,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            max_lag_ms: 10_000,
            on_lag: paystream_analytics::OnLag::Refuse,
            refresh_ms: 10_000,
        }
    }
}

/// Per API key, per instance: a token bucket of `per_second` with room for `burst`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct RateLimitConfig {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_second: 100,
            burst: 200,
        }
    }
}

fn default_max_amount() -> i64 {
    99_999_999
}

fn default_lease_secs() -> u64 {
    30
}
