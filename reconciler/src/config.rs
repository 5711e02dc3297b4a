//! The reconciler's settings: the service basics, the replica it rebuilds state from,
//! Kafka, Stripe and the poll rules. Durations are milliseconds so that tests and the
//! local stack can shorten them.

use std::time::Duration;

use paystream_service::config::{DatabaseConfig, LogFormat};
use paystream_stripe::StripeConfig;
use serde::Deserialize;

use crate::poll::Rules;
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
}

impl Default for PollConfig {
    /// The schedule is `Schedule::default()`'s, so that what the schedule's tests check is
    /// what runs. 20 calls/s stays under Stripe's 25/s test-mode limit per endpoint.
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
            rate_per_sec: 20,
            burst: 20,
            max_in_flight: 8,
            misses_before_attention: 3,
            attention_after_ms: 600_000,
            halt_after_undecodable: 20,
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

    #[test]
    fn the_default_config_runs_the_default_schedule() {
        assert_eq!(PollConfig::default().rules().schedule, Schedule::default());
    }
}
