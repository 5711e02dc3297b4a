//! The reconciler's settings: the service basics, the replica it rebuilds state from,
//! Kafka, Stripe and the poll rules. Durations are milliseconds so that tests and the
//! local stack can shorten them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::ClientConfig;

use paystream_service::config::{DatabaseConfig, LogFormat};
use paystream_stripe::StripeConfig;
use serde::Deserialize;

use crate::poll::Rules;
use crate::registry::SchemaRegistryConfig;
use crate::schedule::Schedule;

#[derive(Debug, Clone, Deserialize)]
pub struct ReconcilerConfig {
    pub listen_addr: std::net::SocketAddr,
    pub instance: String,
    pub database: DatabaseConfig,
    /// A read replica (or several behind nginx): state is rebuilt from it, not the primary.
    pub replica: DatabaseConfig,
    #[serde(default)]
    pub log_format: LogFormat,
    pub kafka: KafkaConfig,
    pub stripe: StripeConfig,
    #[serde(default)]
    pub poll: PollConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KafkaConfig {
    pub brokers: String,
    #[serde(default = "default_group")]
    pub group_id: String,
    #[serde(default = "default_cdc_topic")]
    pub cdc_topic: String,
    #[serde(default = "default_status_topic")]
    pub status_topic: String,
    /// Where undecodable CDC records go, whole.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// Debezium's topic of the refunds table (named like the payments topic).
    #[serde(default = "default_refund_cdc_topic")]
    pub refund_cdc_topic: String,
    #[serde(default = "default_refund_status_topic")]
    pub refund_status_topic: String,
    #[serde(default = "default_refund_dead_letter_topic")]
    pub refund_dead_letter_topic: String,
    /// Any other librdkafka setting, for a managed Kafka: TLS and SASL
    /// (`security.protocol`, `sasl.mechanisms`, `sasl.username`, `ssl.ca.location`, ...).
    #[serde(default)]
    pub properties: KafkaProperties,
    /// A schema registry to register the status schemas with; their messages then use
    /// its wire format (see `crate::registry`).
    #[serde(default)]
    pub schema_registry: Option<SchemaRegistryConfig>,
    /// Status topic -> its schema's registry id, filled at start.
    #[serde(skip)]
    pub registered: BTreeMap<String, u32>,
}

/// librdkafka settings by name. From the environment, `APP_KAFKA__PROPERTIES__SASL_USERNAME`
/// names `sasl.username`: librdkafka's names have dots and never underscores, and
/// environment variable names cannot have dots.
#[derive(Clone, Default, Deserialize)]
#[serde(from = "BTreeMap<String, String>")]
pub struct KafkaProperties(BTreeMap<String, String>);

impl KafkaProperties {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

impl From<BTreeMap<String, String>> for KafkaProperties {
    fn from(raw: BTreeMap<String, String>) -> Self {
        KafkaProperties(
            raw.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase().replace('_', "."), v))
                .collect(),
        )
    }
}

/// The settings the reconciler's guarantees rest on (offsets stored only after the work,
/// ordered idempotent delivery, its own groups): configuration may not change them.
const RESERVED: [&str; 12] = [
    "bootstrap.servers",
    // librdkafka's alias of bootstrap.servers.
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.idempotence",
    "acks",
    // librdkafka's alias of acks.
    "request.required.acks",
    "isolation.level",
    // The worker handles eager rebalances (revoke all, then assign).
    "partition.assignment.strategy",
    "group.protocol",
];

/// Values that are credentials; shown as `<redacted>`.
fn is_secret(name: &str) -> bool {
    [
        "password",
        "secret",
        "key.pem",
        "keystore",
        "sasl.oauthbearer.config",
    ]
    .iter()
    .any(|s| name.contains(s))
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if is_secret(k) { "<redacted>" } else { v };
                (k, shown)
            }))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaConfigError {
    #[error("kafka.properties may not set {0}: the reconciler's delivery guarantees depend on it")]
    Reserved(String),
}

impl KafkaConfig {
    /// The registry id of the schema `topic`'s messages are written with, when a registry
    /// is configured.
    pub fn registry_id(&self, topic: &str) -> Option<u32> {
        self.registered.get(topic).copied()
    }

    /// The client settings every consumer and producer starts from: the brokers and the
    /// configured properties (TLS, SASL, timeouts). Callers then set what their
    /// guarantees need, which no property may override.
    pub fn client_config(&self) -> Result<ClientConfig, KafkaConfigError> {
        let mut config = ClientConfig::new();
        for (name, value) in &self.properties.0 {
            if RESERVED.contains(&name.as_str()) {
                return Err(KafkaConfigError::Reserved(name.clone()));
            }
            config.set(name, value);
        }
        config.set("bootstrap.servers", &self.brokers);
        Ok(config)
    }
}

impl KafkaConfig {
    /// The refund worker's consumer group: its own, so that its partitions and offsets
    /// never mix with the payment worker's.
    pub fn refund_group_id(&self) -> String {
        format!("{}-refunds", self.group_id)
    }
}

fn default_refund_cdc_topic() -> String {
    "dbserver1.public.refunds".into()
}

fn default_refund_status_topic() -> String {
    "refund-status-update".into()
}

fn default_refund_dead_letter_topic() -> String {
    "dbserver1.public.refunds.dead-letter".into()
}

fn default_group() -> String {
    "paystream-reconciler".into()
}

fn default_cdc_topic() -> String {
    "dbserver1.public.payments".into()
}

fn default_status_topic() -> String {
    "payment-status-update".into()
}

