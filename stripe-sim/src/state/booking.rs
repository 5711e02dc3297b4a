//! What payments and refunds write to the ledger, as Stripe books them: a charge when its
//! money is captured (at once, or at the capture of a held authorization), a refund when
//! it is created (its `balance_transaction` is named from the start, and the balance is
//! debited while it is pending), a refund failure when a refund fails.

use super::ledger::{BalanceTxn, CARD_AVAILABILITY_S, Currency, Tail, TxnKind, card_fee};
use super::{Ctx, State};

impl State {
    /// Books a charge's capture and links it (`charge.balance_transaction`).
    pub(super) fn book_charge(&mut self, charge_id: &str, ctx: &Ctx) {
        // Its own stream: drawing from the main one would change every id a seeded run
        // made before balance transactions existed.
        let txn = self.books.id("txn");
        let Ok(charge) = self.charges.get_mut(charge_id) else {
            return;
        };
        let amount = charge.amount_captured();
        if amount <= 0 {
            return;
        }
        let (Some(id), Some(ch), Some(pi), Some(currency)) = (
            Tail::of(&txn, "txn"),
            Tail::of(charge.id(), "ch"),
            Tail::of(charge.payment_intent(), "pi"),
            Currency::of(charge.currency()),
        ) else {
            tracing::warn!(
                charge = charge_id,
                "charge not booked: an id of unexpected shape"
            );
            return;
        };
        charge.set_balance_transaction(txn);
        let created = ctx.now();
        self.ledger.push(BalanceTxn {
            id,
            kind: TxnKind::Charge,
            created,
            available_on: created + CARD_AVAILABILITY_S,
            amount,
            fee: card_fee(amount, currency.as_str()),
            currency,
            charge: ch,
            payment_intent: pi,
            refund: None,
            description: charge.description().map(Box::from),
            seeded: None,
        });
    }

    /// Books a new refund (negative), or the failure of one (positive, the money back).
    pub(super) fn book_refund(&mut self, refund_id: &str, failed: bool, ctx: &Ctx) {
        let Ok(refund) = self.refunds.get(refund_id) else {
            return;
        };
        let (kind, txn, amount) = if failed {
            (
                TxnKind::RefundFailure,
                refund.failure_balance_transaction().unwrap_or_default(),
                refund.amount(),
            )
        } else {
            (
                TxnKind::Refund,
                refund.balance_transaction(),
                -refund.amount(),
            )
        };
        let (Some(id), Some(re), Some(ch), Some(pi), Some(currency)) = (
            Tail::of(txn, "txn"),
            Tail::of(refund.id(), "re"),
            Tail::of(refund.charge(), "ch"),
            Tail::of(refund.payment_intent(), "pi"),
            Currency::of(refund.currency()),
        ) else {
            tracing::warn!(
                refund = refund_id,
                "refund not booked: an id of unexpected shape"
            );
            return;
        };
        let about = self
            .charges
            .get(refund.charge())
            .ok()
            .and_then(|c| c.description())
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        let description = if failed {
            format!("REFUND FAILURE FOR CHARGE{about}")
        } else {
            format!("REFUND FOR CHARGE{about}")
        };
        let created = ctx.now();
        self.ledger.push(BalanceTxn {
            id,
            kind,
            created,
            // Refunds take from the balance at once; a failure gives back at once.
            available_on: created,
            amount,
            fee: 0,
            currency,
            charge: ch,
            payment_intent: pi,
            refund: Some(re),
            description: Some(description.into()),
            seeded: None,
        });
    }
}
