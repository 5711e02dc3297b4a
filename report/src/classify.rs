//! The heart of a reconciliation report: every payment of a window, ours and Stripe's,
//! put in exactly one class. Pure: the loaders fetch, this decides.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use paystream_core::{IntentView, PaymentId, PaymentStatus};
use paystream_db::payments::{Attention, Source};
use serde::{Deserialize, Serialize};

/// Our side of a payment, as the replica has it.
pub use paystream_db::replica::PaymentRow as Ours;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Matched,
    StatusMismatch,
    AmountMismatch,
    CurrencyMismatch,
    /// We hold a PaymentIntent id Stripe does not know.
    MissingAtStripe,
    /// A PaymentIntent carrying one of our payment ids that no row of ours points to.
    OrphanAtStripe,
    /// Pending longer than the SLA, whatever Stripe says.
    StuckPending,
    /// Stripe took the money after we said canceled or failed (now `succeeded`): listed,
    /// whatever its window, until an operator clears it.
    ChargedAfterCancel,
    /// Flagged for an operator for another reason (Stripe does not know its intent, or
    /// says a status we do not know): listed, whatever its window, until cleared.
    NeedsAttention,
    /// A webhook event naming a payment of ours that never matched one within the age
    /// bound (`ours` is the event id, `stripe` its type).
    OrphanedEvent,
}

impl Class {
    pub const ALL: [Class; 10] = [
        Class::Matched,
        Class::StatusMismatch,
        Class::AmountMismatch,
        Class::CurrencyMismatch,
        Class::MissingAtStripe,
        Class::OrphanAtStripe,
        Class::StuckPending,
        Class::ChargedAfterCancel,
        Class::NeedsAttention,
        Class::OrphanedEvent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Matched => "matched",
            Class::StatusMismatch => "status_mismatch",
            Class::AmountMismatch => "amount_mismatch",
            Class::CurrencyMismatch => "currency_mismatch",
            Class::MissingAtStripe => "missing_at_stripe",
            Class::OrphanAtStripe => "orphan_at_stripe",
            Class::StuckPending => "stuck_pending",
            Class::ChargedAfterCancel => "charged_after_cancel",
            Class::NeedsAttention => "needs_attention",
            Class::OrphanedEvent => "orphaned_event",
        }
    }

    /// Classes listed whatever the report's window (what waits for an operator): they can
    /// be long on a busy system, so screens cap them.
    pub fn outlives_windows(self) -> bool {
        matches!(
            self,
            Class::ChargedAfterCancel | Class::NeedsAttention | Class::OrphanedEvent
        )
    }

    /// The class of a payment flagged for an operator.
    pub fn of_attention(attention: Attention) -> Class {
        match attention {
            Attention::ChargedAfterCancel => Class::ChargedAfterCancel,
            Attention::UnknownAtStripe | Attention::UnknownStripeStatus => Class::NeedsAttention,
        }
    }
}

/// One discrepancy: what we say and what Stripe says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub class: Class,
    pub payment_id: Option<PaymentId>,
    pub intent_id: Option<String>,
    pub ours: Option<String>,
    pub stripe: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    /// What an operator should do about it, when that is not obvious from the class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Nearest-rank percentiles of time from creation to resolution, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: i64,
    pub p95_ms: i64,
    pub max_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classified {
    pub counts: BTreeMap<Class, u64>,
    /// Every payment not `matched`, ordered by class then creation.
    pub findings: Vec<Finding>,
    /// Final payments by who resolved them (api, webhook, poll, expiry, operator).
    pub resolved_by: BTreeMap<String, u64>,
    pub time_to_resolution: Option<Latency>,
}

impl Classified {
    pub fn discrepancies(&self) -> u64 {
        self.counts
            .iter()
            .filter(|(c, _)| **c != Class::Matched)
            .map(|(_, n)| n)
            .sum()
    }
}

