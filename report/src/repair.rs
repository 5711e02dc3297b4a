//! `--repair`: gives `status_mismatch` payments Stripe's final status through the core's
//! one status function (source `operator`). Nothing else is ever touched.

use paystream_core::{PaymentId, PaymentStatus};
use paystream_db::payments::{self, Applied, Observation, Source};
use paystream_db::{DbError, Primary};
use serde_json::json;

use crate::{Class, Finding};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    Changed {
        id: PaymentId,
        from: String,
        to: PaymentStatus,
    },
    /// Stripe's status is not final, or ours is final and disagrees: left for a human.
    Refused { id: PaymentId, reason: String },
}

pub async fn repair(primary: &Primary, findings: &[Finding]) -> Result<Vec<Repair>, DbError> {
    let mut out = Vec::new();
    for f in findings.iter().filter(|f| f.class == Class::StatusMismatch) {
        let (Some(id), Some(stripe)) = (f.payment_id, f.stripe.as_deref()) else {
            continue;
        };
        // A finding from a report file says money moved (`charged 1250 usd`, `no charge`),
        // not Stripe's status: nothing to repair to.
        if stripe.starts_with("charged ") || stripe == "no charge" {
            out.push(Repair::Refused {
                id,
                reason: format!("stripe's report file says {stripe}, not its status: repair over a window small enough for the list walk (--bulk-from)"),
            });
            continue;
        }
        let Some(to) = PaymentStatus::from_stripe(stripe).filter(|s| s.is_final()) else {
            out.push(Repair::Refused {
                id,
                reason: format!("stripe says {stripe}, which is not final"),
            });
            continue;
        };
        let obs = Observation {
            status: to,
            // Only the status: which intent a payment holds is not the report's to decide
            // (several may claim one payment id).
            intent: None,
            stripe_status: Some(stripe),
            error: None,
            source: Source::Operator,
            detail: Some(json!({"repair": "reconciliation report", "intent": f.intent_id})),
            amount_received: None,
        };
        out.push(match payments::apply_status(primary, id, &obs).await? {
            Applied::Changed(_) | Applied::Overturned(_) => Repair::Changed {
                id,
                from: f.ours.clone().unwrap_or_default(),
                to,
            },
            Applied::Unchanged(_) => continue,
            Applied::Conflict(p) => Repair::Refused {
                id,
                reason: format!("ours is final ({}) and stripe says {stripe}", p.status),
            },
            Applied::ForeignIntent(p) => Repair::Refused {
                id,
                reason: format!(
                    "the payment holds another PaymentIntent ({})",
                    p.stripe_payment_intent_id.unwrap_or_default()
                ),
            },
            Applied::NotFound => Repair::Refused {
                id,
                reason: "the payment row is gone".into(),
            },
        });
    }
    Ok(out)
}
