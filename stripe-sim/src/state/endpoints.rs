//! Webhook endpoints: where events go, which events each wants, whether it is enabled,
//! and the secrets deliveries are signed with.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::events::{API_VERSION, type_matches};
use super::metadata;
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
    disabled: bool,
    description: Option<String>,
    metadata: BTreeMap<String, String>,
}

impl Endpoint {
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether deliveries to it go out at all.
    pub fn enabled(&self) -> bool {
        !self.disabled
    }

    fn wants(&self, kind: &str) -> bool {
        self.enabled() && self.enabled_events.iter().any(|e| type_matches(e, kind))
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
            "description": self.description,
            "enabled_events": self.enabled_events,
            "livemode": false,
            "metadata": self.metadata,
            "status": if self.disabled { "disabled" } else { "enabled" },
            "url": self.url,
        });
        if with_secret && let Some((secret, _)) = self.secrets.first() {
            v["secret"] = json!(secret);
        }
        v
    }
}

/// The validated parameters of a create (everything) or an update (what was given).
#[derive(Debug, Default)]
pub struct Fields {
    url: Option<String>,
    enabled_events: Option<Vec<String>>,
    disabled: Option<bool>,
    description: Option<String>,
    metadata: BTreeMap<String, String>,
}

/// `*`, an event type (`charge.refunded`), or a sim-only prefix wildcard (`charge.*`):
/// Stripe's own endpoints take only `*` and exact types.
fn valid_event_pattern(e: &str) -> bool {
    let stem = e.strip_suffix(".*").unwrap_or(e);
    e == "*"
        || (!stem.is_empty()
            && stem.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            }))
}

impl Fields {
    fn url(p: &Params) -> Result<Option<String>, StripeError> {
        let Some(url) = p.string("url") else {
            return Ok(None);
        };
        let parsed =
            url::Url::parse(&url).map_err(|_| StripeError::invalid("Invalid URL", Some("url")))?;
        if !["http", "https"].contains(&parsed.scheme()) {
            return Err(StripeError::invalid(
                "Invalid URL: must be http or https",
                Some("url"),
            ));
        }
        Ok(Some(url))
    }

    fn events(p: &Params) -> Result<Option<Vec<String>>, StripeError> {
        let events = p.list("enabled_events");
        if events.is_empty() {
            return Ok(None);
        }
        if let Some((i, bad)) = events
            .iter()
            .enumerate()
            .find(|(_, e)| !valid_event_pattern(e))
        {
            return Err(StripeError::invalid(
                format!(
                    "Invalid enabled_events[{i}]: must be `*`, an event type such as `charge.refunded`, or a prefix such as `charge.*`, not `{bad}`"
                ),
                Some("enabled_events"),
            ));
        }
        Ok(Some(events))
    }

    fn common(p: &Params) -> Result<Fields, StripeError> {
        let metadata = p.map("metadata");
        metadata::validate(&metadata)?;
        Ok(Fields {
            url: Fields::url(p)?,
            enabled_events: Fields::events(p)?,
            disabled: p.bool("disabled")?,
            description: p.string("description"),
            metadata,
        })
    }

    /// `POST /v1/webhook_endpoints`: `url` and `enabled_events` are required.
    pub fn create(p: &Params) -> Result<Fields, StripeError> {
        let f = Fields::common(p)?;
        if f.url.is_none() {
            return Err(StripeError::missing("url"));
        }
        if f.enabled_events.is_none() {
            return Err(StripeError::missing("enabled_events"));
        }
        Ok(f)
    }

    /// `POST /v1/webhook_endpoints/{id}`: any of url, enabled_events, disabled,
    /// description, metadata.
    pub fn update(p: &Params) -> Result<Fields, StripeError> {
        Fields::common(p)
    }
}

/// What a change did to an endpoint's deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    StillEnabled,
    /// Disabled or deleted: its pending deliveries stop.
    Stopped,
}

#[derive(Default)]
pub struct Endpoints {
    list: Vec<Endpoint>,
}

impl Endpoints {
    /// Adds an endpoint from `Fields::create`; the answer carries its secret, as Stripe's
    /// does once.
    pub fn add(&mut self, id: String, f: Fields, secret: String, created: i64) -> Value {
        let endpoint = Endpoint {
            id,
            url: f.url.unwrap_or_default(),
            enabled_events: f.enabled_events.unwrap_or_default(),
            secrets: vec![(secret, None)],
            created,
            disabled: f.disabled.unwrap_or(false),
            description: f.description,
            metadata: f.metadata,
        };
        let v = endpoint.to_json(true);
        self.list.push(endpoint);
        v
    }

