//! The heart of a reconciliation report: every payment of a window, ours and Stripe's,
//! put in exactly one class, and so is every refund (`classify_refunds`). Pure: the
//! loaders fetch, this decides.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use paystream_core::{IntentView, PaymentId, PaymentStatus, RefundId, RefundStatus, RefundView};
use paystream_db::payments::{Attention, Source};
use serde::{Deserialize, Serialize};

/// Our side of a payment, as the replica has it.
pub use paystream_db::replica::PaymentRow as Ours;
/// Our side of a refund, and of a payment whose refunds are checked.
pub use paystream_db::replica::{RefundRow as OursRefund, RefundedPayment};

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
    /// A refund of ours that agrees with Stripe's (or is young and on its way).
    RefundMatched,
    /// Ours and Stripe's status of a linked refund differ (ours `pending` while Stripe's
    /// is final is in flight, not a mismatch, within the stuck threshold).
    RefundStatusMismatch,
    /// Ours and Stripe's amount (or currency) of a linked refund differ.
    RefundAmountMismatch,
    /// We hold a Stripe refund id Stripe does not know, or a refund is pending with no
    /// Stripe refund past the stuck threshold (or says succeeded with none).
    RefundMissingAtStripe,
    /// A Stripe refund whose `metadata.refund_id` names no refund of ours (or one that
    /// holds another Stripe refund), or on one of our PaymentIntents with no refund of
    /// ours pointing to it.
    RefundOrphanAtStripe,
    /// Pending, at Stripe too, longer than the SLA.
    RefundStuckPending,
    /// A refund flagged for an operator (it failed after it had succeeded, Stripe does
    /// not know it, or says a status we do not know): listed, whatever its window, until
    /// cleared.
    RefundNeedsAttention,
    /// A payment whose `amount_refunded` differs from the sum of its succeeded refunds at
    /// Stripe (`ours` and `stripe` are the two sums).
    RefundedAmountMismatch,
    /// Ours pending, Stripe's final, and ours changed (or was made) within the grace: its
    /// webhook is most likely on its way. Not a discrepancy; past the grace it is a
    /// `status_mismatch`.
    InFlight,
}

impl Class {
    pub const ALL: [Class; 19] = [
        Class::Matched,
        Class::InFlight,
        Class::StatusMismatch,
        Class::AmountMismatch,
        Class::CurrencyMismatch,
        Class::MissingAtStripe,
        Class::OrphanAtStripe,
        Class::StuckPending,
        Class::ChargedAfterCancel,
        Class::NeedsAttention,
        Class::OrphanedEvent,
        Class::RefundMatched,
        Class::RefundStatusMismatch,
        Class::RefundAmountMismatch,
        Class::RefundMissingAtStripe,
        Class::RefundOrphanAtStripe,
        Class::RefundStuckPending,
        Class::RefundNeedsAttention,
        Class::RefundedAmountMismatch,
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
            Class::RefundMatched => "refund_matched",
            Class::RefundStatusMismatch => "refund_status_mismatch",
            Class::RefundAmountMismatch => "refund_amount_mismatch",
            Class::RefundMissingAtStripe => "refund_missing_at_stripe",
            Class::RefundOrphanAtStripe => "refund_orphan_at_stripe",
            Class::RefundStuckPending => "refund_stuck_pending",
            Class::RefundNeedsAttention => "refund_needs_attention",
            Class::RefundedAmountMismatch => "refunded_amount_mismatch",
            Class::InFlight => "in_flight",
        }
    }

    /// Whether this class is a discrepancy (every class but the two `matched` ones and
    /// `in_flight`).
    pub fn is_discrepancy(self) -> bool {
        !matches!(
            self,
            Class::Matched | Class::RefundMatched | Class::InFlight
        )
    }

    /// Whether a finding of this class is about one refund (its `refund_id` or
    /// `stripe_refund_id` names it) rather than a payment.
    pub fn is_refund(self) -> bool {
        matches!(
            self,
            Class::RefundMatched
                | Class::RefundStatusMismatch
                | Class::RefundAmountMismatch
                | Class::RefundMissingAtStripe
                | Class::RefundOrphanAtStripe
                | Class::RefundStuckPending
                | Class::RefundNeedsAttention
        )
    }

    /// Classes listed whatever the report's window (what waits for an operator): they can
    /// be long on a busy system, so screens cap them.
    pub fn outlives_windows(self) -> bool {
        matches!(
            self,
            Class::ChargedAfterCancel
                | Class::NeedsAttention
                | Class::OrphanedEvent
                | Class::RefundNeedsAttention
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
    /// The refund of ours a refund finding is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<RefundId>,
    /// Stripe's refund a refund finding is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe_refund_id: Option<String>,
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
            .filter(|(c, _)| c.is_discrepancy())
            .map(|(_, n)| n)
            .sum()
    }
}

