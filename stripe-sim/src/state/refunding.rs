//! The Refund endpoints and the refunds' life on the simulated clock. A refund's amount
//! counts on its charge (`amount_refunded`, `refunded`) from its creation, pending or not,
//! and stops counting if it fails, as at Stripe. Events, as Stripe documents them:
//! `refund.created` and `charge.refunded` when a refund is created; `refund.updated` and
//! `charge.refund.updated` (with `previous_attributes`) whenever it changes;
//! `refund.failed` when it fails.
//!
//! Only `POST /v1/refunds` makes refunds. Releasing what an authorization still holds (a
//! cancel, an expiry, the rest of a partial capture) makes none: since API version
//! 2025-03-31.basil Stripe neither creates a Refund for it nor counts it in the charge's
//! `amount_refunded` (see `payments.rs`).

use serde_json::Value;

use super::cards::{RefundBehaviour, display_amount};
use super::events::previous_attributes;
use super::intents::IntentStatus;
use super::refunds::{NewRefund, Next, Refund, RefundStatus};
use super::{Ctx, State, metadata};
use crate::error::StripeError;
use crate::form::Params;

const REASONS: [&str; 3] = ["duplicate", "fraudulent", "requested_by_customer"];

/// An error that depends on the objects' state: the endpoint ran, so Stripe stores it
/// under the request's idempotency key.
fn refused(message: String, code: Option<&'static str>, param: Option<&str>) -> StripeError {
    StripeError {
        code,
        executed: true,
        ..StripeError::invalid(message, param)
    }
}

impl State {
    /// `POST /v1/refunds` (`payment_intent` or `charge`, `amount`, `reason`, `metadata`).
    pub fn create_refund(&mut self, p: &Params, ctx: &Ctx) -> Result<Value, StripeError> {
        let amount = p.int("amount")?;
        if amount.is_some_and(|a| a < 1) {
            return Err(StripeError::invalid(
                "This value must be greater than or equal to 1.",
                Some("amount"),
            ));
        }
        let reason = p.string("reason");
        if let Some(r) = &reason
            && !REASONS.contains(&r.as_str())
        {
            return Err(StripeError::invalid(
                format!(
                    "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer, not {r}"
                ),
                Some("reason"),
            ));
        }
        let meta = p.map("metadata");
        metadata::validate(&meta)?;
        let (charge_id, pi_id) =
            self.refundable_charge(p.get("payment_intent"), p.get("charge"))?;
        let charge = self.charges.get(&charge_id)?;
        let unrefunded = charge.unrefunded();
        if unrefunded <= 0 {
            return Err(refused(
                format!("Charge {charge_id} has already been refunded."),
                Some("charge_already_refunded"),
                None,
            ));
        }
        let amount = amount.unwrap_or(unrefunded);
        if amount > unrefunded {
            return Err(refused(
                format!(
                    "Refund amount ({}) is greater than unrefunded amount on charge ({})",
                    display_amount(amount, charge.currency()),
                    display_amount(unrefunded, charge.currency())
                ),
                Some("amount_too_large"),
                Some("amount"),
            ));
        }
        let token = self.intents.get(&pi_id)?.card().unwrap_or_default();
        let (status, timer) = match RefundBehaviour::of(token) {
            RefundBehaviour::Settles if self.world.refund_ms <= 0 => {
                (RefundStatus::Succeeded, None)
            }
            RefundBehaviour::Settles | RefundBehaviour::Pending => (
                RefundStatus::Pending,
                Some((
                    ctx.now_ms.saturating_add(self.world.refund_ms.max(0)),
                    Next::Succeed,
                )),
            ),
            RefundBehaviour::FailsLater => (
                RefundStatus::Succeeded,
                Some((
                    ctx.now_ms.saturating_add(self.world.refund_fail_ms.max(0)),
                    Next::Fail,
                )),
            ),
        };
        let refund = self.new_refund(&charge_id, amount, reason, meta, status, ctx)?;
        let refund_json = refund.to_json();
        let (charge, previous) = self.count_refund(&charge_id, &refund)?;
        let refund_id = refund.id().to_owned();
        self.refunds.insert(refund, timer);
        self.book_refund(&refund_id, false, ctx);
        self.emit("refund.created", refund_json.clone(), ctx);
        self.emit_change("charge.refunded", charge, Some(previous), ctx);
        Ok(refund_json)
    }

