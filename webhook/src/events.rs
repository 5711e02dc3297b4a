//! Turning one Stripe event into (at most) one status change, exactly once per event id:
//! this module reads the event; `paystream_db::events` stores and applies it.

use paystream_core::PaymentStatus;
use paystream_db::events::{self, Received, Via};
pub use paystream_db::events::{Outcome, Reading, Retried};
use paystream_db::{DbError, Primary};
use serde_json::Value;

/// Only `payment_intent.*` events carry a PaymentIntent snapshot; its `status` (not the
/// event type) is what Stripe says, so a duplicate or late event says the same thing as
/// the object it carried.
pub fn read(event: &Value) -> Option<Reading> {
    let kind = event["type"].as_str()?;
    if !kind.starts_with("payment_intent.") {
        return None;
    }
    let object = &event["data"]["object"];
    let stripe_status = object["status"].as_str()?.to_owned();
    let status = PaymentStatus::from_stripe(&stripe_status)?;
    let error = object["last_payment_error"].as_object().map(|e| {
        let code = e
            .get("decline_code")
            .or_else(|| e.get("code"))
            .and_then(Value::as_str)
            .unwrap_or("error");
        format!(
            "{code}: {}",
            e.get("message").and_then(Value::as_str).unwrap_or_default()
        )
    });
    Some(Reading {
        intent_id: object["id"].as_str()?.to_owned(),
        payment_id: object["metadata"]["payment_id"]
            .as_str()
            .and_then(|s| s.parse().ok()),
        stripe_status,
        status,
        error,
    })
}

/// Stores the event (dedupe by id) and applies it, in one transaction.
pub async fn process(db: &Primary, event: &Value, via: Via) -> Result<Outcome, DbError> {
    let Some(id) = event["id"].as_str() else {
        return Ok(Outcome::Ignored);
    };
    let received = Received {
        id,
        kind: event["type"].as_str().unwrap_or_default(),
        payload: event,
        via,
        stripe_created: event["created"].as_i64().unwrap_or_default(),
        reading: read(event),
    };
    events::process(db, &received).await
}

/// Retries the unmatched events that are due (at most `batch`), and gives up on those
/// older than `orphan_after`.
pub async fn retry_unmatched(
    db: &Primary,
    batch: i64,
    orphan_after: std::time::Duration,
) -> Result<Retried, DbError> {
    events::retry_unmatched(db, batch, orphan_after, read).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_payment_intent_events_leniently() {
        let pid = paystream_core::PaymentId::generate();
        let e = json!({"id": "evt_1", "type": "payment_intent.payment_failed", "unknown": 1, "data": {"object": {
            "id": "pi_1", "status": "requires_payment_method", "metadata": {"payment_id": pid.to_string()},
            "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds", "message": "No money."}}}});
        let r = read(&e).unwrap();
        assert_eq!(r.intent_id, "pi_1");
        assert_eq!(r.payment_id, Some(pid));
        assert_eq!(r.status, PaymentStatus::Pending);
        assert_eq!(r.error.as_deref(), Some("insufficient_funds: No money."));
        let ok = json!({"id": "evt_2", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_1", "status": "succeeded", "metadata": {}}}});
        assert_eq!(read(&ok).map(|r| r.status), Some(PaymentStatus::Succeeded));
        for ignored in [
            json!({"id": "evt_3", "type": "charge.succeeded", "data": {"object": {"id": "ch_1", "status": "succeeded"}}}),
            json!({"id": "evt_4", "type": "customer.created", "data": {"object": {}}}),
            json!({"id": "evt_5", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_1", "status": "brand_new_status"}}}),
            json!({"id": "evt_6", "type": "payment_intent.succeeded"}),
        ] {
            assert_eq!(read(&ignored), None, "{ignored}");
        }
    }
}