fn percentile(sorted: &[i64], pct: usize) -> i64 {
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// How a report judges time: `now`, when a pending payment is stuck, and how long a
/// payment that just changed may lag behind Stripe before that counts.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub now: DateTime<Utc>,
    pub stuck_after: chrono::Duration,
    pub grace: chrono::Duration,
}

/// Classifies `ours` (the window's payments) against `theirs` (Stripe's intents of the
/// window, plus any intent of ours fetched one by one because it fell outside it).
pub fn classify(ours: &[Ours], theirs: &[IntentView], rules: Rules) -> Classified {
    let mut tally = Tally::default();
    classify_into(&mut tally, ours, theirs, rules);
    tally.finish()
}

/// `classify`, into a tally that may hold other payments of the report already (a large
/// window's part compared through a report file).
pub fn classify_into(tally: &mut Tally, ours: &[Ours], theirs: &[IntentView], rules: Rules) {
    let Rules {
        now,
        stuck_after,
        grace,
    } = rules;
    let by_id: HashMap<&str, &IntentView> = theirs.iter().map(|i| (i.id.as_str(), i)).collect();
    let by_payment: HashMap<&str, &IntentView> = theirs
        .iter()
        .filter_map(|i| i.payment_id.as_deref().map(|p| (p, i)))
        .collect();
    let mut claimed: HashSet<&str> = HashSet::new();

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
            Some(i)
                if p.status == PaymentStatus::Pending
                    && i.status().is_some_and(PaymentStatus::is_final)
                    && now - p.updated_at.max(p.created_at) < grace =>
            {
                (
                    Class::InFlight,
                    Some(ours_status.clone()),
                    Some(i.stripe_status.clone()),
                )
            }
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
        tally.count(p, class, || Finding {
            class,
            payment_id: Some(p.id),
            intent_id: intent.map(|i| i.id.clone()).or_else(|| p.intent.clone()),
            ours: ours_says,
            stripe: stripe_says,
            created_at: Some(p.created_at),
            note: p.attention.map(|a| a.action().to_owned()),
            refund_id: None,
            stripe_refund_id: None,
        });
    }

    for i in theirs {
        // Only intents that say they are ours: others on the account are not our books.
        let Some(pid) = &i.payment_id else { continue };
        if claimed.contains(i.id.as_str()) {
            continue;
        }
        tally.count_outside(
            Class::OrphanAtStripe,
            Finding {
                class: Class::OrphanAtStripe,
                payment_id: pid.parse().ok(),
                intent_id: Some(i.id.clone()),
                ours: None,
                stripe: Some(i.stripe_status.clone()),
                created_at: DateTime::from_timestamp(i.created, 0),
                note: None,
                refund_id: None,
                stripe_refund_id: None,
            },
        );
    }
}

/// A report's counts, findings and resolution figures, built one payment at a time (a
/// window of a million payments is never held whole).
#[derive(Debug, Default)]
pub struct Tally {
    counts: BTreeMap<Class, u64>,
    findings: Vec<Finding>,
    resolved_by: BTreeMap<String, u64>,
    latencies: Vec<i64>,
}

impl Tally {
    /// One payment of the window, put in `class`; its finding is made only when the class
    /// is not `matched`.
    pub fn count(&mut self, p: &Ours, class: Class, finding: impl FnOnce() -> Finding) {
        if p.status.is_final() {
            *self
                .resolved_by
                .entry(
                    p.resolution_source
                        .map_or("unknown", Source::as_str)
                        .to_owned(),
                )
                .or_default() += 1;
            if let Some(at) = p.resolved_at {
                self.latencies
                    .push((at - p.created_at).num_milliseconds().max(0));
            }
        }
        *self.counts.entry(class).or_default() += 1;
        if class != Class::Matched {
            self.findings.push(finding());
        }
    }

