//! Stripe's test payment methods, what confirming with each does, what refunding its
//! charge does, and the declines tests force on them.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Card {
    Succeeds,
    Declines(&'static str),
    RequiresAction,
    /// Stays `processing` for `processing_ms` of simulated time, then succeeds
    /// (like real asynchronous methods such as bank debits).
    Processing,
}

impl Card {
    pub fn of(pm: &str) -> Option<Card> {
        Some(match pm {
            "pm_card_visa"
            | "pm_card_mastercard"
            | "pm_card_amex"
            | "pm_card_refundFail"
            | "pm_card_pendingRefund" => Card::Succeeds,
            "pm_card_chargeDeclined" => Card::Declines("generic_decline"),
            "pm_card_chargeDeclinedInsufficientFunds" => Card::Declines("insufficient_funds"),
            "pm_card_threeDSecure2Required" => Card::RequiresAction,
            "pm_sim_processing" => Card::Processing,
            _ => return None,
        })
    }
}

/// How a refund of a charge made with a test token behaves (Stripe's "Refunds" test cards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundBehaviour {
    /// `pending` for the world's `refund_ms`, then `succeeded` (at once when that is 0,
    /// as Stripe's test mode does for ordinary cards).
    Settles,
    /// 4000000000007726: always `pending` first, `succeeded` `refund_ms` later.
    Pending,
    /// 4000000000005126: `succeeded` at once, `failed` (`expired_or_canceled_card`)
    /// `refund_fail_ms` later.
    FailsLater,
}

impl RefundBehaviour {
    pub fn of(token: &str) -> RefundBehaviour {
        match token {
            "pm_card_refundFail" => RefundBehaviour::FailsLater,
            "pm_card_pendingRefund" => RefundBehaviour::Pending,
            _ => RefundBehaviour::Settles,
        }
    }
}

/// Stripe's minimum charge amounts (in minor units) for the currencies the sim knows.
pub fn minimum_amount(currency: &str) -> Option<i64> {
    Some(match currency {
        "usd" | "eur" | "chf" | "cad" | "aud" => 50,
        "gbp" => 30,
        "jpy" => 50,
        "krw" => 100,
        "sek" | "nok" | "dkk" => 300,
        "pln" => 200,
        _ => return None,
    })
}

/// An amount as Stripe writes it in messages: `$10.00`, `¥500`, `12.50 CHF`.
pub fn display_amount(amount: i64, currency: &str) -> String {
    let symbol = match currency {
        "usd" => Some("$"),
        "eur" => Some("€"),
        "gbp" => Some("£"),
        "jpy" => Some("¥"),
        _ => None,
    };
    // Zero-decimal currencies have no minor unit to show.
    let value = if ["jpy", "krw"].contains(&currency) {
        amount.to_string()
    } else {
        let sign = if amount < 0 { "-" } else { "" };
        let abs = amount.unsigned_abs();
        format!("{sign}{}.{:02}", abs / 100, abs % 100)
    };
    match symbol {
        Some(s) => format!("{s}{value}"),
        None => format!("{value} {}", currency.to_uppercase()),
    }
}

/// The PaymentMethod object Stripe embeds in errors (complete, as typed clients need):
/// `id` as attached, its card that of the test `token` it was made from.
pub fn payment_method_json(id: &str, token: &str, created: i64) -> Value {
    let (brand, last4) = match token {
        "pm_card_mastercard" => ("mastercard", "4444"),
        "pm_card_amex" => ("amex", "8431"),
        "pm_card_chargeDeclined" => ("visa", "0002"),
        "pm_card_chargeDeclinedInsufficientFunds" => ("visa", "9995"),
        "pm_card_threeDSecure2Required" => ("visa", "3220"),
        "pm_card_refundFail" => ("visa", "5126"),
        "pm_card_pendingRefund" => ("visa", "7726"),
        _ => ("visa", "4242"),
    };
    json!({
        "id": id,
        "object": "payment_method",
        "billing_details": {"address": null, "email": null, "name": null, "phone": null},
        "card": {"brand": brand, "country": "US", "exp_month": 12, "exp_year": 2034, "funding": "credit", "last4": last4},
        "created": created,
        "customer": null,
        "livemode": false,
        "metadata": {},
        "type": "card",
    })
}

/// `/_sim/payment_methods/{pm}/decline_next`: how many of a method's next confirms decline.
#[derive(Debug, Default, Serialize)]
#[serde(transparent)]
pub struct ForcedDeclines(HashMap<String, u32>);

impl ForcedDeclines {
    pub fn set(&mut self, pm: &str, count: u32) {
        self.0.insert(pm.to_owned(), count);
    }

    /// What confirming with `pm` does now: a forced decline, if one is left, uses it up.
    pub fn apply(&mut self, pm: &str, card: Card) -> Card {
        match self.0.get_mut(pm).filter(|n| **n > 0) {
            Some(n) => {
                *n -= 1;
                Card::Declines("generic_decline")
            }
            None => card,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_declines_are_used_up_then_the_card_works() {
        let mut f = ForcedDeclines::default();
        f.set("pm_card_visa", 2);
        let visa = Card::Succeeds;
        assert_eq!(
            f.apply("pm_card_visa", visa),
            Card::Declines("generic_decline")
        );
        assert_eq!(
            f.apply("pm_card_visa", visa),
            Card::Declines("generic_decline")
        );
        assert_eq!(f.apply("pm_card_visa", visa), visa);
        assert_eq!(f.apply("pm_card_amex", visa), visa);
    }

    #[test]
    fn amounts_read_as_stripe_writes_them() {
        assert_eq!(display_amount(2000, "usd"), "$20.00");
        assert_eq!(display_amount(5, "eur"), "€0.05");
        assert_eq!(display_amount(500, "jpy"), "¥500");
        assert_eq!(display_amount(1250, "chf"), "12.50 CHF");
    }
}