fn percentile(sorted: &[i64], pct: usize) -> i64 {
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// Classifies `ours` (the window's payments) against `theirs` (Stripe's intents of the
/// window, plus any intent of ours fetched one by one because it fell outside it).
pub fn classify(
    ours: &[Ours],
    theirs: &[IntentView],
    now: DateTime<Utc>,
    stuck_after: chrono::Duration,
) -> Classified {
    let by_id: HashMap<&str, &IntentView> = theirs.iter().map(|i| (i.id.as_str(), i)).collect();
    let by_payment: HashMap<&str, &IntentView> = theirs
        .iter()
        .filter_map(|i| i.payment_id.as_deref().map(|p| (p, i)))
        .collect();
    let mut counts: BTreeMap<Class, u64> = Class::ALL.iter().map(|c| (*c, 0)).collect();
    let mut findings = Vec::new();
    let mut claimed: HashSet<&str> = HashSet::new();
    let mut resolved_by: BTreeMap<String, u64> = BTreeMap::new();
    let mut latencies = Vec::new();

    for p in ours {
        let pid = p.id.to_string();
        // The API may have died before storing the intent id: Stripe's metadata links it.
        let intent = match &p.intent {
            Some(pi) => by_id.get(pi.as_str()).copied(),
            None => by_payment.get(pid.as_str()).copied(),
        };
        if let Some(i) = intent {
            claimed.insert(i.id.as_str());
        }
        if p.status.is_final() {
            *resolved_by
                .entry(
                    p.resolution_source
                        .map_or("unknown", Source::as_str)
                        .to_owned(),
                )
                .or_default() += 1;
            if let Some(at) = p.resolved_at {
                latencies.push((at - p.created_at).num_milliseconds().max(0));
            }
        }
        let ours_status = p.status.as_str().to_owned();
        let stuck = p.status == PaymentStatus::Pending && now - p.created_at > stuck_after;
        let (class, ours_says, stripe_says) = match intent {
            _ if p.attention.is_some() => (
                p.attention
                    .map_or(Class::NeedsAttention, Class::of_attention),
                Some(ours_status.clone()),
                intent.map(|i| i.stripe_status.clone()),
            ),
            None if p.intent.is_some() => (Class::MissingAtStripe, p.intent.clone(), None),
            None if stuck => (Class::StuckPending, Some(ours_status.clone()), None),
            None => (Class::Matched, None, None),
            Some(i) if i.currency != p.currency => (
                Class::CurrencyMismatch,
                Some(p.currency.clone()),
                Some(i.currency.clone()),
            ),
            Some(i) if i.amount != p.amount => (
                Class::AmountMismatch,
                Some(p.amount.to_string()),
                Some(i.amount.to_string()),
            ),
            Some(i) if i.status() != Some(p.status) => (
                Class::StatusMismatch,
                Some(ours_status.clone()),
                Some(i.stripe_status.clone()),
            ),
            Some(i) if stuck => (
                Class::StuckPending,
                Some(ours_status.clone()),
                Some(i.stripe_status.clone()),
            ),
            Some(_) => (Class::Matched, None, None),
        };
        *counts.entry(class).or_default() += 1;
        if class != Class::Matched {
            findings.push(Finding {
                class,
                payment_id: Some(p.id),
                intent_id: intent.map(|i| i.id.clone()).or_else(|| p.intent.clone()),
                ours: ours_says,
                stripe: stripe_says,
                created_at: Some(p.created_at),
                note: p.attention.map(|a| a.action().to_owned()),
            });
        }
    }

    for i in theirs {
        // Only intents that say they are ours: others on the account are not our books.
        let Some(pid) = &i.payment_id else { continue };
        if claimed.contains(i.id.as_str()) {
            continue;
        }
        *counts.entry(Class::OrphanAtStripe).or_default() += 1;
        findings.push(Finding {
            class: Class::OrphanAtStripe,
            payment_id: pid.parse().ok(),
            intent_id: Some(i.id.clone()),
            ours: None,
            stripe: Some(i.stripe_status.clone()),
            created_at: DateTime::from_timestamp(i.created, 0),
            note: None,
        });
    }

    findings.sort_by_key(|f| (f.class, f.created_at));
    latencies.sort_unstable();
    let time_to_resolution = (!latencies.is_empty()).then(|| Latency {
        p50_ms: percentile(&latencies, 50),
        p95_ms: percentile(&latencies, 95),
        max_ms: *latencies.last().unwrap_or(&0),
    });
    Classified {
        counts,
        findings,
        resolved_by,
        time_to_resolution,
    }
}

/// Payments created and resolved in one slice of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub start: DateTime<Utc>,
    pub created: u64,
    pub resolved: u64,
}