    /// A finding that is no payment of the window (an orphan, a payment outside it).
    pub fn count_outside(&mut self, class: Class, finding: Finding) {
        *self.counts.entry(class).or_default() += 1;
        self.findings.push(finding);
    }

    pub fn finish(mut self) -> Classified {
        for c in Class::ALL {
            self.counts.entry(c).or_default();
        }
        self.findings.sort_by_key(|f| (f.class, f.created_at));
        self.latencies.sort_unstable();
        let l = &self.latencies;
        let time_to_resolution = (!l.is_empty()).then(|| Latency {
            p50_ms: percentile(l, 50),
            p95_ms: percentile(l, 95),
            max_ms: *l.last().unwrap_or(&0),
        });
        Classified {
            counts: self.counts,
            findings: self.findings,
            resolved_by: self.resolved_by,
            time_to_resolution,
        }
    }
}

/// Classifies refunds into `c`: each of `ours` (our refunds checked, see
/// `replica::refund_books`) in exactly one refund class, each Stripe refund of `theirs`
/// that says it is ours (`metadata.refund_id`) or sits on one of `payments`' intents and
/// that no refund of ours claims as one orphan, and each of `payments` whose
/// `amount_refunded` differs from the sum of its succeeded refunds at Stripe as one
/// `refunded_amount_mismatch`.
///
/// Young refunds in flight (ours `pending`, Stripe's final, within `stuck_after`) are
/// neither a status mismatch nor counted in Stripe's sum: ours has not heard yet.
pub fn classify_refunds(
    c: &mut Classified,
    ours: &[OursRefund],
    theirs: &[RefundView],
    payments: &[RefundedPayment],
    now: DateTime<Utc>,
    stuck_after: chrono::Duration,
) {
    // A refund listed twice (the window's list and an intent's) is one refund.
    let mut seen: HashSet<&str> = HashSet::new();
    let theirs: Vec<&RefundView> = theirs.iter().filter(|s| seen.insert(&s.id)).collect();
    let by_id: HashMap<&str, &RefundView> = theirs.iter().map(|s| (s.id.as_str(), *s)).collect();
    let mut by_ours: HashMap<&str, &RefundView> = HashMap::new();
    for s in &theirs {
        if let Some(rid) = s.refund_id.as_deref() {
            by_ours.entry(rid).or_insert(s);
        }
    }
    let ours_by_id: HashMap<String, &OursRefund> =
        ours.iter().map(|r| (r.id.to_string(), r)).collect();
    let our_intents: HashMap<&str, &RefundedPayment> = payments
        .iter()
        .filter_map(|p| p.intent.as_deref().map(|pi| (pi, p)))
        .collect();
    let mut claimed: HashSet<&str> = HashSet::new();
    let mut in_flight: HashSet<&str> = HashSet::new();
    let add = |c: &mut Classified, class: Class, f: Option<Finding>| {
        *c.counts.entry(class).or_default() += 1;
        c.findings.extend(f);
    };

    for r in ours {
        let rid = r.id.to_string();
        // The API may have died before storing Stripe's id: the metadata links it.
        let stripe = match &r.stripe_refund_id {
            Some(id) => by_id.get(id.as_str()).copied(),
            None => by_ours.get(rid.as_str()).copied(),
        };
        if let Some(s) = stripe {
            claimed.insert(s.id.as_str());
        }
        let old = now - r.created_at > stuck_after;
        let status = r.status.as_str().to_owned();
        let (class, ours_says, stripe_says) = match stripe {
            _ if r.attention.is_some() => (
                Class::RefundNeedsAttention,
                Some(status),
                stripe.map(|s| s.stripe_status.clone()),
            ),
            None if r.stripe_refund_id.is_some() => (
                Class::RefundMissingAtStripe,
                r.stripe_refund_id.clone(),
                None,
            ),
            None if (r.status == RefundStatus::Pending && old)
                || r.status == RefundStatus::Succeeded =>
            {
                (Class::RefundMissingAtStripe, Some(status), None)
            }
            // Young and not sent yet, or refused before Stripe made one: nothing to see.
            None => (Class::RefundMatched, None, None),
            Some(s) if s.amount != r.amount || s.currency != r.currency => (
                Class::RefundAmountMismatch,
                Some(format!("{} {}", r.amount, r.currency)),
                Some(format!("{} {}", s.amount, s.currency)),
            ),
            Some(s) => match s.status() {
                Some(st) if st == r.status && st == RefundStatus::Pending && old => (
                    Class::RefundStuckPending,
                    Some(status),
                    Some(s.stripe_status.clone()),
                ),
                Some(st) if st == r.status => (Class::RefundMatched, None, None),
                Some(st) if r.status == RefundStatus::Pending && st.is_final() && !old => {
                    in_flight.insert(s.id.as_str());
                    (Class::RefundMatched, None, None)
                }
                _ => (
                    Class::RefundStatusMismatch,
                    Some(status),
                    Some(s.stripe_status.clone()),
                ),
            },
        };
        let finding = (class != Class::RefundMatched).then(|| Finding {
            class,
            payment_id: Some(r.payment_id),
            intent_id: r
                .intent
                .clone()
                .or_else(|| stripe.and_then(|s| s.payment_intent.clone())),
            ours: ours_says,
            stripe: stripe_says,
            created_at: Some(r.created_at),
            note: r.attention.map(|a| a.action().to_owned()),
            refund_id: Some(r.id),
            stripe_refund_id: stripe
                .map(|s| s.id.clone())
                .or_else(|| r.stripe_refund_id.clone()),
        });
        add(c, class, finding);
    }

    for s in &theirs {
        if claimed.contains(s.id.as_str()) {
            continue;
        }
        let named = s.refund_id.as_deref().and_then(|id| ours_by_id.get(id));
        let payment = s
            .payment_intent
            .as_deref()
            .and_then(|pi| our_intents.get(pi));
        // Only refunds that say they are ours or refund our payments: others on the
        // account are not our books.
        if s.refund_id.is_none() && payment.is_none() {
            continue;
        }
        let note = match (named, s.refund_id.as_deref()) {
            (Some(r), _) => Some(format!(
                "a second Stripe refund for refund {} (which holds {})",
                r.id,
                r.stripe_refund_id.as_deref().unwrap_or("none")
            )),
            (None, Some(_)) => Some("its metadata.refund_id names no refund of ours".to_owned()),
            (None, None) => {
                Some("made outside Paystream (no metadata.refund_id): in Stripe's dashboard or by another system".to_owned())
            }
        };
        add(
            c,
            Class::RefundOrphanAtStripe,
            Some(Finding {
                class: Class::RefundOrphanAtStripe,
                payment_id: payment
                    .map(|p| p.id)
                    .or_else(|| named.map(|r| r.payment_id)),
                intent_id: s.payment_intent.clone(),
                ours: None,
                stripe: Some(format!("{} {} {}", s.stripe_status, s.amount, s.currency)),
                created_at: DateTime::from_timestamp(s.created, 0),
                note,
                refund_id: s.refund_id.as_deref().and_then(|id| id.parse().ok()),
                stripe_refund_id: Some(s.id.clone()),
            }),
        );
    }

    for p in payments {
        let at_stripe: i64 = p.intent.as_deref().map_or(0, |pi| {
            theirs
                .iter()
                .filter(|s| s.payment_intent.as_deref() == Some(pi))
                .filter(|s| s.status() == Some(RefundStatus::Succeeded))
                .filter(|s| !in_flight.contains(s.id.as_str()))
                .map(|s| s.amount)
                .sum()
        });
        if at_stripe == p.amount_refunded {
            continue;
        }
        add(
            c,
            Class::RefundedAmountMismatch,
            Some(Finding {
                class: Class::RefundedAmountMismatch,
                payment_id: Some(p.id),
                intent_id: p.intent.clone(),
                ours: Some(format!("{} {}", p.amount_refunded, p.currency)),
                stripe: Some(format!("{at_stripe} {}", p.currency)),
                created_at: Some(p.created_at),
                note: None,
                refund_id: None,
                stripe_refund_id: None,
            }),
        );
    }
    c.findings.sort_by_key(|f| (f.class, f.created_at));
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
    let mut t = Timeline::new(since, until, n);
    for p in ours {
        t.add(p);
    }
    t.finish()
}

