//! Refunds and how a payment is captured.
//!
//! A refund is money going back: its own row, its own status machine, beside the
//! payment's. Stripe's refund statuses are `pending`, `requires_action`, `succeeded`,
//! `failed` and `canceled`. Ours fold `requires_action` into `pending` (it is not over).
//! Unlike a PaymentIntent, a refund can leave `succeeded`: Stripe may report it failed
//! days later (the customer's card was closed, say), and the money is then back with us.
//! That is Stripe's truth and wins, but the customer was told they got their money back:
//! the refund is flagged for an operator (`Transition::Overturn`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::status::{StatusError, Transition};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    /// Committed by us, or created at Stripe and not over yet. Its amount is reserved.
    Pending,
    /// Stripe sent the money back. Its amount stays reserved (it is refunded).
    Succeeded,
    /// Stripe could not refund (or Stripe refused to create it): the amount is free again.
    Failed,
    /// Canceled at Stripe (only a `requires_action` refund can be), or never sent: free.
    Canceled,
}

impl RefundStatus {
    pub const ALL: [RefundStatus; 4] =
        [Self::Pending, Self::Succeeded, Self::Failed, Self::Canceled];

    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending)
    }

    /// Whether the refund's amount counts against what is left to refund: money that
    /// went back, or may still go.
    pub fn holds_amount(self) -> bool {
        matches!(self, Self::Pending | Self::Succeeded)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    /// What Stripe's refund status means for ours; `None` for one this code does not know.
    pub fn from_stripe(stripe_status: &str) -> Option<Self> {
        match stripe_status {
            "pending" | "requires_action" => Some(Self::Pending),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            "canceled" => Some(Self::Canceled),
            _ => None,
        }
    }
}

impl fmt::Display for RefundStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RefundStatus {
    type Err = StatusError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StatusError(s.to_owned()))
    }
}

/// The refund transition table, rows and columns in `RefundStatus::ALL` order: pending,
/// succeeded, failed, canceled. `failed` and `canceled` are final at Stripe; `succeeded`
/// is not quite (see the module's comment).
const TABLE: [[Transition; 4]; 4] = {
    use Transition::{Apply as A, Conflict as C, Overturn as O, Unchanged as U};
    [
        /* pending   */ [U, A, A, A],
        /* succeeded */ [C, U, O, C],
        /* failed    */ [C, C, U, C],
        /* canceled  */ [C, C, C, U],
    ]
};

/// What observing `to` does to a refund currently in `from`: the one refund transition
/// function, beside `status::transition` for payments.
pub fn transition(from: RefundStatus, to: RefundStatus) -> Transition {
    TABLE[from as usize][to as usize]
}

/// Why a refund is made: Stripe's three reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundReason {
    Duplicate,
    Fraudulent,
    RequestedByCustomer,
}

impl RefundReason {
    pub const ALL: [RefundReason; 3] =
        [Self::Duplicate, Self::Fraudulent, Self::RequestedByCustomer];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::Fraudulent => "fraudulent",
            Self::RequestedByCustomer => "requested_by_customer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// When a payment's money is taken: at once when the customer pays (`automatic`), or
/// held (`requires_capture` at Stripe) until we capture it (`manual`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMethod {
    #[default]
    Automatic,
    Manual,
}

