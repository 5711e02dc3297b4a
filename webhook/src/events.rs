//! Turning one Stripe event into (at most) one status change, exactly once per event id:
//! this module reads the event; `paystream_db::events` stores and applies it.

use paystream_core::gateway::{IntentView, RefundView};
use paystream_core::{PaymentId, PaymentStatus, RefundId, RefundStatus};
use paystream_db::events::{self, Received, Spent, Via};
pub use paystream_db::events::{IntentReading, Outcome, Reading, RefundReading, Retried};
use paystream_db::{DbError, Primary};
use paystream_stripe::{UntypedObject, intent_from_json, refund_from_json};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;

/// An event says something about our money when it carries a PaymentIntent or a refund
/// snapshot; the snapshot's `status` (not the event type) is what Stripe says, so a
/// duplicate or late event says the same thing as the object it carried. `charge.*`
/// events carry the charge, whose refunded total names no refund of ours: each refund
/// reaches us by its own `refund.*` event (and by polls), so they are acknowledged.
///
/// The object is read with async-stripe's model of the pinned API version. A webhook
/// endpoint set to another version (in Stripe's dashboard, out of our hands) renders other
/// shapes: such an object is read by its few stable fields instead, with a warning, so
/// that a dashboard setting can never make money events unreadable.
pub fn read(event: &Value) -> Option<Reading> {
    read_typed(event).unwrap_or_else(|untyped| {
        tracing::warn!(
            event_id = event["id"].as_str().unwrap_or_default(),
            api_version = event["api_version"].as_str().unwrap_or_default(),
            error = %untyped,
            "event object read by its stable fields"
        );
        read_lenient(event)
    })
}

/// What the object's `object` field (or, for peers that omit it, the event type) says
/// it is.
fn object_kind(event: &Value) -> Option<&str> {
    match event["data"]["object"]["object"].as_str() {
        Some(kind) => Some(kind),
        None if event["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("payment_intent.")) =>
        {
            Some("payment_intent")
        }
        None => None,
    }
}

/// The reading through async-stripe's models; `Err` when the object is not of the
/// pinned version's shape.
pub fn read_typed(event: &Value) -> Result<Option<Reading>, UntypedObject> {
    let object = event["data"]["object"].to_string();
    Ok(match object_kind(event) {
        Some("payment_intent") => intent_reading(intent_from_json(&object)?).map(Reading::Intent),
        Some("refund") => refund_reading(refund_from_json(&object)?).map(Reading::Refund),
        _ => None,
    })
}

/// The reading by the few fields every API version renders alike.
pub fn read_lenient(event: &Value) -> Option<Reading> {
    let object = &event["data"]["object"];
    match object_kind(event) {
        Some("payment_intent") => read_intent(object).map(Reading::Intent),
        Some("refund") => read_refund(object).map(Reading::Refund),
        _ => None,
    }
}

fn intent_reading(view: IntentView) -> Option<IntentReading> {
    let status = view.status()?;
    Some(IntentReading {
        payment_id: view.payment_id.as_deref().and_then(|s| s.parse().ok()),
        status,
        error: view.last_error,
        amount_received: Some(view.amount_received).filter(|a| *a > 0),
        intent_id: view.id,
        stripe_status: view.stripe_status,
    })
}

fn refund_reading(view: RefundView) -> Option<RefundReading> {
    let status = view.status()?;
    Some(RefundReading {
        refund_id: view.refund_id.as_deref().and_then(|s| s.parse().ok()),
        status,
        failure_reason: view.failure_reason,
        stripe_refund_id: view.id,
        stripe_status: view.stripe_status,
    })
}

fn read_intent(object: &Value) -> Option<IntentReading> {
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
    Some(IntentReading {
        intent_id: object["id"].as_str()?.to_owned(),
        payment_id: object["metadata"]["payment_id"]
            .as_str()
            .and_then(|s| s.parse().ok()),
        stripe_status,
        status,
        error,
        amount_received: object["amount_received"].as_i64().filter(|a| *a > 0),
    })
}

fn read_refund(object: &Value) -> Option<RefundReading> {
    let stripe_status = object["status"].as_str()?.to_owned();
    let status = RefundStatus::from_stripe(&stripe_status)?;
    Some(RefundReading {
        stripe_refund_id: object["id"].as_str()?.to_owned(),
        refund_id: object["metadata"]["refund_id"]
            .as_str()
            .and_then(|s| s.parse().ok()),
        stripe_status,
        status,
        failure_reason: object["failure_reason"].as_str().map(str::to_owned),
    })
}

/// Stores the event (dedupe by id) and applies it, in one transaction.
pub async fn process(db: &Primary, event: &Value, via: Via) -> Result<Outcome, DbError> {
    Ok(process_for(db, event, via).await?.outcome)
}

/// What an event was about, for its log line: our payment, and our refund for a refund
/// event (whose payment is its refund's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Subject {
    pub payment_id: Option<PaymentId>,
    pub refund_id: Option<RefundId>,
}