    /// The charge a create refunds, and its intent: the intent's successful charge.
    fn refundable_charge(
        &self,
        pi: Option<&str>,
        charge: Option<&str>,
    ) -> Result<(String, String), StripeError> {
        let given = match charge {
            Some(ch) => Some(
                self.charges
                    .get(ch)
                    .map_err(|_| StripeError::no_such("charge", ch, Some("charge")).in_param())?,
            ),
            None => None,
        };
        let (pi_id, param) = match (pi, given) {
            (Some(pi), _) => (pi, "payment_intent"),
            (None, Some(c)) => (c.payment_intent(), "charge"),
            (None, None) => {
                return Err(StripeError {
                    code: Some("parameter_missing"),
                    ..StripeError::invalid(
                        "One of the following params should be provided for this request: payment_intent or charge.",
                        None,
                    )
                });
            }
        };
        let intent = self.intents.get(pi_id).map_err(|_| {
            StripeError::no_such("payment_intent", pi_id, Some("payment_intent")).in_param()
        })?;
        if let Some(c) = given
            && c.payment_intent() != intent.id()
        {
            return Err(StripeError::invalid(
                format!(
                    "Charge {} does not belong to PaymentIntent {}.",
                    c.id(),
                    intent.id()
                ),
                Some("charge"),
            ));
        }
        let target = given
            .map(|c| c.id())
            .or(intent.latest_charge())
            .and_then(|ch| self.charges.get(ch).ok())
            .filter(|c| c.succeeded());
        match target {
            Some(c) if intent.status() == IntentStatus::Succeeded => {
                Ok((c.id().to_owned(), intent.id().to_owned()))
            }
            _ => Err(refused(
                format!(
                    "This PaymentIntent ({}) does not have a successful charge to refund.",
                    intent.id()
                ),
                None,
                Some(param),
            )),
        }
    }

    fn new_refund(
        &mut self,
        charge_id: &str,
        amount: i64,
        reason: Option<String>,
        metadata: std::collections::BTreeMap<String, String>,
        status: RefundStatus,
        ctx: &Ctx,
    ) -> Result<Refund, StripeError> {
        let charge = self.charges.get(charge_id)?;
        let (currency, pi, pm) = (
            charge.currency().to_owned(),
            charge.payment_intent().to_owned(),
            charge.payment_method().map(str::to_owned),
        );
        Ok(Refund::new(NewRefund {
            id: self.dice.id("re"),
            balance_transaction: self.dice.id("txn"),
            created: ctx.now(),
            amount,
            currency,
            charge: charge_id.to_owned(),
            payment_intent: pi,
            payment_method: pm,
            metadata,
            reason,
            status,
        }))
    }

    /// Counts a new refund on its charge: the charge as it is now, and what changed.
    fn count_refund(
        &mut self,
        charge_id: &str,
        refund: &Refund,
    ) -> Result<(Value, Value), StripeError> {
        let charge = self.charges.get_mut(charge_id)?;
        let before = charge.to_json(None);
        charge.add_refund(refund.id().to_owned(), refund.amount());
        let after = charge.to_json(None);
        let previous = previous_attributes(&before, &after);
        Ok((after, previous))
    }

    pub fn retrieve_refund(&self, id: &str) -> Result<Value, StripeError> {
        Ok(self.refunds.get(id)?.to_json())
    }

    pub fn list_refunds(&self, p: &Params) -> Result<Value, StripeError> {
        self.refunds.list(p)
    }

    /// `POST /v1/refunds/{id}`: Stripe takes only `metadata` here.
    pub fn update_refund(&mut self, id: &str, p: &Params, ctx: &Ctx) -> Result<Value, StripeError> {
        if let Some(k) = p
            .keys()
            .find(|k| !k.starts_with("metadata") && !k.starts_with("expand"))
        {
            return Err(StripeError::invalid(
                format!("Received unknown parameter: {k}"),
                Some(k),
            ));
        }
        let changes = p.map("metadata");
        metadata::validate(&changes)?;
        let refund = self.refunds.get_mut(id)?;
        let before = refund.to_json();
        // `metadata=` (empty) unsets every key.
        if p.get("metadata") == Some("") {
            refund.metadata_mut().clear();
        }
        metadata::apply(refund.metadata_mut(), changes);
        let after = refund.to_json();
        if after != before {
            self.refund_changed(&before, &after, ctx);
        }
        Ok(after)
    }

    /// `POST /v1/refunds/{id}/cancel`. Stripe cancels only `requires_action` refunds,
    /// which card refunds never are; what it answers for a card refund is this
    /// (stripe/stripe-node#1771).
    pub fn cancel_refund(&mut self, id: &str) -> Result<Value, StripeError> {
        self.refunds.get(id)?;
        Err(refused(
            "Charges must be refunded using the /v1/charges/{CHARGE_ID}/refunds endpoint.".into(),
            None,
            None,
        ))
    }

    fn refund_changed(&mut self, before: &Value, after: &Value, ctx: &Ctx) {
        let previous = previous_attributes(before, after);
        self.emit_change("refund.updated", after.clone(), Some(previous.clone()), ctx);
        self.emit_change("charge.refund.updated", after.clone(), Some(previous), ctx);
    }

    /// Settles pending refunds and fails `pm_card_refundFail` ones whose time has come.
    pub(super) fn settle_refunds(&mut self, ctx: &Ctx) {
        for (id, next) in self.refunds.take_due(ctx.now_ms) {
            let Ok(refund) = self.refunds.get_mut(&id) else {
                continue;
            };
            let before = refund.to_json();
            if !refund.advance(next, || self.dice.id("txn")) {
                continue;
            }
            let after = refund.to_json();
            let (charge, amount) = (refund.charge().to_owned(), refund.amount());
            self.refund_changed(&before, &after, ctx);
            if next == Next::Fail {
                if let Ok(c) = self.charges.get_mut(&charge) {
                    c.refund_failed(amount);
                }
                self.book_refund(&id, true, ctx);
                self.emit("refund.failed", after, ctx);
            }
        }
    }
}