impl CaptureMethod {
    pub const ALL: [CaptureMethod; 2] = [Self::Automatic, Self::Manual];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Automatic => "automatic",
            Self::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// How much of a captured payment can still be refunded, given the amounts of its
/// refunds that hold money (pending or succeeded). `None` if they already exceed it,
/// which the database's reservation never lets happen.
pub fn refundable(captured: i64, held: impl IntoIterator<Item = i64>) -> Option<i64> {
    held.into_iter()
        .try_fold(captured, |left, a| left.checked_sub(a))
        .filter(|left| *left >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RefundStatus::*;
    use Transition::*;
    use proptest::prelude::*;

    #[test]
    fn every_cell_of_the_table() {
        let expected = [
            (Pending, Pending, Unchanged),
            (Pending, Succeeded, Apply),
            (Pending, Failed, Apply),
            (Pending, Canceled, Apply),
            (Succeeded, Pending, Conflict),
            (Succeeded, Succeeded, Unchanged),
            (Succeeded, Failed, Overturn),
            (Succeeded, Canceled, Conflict),
            (Failed, Pending, Conflict),
            (Failed, Succeeded, Conflict),
            (Failed, Failed, Unchanged),
            (Failed, Canceled, Conflict),
            (Canceled, Pending, Conflict),
            (Canceled, Succeeded, Conflict),
            (Canceled, Failed, Conflict),
            (Canceled, Canceled, Unchanged),
        ];
        assert_eq!(expected.len(), RefundStatus::ALL.len().pow(2));
        for (from, to, t) in expected {
            assert_eq!(transition(from, to), t, "{from} -> {to}");
        }
    }

    /// Whatever order Stripe's observations arrive in, a refund ends in the last status
    /// Stripe reaches on its own path (pending -> succeeded -> failed, or pending ->
    /// failed/canceled), and never returns to pending.
    #[test]
    fn any_order_of_stripes_path_converges_to_its_end() {
        let paths: [&[RefundStatus]; 4] = [
            &[Pending, Succeeded],
            &[Pending, Succeeded, Failed],
            &[Pending, Failed],
            &[Pending, Canceled],
        ];
        fn permutations(items: &[RefundStatus]) -> Vec<Vec<RefundStatus>> {
            if items.len() <= 1 {
                return vec![items.to_vec()];
            }
            let mut out = Vec::new();
            for i in 0..items.len() {
                let mut rest = items.to_vec();
                let first = rest.remove(i);
                for mut p in permutations(&rest) {
                    p.insert(0, first);
                    out.push(p);
                }
            }
            out
        }
        for path in paths {
            let end = *path.last().unwrap();
            for order in permutations(path) {
                let got = order
                    .iter()
                    .fold(Pending, |cur, obs| match transition(cur, *obs) {
                        Apply | Overturn => *obs,
                        Unchanged | Conflict => cur,
                    });
                // A late `succeeded` after `failed` cannot be told from a stale one, so
                // the failure stands: money is back with us, which is what Stripe says.
                assert_eq!(got, end, "{order:?}");
            }
        }
    }

    #[test]
    fn only_pending_and_succeeded_hold_money() {
        assert!(Pending.holds_amount());
        assert!(Succeeded.holds_amount());
        assert!(!Failed.holds_amount());
        assert!(!Canceled.holds_amount());
    }

    #[test]
    fn stripe_statuses_map_to_ours() {
        assert_eq!(RefundStatus::from_stripe("requires_action"), Some(Pending));
        for s in RefundStatus::ALL {
            assert_eq!(RefundStatus::from_stripe(s.as_str()), Some(s));
            assert_eq!(s.as_str().parse::<RefundStatus>(), Ok(s));
        }
        assert_eq!(RefundStatus::from_stripe("refunded"), None);
    }

    #[test]
    fn reasons_and_capture_methods_round_trip() {
        for r in RefundReason::ALL {
            assert_eq!(RefundReason::parse(r.as_str()), Some(r));
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        for c in CaptureMethod::ALL {
            assert_eq!(CaptureMethod::parse(c.as_str()), Some(c));
        }
        assert_eq!(RefundReason::parse("because"), None);
        assert_eq!(CaptureMethod::parse("later"), None);
    }

    proptest! {
        /// What is left to refund is the captured amount minus what the refunds hold,
        /// and never negative: the API refuses any refund past it.
        #[test]
        fn refundable_never_goes_negative(captured in 1i64..1_000_000, held in proptest::collection::vec(1i64..400_000, 0..8)) {
            let total: i64 = held.iter().sum();
            match refundable(captured, held.clone()) {
                Some(left) => {
                    prop_assert_eq!(left, captured - total);
                    prop_assert!(left >= 0);
                }
                None => prop_assert!(total > captured),
            }
        }
    }
}