/// `timeline`, one payment at a time.
#[derive(Debug)]
pub struct Timeline {
    since: DateTime<Utc>,
    span_ms: i64,
    buckets: Vec<Bucket>,
}

impl Timeline {
    pub fn new(since: DateTime<Utc>, until: DateTime<Utc>, n: usize) -> Self {
        let n = n.max(1);
        let span_ms = (until - since).num_milliseconds().max(1);
        let buckets = (0..n)
            .map(|i| Bucket {
                start: since + chrono::Duration::milliseconds(span_ms * i as i64 / n as i64),
                created: 0,
                resolved: 0,
            })
            .collect();
        Timeline {
            since,
            span_ms,
            buckets,
        }
    }

    fn slice(&self, t: DateTime<Utc>) -> Option<usize> {
        let off = (t - self.since).num_milliseconds();
        let n = self.buckets.len() as i128;
        (0..self.span_ms)
            .contains(&off)
            .then(|| usize::try_from(i128::from(off) * n / i128::from(self.span_ms)).unwrap_or(0))
    }

    pub fn add(&mut self, p: &Ours) {
        if let Some(i) = self.slice(p.created_at) {
            self.buckets[i].created += 1;
        }
        if let Some(i) = p.resolved_at.and_then(|t| self.slice(t)) {
            self.buckets[i].resolved += 1;
        }
    }