/// [`process`], answering also which payment (and refund) the event named, and where its
/// time at the database went.
pub async fn process_for(db: &Primary, event: &Value, via: Via) -> Result<Answered, DbError> {
    let kind = event["type"].as_str().unwrap_or_default();
    let Some(id) = event["id"].as_str() else {
        return Ok(Answered {
            id: String::new(),
            kind: kind.to_owned(),
            outcome: Outcome::Ignored,
            subject: Subject::default(),
            spent: None,
        });
    };
    let reading = read(event);
    let mut answered = Answered {
        id: id.to_owned(),
        kind: kind.to_owned(),
        outcome: Outcome::Ignored,
        subject: match &reading {
            Some(Reading::Intent(r)) => Subject {
                payment_id: r.payment_id,
                refund_id: None,
            },
            Some(Reading::Refund(r)) => Subject {
                payment_id: None,
                refund_id: r.refund_id,
            },
            None => Subject::default(),
        },
        spent: None,
    };
    if !can_change_anything(event, reading.as_ref()) {
        return Ok(answered);
    }
    let received = Received {
        id,
        kind,
        payload: event,
        via,
        stripe_created: event["created"].as_i64().unwrap_or_default(),
        reading,
    };
    let (outcome, spent) = events::process_timed(db, &received).await?;
    answered.outcome = outcome;
    answered.spent = Some(spent);
    // A refund event names our refund only: its payment is the refund's (a read for the
    // log line; a failed one leaves the line without it).
    if answered.subject.payment_id.is_none()
        && let Some(refund) = answered.subject.refund_id
    {
        answered.subject.payment_id = paystream_db::refunds::by_id(db, refund)
            .await
            .ok()
            .flatten()
            .map(|r| r.payment_id);
    }
    Ok(answered)
}

/// An event that can change nothing whatever its object says, answered from its body
/// without building the body's tree: Stripe sends a `payment_intent.created` for every
/// payment, and reading its whole PaymentIntent (twice: as JSON, then with async-stripe's
/// model) was most of the receiver's work per payment. `None` for every other event, and
/// for a body this narrow read does not take (a field of an unexpected type, a repeated
/// key): `process_for` reads those whole, as before.
pub fn ignored_by_type(body: &[u8]) -> Option<Answered> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        id: Cow<'a, str>,
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow)]
        data: Option<Data<'a>>,
    }
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        object: Option<Object<'a>>,
    }
    #[derive(Deserialize)]
    struct Object<'a> {
        #[serde(borrow)]
        metadata: Option<Metadata<'a>>,
    }
    #[derive(Deserialize)]
    struct Metadata<'a> {
        #[serde(borrow)]
        payment_id: Option<Cow<'a, str>>,
    }
    // As text first: serde_json skips the fields a struct leaves out without checking
    // their UTF-8, which the whole read refuses (a 400).
    let head: Head = serde_json::from_str(std::str::from_utf8(body).ok()?).ok()?;
    if head.kind != CREATED {
        return None;
    }
    let payment_id = head
        .data
        .and_then(|d| d.object)
        .and_then(|o| o.metadata)
        .and_then(|m| m.payment_id)
        .and_then(|p| p.parse().ok());
    Some(Answered {
        id: head.id.into_owned(),
        kind: CREATED.to_owned(),
        outcome: Outcome::Ignored,
        subject: Subject {
            payment_id,
            refund_id: None,
        },
        spent: None,
    })
}

