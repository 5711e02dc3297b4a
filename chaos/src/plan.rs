//! What a chaos run does, decided up front from its seed: each payment's script (the
//! client's creates, retries, cancels, captures and refunds, the customer's actions at
//! Stripe) and the schedule of faults. Pure, so a seed names a run; the real processes' timing is the
//! only thing a replay cannot fix.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// What the customer does with the PaymentIntent whose client secret the client got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Customer {
    Pay,
    DeclineThenPay,
    /// Declined, then gives up: the intent stays open until expiry.
    Decline,
    ThreeDs,
    /// Fails 3D Secure, then gives up.
    ThreeDsFail,
    /// `processing` for a while (stripe-sim's `pm_sim_processing`), then succeeded.
    Processing,
    Abandon,
}

/// When (if at all) the client cancels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cancel {
    /// Right after the first answer, before the customer does anything.
    BeforePaying,
    /// At the same moment as a retry of the create (same key).
    RacingRetry,
    /// After the customer acted (a success must then win).
    AfterPaying,
}

/// How the client captures a manual-capture payment once its customer has acted (it
/// waits for the authorization first, as a merchant waits for
/// `payment_intent.amount_capturable_updated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capture {
    /// All of it.
    Full,
    /// Part of it (`amount_to_capture`); Stripe releases the rest.
    Partial(i64),
    /// The same capture twice at once with one key: one runs, the other replays it.
    TwiceSameKey(Option<i64>),
    /// A capture, then a capture of all of it with a new key (refused: it is captured).
    TwiceNewKey(Option<i64>),
    /// More than was authorized (refused), then all of it.
    OverThenFull,
    /// Never: Stripe cancels the authorization after 7 days (the run's last clock jump).
    Never,
}

impl Capture {
    pub fn kind(self) -> &'static str {
        match self {
            Capture::Full => "full",
            Capture::Partial(_) => "partial",
            Capture::TwiceSameKey(_) => "twice, same key",
            Capture::TwiceNewKey(_) => "twice, new key",
            Capture::OverThenFull => "over, then full",
            Capture::Never => "never",
        }
    }

    /// What the plan means to capture of `amount`: what its refunds are planned against.
    pub fn captures(self, amount: i64) -> i64 {
        match self {
            Capture::Partial(a)
            | Capture::TwiceSameKey(Some(a))
            | Capture::TwiceNewKey(Some(a)) => a,
            Capture::Never => 0,
            _ => amount,
        }
    }
}

/// What a payment's refund requests try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefundKind {
    /// One refund of everything (no amount).
    Full,
    /// One refund of part of it.
    Partial,
    /// A part, then the rest (no amount), then one more (nothing is left).
    PartialThenRest,
    /// Several partial refunds at once with distinct keys, summing to more than was
    /// captured: the reservation must refuse some.
    Concurrent,
    /// One refund sent twice at once with one key, then once more with it.
    SameKey,
    /// One key, then the same key with another amount (refused as reused).
    KeyReused,
    /// More than was captured (refused), then a part.
    Over,
}

impl RefundKind {
    pub const ALL: [RefundKind; 7] = [
        RefundKind::Full,
        RefundKind::Partial,
        RefundKind::PartialThenRest,
        RefundKind::Concurrent,
        RefundKind::SameKey,
        RefundKind::KeyReused,
        RefundKind::Over,
    ];
}

/// One refund request: its key (the `n`th of the payment's refund keys), its amount (none:
/// everything left) and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefundRequest {
    pub key: u8,
    pub amount: Option<i64>,
    pub reason: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundPlan {
    pub kind: RefundKind,
    /// Rounds, one after another; a round's requests are sent at once.
    pub rounds: Vec<Vec<RefundRequest>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentScript {
    pub n: usize,
    /// Milliseconds into the load phase.
    pub start_ms: u64,
    pub amount: i64,
    pub currency: &'static str,
    /// Extra creates with the same key after the first answer.
    pub retries: u8,
    pub cancel: Option<Cancel>,
    pub customer: Customer,
    /// Retried once more after Stripe's clock moved past its 24-hour key lifetime.
    pub late_retry: bool,
    /// `capture_method: manual`, and how the client captures it.
    pub capture: Option<Capture>,
    /// The customer's card is `pm_card_refundFail` (its refunds succeed, then fail two
    /// days later) instead of `pm_card_visa`.
    pub refund_fail_card: bool,
    /// Refunds the client asks for once the payment succeeded.
    pub refunds: Option<RefundPlan>,
}

impl PaymentScript {
    /// Whether the customer ends up giving an authorization (or paying).
    pub fn pays(&self) -> bool {
        matches!(
            self.customer,
            Customer::Pay | Customer::DeclineThenPay | Customer::ThreeDs | Customer::Processing
        )
    }

    /// What the plan means to capture (what its refunds are planned against).
    pub fn captured(&self) -> i64 {
        self.capture
            .map_or(self.amount, |c| c.captures(self.amount))
    }
}

/// The faults a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    KillReconciler,
    KillWebhook,
    KillApi,
    RestartConnect,
    RestartBroker,
    RestartPrimary,
    LoseSlot,
    StripeErrors,
    StripeRateLimits,
    StripeLatency,
}

