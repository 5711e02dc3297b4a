//! The payment status machine. Our `status` is the business outcome; Stripe's finer
//! PaymentIntent states (requires_action, processing, ...) are kept beside it as
//! `stripe_status` and all map to `pending` until Stripe reaches a final state.
//!
//! Updates arrive from several places (API, webhooks, polls, expiry, operators), late,
//! twice and out of order, so the machine is monotonic: a payment moves from `pending`
//! to one final status and never leaves it, with one exception. Stripe's outcome is the
//! truth about money: if Stripe took the money for a payment we had called `canceled` or
//! `failed` (a race no protocol closes), the payment becomes `succeeded` and is flagged
//! for an operator (`Transition::Overturn`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Created; Stripe has not reached a final state (or was never reached yet).
    Pending,
    /// Stripe's PaymentIntent `succeeded`: the money moved.
    Succeeded,
    /// Stripe refused to create the PaymentIntent (e.g. invalid amount): nothing to retry.
    Failed,
    /// Stripe's PaymentIntent `canceled` (by the client, an operator, or expiry).
    Canceled,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 4] =
        [Self::Pending, Self::Succeeded, Self::Failed, Self::Canceled];

    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    /// What Stripe's PaymentIntent status means for ours. Only `succeeded` and `canceled`
    /// are final at Stripe; a declined attempt returns to `requires_payment_method`.
    pub fn from_stripe(stripe_status: &str) -> Option<Self> {
        match stripe_status {
            "succeeded" => Some(Self::Succeeded),
            "canceled" => Some(Self::Canceled),
            "requires_payment_method"
            | "requires_confirmation"
            | "requires_action"
            | "processing"
            | "requires_capture" => Some(Self::Pending),
            _ => None,
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown payment status {0:?}")]
pub struct StatusError(pub String);

impl FromStr for PaymentStatus {
    type Err = StatusError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StatusError(s.to_owned()))
    }
}

/// What observing `to` does to a payment currently in `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Write it: the payment resolves.
    Apply,
    /// Already there (a duplicate delivery or a second resolver): nothing to write.
    Unchanged,
    /// The payment is final and the observation disagrees. Stripe never leaves a final
    /// state, so this is a stale or wrong observation: never written, always reported.
    Conflict,
    /// Stripe took the money after we said `canceled` or `failed`: money truth wins. The
    /// payment becomes `succeeded`, its history says what it overturned, and it is
    /// flagged for an operator (`charged_after_cancel`).
    Overturn,
}

/// The transition table, one row per current status, one column per observed status
/// in `PaymentStatus::ALL` order: pending, succeeded, failed, canceled.
const TABLE: [[Transition; 4]; 4] = {
    use Transition::{Apply as A, Conflict as C, Overturn as O, Unchanged as U};
    [
        /* pending   */ [U, A, A, A],
        /* succeeded */ [C, U, C, C],
        /* failed    */ [C, O, U, C],
        /* canceled  */ [C, O, C, U],
    ]
};

pub fn transition(from: PaymentStatus, to: PaymentStatus) -> Transition {
    TABLE[from as usize][to as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use PaymentStatus::*;
    use Transition::*;

    #[test]
    fn every_cell_of_the_table() {
        let expected = [
            (Pending, Pending, Unchanged),
            (Pending, Succeeded, Apply),
            (Pending, Failed, Apply),
            (Pending, Canceled, Apply),
            (Succeeded, Pending, Conflict),
            (Succeeded, Succeeded, Unchanged),
            (Succeeded, Failed, Conflict),
            (Succeeded, Canceled, Conflict),
            (Failed, Pending, Conflict),
            (Failed, Succeeded, Overturn),
            (Failed, Failed, Unchanged),
            (Failed, Canceled, Conflict),
            (Canceled, Pending, Conflict),
            (Canceled, Succeeded, Overturn),
            (Canceled, Failed, Conflict),
            (Canceled, Canceled, Unchanged),
        ];
        assert_eq!(expected.len(), PaymentStatus::ALL.len().pow(2));
        for (from, to, t) in expected {
            assert_eq!(transition(from, to), t, "{from} -> {to}");
        }
    }

    #[test]
    fn final_states_only_move_to_money_taken_and_pending_always_can() {
        for from in PaymentStatus::ALL {
            for to in PaymentStatus::ALL {
                let t = transition(from, to);
                if from == to {
                    assert_eq!(t, Unchanged);
                } else if !from.is_final() {
                    assert_eq!(t, Apply);
                } else if to == Succeeded && from != Succeeded {
                    assert_eq!(t, Overturn, "{from} -> succeeded: Stripe took the money");
                } else {
                    assert_eq!(t, Conflict);
                }
            }
        }
    }

    /// Whatever order observations arrive in, once Stripe has said `succeeded` the payment
    /// ends `succeeded`, and nothing ever leaves `succeeded`.
    #[test]
    fn succeeded_is_absorbing_and_reachable_from_everything() {
        fn run(from: PaymentStatus, seq: &[PaymentStatus]) -> PaymentStatus {
            seq.iter()
                .fold(from, |cur, obs| match transition(cur, *obs) {
                    Apply | Overturn => *obs,
                    Unchanged | Conflict => cur,
                })
        }
        let all = PaymentStatus::ALL;
        for a in all {
            for b in all {
                for c in all {
                    let seq = [a, b, c];
                    let end = run(Pending, &seq);
                    if seq.contains(&Succeeded) {
                        assert_eq!(end, Succeeded, "{seq:?}");
                    } else {
                        assert_eq!(
                            end,
                            seq.iter()
                                .copied()
                                .find(|s| s.is_final())
                                .unwrap_or(Pending),
                            "{seq:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn stripe_statuses_map_to_ours() {
        assert_eq!(PaymentStatus::from_stripe("succeeded"), Some(Succeeded));
        assert_eq!(PaymentStatus::from_stripe("canceled"), Some(Canceled));
        for open in [
            "requires_payment_method",
            "requires_confirmation",
            "requires_action",
            "processing",
            "requires_capture",
        ] {
            assert_eq!(PaymentStatus::from_stripe(open), Some(Pending), "{open}");
        }
        assert_eq!(PaymentStatus::from_stripe("failed"), None);
    }

    #[test]
    fn names_round_trip() {
        for s in PaymentStatus::ALL {
            assert_eq!(s.as_str().parse::<PaymentStatus>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!("PENDING".parse::<PaymentStatus>().is_err());
    }
}