    pub fn finish(self) -> Vec<Bucket> {
        self.buckets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_db::refunds::RefundAttention;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    /// The defaults: stuck after an hour, two minutes of grace.
    fn rules(now: DateTime<Utc>) -> Rules {
        Rules {
            now,
            stuck_after: chrono::Duration::hours(1),
            grace: chrono::Duration::minutes(2),
        }
    }

    fn ours(status: &str, intent: Option<&str>) -> Ours {
        Ours {
            updated_at: t0(),
            id: PaymentId::generate(),
            intent: intent.map(str::to_owned),
            status: status.parse().unwrap(),
            amount: 1000,
            amount_captured: (status == "succeeded").then_some(1000),
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
            amount_capturable: 0,
            amount_received: payment.amount,
        }
    }

    /// A refund of ours of 500 usd on its own intent, created at `t0`.
    fn refund(status: &str, stripe_id: Option<&str>) -> OursRefund {
        let id = RefundId::generate();
        let final_ = status != "pending";
        OursRefund {
            id,
            payment_id: PaymentId::generate(),
            intent: Some(format!("pi_for_{}", id.as_uuid().simple())),
            stripe_refund_id: stripe_id.map(str::to_owned),
            status: status.parse().unwrap(),
            amount: 500,
            currency: "usd".into(),
            created_at: t0(),
            resolved_at: final_.then(|| t0() + chrono::Duration::seconds(2)),
            resolution_source: final_.then_some(Source::Webhook),
            attention: None,
        }
    }

    /// Stripe's side of `r`, linked by `metadata.refund_id`.
    fn stripe_refund(id: &str, status: &str, r: &OursRefund) -> RefundView {
        RefundView {
            id: id.into(),
            stripe_status: status.into(),
            amount: r.amount,
            currency: r.currency.clone(),
            payment_intent: r.intent.clone(),
            refund_id: Some(r.id.to_string()),
            failure_reason: None,
            created: r.created_at.timestamp(),
        }
    }

    fn refunded(intent: &str, amount_refunded: i64) -> RefundedPayment {
        RefundedPayment {
            id: PaymentId::generate(),
            intent: Some(intent.into()),
            currency: "usd".into(),
            created_at: t0(),
            amount_refunded,
        }
    }

    /// The refund classes found, `refund_matched` included once per matched refund.
    fn refund_classes(
        o: &[OursRefund],
        t: &[RefundView],
        p: &[RefundedPayment],
        now_after_s: i64,
    ) -> (Vec<Class>, Classified) {
        let mut c = classify(&[], &[], rules(t0()));
        classify_refunds(
            &mut c,
            o,
            t,
            p,
            t0() + chrono::Duration::seconds(now_after_s),
            chrono::Duration::hours(1),
        );
        let mut classes: Vec<Class> = c.findings.iter().map(|f| f.class).collect();
        classes.extend(std::iter::repeat_n(
            Class::RefundMatched,
            c.counts[&Class::RefundMatched] as usize,
        ));
        classes.sort();
        (classes, c)
    }

    fn class_of(o: &[Ours], t: &[IntentView], now_after_s: i64) -> Vec<Class> {
        let c = classify(o, t, rules(t0() + chrono::Duration::seconds(now_after_s)));
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
        assert!(
            young.contains(&Class::InFlight) && !young.contains(&Class::StatusMismatch),
            "pending here, succeeded at Stripe a minute after it was made: its webhook is on its way: {young:?}"
        );
    }

    /// The grace counts from our row's last change: a payment made long ago that changed
    /// a moment ago (Stripe's `processing`, say) is in flight; one that has not changed
    /// for longer than the grace is a mismatch; in flight is never a discrepancy.
    #[test]
    fn in_flight_lasts_the_grace_from_our_last_change() {
        let mut moved = ours("pending", Some("pi_moved"));
        moved.updated_at = t0() + chrono::Duration::minutes(59);
        let t = [theirs("pi_moved", "succeeded", &moved)];
        let at = |min: i64| {
            classify(
                std::slice::from_ref(&moved),
                &t,
                rules(t0() + chrono::Duration::minutes(min)),
            )
        };
        let soon = at(60);
        assert_eq!(soon.counts[&Class::InFlight], 1);
        assert_eq!(soon.discrepancies(), 0);
        let late = at(62);
        assert_eq!(late.counts[&Class::StatusMismatch], 1);
        assert_eq!(late.discrepancies(), 1);
        let none = classify(
            std::slice::from_ref(&moved),
            &t,
            Rules {
                grace: chrono::Duration::zero(),
                ..rules(t0() + chrono::Duration::minutes(60))
            },
        );
        assert_eq!(
            none.counts[&Class::StatusMismatch],
            1,
            "no grace, no in flight"
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
        let c = classify(&o, &[], rules(t0()));
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

    #[test]
    fn every_refund_class() {
        let ok = refund("succeeded", Some("re_ok"));
        let status = refund("failed", Some("re_status"));
        let amount = refund("succeeded", Some("re_amount"));
        let missing = refund("pending", Some("re_missing"));
        let unsent = refund("pending", None);
        let stuck = refund("pending", Some("re_stuck"));
        let mut flagged = refund("failed", Some("re_flagged"));
        flagged.attention = Some(RefundAttention::FailedAfterSuccess);
        // Stored no Stripe id (the API died), found through the metadata.
        let unlinked = refund("succeeded", None);
        let refused = refund("failed", None);
        let mut t = vec![
            stripe_refund("re_ok", "succeeded", &ok),
            stripe_refund("re_status", "succeeded", &status),
            RefundView {
                amount: 499,
                ..stripe_refund("re_amount", "succeeded", &amount)
            },
            stripe_refund("re_stuck", "requires_action", &stuck),
            stripe_refund("re_flagged", "failed", &flagged),
            stripe_refund("re_unlinked", "succeeded", &unlinked),
        ];
        // Says it is ours; no refund of ours has that id.
        let stranger = refund("succeeded", None);
        t.push(stripe_refund("re_orphan", "succeeded", &stranger));
        // On one of our payments, made outside Paystream.
        let ours_pi = refunded("pi_ours", 0);
        t.push(RefundView {
            payment_intent: Some("pi_ours".into()),
            refund_id: None,
            amount: 300,
            ..stripe_refund("re_dashboard", "succeeded", &stranger)
        });
        // Not ours at all: another system's refund on another intent.
        t.push(RefundView {
            payment_intent: Some("pi_elsewhere".into()),
            refund_id: None,
            ..stripe_refund("re_elsewhere", "succeeded", &stranger)
        });
        let o = [
            ok, status, amount, missing, unsent, stuck, flagged, unlinked, refused,
        ];
        let (got, c) = refund_classes(&o, &t, std::slice::from_ref(&ours_pi), 7200);
        assert_eq!(
            got,
            [
                Class::RefundMatched,
                Class::RefundMatched,
                Class::RefundMatched,
                Class::RefundStatusMismatch,
                Class::RefundAmountMismatch,
                Class::RefundMissingAtStripe,
                Class::RefundMissingAtStripe,
                Class::RefundOrphanAtStripe,
                Class::RefundOrphanAtStripe,
                Class::RefundStuckPending,
                Class::RefundNeedsAttention,
                Class::RefundedAmountMismatch,
            ]
        );
        assert_eq!(c.discrepancies(), 9, "refund_matched is no discrepancy");
        let find = |class: Class, stripe_id: &str| {
            c.findings
                .iter()
                .find(|f| f.class == class && f.stripe_refund_id.as_deref() == Some(stripe_id))
                .unwrap_or_else(|| panic!("{class:?} {stripe_id}: {:#?}", c.findings))
        };
        let f = find(Class::RefundAmountMismatch, "re_amount");
        assert_eq!(
            (f.ours.as_deref(), f.stripe.as_deref(), f.refund_id),
            (Some("500 usd"), Some("499 usd"), Some(o[2].id))
        );
        let f = find(Class::RefundStatusMismatch, "re_status");
        assert_eq!(
            (f.ours.as_deref(), f.stripe.as_deref()),
            (Some("failed"), Some("succeeded"))
        );
        assert_eq!(
            find(Class::RefundMissingAtStripe, "re_missing")
                .ours
                .as_deref(),
            Some("re_missing")
        );
        assert!(
            c.findings
                .iter()
                .any(|f| f.class == Class::RefundMissingAtStripe
                    && f.refund_id == Some(o[4].id)
                    && f.stripe_refund_id.is_none()),
            "pending with no Stripe refund past the threshold"
        );
        assert_eq!(
            find(Class::RefundStuckPending, "re_stuck")
                .stripe
                .as_deref(),
            Some("requires_action")
        );
        let f = find(Class::RefundNeedsAttention, "re_flagged");
        assert_eq!(
            f.note.as_deref(),
            Some(RefundAttention::FailedAfterSuccess.action())
        );
        let f = find(Class::RefundOrphanAtStripe, "re_orphan");
        assert_eq!(f.refund_id, Some(stranger.id));
        let f = find(Class::RefundOrphanAtStripe, "re_dashboard");
        assert_eq!(
            (f.payment_id, f.intent_id.as_deref(), f.refund_id),
            (Some(ours_pi.id), Some("pi_ours"), None)
        );
        let f = c
            .findings
            .iter()
            .find(|f| f.class == Class::RefundedAmountMismatch)
            .unwrap();
        assert_eq!(
            (f.payment_id, f.ours.as_deref(), f.stripe.as_deref()),
            (Some(ours_pi.id), Some("0 usd"), Some("300 usd"))
        );
        assert!(
            !c.findings
                .iter()
                .any(|f| f.stripe_refund_id.as_deref() == Some("re_elsewhere")),
            "refunds of intents not ours are not our books"
        );
    }

    #[test]
    fn young_refunds_in_flight_are_no_discrepancy_until_the_threshold() {
        // Ours pending while Stripe is final: the webhook or poll has not landed yet.
        let done = refund("pending", Some("re_done"));
        let failed = refund("pending", Some("re_failed"));
        let unsent = refund("pending", None);
        let waiting = refund("pending", Some("re_waiting"));
        let t = [
            stripe_refund("re_done", "succeeded", &done),
            stripe_refund("re_failed", "failed", &failed),
            stripe_refund("re_waiting", "pending", &waiting),
        ];
        let intent = done.intent.clone().unwrap();
        let p = [refunded(&intent, 0)];
        let o = [done, failed, unsent, waiting];
        let (young, c) = refund_classes(&o, &t, &p, 60);
        assert_eq!(young, [Class::RefundMatched; 4], "{:#?}", c.findings);
        let (old, _) = refund_classes(&o, &t, &p, 7200);
        assert_eq!(
            old,
            [
                Class::RefundStatusMismatch,
                Class::RefundStatusMismatch,
                Class::RefundMissingAtStripe,
                Class::RefundStuckPending,
                Class::RefundedAmountMismatch,
            ],
            "past the threshold, a succeeded refund we still call pending is missing from amount_refunded"
        );
    }

    #[test]
    fn each_payments_refunded_sum_is_checked_against_stripes() {
        // Agrees: 500 succeeded on both sides, 200 in flight (not counted on either side),
        // a failed one counted on neither, listed twice at Stripe.
        let a1 = refund("succeeded", Some("re_a1"));
        let mut a2 = refund("pending", Some("re_a2"));
        let mut a3 = refund("failed", Some("re_a3"));
        a2.intent = a1.intent.clone();
        a3.intent = a1.intent.clone();
        a2.amount = 200;
        a2.created_at = t0() + chrono::Duration::minutes(119);
        // Disagrees: we say 700 went back, Stripe says 500 (one of ours failed there).
        let b1 = refund("succeeded", Some("re_b1"));
        let mut b2 = refund("succeeded", Some("re_b2"));
        b2.intent = b1.intent.clone();
        b2.amount = 200;
        let t = [
            stripe_refund("re_a1", "succeeded", &a1),
            stripe_refund("re_a1", "succeeded", &a1),
            stripe_refund("re_a2", "succeeded", &a2),
            stripe_refund("re_a3", "failed", &a3),
            stripe_refund("re_b1", "succeeded", &b1),
            stripe_refund("re_b2", "failed", &b2),
        ];
        let mut no_intent = refunded("-", 0);
        no_intent.intent = None;
        let p = [
            refunded(a1.intent.as_deref().unwrap(), 500),
            refunded(b1.intent.as_deref().unwrap(), 700),
            no_intent,
        ];
        let (got, c) = refund_classes(&[a1, a2, a3, b1, b2], &t, &p, 7200);
        assert_eq!(
            got,
            [
                Class::RefundMatched,
                Class::RefundMatched,
                Class::RefundMatched,
                Class::RefundMatched,
                Class::RefundStatusMismatch,
                Class::RefundedAmountMismatch,
            ],
            "{:#?}",
            c.findings
        );
        let f = c.findings.last().unwrap();
        assert_eq!(
            (f.payment_id, f.ours.as_deref(), f.stripe.as_deref()),
            (Some(p[1].id), Some("700 usd"), Some("500 usd"))
        );
    }

    proptest! {
        /// Every refund of ours lands in exactly one refund class, whatever either side
        /// says; orphans and refunded sums are counted on their own.
        #[test]
        fn each_refund_is_counted_once(refunds in proptest::collection::vec((0_usize..4, 0_usize..6, 0_usize..3, any::<bool>(), 0i64..3), 0..30), now_s in 0i64..10_000) {
            let names = ["pending", "succeeded", "failed", "canceled"];
            let stripe = ["pending", "succeeded", "failed", "canceled", "requires_action", "mystery"];
            let mut o = Vec::new();
            let mut t = Vec::new();
            for (n, (ours_s, stripe_s, link, same_amount, age_h)) in refunds.iter().enumerate() {
                let id = format!("re_{n}");
                let mut r = refund(names[*ours_s], (*link == 0).then_some(id.as_str()));
                r.created_at = t0() - chrono::Duration::hours(*age_h);
                let mut s = stripe_refund(&id, stripe[*stripe_s], &r);
                if !same_amount {
                    s.amount += 1;
                }
                if *link != 2 {
                    t.push(s);
                }
                o.push(r);
            }
            let mut c = classify(&[], &[], rules(t0()));
            classify_refunds(&mut c, &o, &t, &[], t0() + chrono::Duration::seconds(now_s), chrono::Duration::hours(1));
            let per_refund: u64 = c.counts.iter().filter(|(k, _)| k.is_refund() && **k != Class::RefundOrphanAtStripe).map(|(_, n)| n).sum();
            prop_assert_eq!(per_refund, o.len() as u64);
            prop_assert_eq!(c.counts[&Class::RefundOrphanAtStripe], 0, "every Stripe refund here is claimed");
            prop_assert_eq!(c.findings.len() as u64, c.discrepancies());
        }
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
            let c = classify(&o, &t, rules(t0() + chrono::Duration::hours(2)));
            let orphans = c.counts[&Class::OrphanAtStripe];
            let total: u64 = c.counts.values().sum();
            prop_assert_eq!(total - orphans, o.len() as u64);
            prop_assert_eq!(c.findings.len() as u64, c.discrepancies());
        }
    }
}
