//! The wire shapes of a PaymentIntent and of its Charges, field for field as Stripe's
//! (typed clients such as async-stripe reject objects with missing fields).

use serde_json::{Value, json};

use super::Intent;

impl Intent {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "payment_intent",
            "amount": self.amount,
            "amount_capturable": self.amount_capturable,
            "amount_details": {"tip": {}},
            "amount_received": self.amount_received,
            "application": null,
            "application_fee_amount": null,
            "automatic_payment_methods": if self.automatic_payment_methods {
                json!({"allow_redirects": "always", "enabled": true})
            } else { Value::Null },
            "canceled_at": self.canceled_at,
            "cancellation_reason": self.cancellation_reason,
            "capture_method": self.capture_method,
            "client_secret": self.client_secret,
            "confirmation_method": "automatic",
            "created": self.created,
            "currency": self.currency,
            "customer": null,
            "description": self.description,
            "last_payment_error": self.last_payment_error,
            "latest_charge": self.latest_charge,
            "livemode": false,
            "metadata": self.metadata,
            "next_action": self.next_action,
            "on_behalf_of": null,
            "payment_method": self.payment_method,
            "payment_method_configuration_details": null,
            "payment_method_options": {"card": {"installments": null, "mandate_options": null, "network": null, "request_three_d_secure": "automatic"}},
            "payment_method_types": ["card"],
            "processing": null,
            "receipt_email": self.receipt_email,
            "review": null,
            "setup_future_usage": null,
            "shipping": null,
            "source": null,
            "statement_descriptor": null,
            "statement_descriptor_suffix": null,
            "status": self.status.as_str(),
            "transfer_data": null,
            "transfer_group": null,
        })
    }

    /// The Charge a confirmation of this intent made (`decline`: its decline code).
    pub fn charge_json(&self, id: &str, now: i64, decline: Option<&str>) -> Value {
        let ok = decline.is_none();
        let captured = ok && !self.is_manual_capture();
        json!({
            "id": id,
            "object": "charge",
            "amount": self.amount,
            "amount_captured": if captured { self.amount } else { 0 },
            "amount_refunded": 0,
            "application": null,
            "application_fee": null,
            "application_fee_amount": null,
            "balance_transaction": null,
            "billing_details": {"address": null, "email": null, "name": null, "phone": null},
            "calculated_statement_descriptor": "PAYSTREAM",
            "captured": captured,
            "created": now,
            "currency": self.currency,
            "customer": null,
            "description": self.description,
            "disputed": false,
            "failure_code": decline.map(|_| "card_declined"),
            "failure_message": decline.map(|_| "Your card was declined."),
            "fraud_details": {},
            "livemode": false,
            "metadata": self.metadata,
            "outcome": {
                "network_status": if ok { "approved_by_network" } else { "declined_by_network" },
                "reason": decline,
                "risk_level": "normal",
                "seller_message": if ok { "Payment complete." } else { "The bank did not return any further details with this decline." },
                "type": if ok { "authorized" } else { "issuer_declined" },
            },
            "paid": ok,
            "payment_intent": self.id,
            "payment_method": self.payment_method,
            "receipt_email": self.receipt_email,
            "refunded": false,
            "status": if ok { "succeeded" } else { "failed" },
        })
    }
}
