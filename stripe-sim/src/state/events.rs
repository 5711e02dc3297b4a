//! Events: what happened, in order, and how many endpoints still await each one.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::Ctx;
use super::list::paginate;
use crate::error::StripeError;
use crate::form::Params;

pub const API_VERSION: &str = "2026-09-30.endive";

#[derive(Debug, Clone)]
pub struct Event {
    id: String,
    created: i64,
    kind: String,
    object: Value,
    /// Stripe's `data.previous_attributes`, on events that report a change.
    previous: Option<Value>,
    request_id: Option<String>,
    idempotency_key: Option<String>,
    pending_webhooks: i64,
}

impl Event {
    pub fn to_json(&self) -> Value {
        let mut data = json!({"object": self.object});
        if let Some(previous) = &self.previous {
            data["previous_attributes"] = previous.clone();
        }
        json!({
            "id": self.id,
            "object": "event",
            "account": null,
            "api_version": API_VERSION,
            "created": self.created,
            "data": data,
            "livemode": false,
            "pending_webhooks": self.pending_webhooks,
            "request": {"id": self.request_id, "idempotency_key": self.idempotency_key},
            "type": self.kind,
        })
    }
}

#[derive(Default)]
pub struct Events {
    list: Vec<Event>,
    index: HashMap<String, usize>,
}

impl Events {
    /// Records an event awaited by `endpoints` endpoints.
    pub fn record(
        &mut self,
        id: String,
        kind: &str,
        (object, previous): (Value, Option<Value>),
        ctx: &Ctx,
        endpoints: usize,
    ) {
        self.index.insert(id.clone(), self.list.len());
        self.list.push(Event {
            id,
            created: ctx.now(),
            kind: kind.to_owned(),
            object,
            previous,
            request_id: ctx.request_id.clone(),
            idempotency_key: ctx.idempotency_key.clone(),
            pending_webhooks: endpoints as i64,
        });
    }

    pub fn get(&self, id: &str) -> Option<&Event> {
        self.index.get(id).and_then(|&i| self.list.get(i))
    }

    /// One endpoint got the event: it no longer counts towards `pending_webhooks`.
    pub fn delivered_to_one(&mut self, id: &str) {
        if let Some(e) = self.index.get(id).and_then(|&i| self.list.get_mut(i)) {
            e.pending_webhooks = (e.pending_webhooks - 1).max(0);
        }
    }

    pub fn all(&self) -> &[Event] {
        &self.list
    }

    pub fn retrieve(&self, id: &str) -> Result<Value, StripeError> {
        self.get(id)
            .map(Event::to_json)
            .ok_or_else(|| StripeError::no_such("event", id, Some("id")))
    }

    pub fn list(&self, p: &Params) -> Result<Value, StripeError> {
        let created = p.range("created")?;
        let mut types = p.list("types");
        if let Some(t) = p.string("type") {
            types.push(t);
        }
        let delivery_success = p.bool("delivery_success")?;
        let items: Vec<&Event> = self
            .list
            .iter()
            .rev()
            .filter(|e| created.contains(e.created))
            .filter(|e| types.is_empty() || types.iter().any(|t| type_matches(t, &e.kind)))
            .filter(|e| delivery_success.is_none_or(|ok| (e.pending_webhooks == 0) == ok))
            .collect();
        paginate(p, &items, |e| e.id.as_str(), Event::to_json, "/v1/events")
    }
}

/// `payment_intent.*` matches every `payment_intent.` event, not `payment_intent_x.`;
/// `*` matches everything.
pub fn type_matches(pattern: &str, kind: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => {
            kind.starts_with(prefix) && kind.as_bytes().get(prefix.len()) == Some(&b'.')
        }
        None => pattern == kind,
    }
}

/// Stripe's `previous_attributes`: the old values of what changed between two renderings
/// of an object, nested objects reduced to their changed keys; a key that was absent
/// before reads as null.
pub fn previous_attributes(old: &Value, new: &Value) -> Value {
    let (Value::Object(o), Value::Object(n)) = (old, new) else {
        return old.clone();
    };
    let mut out = serde_json::Map::new();
    for (k, nv) in n {
        let ov = o.get(k).unwrap_or(&Value::Null);
        if ov != nv {
            let v = if ov.is_object() && nv.is_object() {
                previous_attributes(ov, nv)
            } else {
                ov.clone()
            };
            out.insert(k.clone(), v);
        }
    }
    for (k, ov) in o {
        if !n.contains_key(k) {
            out.insert(k.clone(), ov.clone());
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_wildcards() {
        assert!(type_matches("payment_intent.*", "payment_intent.succeeded"));
        assert!(!type_matches(
            "payment_intent.*",
            "payment_intent_x.succeeded"
        ));
        assert!(type_matches("charge.failed", "charge.failed"));
        assert!(!type_matches("charge.failed", "charge.succeeded"));
        assert!(type_matches("charge.*", "charge.refund.updated"));
        assert!(type_matches("*", "refund.failed"));
        assert!(!type_matches("refund.*", "refund"));
    }

    #[test]
    fn previous_attributes_hold_the_old_values_of_what_changed() {
        let old = json!({"status": "pending", "amount": 5, "pending_reason": "processing",
                         "metadata": {"a": "1", "b": "2"}, "card": {"type": "pending", "x": 1}});
        let new = json!({"status": "succeeded", "amount": 5, "failure_reason": "x",
                         "metadata": {"a": "1", "c": "3"}, "card": {"type": "refund", "x": 1}});
        assert_eq!(
            previous_attributes(&old, &new),
            json!({"status": "pending", "pending_reason": "processing", "failure_reason": null,
                   "metadata": {"b": "2", "c": null}, "card": {"type": "pending"}})
        );
    }

    #[test]
    fn pending_webhooks_count_down_to_zero_and_no_further() {
        let mut events = Events::default();
        events.record(
            "evt_1".into(),
            "x.y",
            (Value::Null, None),
            &Ctx::default(),
            1,
        );
        events.delivered_to_one("evt_1");
        events.delivered_to_one("evt_1");
        events.delivered_to_one("evt_missing");
        assert_eq!(
            events
                .get("evt_1")
                .map(|e| e.to_json()["pending_webhooks"].clone()),
            Some(json!(0))
        );
    }
}