/// What a delivered event was and what came of it, for its answer and its log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub id: String,
    pub kind: String,
    pub outcome: Outcome,
    pub subject: Subject,
    /// Where its time at the database went, when it was stored.
    pub spent: Option<Spent>,
}

const CREATED: &str = "payment_intent.created";

/// Whether an event may change one of our rows; one that cannot is acknowledged without
/// a write on the primary. That is an event about neither an intent nor a refund, and
/// `payment_intent.created`, which says only what the intent was when we made it: the
/// API stored that from Stripe's answer. (Should the API die before storing it, a retry
/// of the create finds the intent, or the reconciler does by our payment id once the
/// payment is `create_after` old.) Every payment would otherwise cost the primary a
/// second transaction for it.
fn can_change_anything(event: &Value, reading: Option<&Reading>) -> bool {
    reading.is_some() && event["type"] != CREATED
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

    fn created_event(pid: &str) -> Value {
        json!({"id": "evt_created_1", "object": "event", "type": "payment_intent.created",
               "api_version": "2025-03-31.basil", "created": 1, "livemode": false,
               "data": {"object": {"object": "payment_intent", "id": "pi_1", "amount": 2000,
                        "status": "requires_payment_method", "metadata": {"payment_id": pid},
                        "payment_method_types": ["card"], "description": "café \"quoted\""}}})
    }

    #[test]
    fn a_created_event_is_ignored_from_its_head() {
        let pid = paystream_core::PaymentId::generate();
        let body = created_event(&pid.to_string()).to_string();
        assert_eq!(
            ignored_by_type(body.as_bytes()),
            Some(Answered {
                id: "evt_created_1".into(),
                kind: CREATED.into(),
                outcome: Outcome::Ignored,
                subject: Subject {
                    payment_id: Some(pid),
                    refund_id: None
                },
                spent: None,
            })
        );
        // Without our payment id, or with one that is not, still ignored: it names none.
        for metadata in [json!({}), json!({"payment_id": "not-a-uuid"}), Value::Null] {
            let mut e = created_event("x");
            e["data"]["object"]["metadata"] = metadata.clone();
            let ignored = ignored_by_type(e.to_string().as_bytes()).expect("ignored");
            assert_eq!(ignored.subject, Subject::default(), "{metadata}");
        }
        let mut bare = created_event("x");
        bare.as_object_mut().unwrap().remove("data");
        assert!(ignored_by_type(bare.to_string().as_bytes()).is_some());
    }

    #[test]
    fn every_other_body_is_left_to_the_whole_read() {
        let pid = paystream_core::PaymentId::generate().to_string();
        let mut succeeded = created_event(&pid);
        succeeded["type"] = json!("payment_intent.succeeded");
        let mut odd_metadata = created_event(&pid);
        odd_metadata["data"]["object"]["metadata"]["payment_id"] = json!(42);
        let mut odd_object = created_event(&pid);
        odd_object["data"]["object"] = json!("pi_1");
        let repeated = format!(
            r#"{{"id": "evt_1", "type": "payment_intent.created", "type": "payment_intent.succeeded", "data": {}}}"#,
            created_event(&pid)["data"]
        );
        for body in [
            succeeded.to_string(),
            odd_metadata.to_string(),
            odd_object.to_string(),
            repeated,
            r#"{"id": 1, "type": "payment_intent.created"}"#.into(),
            r#"{"type": "payment_intent.created"}"#.into(),
            r#"{"id": "evt_1", "type": "payment_intent.created""#.into(),
            r#"{"id": "evt_1", "type": "payment_intent.created"} x"#.into(),
            "[]".into(),
        ] {
            assert_eq!(ignored_by_type(body.as_bytes()), None, "{body}");
        }
    }

    proptest::proptest! {
        /// Whatever the body, one answered from its head is one the whole read parses as
        /// the same event, of a type that can change nothing.
        #[test]
        fn the_head_answers_only_what_the_whole_read_would_ignore(
            at in 0usize..4096,
            byte in proptest::prelude::any::<u8>(),
            insert in proptest::prelude::any::<bool>(),
        ) {
            let mut body = created_event(&paystream_core::PaymentId::generate().to_string())
                .to_string()
                .into_bytes();
            let at = at % body.len();
            if insert { body.insert(at, byte) } else { body[at] = byte }
            if let Some(ignored) = ignored_by_type(&body) {
                let whole: Value = serde_json::from_slice(&body).expect("the whole read parses it");
                proptest::prop_assert_eq!(whole["id"].as_str(), Some(ignored.id.as_str()));
                proptest::prop_assert_eq!(whole["type"].as_str(), Some(CREATED));
                proptest::prop_assert!(!can_change_anything(&whole, read(&whole).as_ref()));
            }
        }
    }

    /// The endpoint's subscription and the reader agree: every subscribed type, carrying
    /// the object Stripe sends with it, is read and may change a row of ours, and
    /// `payment_intent.created`, the one such type left out, is not subscribed.
    #[test]
    fn every_subscribed_event_type_is_one_the_receiver_acts_on() {
        use paystream_core::gateway::WEBHOOK_EVENTS;
        let pid = paystream_core::PaymentId::generate().to_string();
        let rid = paystream_core::RefundId::generate().to_string();
        for kind in WEBHOOK_EVENTS {
            let object = if kind.starts_with("payment_intent.") {
                json!({"object": "payment_intent", "id": "pi_1", "status": "processing",
                       "metadata": {"payment_id": pid}})
            } else {
                json!({"object": "refund", "id": "re_1", "status": "pending",
                       "metadata": {"refund_id": rid}})
            };
            let event = json!({"id": "evt_1", "type": kind, "data": {"object": object}});
            assert_eq!(
                ignored_by_type(event.to_string().as_bytes()),
                None,
                "{kind}"
            );
            let reading = read(&event);
            assert!(reading.is_some(), "{kind} is read");
            assert!(can_change_anything(&event, reading.as_ref()), "{kind}");
        }
        assert!(!WEBHOOK_EVENTS.contains(&CREATED));
        let mut created = created_event(&pid);
        assert!(!can_change_anything(&created, read(&created).as_ref()));
        created["type"] = json!("payment_intent.processing");
        assert!(can_change_anything(&created, read(&created).as_ref()));
    }

    #[test]
    fn reads_payment_intent_events_leniently() {
        let pid = paystream_core::PaymentId::generate();
        let e = json!({"id": "evt_1", "type": "payment_intent.payment_failed", "unknown": 1, "data": {"object": {
            "id": "pi_1", "status": "requires_payment_method", "metadata": {"payment_id": pid.to_string()},
            "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds", "message": "No money."}}}});
        let Some(Reading::Intent(r)) = read_lenient(&e) else {
            panic!("an intent reading")
        };
        assert_eq!(r.intent_id, "pi_1");
        assert_eq!(r.payment_id, Some(pid));
        assert_eq!(r.status, PaymentStatus::Pending);
        assert_eq!(r.error.as_deref(), Some("insufficient_funds: No money."));
        let ok = json!({"id": "evt_2", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_1", "status": "succeeded", "metadata": {}}}});
        let Some(Reading::Intent(ok)) = read_lenient(&ok) else {
            panic!("an intent reading")
        };
        assert_eq!(ok.status, PaymentStatus::Succeeded);
        for ignored in [
            json!({"id": "evt_3", "type": "charge.succeeded", "data": {"object": {"id": "ch_1", "status": "succeeded"}}}),
            json!({"id": "evt_4", "type": "customer.created", "data": {"object": {}}}),
            json!({"id": "evt_5", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_1", "status": "brand_new_status"}}}),
            json!({"id": "evt_6", "type": "payment_intent.succeeded"}),
            json!({"id": "evt_7", "type": "charge.refunded", "data": {"object": {"object": "charge", "id": "ch_1", "amount_refunded": 100}}}),
            json!({"id": "evt_8", "type": "refund.updated", "data": {"object": {"object": "refund", "id": "re_1", "status": "reversed_somehow"}}}),
        ] {
            assert_eq!(read_lenient(&ignored), None, "{ignored}");
        }
    }

    #[test]
    fn an_object_of_another_shape_is_read_by_its_stable_fields() {
        let e = json!({"id": "evt_v", "type": "payment_intent.succeeded", "api_version": "2019-02-19",
            "data": {"object": {"object": "payment_intent", "id": "pi_1", "status": "succeeded", "metadata": {}}}});
        assert!(read_typed(&e).is_err(), "not the pinned version's shape");
        let Some(Reading::Intent(r)) = read(&e) else {
            panic!("an intent reading")
        };
        assert_eq!(
            (r.intent_id.as_str(), r.status),
            ("pi_1", PaymentStatus::Succeeded)
        );
        let charge = json!({"id": "evt_c", "type": "charge.succeeded", "data": {"object": {"object": "charge"}}});
        assert_eq!(read_typed(&charge), Ok(None), "not an object we read");
    }

    #[test]
    fn reads_refund_events_by_their_object() {
        let rid = paystream_core::RefundId::generate();
        for (kind, stripe, ours) in [
            ("refund.created", "pending", RefundStatus::Pending),
            ("refund.updated", "succeeded", RefundStatus::Succeeded),
            (
                "charge.refund.updated",
                "requires_action",
                RefundStatus::Pending,
            ),
            ("refund.failed", "failed", RefundStatus::Failed),
            ("refund.updated", "canceled", RefundStatus::Canceled),
        ] {
            let e = json!({"id": "evt_r", "type": kind, "data": {"object": {"object": "refund", "id": "re_1",
                "status": stripe, "metadata": {"refund_id": rid.to_string()},
                "failure_reason": if stripe == "failed" { json!("expired_or_canceled_card") } else { Value::Null }}}});
            let Some(Reading::Refund(r)) = read_lenient(&e) else {
                panic!("{kind}: a refund reading")
            };
            assert_eq!(r.stripe_refund_id, "re_1");
            assert_eq!(r.refund_id, Some(rid));
            assert_eq!(r.status, ours, "{kind} {stripe}");
            assert_eq!(
                r.failure_reason.is_some(),
                stripe == "failed",
                "{kind} {stripe}"
            );
        }
        let capturable = json!({"id": "evt_c", "type": "payment_intent.amount_capturable_updated", "data": {"object": {
            "object": "payment_intent", "id": "pi_1", "status": "requires_capture", "amount_capturable": 500, "amount_received": 0}}});
        let Some(Reading::Intent(c)) = read_lenient(&capturable) else {
            panic!("an intent reading")
        };
        assert_eq!(
            (c.status, c.amount_received),
            (PaymentStatus::Pending, None)
        );
        let captured = json!({"id": "evt_s", "type": "payment_intent.succeeded", "data": {"object": {
            "object": "payment_intent", "id": "pi_1", "status": "succeeded", "amount_received": 300}}});
        let Some(Reading::Intent(c)) = read_lenient(&captured) else {
            panic!("an intent reading")
        };
        assert_eq!(c.amount_received, Some(300));
    }
}
