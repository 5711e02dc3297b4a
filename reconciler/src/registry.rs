//! A schema registry (Confluent's REST API: Confluent Platform and Cloud, Karapace,
//! Apicurio's compatibility API, Redpanda), when one is configured: the status topics'
//! Avro schemas are registered under `<topic>-value` (the default TopicNameStrategy) at
//! start, and their messages then use the registry's wire format (`0x00`, the schema id
//! as a big-endian u32, the datum) instead of Avro's single-object encoding, because
//! that is what registry-aware consumers (Confluent's deserializers, Flink, ksqlDB,
//! Kafka Connect's AvroConverter) read.

use std::fmt;

use serde::Deserialize;

use crate::config::KafkaConfig;

#[derive(Clone, Deserialize)]
pub struct SchemaRegistryConfig {
    /// `https://psrc-xxxx.region.aws.confluent.cloud`, `http://schema-registry:8081`.
    pub url: String,
    /// Basic auth (Confluent Cloud: the API key and secret).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

impl fmt::Debug for SchemaRegistryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A URL may carry `user:password@`.
        let url = match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}<redacted>{}", &self.url[..scheme + 3], &self.url[at..])
            }
            _ => self.url.clone(),
        };
        f.debug_struct("SchemaRegistryConfig")
            .field("url", &url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry unreachable: {0}")]
    Unreachable(String),
    /// 409 is an incompatible schema under the subject's compatibility rule.
    #[error("schema registry refused {subject} ({status}): {message}")]
    Refused {
        subject: String,
        status: u16,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_in_the_url_never_reach_debug_output() {
        let cfg = super::SchemaRegistryConfig {
            url: "https://key:hunter2@registry.example:8081".into(),
            username: Some("key".into()),
            password: Some("hunter3".into()),
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(
            shown.contains("https://<redacted>@registry.example:8081"),
            "{shown}"
        );
    }
}

#[derive(Deserialize)]
struct Registered {
    id: u32,
}

/// Registers `schema` under `subject` and returns its id; registering a schema the
/// subject already has returns the existing id, so every start may do it.
pub async fn register(
    cfg: &SchemaRegistryConfig,
    subject: &str,
    schema: &str,
) -> Result<u32, RegistryError> {
    let mut req = reqwest::Client::new()
        .post(format!(
            "{}/subjects/{subject}/versions",
            cfg.url.trim_end_matches('/')
        ))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .timeout(std::time::Duration::from_secs(10))
        .json(&serde_json::json!({ "schema": schema, "schemaType": "AVRO" }));
    if let Some(user) = &cfg.username {
        req = req.basic_auth(user, cfg.password.as_deref());
    }
    let res = req
        .send()
        .await
        .map_err(|e| RegistryError::Unreachable(e.without_url().to_string()))?;
    let status = res.status().as_u16();
    if !res.status().is_success() {
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        return Err(RegistryError::Refused {
            subject: subject.to_owned(),
            status,
            message: body["message"].as_str().unwrap_or_default().to_owned(),
        });
    }
    res.json::<Registered>()
        .await
        .map(|r| r.id)
        .map_err(|e| RegistryError::Unreachable(format!("unreadable answer: {e}")))
}

/// Registers both status topics' schemas when a registry is configured, and records
/// their ids for the sinks (`KafkaConfig::registry_id`).
pub async fn register_status_schemas(kafka: &mut KafkaConfig) -> Result<(), RegistryError> {
    let Some(registry) = kafka.schema_registry.clone() else {
        return Ok(());
    };
    if kafka.status_topic == kafka.refund_status_topic {
        return Err(RegistryError::Refused {
            subject: format!("{}-value", kafka.status_topic),
            status: 0,
            message: "payment and refund updates need topics of their own: one subject \
                      cannot hold both schemas"
                .into(),
        });
    }
    for (topic, schema) in [
        (kafka.status_topic.clone(), crate::output::SCHEMA_JSON),
        (
            kafka.refund_status_topic.clone(),
            crate::refunds::output::SCHEMA_JSON,
        ),
    ] {
        let subject = format!("{topic}-value");
        let id = register(&registry, &subject, schema).await?;
        tracing::info!(subject, schema_id = id, "status schema registered");
        kafka.registered.insert(topic, id);
    }
    Ok(())
}
