//! async-stripe's models to the few fields Paystream reads (core's views).

use paystream_core::gateway::{IntentView, RefundView};
use stripe_shared::{ApiErrors, PaymentIntent, Refund};

pub(crate) fn intent(pi: PaymentIntent) -> IntentView {
    IntentView {
        stripe_status: pi.status.as_str().to_owned(),
        amount: pi.amount,
        currency: pi.currency.to_string(),
        payment_id: pi.metadata.get("payment_id").cloned(),
        client_secret: pi.client_secret,
        last_error: pi.last_payment_error.as_deref().map(last_error),
        created: pi.created,
        amount_capturable: pi.amount_capturable,
        amount_received: pi.amount_received,
        id: pi.id.as_str().to_owned(),
    }
}

/// `decline_code: message`: the decline code says more than `card_declined`.
fn last_error(e: &ApiErrors) -> String {
    let code = e
        .decline_code
        .clone()
        .or_else(|| e.code.as_ref().map(|c| c.as_str().to_owned()))
        .unwrap_or_else(|| "error".into());
    format!("{code}: {}", e.message.as_deref().unwrap_or_default())
}

pub(crate) fn refund(r: Refund) -> RefundView {
    RefundView {
        // A refund object always has one; an empty one maps to no status of ours.
        stripe_status: r.status.unwrap_or_default(),
        amount: r.amount,
        currency: r.currency.to_string(),
        payment_intent: r.payment_intent.map(|p| p.id().as_str().to_owned()),
        refund_id: r.metadata.and_then(|m| m.get("refund_id").cloned()),
        failure_reason: r.failure_reason,
        created: r.created,
        id: r.id.as_str().to_owned(),
    }
}

/// An object async-stripe's model does not accept (a webhook endpoint on another API
/// version, a peer that omits required fields).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a {0} of Stripe API version {v}", v = crate::STRIPE_VERSION)]
pub struct UntypedObject(pub &'static str);

/// A PaymentIntent as an event carries it, read with async-stripe's model.
pub fn intent_from_json(object: &str) -> Result<IntentView, UntypedObject> {
    miniserde::json::from_str::<PaymentIntent>(object)
        .map(intent)
        .map_err(|_| UntypedObject("payment_intent"))
}

/// A refund as an event carries it, read with async-stripe's model.
pub fn refund_from_json(object: &str) -> Result<RefundView, UntypedObject> {
    miniserde::json::from_str::<Refund>(object)
        .map(refund)
        .map_err(|_| UntypedObject("refund"))
}
