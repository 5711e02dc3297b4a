//! The webhook service's settings: `APP_*` variables (and an optional TOML file).

use paystream_service::config::{DatabaseConfig, LogFormat};
use serde::Deserialize;

use crate::WebhookSettings;
use crate::catchup::StripeConfig;

#[derive(Debug, Deserialize)]
pub struct WebhookConfig {
    pub listen_addr: std::net::SocketAddr,
    pub instance: String,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub log_format: LogFormat,
    pub webhook: WebhookSettings,
    pub stripe: StripeConfig,
    #[serde(default = "default_catchup_secs")]
    pub catchup_interval_secs: u64,
    /// An event naming a payment we have no row for is retried until it is this old, then
    /// `orphaned` (listed by the report).
    #[serde(default = "default_orphan_after_secs")]
    pub orphan_after_secs: u64,
}

fn default_catchup_secs() -> u64 {
    60
}

fn default_orphan_after_secs() -> u64 {
    3600
}