/// The window cut into `n` equal slices, with how many payments were created and
/// resolved in each: what the HTML report charts.
pub fn timeline(
    ours: &[Ours],
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    n: usize,
) -> Vec<Bucket> {
    let n = n.max(1);
    let span_ms = (until - since).num_milliseconds().max(1);
    let slice = |t: DateTime<Utc>| -> Option<usize> {
        let off = (t - since).num_milliseconds();
        (0..span_ms).contains(&off).then(|| {
            usize::try_from(i128::from(off) * n as i128 / i128::from(span_ms)).unwrap_or(0)
        })
    };
    let mut buckets: Vec<Bucket> = (0..n)
        .map(|i| Bucket {
            start: since + chrono::Duration::milliseconds(span_ms * i as i64 / n as i64),
            created: 0,
            resolved: 0,
        })
        .collect();
    for p in ours {
        if let Some(i) = slice(p.created_at) {
            buckets[i].created += 1;
        }
        if let Some(i) = p.resolved_at.and_then(slice) {
            buckets[i].resolved += 1;
        }
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn ours(status: &str, intent: Option<&str>) -> Ours {
        Ours {
            id: PaymentId::generate(),
            intent: intent.map(str::to_owned),
            status: status.parse().unwrap(),
            amount: 1000,
            currency: "usd".into(),
            created_at: t0(),
            resolved_at: (status != "pending").then(|| t0() + chrono::Duration::seconds(3)),
            resolution_source: (status != "pending").then_some(Source::Webhook),
            attention: None,
        }
    }

    fn theirs(id: &str, status: &str, payment: &Ours) -> IntentView {
        IntentView {
            id: id.into(),
            stripe_status: status.into(),
            amount: payment.amount,
            currency: payment.currency.clone(),
            payment_id: Some(payment.id.to_string()),
            client_secret: None,
            last_error: None,
            created: t0().timestamp(),
        }
    }

    fn class_of(o: &[Ours], t: &[IntentView], now_after_s: i64) -> Vec<Class> {
        let c = classify(
            o,
            t,
            t0() + chrono::Duration::seconds(now_after_s),
            chrono::Duration::hours(1),
        );
        let mut classes: Vec<Class> = c.findings.iter().map(|f| f.class).collect();
        classes.extend(std::iter::repeat_n(
            Class::Matched,
            c.counts[&Class::Matched] as usize,
        ));
        classes
    }

    #[test]
    fn every_class() {
        let ok = ours("succeeded", Some("pi_ok"));
        let status = ours("pending", Some("pi_status"));
        let mut amount = ours("succeeded", Some("pi_amount"));
        let mut currency = ours("succeeded", Some("pi_cur"));
        let missing = ours("succeeded", Some("pi_missing"));
        let stuck = ours("pending", Some("pi_stuck"));
        let unlinked = ours("succeeded", None);
        let mut t = vec![
            theirs("pi_ok", "succeeded", &ok),
            theirs("pi_status", "succeeded", &status),
            theirs("pi_amount", "succeeded", &amount),
            theirs("pi_cur", "succeeded", &currency),
            theirs("pi_stuck", "requires_action", &stuck),
            theirs("pi_unlinked", "succeeded", &unlinked),
        ];
        amount.amount = 999;
        currency.currency = "eur".into();
        let orphan_of = ours("canceled", None);
        t.push(theirs("pi_orphan", "succeeded", &orphan_of));
        let mut charged = ours("succeeded", Some("pi_charged"));
        charged.attention = Some(Attention::ChargedAfterCancel);
        t.push(theirs("pi_charged", "succeeded", &charged));
        let mut unknown = ours("pending", Some("pi_unknown"));
        unknown.attention = Some(Attention::UnknownAtStripe);
        let o = [
            ok, status, amount, currency, missing, stuck, unlinked, charged, unknown,
        ];
        let mut got = class_of(&o, &t, 7200);
        got.sort();
        assert_eq!(
            got,
            [
                Class::Matched,
                Class::Matched,
                Class::StatusMismatch,
                Class::AmountMismatch,
                Class::CurrencyMismatch,
                Class::MissingAtStripe,
                Class::OrphanAtStripe,
                Class::StuckPending,
                Class::ChargedAfterCancel,
                Class::NeedsAttention
            ]
        );
        let young = class_of(&o, &t, 60);
        assert!(
            !young.contains(&Class::StuckPending),
            "within the SLA: {young:?}"
        );
    }

    #[test]
    fn resolutions_and_latency_percentiles() {
        let mut o: Vec<Ours> = (1..=100)
            .map(|i| {
                let mut p = ours("succeeded", None);
                p.resolved_at = Some(t0() + chrono::Duration::milliseconds(i * 10));
                p.resolution_source = Some(if i % 4 == 0 {
                    Source::Poll
                } else {
                    Source::Webhook
                });
                p
            })
            .collect();
        o.push(ours("pending", None));
        let c = classify(&o, &[], t0(), chrono::Duration::hours(1));
        assert_eq!(c.resolved_by["poll"], 25);
        assert_eq!(c.resolved_by["webhook"], 75);
        assert_eq!(
            c.time_to_resolution,
            Some(Latency {
                p50_ms: 500,
                p95_ms: 950,
                max_ms: 1000
            })
        );
        assert_eq!(c.discrepancies(), 0);
    }

    #[test]
    fn the_timeline_slices_the_window() {
        let mut early = ours("succeeded", None);
        early.resolved_at = Some(t0() + chrono::Duration::minutes(90));
        let mut late = ours("pending", None);
        late.created_at = t0() + chrono::Duration::minutes(179);
        let mut outside = ours("pending", None);
        outside.created_at = t0() + chrono::Duration::hours(5);
        let b = timeline(
            &[early, late, outside],
            t0(),
            t0() + chrono::Duration::hours(3),
            3,
        );
        assert_eq!(
            b.iter()
                .map(|b| (b.created, b.resolved))
                .collect::<Vec<_>>(),
            [(1, 0), (0, 1), (1, 0)]
        );
        assert_eq!(b[1].start, t0() + chrono::Duration::hours(1));
    }

    proptest! {
        /// Every payment of ours lands in exactly one class, and every intent that names
        /// one of our ids but is not claimed is one orphan.
        #[test]
        fn each_payment_is_counted_once(statuses in proptest::collection::vec((0_usize..4, 0_usize..6, any::<bool>()), 0..40)) {
            let names = ["pending", "succeeded", "failed", "canceled"];
            let stripe = ["requires_payment_method", "succeeded", "canceled", "processing", "requires_action", "mystery"];
            let mut o = Vec::new();
            let mut t = Vec::new();
            for (n, (ours_s, stripe_s, linked)) in statuses.iter().enumerate() {
                let pi = format!("pi_{n}");
                let p = ours(names[*ours_s], linked.then_some(pi.as_str()));
                if n % 3 != 0 {
                    t.push(theirs(&pi, stripe[*stripe_s], &p));
                }
                o.push(p);
            }
            let c = classify(&o, &t, t0() + chrono::Duration::hours(2), chrono::Duration::hours(1));
            let orphans = c.counts[&Class::OrphanAtStripe];
            let total: u64 = c.counts.values().sum();
            prop_assert_eq!(total - orphans, o.len() as u64);
            prop_assert_eq!(c.findings.len() as u64, c.discrepancies());
        }
    }
}
