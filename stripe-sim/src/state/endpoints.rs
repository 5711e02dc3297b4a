//! Webhook endpoints: where events go, and the secrets they are signed with.

use serde_json::{Value, json};

use super::events::API_VERSION;
use crate::error::StripeError;
use crate::form::Params;

#[derive(Debug, Clone)]
pub struct Endpoint {
    id: String,
    url: String,
    enabled_events: Vec<String>,
    /// Newest first; never empty. During a roll, the old secret stays until its expiry
    /// (simulated ms).
    secrets: Vec<(String, Option<i64>)>,
    created: i64,
}

impl Endpoint {
    pub fn url(&self) -> &str {
        &self.url
    }

    fn wants(&self, kind: &str) -> bool {
        self.enabled_events.iter().any(|e| e == "*" || e == kind)
    }

    /// The secrets a delivery at `now_ms` is signed with.
    pub fn live_secrets(&self, now_ms: i64) -> Vec<&str> {
        self.secrets
            .iter()
            .filter(|(_, exp)| exp.is_none_or(|e| e > now_ms))
            .map(|(s, _)| s.as_str())
            .collect()
    }

    pub fn to_json(&self, with_secret: bool) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": "webhook_endpoint",
            "api_version": API_VERSION,
            "application": null,
            "created": self.created,
            "description": null,
            "enabled_events": self.enabled_events,
            "livemode": false,
            "metadata": {},
            "status": "enabled",
            "url": self.url,
        });
        if with_secret && let Some((secret, _)) = self.secrets.first() {
            v["secret"] = json!(secret);
        }
        v
    }
}

#[derive(Default)]
pub struct Endpoints {
    list: Vec<Endpoint>,
}

impl Endpoints {
    /// Checks `POST /v1/webhook_endpoints`'s parameters: (url, enabled_events).
    pub fn validate(p: &Params) -> Result<(String, Vec<String>), StripeError> {
        let url = p.string("url").ok_or_else(|| StripeError::missing("url"))?;
        let parsed =
            url::Url::parse(&url).map_err(|_| StripeError::invalid("Invalid URL", Some("url")))?;
        if !["http", "https"].contains(&parsed.scheme()) {
            return Err(StripeError::invalid(
                "Invalid URL: must be http or https",
                Some("url"),
            ));
        }
        let enabled_events = p.list("enabled_events");
        if enabled_events.is_empty() {
            return Err(StripeError::missing("enabled_events"));
        }
        Ok((url, enabled_events))
    }

    /// Adds a validated endpoint; the answer carries its secret, as Stripe's does once.
    pub fn add(
        &mut self,
        id: String,
        (url, enabled_events): (String, Vec<String>),
        secret: String,
        created: i64,
    ) -> Value {
        let endpoint = Endpoint {
            id,
            url,
            enabled_events,
            secrets: vec![(secret, None)],
            created,
        };
        let v = endpoint.to_json(true);
        self.list.push(endpoint);
        v
    }

    pub fn get(&self, id: &str) -> Option<&Endpoint> {
        self.list.iter().find(|e| e.id == id)
    }

    /// The endpoints subscribed to events of `kind`.
    pub fn wanting(&self, kind: &str) -> Vec<String> {
        self.list
            .iter()
            .filter(|e| e.wants(kind))
            .map(|e| e.id.clone())
            .collect()
    }

    /// Starts a roll: deliveries carry a `v1` for the new and the old secret until the old
    /// one expires, as during a real Stripe secret roll.
    pub fn roll_secret(
        &mut self,
        id: &str,
        fresh: String,
        old_expires_at_ms: i64,
    ) -> Result<Value, StripeError> {
        let ep = self
            .list
            .iter_mut()
            .find(|e| e.id == id)
            .ok_or_else(|| StripeError::no_such("webhook_endpoint", id, None))?;
        for s in &mut ep.secrets {
            s.1.get_or_insert(old_expires_at_ms);
        }
        ep.secrets.insert(0, (fresh, None));
        Ok(ep.to_json(true))
    }

    pub fn to_json(&self) -> Vec<Value> {
        self.list.iter().map(|e| e.to_json(false)).collect()
    }
}
