//! Refunds: their data, their status machine and the store that keeps them in creation
//! order with their timers. Card refunds move
//!
//! ```text
//! pending --(refund_ms)--> succeeded --(refund_fail_ms, pm_card_refundFail only)--> failed
//! ```
//!
//! and never enter `requires_action`, the only status Stripe lets a refund be canceled from.

mod render;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::list::paginate;
use crate::error::StripeError;
use crate::form::Params;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundStatus {
    Pending,
    Succeeded,
    Failed,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Pending => "pending",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
        }
    }
}

/// What a refund's timer does when it comes due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Next {
    Succeed,
    Fail,
}

/// What a create request decided.
pub struct NewRefund {
    pub id: String,
    pub balance_transaction: String,
    pub created: i64,
    pub amount: i64,
    pub currency: String,
    pub charge: String,
    pub payment_intent: String,
    pub payment_method: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub reason: Option<String>,
    pub status: RefundStatus,
}

#[derive(Debug, Clone)]
pub struct Refund {
    id: String,
    balance_transaction: String,
    created: i64,
    amount: i64,
    currency: String,
    charge: String,
    payment_intent: String,
    payment_method: Option<String>,
    metadata: BTreeMap<String, String>,
    reason: Option<String>,
    status: RefundStatus,
    failure_reason: Option<&'static str>,
    failure_balance_transaction: Option<String>,
}

impl Refund {
    pub fn new(n: NewRefund) -> Refund {
        Refund {
            id: n.id,
            balance_transaction: n.balance_transaction,
            created: n.created,
            amount: n.amount,
            currency: n.currency,
            charge: n.charge,
            payment_intent: n.payment_intent,
            payment_method: n.payment_method,
            metadata: n.metadata,
            reason: n.reason,
            status: n.status,
            failure_reason: None,
            failure_balance_transaction: None,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn amount(&self) -> i64 {
        self.amount
    }

    pub fn charge(&self) -> &str {
        &self.charge
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    pub fn balance_transaction(&self) -> &str {
        &self.balance_transaction
    }

    pub fn failure_balance_transaction(&self) -> Option<&str> {
        self.failure_balance_transaction.as_deref()
    }

    pub fn payment_intent(&self) -> &str {
        &self.payment_intent
    }

    pub fn currency(&self) -> &str {
        &self.currency
    }

    pub fn metadata_mut(&mut self) -> &mut BTreeMap<String, String> {
        &mut self.metadata
    }

    /// Moves the refund on as its timer says; `false` if it is no longer in the status
    /// the timer was set for.
    pub fn advance(
        &mut self,
        next: Next,
        failure_balance_transaction: impl FnOnce() -> String,
    ) -> bool {
        match (next, self.status) {
            (Next::Succeed, RefundStatus::Pending) => {
                self.status = RefundStatus::Succeeded;
                true
            }
            (Next::Fail, RefundStatus::Succeeded) => {
                self.status = RefundStatus::Failed;
                // The reason Stripe documents for its asynchronous-failure test card.
                self.failure_reason = Some("expired_or_canceled_card");
                self.failure_balance_transaction = Some(failure_balance_transaction());
                true
            }
            _ => false,
        }
    }
}

/// Every refund, in creation order, with the timers of those still to change status.
#[derive(Default)]
pub struct Refunds {
    by_id: HashMap<String, Refund>,
    /// Creation order, oldest first (lists are served newest first).
    order: Vec<String>,
    /// By due time, so that no periodic work scans every refund.
    timers: BTreeSet<(i64, String, Next)>,
}

impl Refunds {
    pub fn insert(&mut self, refund: Refund, timer: Option<(i64, Next)>) {
        if let Some((at, next)) = timer {
            self.timers.insert((at, refund.id.clone(), next));
        }
        self.order.push(refund.id.clone());
        self.by_id.insert(refund.id.clone(), refund);
    }

    pub fn get(&self, id: &str) -> Result<&Refund, StripeError> {
        self.by_id
            .get(id)
            .ok_or_else(|| StripeError::no_such("refund", id, Some("id")))
    }

    pub fn get_mut(&mut self, id: &str) -> Result<&mut Refund, StripeError> {
        self.by_id
            .get_mut(id)
            .ok_or_else(|| StripeError::no_such("refund", id, Some("id")))
    }

    pub fn oldest_first(&self) -> impl DoubleEndedIterator<Item = &Refund> {
        self.order.iter().filter_map(|id| self.by_id.get(id))
    }

    /// Refunds whose timer has come, in due order, each with what its timer does (the
    /// caller `advance`s them); the timers are spent.
    pub fn take_due(&mut self, now_ms: i64) -> Vec<(String, Next)> {
        let mut due = Vec::new();
        while let Some((at, _, _)) = self.timers.first() {
            if *at > now_ms {
                break;
            }
            let Some((_, id, next)) = self.timers.pop_first() else {
                break;
            };
            due.push((id, next));
        }
        due
    }

    /// `GET /v1/refunds`: newest first, filtered by `payment_intent`, `charge`, `created`.
    pub fn list(&self, p: &Params) -> Result<Value, StripeError> {
        let created = p.range("created")?;
        let pi = p.get("payment_intent");
        let charge = p.get("charge");
        let items: Vec<&Refund> = self
            .oldest_first()
            .rev()
            .filter(|r| created.contains(r.created))
            .filter(|r| pi.is_none_or(|pi| r.payment_intent == pi))
            .filter(|r| charge.is_none_or(|ch| r.charge == ch))
            .collect();
        paginate(p, &items, |r| r.id.as_str(), Refund::to_json, "/v1/refunds")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refund(id: &str, status: RefundStatus) -> Refund {
        Refund::new(NewRefund {
            id: id.into(),
            balance_transaction: "txn_1".into(),
            created: 1,
            amount: 500,
            currency: "usd".into(),
            charge: "ch_1".into(),
            payment_intent: "pi_1".into(),
            payment_method: None,
            metadata: BTreeMap::new(),
            reason: None,
            status,
        })
    }

    #[test]
    fn timers_fire_in_order_once_and_only_from_their_status() {
        let mut refunds = Refunds::default();
        refunds.insert(
            refund("re_a", RefundStatus::Pending),
            Some((100, Next::Succeed)),
        );
        refunds.insert(
            refund("re_b", RefundStatus::Succeeded),
            Some((50, Next::Fail)),
        );
        // A stale timer: re_c already succeeded, so a Succeed is a no-op.
        refunds.insert(
            refund("re_c", RefundStatus::Succeeded),
            Some((10, Next::Succeed)),
        );
        let mut fire = |now: i64| -> Vec<String> {
            refunds
                .take_due(now)
                .into_iter()
                .filter(|(id, next)| {
                    refunds
                        .get_mut(id)
                        .is_ok_and(|r| r.advance(*next, || "txn_f".to_owned()))
                })
                .map(|(id, _)| id)
                .collect()
        };
        assert!(fire(9).is_empty(), "nothing is due yet");
        assert_eq!(fire(60), ["re_b"]);
        assert_eq!(fire(1_000), ["re_a"]);
        assert!(fire(i64::MAX).is_empty());
        let b = refunds.get("re_b").unwrap().to_json();
        assert_eq!(b["status"], "failed");
        assert_eq!(b["failure_reason"], "expired_or_canceled_card");
        assert_eq!(b["failure_balance_transaction"], "txn_f");
        let a = refunds.get("re_a").unwrap().to_json();
        assert_eq!(a["status"], "succeeded");
        assert!(
            a.get("failure_reason").is_none(),
            "only failed refunds carry it"
        );
    }
}