impl FaultKind {
    pub const PROCESS: [FaultKind; 7] = [
        FaultKind::KillReconciler,
        FaultKind::KillWebhook,
        FaultKind::KillApi,
        FaultKind::RestartConnect,
        FaultKind::RestartBroker,
        FaultKind::RestartPrimary,
        FaultKind::LoseSlot,
    ];
    pub const STRIPE: [FaultKind; 3] = [
        FaultKind::StripeErrors,
        FaultKind::StripeRateLimits,
        FaultKind::StripeLatency,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::KillReconciler => "kill -9 reconciler",
            FaultKind::KillWebhook => "kill -9 webhook",
            FaultKind::KillApi => "kill -9 api-1",
            FaultKind::RestartConnect => "restart Kafka Connect",
            FaultKind::RestartBroker => "restart broker",
            FaultKind::RestartPrimary => "restart primary (fast)",
            FaultKind::LoseSlot => "lose the Debezium slot",
            FaultKind::StripeErrors => "Stripe 500s",
            FaultKind::StripeRateLimits => "Stripe 429s",
            FaultKind::StripeLatency => "Stripe latency",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledFault {
    /// Milliseconds into the load phase.
    pub at_ms: u64,
    pub kind: FaultKind,
    /// How long a Stripe fault lasts, or how long a killed process stays down.
    pub hold_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub payments: usize,
    /// How long the clients keep starting payments.
    pub load_ms: u64,
    /// Process faults beyond one of each kind.
    pub extra_process_faults: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub seed: u64,
    pub payments: Vec<PaymentScript>,
    /// Process faults, in order; they run one after another.
    pub process_faults: Vec<ScheduledFault>,
    /// Stripe faults, in order; each replaces the previous one.
    pub stripe_faults: Vec<ScheduledFault>,
}

const CURRENCIES: [(&str, i64); 3] = [("usd", 50), ("eur", 50), ("jpy", 50)];

const REASONS: [Option<&str>; 4] = [
    None,
    Some("requested_by_customer"),
    Some("duplicate"),
    Some("fraudulent"),
];

fn capture(rng: &mut StdRng, amount: i64) -> Capture {
    // A part at least Stripe's minimum when the amount allows it, and always less than
    // all (an amount of 1 has no part: captured in full).
    let part = |rng: &mut StdRng| match amount {
        ..=1 => None,
        2..=50 => Some(rng.gen_range(1..amount)),
        _ => Some(rng.gen_range(50..amount)),
    };
    match rng.gen_range(0..100) {
        0..30 => Capture::Full,
        30..55 => part(rng).map_or(Capture::Full, Capture::Partial),
        55..67 => Capture::TwiceSameKey(if rng.gen_bool(0.5) { part(rng) } else { None }),
        67..77 => Capture::TwiceNewKey(if rng.gen_bool(0.5) { part(rng) } else { None }),
        77..85 => Capture::OverThenFull,
        _ => Capture::Never,
    }
}

/// The refund requests of a payment expected to capture `cap`.
fn refunds(rng: &mut StdRng, cap: i64) -> RefundPlan {
    let cap = cap.max(1);
    let part = |rng: &mut StdRng| if cap > 1 { rng.gen_range(1..cap) } else { 1 };
    let reason = |rng: &mut StdRng| REASONS[rng.gen_range(0..REASONS.len())];
    let one = |key, amount, reason| RefundRequest {
        key,
        amount,
        reason,
    };
    let kind = RefundKind::ALL[match rng.gen_range(0..100) {
        0..20 => 0,
        20..35 => 1,
        35..50 => 2,
        50..70 => 3,
        70..85 => 4,
        85..92 => 5,
        _ => 6,
    }];
    let rounds = match kind {
        RefundKind::Full => vec![vec![one(0, None, reason(rng))]],
        RefundKind::Partial => vec![vec![one(0, Some(part(rng)), reason(rng))]],
        RefundKind::PartialThenRest => vec![
            vec![one(0, Some(part(rng)), None)],
            vec![one(1, None, reason(rng))],
            vec![one(2, Some(1), None)],
        ],
        RefundKind::Concurrent => {
            // n parts of at least cap/(n-1) each (rounded up): together more than was
            // captured.
            let n: u8 = rng.gen_range(3..=6);
            let each = (cap + i64::from(n) - 2) / i64::from(n - 1);
            vec![
                (0..n)
                    .map(|k| {
                        let extra = rng.gen_range(0..=each / 4);
                        one(k, Some((each + extra).min(cap)), None)
                    })
                    .collect(),
            ]
        }
        RefundKind::SameKey => {
            let r = one(0, rng.gen_bool(0.5).then(|| part(rng)), reason(rng));
            vec![vec![r, r], vec![r]]
        }
        RefundKind::KeyReused => {
            let a = part(rng);
            vec![vec![one(0, Some(a), None)], vec![one(0, Some(a + 1), None)]]
        }
        RefundKind::Over => vec![
            vec![one(0, Some(cap + rng.gen_range(1..=cap)), None)],
            vec![one(1, Some(part(rng)), None)],
        ],
    };
    RefundPlan { kind, rounds }
}

fn customer(rng: &mut StdRng) -> Customer {
    match rng.gen_range(0..100) {
        0..30 => Customer::Pay,
        30..40 => Customer::DeclineThenPay,
        40..50 => Customer::Decline,
        50..60 => Customer::ThreeDs,
        60..65 => Customer::ThreeDsFail,
        65..75 => Customer::Processing,
        _ => Customer::Abandon,
    }
}

impl Plan {
    pub fn generate(seed: u64, s: Settings) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        // Captures and refunds draw from a generator of their own: a seed keeps naming the
        // same payments, customers and faults it named before they existed.
        let mut money = StdRng::seed_from_u64(seed ^ 0x4D4F_4E45_5921);
        let mut payments: Vec<PaymentScript> = (0..s.payments)
            .map(|n| {
                let (currency, min) = CURRENCIES[rng.gen_range(0..CURRENCIES.len())];
                PaymentScript {
                    n,
                    start_ms: rng.gen_range(0..s.load_ms.max(1)),
                    // Now and then below Stripe's minimum: Stripe refuses, the payment fails.
                    amount: if rng.gen_bool(0.03) {
                        rng.gen_range(1..min)
                    } else {
                        rng.gen_range(min..100_000)
                    },
                    currency,
                    retries: match rng.gen_range(0..100) {
                        0..60 => 0,
                        60..85 => 1,
                        _ => 2,
                    },
                    cancel: rng.gen_bool(0.15).then(|| match rng.gen_range(0..10) {
                        0..4 => Cancel::BeforePaying,
                        4..7 => Cancel::RacingRetry,
                        _ => Cancel::AfterPaying,
                    }),
                    customer: customer(&mut rng),
                    late_retry: rng.gen_bool(0.1),
                    capture: None,
                    refund_fail_card: false,
                    refunds: None,
                }
            })
            .collect();
        for p in &mut payments {
            p.capture = money.gen_bool(0.15).then(|| capture(&mut money, p.amount));
            // Mostly payments whose customer pays; now and then one that never succeeds
            // (409 `payment_not_refundable`).
            let wants = if p.pays() && p.capture != Some(Capture::Never) {
                0.3
            } else {
                0.03
            };
            if money.gen_bool(wants) {
                p.refunds = Some(refunds(&mut money, p.captured()));
                p.refund_fail_card = money.gen_bool(0.3);
            }
        }
        // One of each process fault, then extra ones, spread over the load phase.
        let mut kinds: Vec<FaultKind> = FaultKind::PROCESS.to_vec();
        kinds.extend(
            (0..s.extra_process_faults)
                .map(|_| FaultKind::PROCESS[rng.gen_range(0..FaultKind::PROCESS.len())]),
        );
        kinds.shuffle(&mut rng);
        let slot = s.load_ms / (kinds.len() as u64 + 1);
        let process_faults = kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| ScheduledFault {
                at_ms: slot * (i as u64 + 1) - rng.gen_range(0..slot.max(1) / 2),
                kind,
                hold_ms: rng.gen_range(0..3_000),
            })
            .collect();
        let mut stripe: Vec<FaultKind> = FaultKind::STRIPE.to_vec();
        stripe.shuffle(&mut rng);
        let slot = s.load_ms / 4;
        let stripe_faults = stripe
            .into_iter()
            .enumerate()
            .map(|(i, kind)| ScheduledFault {
                at_ms: slot * i as u64 + rng.gen_range(0..slot.max(1) / 2),
                kind,
                hold_ms: rng.gen_range(3_000..8_000).min(slot.max(1)),
            })
            .collect();
        Plan {
            seed,
            payments,
            process_faults,
            stripe_faults,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const S: Settings = Settings {
        payments: 2000,
        load_ms: 120_000,
        extra_process_faults: 5,
    };

    #[test]
    fn a_seed_names_one_plan() {
        assert_eq!(Plan::generate(7, S), Plan::generate(7, S));
        assert_ne!(Plan::generate(7, S), Plan::generate(8, S));
    }

    #[test]
    fn every_fault_kind_and_every_behaviour_occurs() {
        for seed in 0..20 {
            let p = Plan::generate(seed, S);
            let kinds: HashSet<FaultKind> = p
                .process_faults
                .iter()
                .chain(&p.stripe_faults)
                .map(|f| f.kind)
                .collect();
            assert_eq!(kinds.len(), 10, "seed {seed}: {kinds:?}");
            assert_eq!(p.process_faults.len(), 7 + 5);
            assert!(
                p.process_faults
                    .windows(2)
                    .all(|w| w[0].at_ms <= w[1].at_ms)
            );
            assert!(p.process_faults.iter().all(|f| f.at_ms < S.load_ms));
            let customers: HashSet<Customer> = p.payments.iter().map(|s| s.customer).collect();
            assert_eq!(customers.len(), 7, "seed {seed}");
            let cancels: HashSet<Cancel> = p.payments.iter().filter_map(|s| s.cancel).collect();
            assert_eq!(cancels.len(), 3, "seed {seed}");
            assert!(p.payments.iter().any(|s| s.late_retry));
            let captures: HashSet<&str> = p
                .payments
                .iter()
                .filter_map(|s| s.capture.map(Capture::kind))
                .collect();
            assert_eq!(captures.len(), 6, "seed {seed}: {captures:?}");
            let refunds: HashSet<RefundKind> = p
                .payments
                .iter()
                .filter_map(|s| s.refunds.as_ref().map(|r| r.kind))
                .collect();
            assert_eq!(refunds.len(), RefundKind::ALL.len(), "seed {seed}");
            assert!(
                p.payments
                    .iter()
                    .any(|s| s.refund_fail_card && s.refunds.is_some() && s.pays())
            );
            assert!(
                p.payments
                    .iter()
                    .any(|s| s.capture.is_some() && s.refunds.is_some() && s.pays())
            );
            assert!(
                p.payments.iter().any(|s| s.amount < 50),
                "some below Stripe's minimum"
            );
            assert!(
                p.payments
                    .iter()
                    .all(|s| s.start_ms < S.load_ms && s.amount > 0)
            );
        }
    }

    #[test]
    fn refunds_fit_their_kind() {
        for s in (0..5).flat_map(|seed| Plan::generate(seed, S).payments) {
            let s = &s;
            if let Some(
                Capture::Partial(a)
                | Capture::TwiceSameKey(Some(a))
                | Capture::TwiceNewKey(Some(a)),
            ) = s.capture
            {
                assert!(a >= 1 && a < s.amount, "{s:?}");
            }
            let Some(r) = &s.refunds else { continue };
            let cap = s.captured().max(1);
            let amounts = |round: &[RefundRequest]| -> i64 {
                round.iter().map(|q| q.amount.unwrap_or(cap)).sum()
            };
            assert!(
                r.rounds
                    .iter()
                    .flatten()
                    .all(|q| q.amount.is_none_or(|a| a >= 1))
            );
            match r.kind {
                RefundKind::Concurrent => {
                    assert_eq!(r.rounds.len(), 1);
                    let keys: HashSet<u8> = r.rounds[0].iter().map(|q| q.key).collect();
                    assert_eq!(keys.len(), r.rounds[0].len(), "distinct keys");
                    assert!(amounts(&r.rounds[0]) > cap, "{s:?}");
                }
                RefundKind::SameKey => {
                    assert!(r.rounds.iter().flatten().all(|q| *q == r.rounds[0][0]));
                    assert_eq!(r.rounds[0].len(), 2);
                }
                RefundKind::KeyReused => {
                    assert_eq!(r.rounds[0][0].key, r.rounds[1][0].key);
                    assert_ne!(r.rounds[0][0].amount, r.rounds[1][0].amount);
                }
                RefundKind::Over => assert!(amounts(&r.rounds[0]) > cap),
                _ => assert!(amounts(&r.rounds[0]) <= cap),
            }
        }
    }

    #[test]
    fn a_short_run_still_has_every_fault() {
        let p = Plan::generate(
            1,
            Settings {
                payments: 10,
                load_ms: 1_000,
                extra_process_faults: 0,
            },
        );
        assert_eq!(p.process_faults.len(), 7);
        assert_eq!(p.stripe_faults.len(), 3);
    }
}
