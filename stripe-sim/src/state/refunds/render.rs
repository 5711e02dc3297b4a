//! The wire shape of a Refund, field for field as in Stripe's fixtures (fixtures3.json);
//! the failure fields appear only on a failed refund and `pending_reason` only on a
//! pending one, as Stripe renders them.

use serde_json::{Value, json};

use super::{Refund, RefundStatus};

impl Refund {
    pub fn to_json(&self) -> Value {
        let pending = self.status == RefundStatus::Pending;
        let mut v = json!({
            "id": self.id,
            "object": "refund",
            "amount": self.amount,
            "balance_transaction": self.balance_transaction,
            "charge": self.charge,
            "created": self.created,
            "currency": self.currency,
            "customer": null,
            "customer_account": null,
            "destination_details": {
                "card": {
                    "reference": null,
                    "reference_status": null,
                    "reference_type": null,
                    "type": if pending { "pending" } else { "refund" },
                },
                "type": "card",
            },
            "metadata": self.metadata,
            "payment_intent": self.payment_intent,
            "payment_method": self.payment_method,
            "reason": self.reason,
            "receipt_number": null,
            "source_transfer_reversal": null,
            "status": self.status.as_str(),
            "transfer_reversal": null,
        });
        if pending {
            v["pending_reason"] = json!("processing");
        }
        if self.status == RefundStatus::Failed {
            v["failure_reason"] = json!(self.failure_reason);
            v["failure_balance_transaction"] = json!(self.failure_balance_transaction);
        }
        v
    }
}
