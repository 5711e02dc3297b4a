//! What a chaos run does, decided up front from its seed: each payment's script (the
//! client's creates, retries and cancels, the customer's actions at Stripe) and the
//! schedule of faults. Pure, so a seed names a run; the real processes' timing is the
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
        let payments = (0..s.payments)
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
                }
            })
            .collect();
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