fn default_dead_letter_topic() -> String {
    "dbserver1.public.payments.dead-letter".into()
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default)]
pub struct PollConfig {
    pub first_ms: u64,
    pub frequent_ms: u64,
    pub frequent_for_ms: u64,
    pub slow_ms: u64,
    pub expire_after_ms: u64,
    pub create_after_ms: u64,
    /// Stripe calls per second for the whole group: each instance takes the share of it
    /// that its share of the partitions is.
    pub rate_per_sec: u32,
    pub burst: u32,
    pub max_in_flight: usize,
    /// Unusable answers in a row (Stripe does not know the intent, or says a status we do
    /// not know) before the payment is flagged for an operator and no longer polled.
    pub misses_before_attention: u8,
    /// ...and only once the payment is at least this old.
    pub attention_after_ms: u64,
    /// Undecodable CDC records in a row before the reconciler stops (each one goes to the
    /// dead-letter topic; a run of them means the stream's format changed, and skipping
    /// on would lose every change).
    pub halt_after_undecodable: u32,
    /// How often Stripe's event list is read for intents that moved (`crate::sweep`);
    /// 0 turns the sweep off.
    pub sweep_every_ms: u64,
    /// Pages (100 events each) one sweep may read.
    pub sweep_max_pages: u32,
}

impl Default for PollConfig {
    /// The schedule is `Schedule::default()`'s, so that what the schedule's tests check is
    /// what runs. 12 calls/s is the reconciler's share of Stripe's 25/s test-mode account
    /// limit (README, "Stripe's rate limit is the account's").
    fn default() -> Self {
        let s = Schedule::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        PollConfig {
            first_ms: ms(s.first),
            frequent_ms: ms(s.frequent),
            frequent_for_ms: ms(s.frequent_for),
            slow_ms: ms(s.slow),
            expire_after_ms: ms(s.expire_after),
            create_after_ms: 300_000,
            rate_per_sec: 12,
            burst: 12,
            max_in_flight: 8,
            misses_before_attention: 3,
            attention_after_ms: 600_000,
            halt_after_undecodable: 20,
            sweep_every_ms: 2_000,
            sweep_max_pages: 10,
        }
    }
}

impl PollConfig {
    /// The rules of refund polls: the payments' schedule, without an age limit (a refund
    /// is Stripe's to finish, however long it takes; ours only ever follows).
    pub fn refund_rules(&self) -> Rules {
        let mut rules = self.rules();
        rules.schedule.expire_after = Duration::from_secs(100 * 365 * 24 * 3600);
        rules
    }

    pub fn rules(&self) -> Rules {
        Rules {
            schedule: Schedule {
                first: Duration::from_millis(self.first_ms),
                frequent: Duration::from_millis(self.frequent_ms),
                frequent_for: Duration::from_millis(self.frequent_for_ms),
                slow: Duration::from_millis(self.slow_ms),
                expire_after: Duration::from_millis(self.expire_after_ms),
            },
            create_after: chrono::Duration::milliseconds(
                i64::try_from(self.create_after_ms).unwrap_or(i64::MAX),
            ),
            misses_before_attention: self.misses_before_attention.max(1),
            attention_after: chrono::Duration::milliseconds(
                i64::try_from(self.attention_after_ms).unwrap_or(i64::MAX),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(properties: serde_json::Value) -> KafkaConfig {
        serde_json::from_value(serde_json::json!({"brokers": "b:9093", "properties": properties}))
            .expect("a kafka config")
    }

    #[test]
    fn properties_from_files_and_environment_name_librdkafka_settings() {
        let cfg = kafka(serde_json::json!({
            "SECURITY_PROTOCOL": "SASL_SSL",
            "sasl.mechanisms": "SCRAM-SHA-512",
            "sasl_username": "paystream",
            "sasl_password": "hunter2",
            "ssl_ca_location": "/etc/ssl/certs/ca-certificates.crt",
        }));
        let client = cfg.client_config().unwrap();
        for (name, value) in [
            ("bootstrap.servers", "b:9093"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "paystream"),
            ("sasl.password", "hunter2"),
            ("ssl.ca.location", "/etc/ssl/certs/ca-certificates.crt"),
        ] {
            assert_eq!(client.get(name), Some(value), "{name}");
        }
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("SCRAM-SHA-512"), "{shown}");
    }

    #[test]
    fn no_property_may_change_what_the_guarantees_rest_on() {
        for name in RESERVED {
            let err = kafka(serde_json::json!({ name.replace('.', "_"): "x" }))
                .client_config()
                .unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
        assert!(kafka(serde_json::json!({})).client_config().is_ok());
    }

    /// librdkafka is built with TLS: it accepts each security protocol and SASL mechanism
    /// a managed Kafka asks for (without TLS it refuses `SSL` at client creation).
    #[test]
    fn librdkafka_accepts_tls_and_each_sasl_mechanism() {
        use rdkafka::producer::BaseProducer;
        for (protocol, mechanism) in [
            ("SSL", None),
            ("SASL_SSL", Some("PLAIN")),
            ("SASL_SSL", Some("SCRAM-SHA-256")),
            ("SASL_SSL", Some("SCRAM-SHA-512")),
            ("SASL_PLAINTEXT", Some("SCRAM-SHA-512")),
        ] {
            let mut props = serde_json::json!({
                "security.protocol": protocol,
                "ssl.endpoint.identification.algorithm": "https",
            });
            if let Some(m) = mechanism {
                props["sasl.mechanisms"] = m.into();
                props["sasl.username"] = "u".into();
                props["sasl.password"] = "p".into();
            }
            let created: Result<BaseProducer, _> = kafka(props).client_config().unwrap().create();
            assert!(
                created.is_ok(),
                "{protocol} {mechanism:?}: {:?}",
                created.err()
            );
        }
    }

    #[test]
    fn the_default_config_runs_the_default_schedule() {
        assert_eq!(PollConfig::default().rules().schedule, Schedule::default());
    }
}