    pub fn get(&self, id: &str) -> Option<&Endpoint> {
        self.list.iter().find(|e| e.id == id)
    }

    fn get_mut(&mut self, id: &str) -> Result<&mut Endpoint, StripeError> {
        self.list
            .iter_mut()
            .find(|e| e.id == id)
            .ok_or_else(|| StripeError::no_such("webhook endpoint", id, Some("id")))
    }

    pub fn retrieve(&self, id: &str) -> Result<Value, StripeError> {
        self.get(id)
            .map(|e| e.to_json(false))
            .ok_or_else(|| StripeError::no_such("webhook endpoint", id, Some("id")))
    }

    pub fn update(&mut self, id: &str, f: Fields) -> Result<(Value, Change), StripeError> {
        let ep = self.get_mut(id)?;
        if let Some(url) = f.url {
            ep.url = url;
        }
        if let Some(events) = f.enabled_events {
            ep.enabled_events = events;
        }
        if let Some(disabled) = f.disabled {
            ep.disabled = disabled;
        }
        if let Some(d) = f.description {
            ep.description = (!d.is_empty()).then_some(d);
        }
        metadata::apply(&mut ep.metadata, f.metadata);
        let change = if ep.enabled() {
            Change::StillEnabled
        } else {
            Change::Stopped
        };
        Ok((ep.to_json(false), change))
    }

    /// Stripe's deleted-object answer.
    pub fn delete(&mut self, id: &str) -> Result<Value, StripeError> {
        let at = self
            .list
            .iter()
            .position(|e| e.id == id)
            .ok_or_else(|| StripeError::no_such("webhook endpoint", id, Some("id")))?;
        self.list.remove(at);
        Ok(json!({"id": id, "object": "webhook_endpoint", "deleted": true}))
    }

    /// The enabled endpoints subscribed to events of `kind`.
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
        let ep = self.get_mut(id)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(events: &[&str]) -> Endpoints {
        let mut eps = Endpoints::default();
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("url", "http://127.0.0.1:9/hook");
        for e in events {
            form.append_pair("enabled_events[]", e);
        }
        let f = Fields::create(&Params::parse(&form.finish())).unwrap();
        eps.add("we_1".into(), f, "whsec_1".into(), 0);
        eps
    }

    #[test]
    fn wildcards_match_every_type_under_their_prefix() {
        let eps = endpoint(&["payment_intent.*", "refund.failed"]);
        assert_eq!(eps.wanting("payment_intent.succeeded"), ["we_1"]);
        assert_eq!(eps.wanting("refund.failed"), ["we_1"]);
        assert!(eps.wanting("refund.created").is_empty());
        assert!(eps.wanting("charge.refunded").is_empty());
        assert_eq!(
            endpoint(&["charge.*"]).wanting("charge.refund.updated"),
            ["we_1"]
        );
        assert_eq!(endpoint(&["*"]).wanting("refund.created"), ["we_1"]);
    }

    #[test]
    fn malformed_event_types_are_refused() {
        for bad in [
            "",
            "charge.",
            ".*",
            "Charge.succeeded",
            "charge.*.x",
            "charge..x",
        ] {
            let p = Params::parse(&format!("url=http://x/&enabled_events[]={bad}"));
            assert!(Fields::create(&p).is_err(), "{bad:?}");
        }
        for good in [
            "*",
            "charge.refund.updated",
            "refund.*",
            "payment_intent.amount_capturable_updated",
        ] {
            let p = Params::parse(&format!("url=http://x/&enabled_events[]={good}"));
            assert!(Fields::create(&p).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn a_disabled_endpoint_wants_nothing_until_enabled_again() {
        let mut eps = endpoint(&["*"]);
        let (v, change) = eps
            .update(
                "we_1",
                Fields::update(&Params::parse("disabled=true")).unwrap(),
            )
            .unwrap();
        assert_eq!(
            (v["status"].as_str(), change),
            (Some("disabled"), Change::Stopped)
        );
        assert!(eps.wanting("refund.created").is_empty());
        eps.update(
            "we_1",
            Fields::update(&Params::parse("disabled=false")).unwrap(),
        )
        .unwrap();
        assert_eq!(eps.wanting("refund.created"), ["we_1"]);
        assert_eq!(
            eps.delete("we_1").unwrap(),
            json!({"id": "we_1", "object": "webhook_endpoint", "deleted": true})
        );
        assert!(eps.wanting("refund.created").is_empty());
        assert_eq!(eps.delete("we_1").unwrap_err().status.as_u16(), 404);
    }
}
