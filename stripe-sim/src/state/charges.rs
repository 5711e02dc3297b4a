//! Charges: what a confirmation took (or tried to take) from the card, and what has since
//! been captured and refunded from it. A charge's refunded amount counts every refund not
//! failed, pending ones included, as Stripe's `amount_refunded` does, and nothing else:
//! since API version 2025-03-31.basil, what an authorization releases (the rest of a
//! partial capture, a cancel, an expiry) is neither a refund nor counted as refunded.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use super::refunds::Refunds;
use crate::error::StripeError;

/// What an intent knows of the charge it is making.
pub struct NewCharge {
    pub id: String,
    pub payment_intent: String,
    pub created: i64,
    pub amount: i64,
    pub currency: String,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub payment_method: Option<String>,
    pub receipt_email: Option<String>,
    /// Held for a manual capture rather than captured at once.
    pub manual: bool,
    /// The decline code of a failed charge.
    pub decline: Option<&'static str>,
}

#[derive(Debug, Clone)]
pub struct Charge {
    id: String,
    payment_intent: String,
    created: i64,
    amount: i64,
    currency: String,
    description: Option<String>,
    metadata: BTreeMap<String, String>,
    payment_method: Option<String>,
    receipt_email: Option<String>,
    decline: Option<&'static str>,
    captured: bool,
    amount_captured: i64,
    amount_refunded: i64,
    /// Its refunds, oldest first.
    refunds: Vec<String>,
    /// Set when it is captured: what the capture added to the balance.
    balance_transaction: Option<String>,
}

impl Charge {
    pub fn new(n: NewCharge) -> Charge {
        let captured = n.decline.is_none() && !n.manual;
        Charge {
            captured,
            amount_captured: if captured { n.amount } else { 0 },
            amount_refunded: 0,
            refunds: Vec::new(),
            balance_transaction: None,
            id: n.id,
            payment_intent: n.payment_intent,
            created: n.created,
            amount: n.amount,
            currency: n.currency,
            description: n.description,
            metadata: n.metadata,
            payment_method: n.payment_method,
            receipt_email: n.receipt_email,
            decline: n.decline,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn payment_intent(&self) -> &str {
        &self.payment_intent
    }

    pub fn currency(&self) -> &str {
        &self.currency
    }

    pub fn amount_captured(&self) -> i64 {
        self.amount_captured
    }

    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    pub fn set_balance_transaction(&mut self, id: String) {
        self.balance_transaction = Some(id);
    }

    pub fn payment_method(&self) -> Option<&str> {
        self.payment_method.as_deref()
    }

    pub fn succeeded(&self) -> bool {
        self.decline.is_none()
    }

    /// What a refund can still take: what was captured less everything refunded. An
    /// uncaptured (held, canceled or expired) charge has nothing to refund.
    pub fn unrefunded(&self) -> i64 {
        (self.amount_captured - self.amount_refunded).max(0)
    }

    /// Whether all that was captured has been refunded. A canceled or expired
    /// authorization captured nothing, and is not `refunded` (basil and later).
    fn refunded(&self) -> bool {
        self.amount_captured > 0 && self.amount_refunded >= self.amount_captured
    }

    pub fn capture(&mut self, amount: i64) {
        self.captured = true;
        self.amount_captured = amount;
    }

    pub fn add_refund(&mut self, refund_id: String, amount: i64) {
        self.amount_refunded += amount;
        self.refunds.push(refund_id);
    }

    /// A refund failed: its amount is the customer's no longer, the charge's again.
    pub fn refund_failed(&mut self, amount: i64) {
        self.amount_refunded = (self.amount_refunded - amount).max(0);
    }

    /// With `refunds`, the `refunds` list is rendered (`expand[]=refunds`): since API
    /// version 2022-11-15 Stripe includes it only when expanded.
    pub fn to_json(&self, refunds: Option<&Refunds>) -> Value {
        let ok = self.decline.is_none();
        let mut v = json!({
            "id": self.id,
            "object": "charge",
            "amount": self.amount,
            "amount_captured": self.amount_captured,
            "amount_refunded": self.amount_refunded,
            "application": null,
            "application_fee": null,
            "application_fee_amount": null,
            "balance_transaction": self.balance_transaction,
            "billing_details": {"address": null, "email": null, "name": null, "phone": null},
            "calculated_statement_descriptor": "PAYSTREAM",
            "captured": self.captured,
            "created": self.created,
            "currency": self.currency,
            "customer": null,
            "description": self.description,
            "disputed": false,
            "failure_balance_transaction": null,
            "failure_code": self.decline.map(|_| "card_declined"),
            "failure_message": self.decline.map(|_| "Your card was declined."),
            "fraud_details": {},
            "livemode": false,
            "metadata": self.metadata,
            "outcome": {
                "network_status": if ok { "approved_by_network" } else { "declined_by_network" },
                "reason": self.decline,
                "risk_level": "normal",
                "seller_message": if ok { "Payment complete." } else { "The bank did not return any further details with this decline." },
                "type": if ok { "authorized" } else { "issuer_declined" },
            },
            "paid": ok,
            "payment_intent": self.payment_intent,
            "payment_method": self.payment_method,
            "receipt_email": self.receipt_email,
            "receipt_number": null,
            "refunded": self.refunded(),
            "status": if ok { "succeeded" } else { "failed" },
        });
        if let Some(refunds) = refunds {
            let data: Vec<Value> = self
                .refunds
                .iter()
                .rev()
                .filter_map(|id| refunds.get(id).ok())
                .map(|r| r.to_json())
                .collect();
            v["refunds"] = json!({
                "object": "list",
                "data": data,
                "has_more": false,
                "url": format!("/v1/charges/{}/refunds", self.id),
            });
        }
        v
    }
}

#[derive(Default)]
pub struct Charges {
    by_id: HashMap<String, Charge>,
    /// Creation order, for the state dump.
    order: Vec<String>,
}

impl Charges {
    pub fn insert(&mut self, charge: Charge) {
        self.order.push(charge.id.clone());
        self.by_id.insert(charge.id.clone(), charge);
    }

    pub fn get(&self, id: &str) -> Result<&Charge, StripeError> {
        self.by_id
            .get(id)
            .ok_or_else(|| StripeError::no_such("charge", id, Some("id")))
    }

    pub fn get_mut(&mut self, id: &str) -> Result<&mut Charge, StripeError> {
        self.by_id
            .get_mut(id)
            .ok_or_else(|| StripeError::no_such("charge", id, Some("id")))
    }

    pub fn oldest_first(&self) -> impl Iterator<Item = &Charge> {
        self.order.iter().filter_map(|id| self.by_id.get(id))
    }
}
