//! The invariants (docs/invariants.md), checked over everything a run left behind: our
//! rows and histories, Stripe's own state, the output topics, and what clients were told.
//! I1 to I5 are the payments'; R1 to R4 the refunds' and captures'.
//! Pure: the collectors fetch, this judges. Each check is shown to fail on bad evidence
//! in the tests below.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub from: Option<String>,
    pub to: String,
    pub detail: Option<Value>,
}

/// One of our payments, from the primary.
#[derive(Debug, Clone, PartialEq)]
pub struct Ours {
    pub id: Uuid,
    pub key: String,
    pub status: String,
    pub intent: Option<String>,
    pub attention: Option<String>,
    pub history: Vec<HistoryRow>,
    pub amount: i64,
    pub capture_method: String,
    /// Set once it succeeded (less than `amount` after a partial capture).
    pub amount_captured: Option<i64>,
    pub amount_refunded: i64,
}

impl Ours {
    /// What we say Stripe took: nothing unless it succeeded, then what was captured.
    pub fn captured(&self) -> i64 {
        if self.status == "succeeded" {
            self.amount_captured.unwrap_or(self.amount)
        } else {
            0
        }
    }
}

/// One PaymentIntent, from Stripe's (stripe-sim's) own state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Theirs {
    pub id: String,
    pub status: String,
    pub payment_id: Option<String>,
    pub amount: i64,
    pub amount_received: i64,
    /// `expired` (`automatic` before API version 2025-03-31.basil): Stripe canceled an
    /// authorization left uncaptured for 7 days.
    pub cancellation_reason: Option<String>,
}

/// One of our refunds, from the primary.
#[derive(Debug, Clone, PartialEq)]
pub struct OurRefund {
    pub id: Uuid,
    pub payment_id: Uuid,
    pub key: String,
    pub amount: i64,
    pub status: String,
    pub stripe_refund_id: Option<String>,
    pub attention: Option<String>,
    pub history: Vec<HistoryRow>,
}

/// One Refund, from Stripe's own state. Every one should carry a `refund_id` of ours:
/// nothing else refunds in a chaos run, and Stripe makes no refund when it releases an
/// authorization (a cancel, an expiry, the rest of a partial capture) since API version
/// 2025-03-31.basil.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TheirRefund {
    pub id: String,
    pub payment_intent: Option<String>,
    pub amount: i64,
    pub status: String,
    /// `metadata.refund_id`: ours.
    pub refund_id: Option<String>,
}

/// A refund an answer named, for the request that got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedRefund {
    pub id: Uuid,
    pub amount: i64,
    /// The amount the request asked for (none: everything left).
    pub requested: Option<i64>,
}

/// A capture answered 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToldCapture {
    pub requested: Option<i64>,
    pub captured: i64,
}

/// What a client was told about its payment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Told {
    pub key: String,
    pub payment_id: Option<Uuid>,
    /// Intents whose client secret it received.
    pub secrets_for: BTreeSet<String>,
    /// A cancel answered 200 `canceled`.
    pub canceled: bool,
    /// The refunds its answers named, by refund idempotency key.
    pub refunds: BTreeMap<String, Vec<NamedRefund>>,
    pub captures: Vec<ToldCapture>,
}

/// An HTTP answer a client got, for I5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub at_ms: u64,
    /// 0: no answer (connection refused or reset).
    pub status: u16,
    pub code: Option<String>,
    pub what: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub ours: Vec<Ours>,
    pub theirs: Vec<Theirs>,
    /// Statuses published to `payment-status-update`, per payment.
    pub published: HashMap<Uuid, Vec<String>>,
    pub told: Vec<Told>,
    pub answers: Vec<Answer>,
    /// [start, end) of every injected process fault (plus its recovery), ms into the run.
    pub fault_windows: Vec<(u64, u64)>,
    pub refunds: Vec<OurRefund>,
    pub their_refunds: Vec<TheirRefund>,
    /// Statuses published to `refund-status-update`, per refund.
    pub refunds_published: HashMap<Uuid, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub payment: Option<Uuid>,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.payment {
            Some(p) => write!(f, "{} {p}: {}", self.invariant, self.detail),
            None => write!(f, "{}: {}", self.invariant, self.detail),
        }
    }
}

const OPEN_AT_STRIPE: [&str; 5] = [
    "requires_payment_method",
    "requires_confirmation",
    "requires_action",
    "processing",
    "requires_capture",
];

fn open(status: &str) -> bool {
    OPEN_AT_STRIPE.contains(&status)
}

/// Slack around a process fault's window: a request sent just before a kill is answered
/// (or not) just after it.
const FAULT_GRACE_MS: u64 = 3_000;
/// ...and after it, that plus nginx's `fail_timeout` (5 s, nginx/nginx.conf): an API
/// instance that answered 3 errors (503 `database_unavailable` while the primary
/// restarts counts) stays out of the upstream that long, and with both out nginx
/// answers 502 after the fault itself is over.
const FAULT_TAIL_MS: u64 = FAULT_GRACE_MS + 5_000;

/// 503 codes that describe a dependency the client can wait for, by contract.
const RETRYABLE_503: [&str; 2] = ["processor_unavailable", "database_unavailable"];

pub fn check(e: &Evidence) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut bad = |invariant: &'static str, payment: Option<Uuid>, detail: String| {
        v.push(Violation {
            invariant,
            payment,
            detail,
        })
    };
    let mut by_payment: HashMap<&str, Vec<&Theirs>> = HashMap::new();
    for t in &e.theirs {
        if let Some(p) = &t.payment_id {
            by_payment.entry(p.as_str()).or_default().push(t);
        }
    }
    let intents: HashMap<&str, &Theirs> = e.theirs.iter().map(|t| (t.id.as_str(), t)).collect();
    let ours: HashMap<Uuid, &Ours> = e.ours.iter().map(|o| (o.id, o)).collect();

    for o in &e.ours {
        let pid = o.id.to_string();
        let theirs = by_payment.get(pid.as_str()).cloned().unwrap_or_default();
        let id = Some(o.id);
        // I1: money truth wins; nothing chargeable for what we canceled or failed.
        if theirs.iter().any(|t| t.status == "succeeded") && o.status != "succeeded" {
            bad(
                "I1",
                id,
                format!("Stripe took the money, ours says {}", o.status),
            );
        }
        if matches!(o.status.as_str(), "canceled" | "failed") {
            for t in theirs.iter().filter(|t| open(&t.status)) {
                bad(
                    "I1",
                    id,
                    format!(
                        "ours is {}, yet {} is chargeable ({})",
                        o.status, t.id, t.status
                    ),
                );
            }
        }
        let overturned = o.history.iter().any(|h| {
            h.to == "succeeded" && matches!(h.from.as_deref(), Some("canceled" | "failed"))
        });
        if overturned {
            let said_why = o.history.iter().any(|h| {
                h.to == "succeeded"
                    && h.detail
                        .as_ref()
                        .is_some_and(|d| d.get("overturned").is_some())
            });
            if o.attention.as_deref() != Some("charged_after_cancel") || !said_why {
                bad(
                    "I1",
                    id,
                    "charged after cancel, but not flagged with its reason".into(),
                );
            }
        }
        // The history is the machine's: pending first, then final statuses only, and a
        // final status is left only for `succeeded` (money truth).
        match o.history.first() {
            Some(h) if h.from.is_none() && h.to == "pending" => {}
            other => bad(
                "I4",
                id,
                format!("history does not start pending: {other:?}"),
            ),
        }
        for h in o.history.iter().skip(1) {
            let from_final = h.from.as_deref().is_some_and(|f| f != "pending");
            if h.to == "pending"
                || (from_final && h.to != "succeeded")
                || h.from.as_deref() == Some("succeeded")
            {
                bad(
                    "I4",
                    id,
                    format!("illegal transition {:?} -> {}", h.from, h.to),
                );
            }
        }
        // I2: at most one chargeable intent, and it is ours.
        let live: Vec<&&Theirs> = theirs.iter().filter(|t| t.status != "canceled").collect();
        if live.len() > 1 {
            bad(
                "I2",
                id,
                format!(
                    "{} intents not canceled: {:?}",
                    live.len(),
                    live.iter().map(|t| &t.id).collect::<Vec<_>>()
                ),
            );
        }
        if let Some(t) = live.first()
            && o.intent.as_deref() != Some(t.id.as_str())
        {
            bad(
                "I2",
                id,
                format!(
                    "Stripe's live intent {} is not the one we hold ({:?})",
                    t.id, o.intent
                ),
            );
        }
        if let Some(pi) = &o.intent {
            match intents.get(pi.as_str()) {
                None => {
                    if o.attention.as_deref() != Some("unknown_at_stripe") {
                        bad(
                            "I4",
                            id,
                            format!("we hold {pi}, which Stripe does not know, unflagged"),
                        );
                    }
                }
                Some(t) if t.payment_id.as_deref() != Some(pid.as_str()) => {
                    bad(
                        "I2",
                        id,
                        format!(
                            "we hold {pi}, which is another payment's ({:?})",
                            t.payment_id
                        ),
                    );
                }
                // I4: final, and equal to Stripe's final word.
                Some(t) => {
                    let stripe_final = matches!(t.status.as_str(), "succeeded" | "canceled");
                    if stripe_final && t.status != o.status && o.attention.is_none() {
                        bad("I4", id, format!("ours {}, Stripe {}", o.status, t.status));
                    }
                }
            }
        }
        if o.status == "pending" && o.attention.is_none() {
            bad(
                "I4",
                id,
                "still pending and not flagged for an operator".into(),
            );
        }
        // I3: every final status reached the topic.
        if o.status != "pending" {
            let sent = e.published.get(&o.id).cloned().unwrap_or_default();
            if !sent.contains(&o.status) {
                bad(
                    "I3",
                    id,
                    format!("{} never published (published: {sent:?})", o.status),
                );
            }
            let reached: HashSet<&str> = o.history.iter().map(|h| h.to.as_str()).collect();
            for s in sent.iter().filter(|s| !reached.contains(s.as_str())) {
                bad("I3", id, format!("published {s}, which it never was"));
            }
        }
    }

    // I2 from the client's side: every secret handed out for a payment is its one intent.
    let by_key: HashMap<&str, &Ours> = e.ours.iter().map(|o| (o.key.as_str(), o)).collect();
    for t in &e.told {
        let Some(pid) = t.payment_id else { continue };
        let Some(o) = ours.get(&pid) else {
            bad(
                "I4",
                Some(pid),
                format!("the client was told of {pid}, which we do not have"),
            );
            continue;
        };
        if by_key.get(t.key.as_str()).map(|o| o.id) != Some(pid) {
            bad(
                "I2",
                Some(pid),
                format!("key {} names another payment", t.key),
            );
        }
        if t.secrets_for.len() > 1 {
            bad(
                "I2",
                Some(pid),
                format!(
                    "client secrets of {} intents handed out: {:?}",
                    t.secrets_for.len(),
                    t.secrets_for
                ),
            );
        }
        for s in &t.secrets_for {
            if o.intent.as_deref() != Some(s.as_str()) {
                bad(
                    "I2",
                    Some(pid),
                    format!(
                        "a client secret of {s} was handed out; ours holds {:?}",
                        o.intent
                    ),
                );
            }
        }
        if t.canceled
            && o.status != "canceled"
            && o.attention.as_deref() != Some("charged_after_cancel")
        {
            bad(
                "I1",
                Some(pid),
                format!("the client was told canceled; it is {}", o.status),
            );
        }
    }

    // I5: nothing from outside produces a 500; other 5xx only from injected faults.
    let in_fault = |at: u64| {
        e.fault_windows
            .iter()
            .any(|(s, end)| at + FAULT_GRACE_MS >= *s && at <= end + FAULT_TAIL_MS)
    };
    for a in &e.answers {
        let allowed_503 = a.status == 503
            && a.code
                .as_deref()
                .is_some_and(|c| RETRYABLE_503.contains(&c));
        let fine = match a.status {
            500 => false,
            0 | 502 | 504 => in_fault(a.at_ms),
            503 => allowed_503 || in_fault(a.at_ms),
            s => s < 500,
        };
        if !fine {
            bad(
                "I5",
                None,
                format!(
                    "{} answered {} ({:?}) at {} ms, outside any fault",
                    a.what, a.status, a.code, a.at_ms
                ),
            );
        }
        // R4: refunds and captures answer only what they document.
        if matches!(a.what, "refund" | "capture") {
            let ok = match a.status {
                500 => false,
                0 | 502 | 503 | 504 if in_fault(a.at_ms) => true,
                s => documented(a.what, s, a.code.as_deref()),
            };
            if !ok {
                bad(
                    "R4",
                    None,
                    format!(
                        "{} answered {} ({:?}) at {} ms, which it does not document",
                        a.what, a.status, a.code, a.at_ms
                    ),
                );
            }
        }
    }
    check_refunds(e, &mut bad);
    v
}

/// The answers `POST /v1/payments/{id}/refunds` and `.../capture` document (the others
/// every route may give: 429, and 503 for a dependency the client can wait for).
fn documented(what: &str, status: u16, code: Option<&str>) -> bool {
    let is = |codes: &[&str]| code.is_some_and(|c| codes.contains(&c));
    match (what, status) {
        (_, 429) => true,
        (_, 503) => is(&RETRYABLE_503),
        ("refund", 200 | 201) | ("capture", 200) => true,
        ("refund", 202) => is(&["processor_unavailable"]),
        ("refund", 409) => is(&["payment_not_refundable", "idempotency_key_in_use"]),
        ("refund", 422) => is(&[
            "refund_exceeds_remaining",
            "processor_rejected",
            "idempotency_key_reused",
        ]),
        ("capture", 409) => is(&["payment_not_capturable", "idempotency_key_in_use"]),
        ("capture", 422) => is(&["capture_exceeds_authorized", "idempotency_key_reused"]),
        _ => false,
    }
}

/// Whether a Stripe refund holds money (`pending` or `succeeded`; `requires_action`
/// would too).
fn holds(status: &str) -> bool {
    !matches!(status, "failed" | "canceled")
}

/// R1 to R3 (R4 is with I5, over the answers).
fn check_refunds(e: &Evidence, bad: &mut impl FnMut(&'static str, Option<Uuid>, String)) {
    let ours: HashMap<Uuid, &Ours> = e.ours.iter().map(|o| (o.id, o)).collect();
    let intents: HashMap<&str, &Theirs> = e.theirs.iter().map(|t| (t.id.as_str(), t)).collect();
    let refunds: HashMap<Uuid, &OurRefund> = e.refunds.iter().map(|r| (r.id, r)).collect();
    let mut of_payment: HashMap<Uuid, Vec<&OurRefund>> = HashMap::new();
    for r in &e.refunds {
        of_payment.entry(r.payment_id).or_default().push(r);
    }
    let theirs_by_id: HashMap<&str, &TheirRefund> =
        e.their_refunds.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut of_intent: HashMap<&str, Vec<&TheirRefund>> = HashMap::new();
    let mut carrying: HashMap<&str, Vec<&TheirRefund>> = HashMap::new();
    for t in &e.their_refunds {
        if let Some(pi) = &t.payment_intent {
            of_intent.entry(pi.as_str()).or_default().push(t);
        }
        if let Some(rid) = &t.refund_id {
            carrying.entry(rid.as_str()).or_default().push(t);
        }
    }
    let payment_of_intent = |pi: &str| {
        intents
            .get(pi)
            .and_then(|t| t.payment_id.as_deref())
            .and_then(|p| Uuid::parse_str(p).ok())
    };

    for o in &e.ours {
        let id = Some(o.id);
        let mine = of_payment.get(&o.id).map(Vec::as_slice).unwrap_or_default();
        // R1: what our refunds hold fits in what was captured.
        let held: i64 = mine
            .iter()
            .filter(|r| matches!(r.status.as_str(), "pending" | "succeeded"))
            .map(|r| r.amount)
            .sum();
        if held > o.captured() {
            bad(
                "R1",
                id,
                format!(
                    "its refunds hold {held}; it captured {} ({})",
                    o.captured(),
                    o.status
                ),
            );
        }
        // R3: the payment's refunded sum is its succeeded refunds', ours and Stripe's.
        let succeeded: i64 = mine
            .iter()
            .filter(|r| r.status == "succeeded")
            .map(|r| r.amount)
            .sum();
        if o.amount_refunded != succeeded {
            bad(
                "R3",
                id,
                format!(
                    "amount_refunded {}, its succeeded refunds {succeeded}",
                    o.amount_refunded
                ),
            );
        }
        let Some(t) = o.intent.as_deref().and_then(|pi| intents.get(pi)) else {
            continue;
        };
        let at_stripe: i64 = of_intent
            .get(t.id.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|x| x.refund_id.is_some() && x.status == "succeeded")
            .map(|x| x.amount)
            .sum();
        if o.amount_refunded != at_stripe {
            bad(
                "R3",
                id,
                format!(
                    "amount_refunded {}, succeeded at Stripe {at_stripe}",
                    o.amount_refunded
                ),
            );
        }
        // R3, captures: what we say was captured is what Stripe received.
        if o.status == "succeeded" && o.captured() != t.amount_received {
            bad(
                "R3",
                id,
                format!(
                    "amount_captured {}, Stripe received {} ({})",
                    o.captured(),
                    t.amount_received,
                    o.capture_method
                ),
            );
        }
    }

    // R1 at Stripe: our refunds within what it received. R2: a refund that is not ours is
    // money moved that no books of ours account for.
    for t in &e.theirs {
        let list = of_intent
            .get(t.id.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let pid = t
            .payment_id
            .as_deref()
            .and_then(|p| Uuid::parse_str(p).ok());
        let held: i64 = list
            .iter()
            .filter(|x| x.refund_id.is_some() && holds(&x.status))
            .map(|x| x.amount)
            .sum();
        if held > t.amount_received {
            bad(
                "R1",
                pid,
                format!(
                    "Stripe holds {held} in refunds of {}, which received {}",
                    t.id, t.amount_received
                ),
            );
        }
        for x in list.iter().filter(|x| x.refund_id.is_none()) {
            bad(
                "R2",
                pid,
                format!(
                    "Stripe refund {} of {} ({} {}) carries no refund_id of ours",
                    x.id, t.id, x.amount, x.status
                ),
            );
        }
    }

    // R2: one Stripe refund per refund of ours, linked both ways, for the same money.
    for (rid, list) in &carrying {
        let pid = Uuid::parse_str(rid)
            .ok()
            .and_then(|r| refunds.get(&r))
            .map(|r| r.payment_id);
        if list.len() > 1 {
            bad(
                "R2",
                pid,
                format!(
                    "{} Stripe refunds carry refund {rid}: {:?}",
                    list.len(),
                    list.iter().map(|x| &x.id).collect::<Vec<_>>()
                ),
            );
        }
        for x in list {
            let pi_payment = x.payment_intent.as_deref().and_then(payment_of_intent);
            let Some(r) = Uuid::parse_str(rid).ok().and_then(|r| refunds.get(&r)) else {
                bad(
                    "R2",
                    pi_payment,
                    format!("{} carries refund {rid}, which we do not have", x.id),
                );
                continue;
            };
            let id = Some(r.payment_id);
            if r.stripe_refund_id.as_deref() != Some(x.id.as_str()) {
                bad(
                    "R2",
                    id,
                    format!(
                        "refund {rid} holds {:?}, not {}, which carries it",
                        r.stripe_refund_id, x.id
                    ),
                );
            }
            if r.amount != x.amount {
                bad(
                    "R2",
                    id,
                    format!("refund {rid} is {}, {} is {}", r.amount, x.id, x.amount),
                );
            }
            if pi_payment != Some(r.payment_id) {
                bad(
                    "R2",
                    id,
                    format!(
                        "refund {rid} is at Stripe as {} of {:?}, another payment's",
                        x.id, x.payment_intent
                    ),
                );
            }
        }
    }

    for r in &e.refunds {
        let id = Some(r.payment_id);
        let theirs = r
            .stripe_refund_id
            .as_deref()
            .map(|s| (s, theirs_by_id.get(s)));
        match theirs {
            Some((s, None)) if r.attention.as_deref() != Some("unknown_at_stripe") => bad(
                "R2",
                id,
                format!("refund {} holds {s}, which Stripe does not know", r.id),
            ),
            Some((s, Some(x))) if x.refund_id.as_deref() != Some(r.id.to_string().as_str()) => bad(
                "R2",
                id,
                format!(
                    "refund {} holds {s}, which carries refund {:?}",
                    r.id, x.refund_id
                ),
            ),
            // R3: final, and Stripe's word.
            Some((s, Some(x))) if x.status != r.status && r.attention.is_none() => bad(
                "R3",
                id,
                format!("refund {} is {}, {s} is {}", r.id, r.status, x.status),
            ),
            None if r.status == "succeeded" => bad(
                "R3",
                id,
                format!("refund {} succeeded without a Stripe refund", r.id),
            ),
            _ => {}
        }
        if r.status == "pending" && r.attention.is_none() {
            bad(
                "R3",
                id,
                format!("refund {} still pending and not flagged", r.id),
            );
        }
        match r.history.first() {
            Some(h) if h.from.is_none() && h.to == "pending" => {}
            other => bad(
                "R3",
                id,
                format!("refund {} history does not start pending: {other:?}", r.id),
            ),
        }
        for h in r.history.iter().skip(1) {
            let from_final = h.from.as_deref().is_some_and(|f| f != "pending");
            let legal = h.to != "pending"
                && (!from_final || (h.from.as_deref() == Some("succeeded") && h.to == "failed"));
            if !legal {
                bad(
                    "R3",
                    id,
                    format!(
                        "refund {}: illegal transition {:?} -> {}",
                        r.id, h.from, h.to
                    ),
                );
            }
        }
        if r.status != "pending" {
            let sent = e.refunds_published.get(&r.id).cloned().unwrap_or_default();
            if !sent.contains(&r.status) {
                bad(
                    "R3",
                    id,
                    format!(
                        "refund {} {} never published (published: {sent:?})",
                        r.id, r.status
                    ),
                );
            }
            let reached: HashSet<&str> = r.history.iter().map(|h| h.to.as_str()).collect();
            for s in sent.iter().filter(|s| !reached.contains(s.as_str())) {
                bad(
                    "R3",
                    id,
                    format!("refund {} published {s}, which it never was", r.id),
                );
            }
        }
    }

    // What clients were told: a key names one refund, ours, of the amount asked; a
    // capture's amount is what was captured.
    for t in &e.told {
        let Some(pid) = t.payment_id else { continue };
        for (key, named) in &t.refunds {
            let ids: BTreeSet<Uuid> = named.iter().map(|n| n.id).collect();
            if ids.len() > 1 {
                bad(
                    "R2",
                    Some(pid),
                    format!("refund key {key} named {} refunds: {ids:?}", ids.len()),
                );
            }
            for n in named {
                let Some(r) = refunds.get(&n.id) else {
                    bad(
                        "R2",
                        Some(pid),
                        format!(
                            "the client was told of refund {}, which we do not have",
                            n.id
                        ),
                    );
                    continue;
                };
                if r.payment_id != pid || r.key != *key || r.amount != n.amount {
                    bad(
                        "R2",
                        Some(pid),
                        format!(
                            "told refund {} of {} under {key}; it is {} of {} under {}",
                            n.id, n.amount, r.payment_id, r.amount, r.key
                        ),
                    );
                }
                if n.requested.is_some_and(|a| a != n.amount) {
                    bad(
                        "R2",
                        Some(pid),
                        format!(
                            "asked to refund {:?} under {key}, told refund {} of {}",
                            n.requested, n.id, n.amount
                        ),
                    );
                }
            }
        }
        let Some(o) = ours.get(&pid) else { continue };
        for c in &t.captures {
            let asked = c.requested.unwrap_or(o.amount);
            if c.captured != asked || c.captured != o.captured() {
                bad(
                    "R3",
                    Some(pid),
                    format!(
                        "a capture of {asked} was told {} captured; it captured {}",
                        c.captured,
                        o.captured()
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn h(from: Option<&str>, to: &str) -> HistoryRow {
        HistoryRow {
            from: from.map(str::to_owned),
            to: to.into(),
            detail: None,
        }
    }

    /// One payment that went right: authorized for 1000, 600 captured (Stripe released
    /// the other 400, making no refund of it), 400 of it refunded; published, told one
    /// secret, its capture and its refund.
    fn good() -> (Evidence, Uuid) {
        let id = Uuid::now_v7();
        let refund = Uuid::now_v7();
        let e = Evidence {
            ours: vec![Ours {
                id,
                key: "k1".into(),
                status: "succeeded".into(),
                intent: Some("pi_1".into()),
                attention: None,
                history: vec![h(None, "pending"), h(Some("pending"), "succeeded")],
                amount: 1000,
                capture_method: "manual".into(),
                amount_captured: Some(600),
                amount_refunded: 400,
            }],
            theirs: vec![Theirs {
                id: "pi_1".into(),
                status: "succeeded".into(),
                payment_id: Some(id.to_string()),
                amount: 1000,
                amount_received: 600,
                cancellation_reason: None,
            }],
            published: [(id, vec!["succeeded".into()])].into(),
            told: vec![Told {
                key: "k1".into(),
                payment_id: Some(id),
                secrets_for: ["pi_1".to_owned()].into(),
                canceled: false,
                refunds: [(
                    "rk1".to_owned(),
                    vec![NamedRefund {
                        id: refund,
                        amount: 400,
                        requested: Some(400),
                    }],
                )]
                .into(),
                captures: vec![ToldCapture {
                    requested: Some(600),
                    captured: 600,
                }],
            }],
            answers: vec![
                Answer {
                    at_ms: 10,
                    status: 201,
                    code: None,
                    what: "create",
                },
                Answer {
                    at_ms: 20,
                    status: 200,
                    code: None,
                    what: "capture",
                },
                Answer {
                    at_ms: 30,
                    status: 201,
                    code: None,
                    what: "refund",
                },
            ],
            fault_windows: vec![(1_000, 2_000)],
            refunds: vec![OurRefund {
                id: refund,
                payment_id: id,
                key: "rk1".into(),
                amount: 400,
                status: "succeeded".into(),
                stripe_refund_id: Some("re_1".into()),
                attention: None,
                history: vec![h(None, "pending"), h(Some("pending"), "succeeded")],
            }],
            their_refunds: vec![TheirRefund {
                id: "re_1".into(),
                payment_intent: Some("pi_1".into()),
                amount: 400,
                status: "succeeded".into(),
                refund_id: Some(refund.to_string()),
            }],
            refunds_published: [(refund, vec!["succeeded".into()])].into(),
        };
        (e, id)
    }

    /// The same payment automatic and never refunded, for the payments' own invariants.
    fn no_money(e: &mut Evidence) {
        e.refunds.clear();
        e.their_refunds.clear();
        e.refunds_published.clear();
        e.told[0].refunds.clear();
        e.told[0].captures.clear();
        e.ours[0].capture_method = "automatic".into();
        e.ours[0].amount_captured = Some(1000);
        e.ours[0].amount_refunded = 0;
        e.theirs[0].amount_received = 1000;
    }

    fn invariants(e: &Evidence) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = check(e).iter().map(|v| v.invariant).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    #[test]
    fn a_good_run_has_no_violation() {
        let (e, _) = good();
        assert_eq!(check(&e), []);
    }

    #[test]
    fn i1_money_taken_but_ours_canceled() {
        let (mut e, _) = good();
        e.ours[0].status = "canceled".into();
        e.ours[0].history[1].to = "canceled".into();
        e.published
            .values_mut()
            .for_each(|p| *p = vec!["canceled".into()]);
        assert!(invariants(&e).contains(&"I1"), "{:?}", check(&e));
    }

    #[test]
    fn i1_a_chargeable_intent_for_a_canceled_payment() {
        let (mut e, id) = good();
        e.ours[0].status = "canceled".into();
        e.ours[0].history[1].to = "canceled".into();
        e.published.insert(id, vec!["canceled".into()]);
        e.theirs[0].status = "requires_payment_method".into();
        assert!(invariants(&e).contains(&"I1"), "{:?}", check(&e));
    }

    #[test]
    fn i1_an_overturn_must_be_flagged_and_explained() {
        let (mut e, id) = good();
        e.ours[0].history = vec![
            h(None, "pending"),
            h(Some("pending"), "canceled"),
            h(Some("canceled"), "succeeded"),
        ];
        e.published
            .insert(id, vec!["canceled".into(), "succeeded".into()]);
        assert_eq!(invariants(&e), ["I1"]);
        e.ours[0].attention = Some("charged_after_cancel".into());
        e.ours[0].history[2].detail = Some(json!({"overturned": "canceled"}));
        assert_eq!(check(&e), []);
        e.told[0].canceled = true;
        assert_eq!(
            check(&e),
            [],
            "told canceled, then charged anyway: flagged, allowed"
        );
        e.ours[0].attention = None;
        assert!(invariants(&e).contains(&"I1"));
    }

    #[test]
    fn i2_two_live_intents_or_a_foreign_secret() {
        let (mut e, id) = good();
        e.theirs.push(Theirs {
            id: "pi_2".into(),
            status: "requires_payment_method".into(),
            payment_id: Some(id.to_string()),
            amount: 1000,
            amount_received: 0,
            cancellation_reason: None,
        });
        assert_eq!(invariants(&e), ["I2"]);
        let (mut e, _) = good();
        e.told[0].secrets_for.insert("pi_9".into());
        assert_eq!(invariants(&e), ["I2"]);
        let (mut e, _) = good();
        e.theirs[0].payment_id = Some(Uuid::nil().to_string());
        assert!(invariants(&e).contains(&"I2"));
    }

    #[test]
    fn i3_a_final_status_never_published_or_a_phantom_one() {
        let (mut e, id) = good();
        e.published.remove(&id);
        assert_eq!(invariants(&e), ["I3"]);
        let (mut e, id) = good();
        e.published
            .insert(id, vec!["succeeded".into(), "failed".into()]);
        assert_eq!(invariants(&e), ["I3"]);
    }

    #[test]
    fn i4_pending_unflagged_disagreeing_or_illegal_history() {
        let (mut e, id) = good();
        no_money(&mut e);
        e.theirs[0].amount_received = 0;
        e.ours[0].amount_captured = None;
        e.ours[0].status = "pending".into();
        e.ours[0].history.pop();
        e.theirs[0].status = "requires_action".into();
        e.published.remove(&id);
        assert_eq!(invariants(&e), ["I4"]);
        e.ours[0].attention = Some("unknown_stripe_status".into());
        assert_eq!(check(&e), [], "flagged for an operator is an allowed end");
        let (mut e, _) = good();
        e.theirs[0].status = "canceled".into();
        assert!(
            invariants(&e).contains(&"I4"),
            "ours succeeded, Stripe canceled"
        );
        let (mut e, _) = good();
        e.ours[0].history.push(h(Some("succeeded"), "canceled"));
        assert!(invariants(&e).contains(&"I4"));
        let (mut e, _) = good();
        e.theirs.clear();
        assert!(
            invariants(&e).contains(&"I4"),
            "Stripe does not know our intent"
        );
        let (mut e, _) = good();
        e.told[0].payment_id = Some(Uuid::now_v7());
        assert!(
            invariants(&e).contains(&"I4"),
            "a payment the client was told of is missing"
        );
    }

    #[test]
    fn i5_a_500_ever_or_another_5xx_outside_faults() {
        let at = |at_ms, status, code: Option<&str>| Answer {
            at_ms,
            status,
            code: code.map(str::to_owned),
            what: "create",
        };
        for (a, ok) in [
            (at(1_500, 502, None), true),
            (at(500, 0, None), true),
            (at(9_000, 502, None), true),
            (at(12_000, 502, None), false),
            (at(12_000, 0, None), false),
            (at(12_000, 503, Some("processor_unavailable")), true),
            (at(12_000, 503, Some("surprise")), false),
            (at(1_500, 500, None), false),
            (at(12_000, 429, Some("rate_limited")), true),
        ] {
            let (mut e, _) = good();
            e.answers.push(a.clone());
            assert_eq!(check(&e).is_empty(), ok, "{a:?}");
        }
    }

    #[test]
    fn the_payment_fixtures_pass_without_money_too() {
        let (mut e, _) = good();
        no_money(&mut e);
        assert_eq!(check(&e), []);
    }

    #[test]
    fn r1_our_refunds_hold_more_than_was_captured() {
        let (mut e, id) = good();
        e.refunds.push(OurRefund {
            id: Uuid::now_v7(),
            payment_id: id,
            key: "rk2".into(),
            amount: 300,
            status: "pending".into(),
            stripe_refund_id: None,
            attention: Some("unknown_at_stripe".into()),
            history: vec![h(None, "pending")],
        });
        assert_eq!(invariants(&e), ["R1"], "{:?}", check(&e));
        e.refunds[1].amount = 200;
        assert_eq!(check(&e), [], "600 captured, 400 + 200 held");
        // A payment that never succeeded holds nothing.
        let (mut e, _) = good();
        no_money(&mut e);
        e.refunds = good().0.refunds;
        e.refunds[0].payment_id = e.ours[0].id;
        e.refunds[0].status = "pending".into();
        e.refunds[0].stripe_refund_id = None;
        e.refunds[0].attention = Some("unknown_at_stripe".into());
        e.refunds[0].history.pop();
        e.ours[0].status = "failed".into();
        e.ours[0].history[1].to = "failed".into();
        e.theirs[0].status = "canceled".into();
        e.theirs[0].amount_received = 0;
        e.published.insert(e.ours[0].id, vec!["failed".into()]);
        assert!(invariants(&e).contains(&"R1"), "{:?}", check(&e));
    }

    #[test]
    fn r1_stripe_refunds_more_than_it_received() {
        let (mut e, _) = good();
        e.theirs[0].amount_received = 300;
        assert!(invariants(&e).contains(&"R1"), "{:?}", check(&e));
        let (mut e, _) = good();
        e.their_refunds[0].status = "failed".into();
        e.their_refunds.push(TheirRefund {
            status: "pending".into(),
            amount: 700,
            id: "re_9".into(),
            ..e.their_refunds[0].clone()
        });
        assert!(invariants(&e).contains(&"R1"), "{:?}", check(&e));
    }

    #[test]
    fn r2_two_stripe_refunds_for_one_of_ours_or_none_linked() {
        let (mut e, _) = good();
        e.their_refunds.push(TheirRefund {
            id: "re_2".into(),
            status: "failed".into(),
            ..e.their_refunds[0].clone()
        });
        assert_eq!(invariants(&e), ["R2"], "{:?}", check(&e));
        let (mut e, _) = good();
        e.refunds[0].stripe_refund_id = None;
        assert!(
            invariants(&e).contains(&"R2"),
            "Stripe's refund is not linked"
        );
        let (mut e, _) = good();
        e.their_refunds[0].refund_id = Some(Uuid::now_v7().to_string());
        assert!(
            invariants(&e).contains(&"R2"),
            "a Stripe refund of nobody's"
        );
        let (mut e, _) = good();
        e.their_refunds[0].amount = 300;
        assert!(invariants(&e).contains(&"R2"), "{:?}", check(&e));
        let (mut e, _) = good();
        e.their_refunds.push(TheirRefund {
            id: "re_0".into(),
            refund_id: None,
            ..e.their_refunds[0].clone()
        });
        assert_eq!(invariants(&e), ["R2"], "a Stripe refund that is not ours");
        e.refunds[0].stripe_refund_id = Some("re_0".into());
        assert!(
            invariants(&e).contains(&"R2"),
            "linked to a refund not ours"
        );
    }

    #[test]
    fn r2_a_key_names_one_refund_of_ours_for_the_amount_asked() {
        let (mut e, _) = good();
        let first = e.told[0].refunds["rk1"][0].clone();
        if let Some(n) = e.told[0].refunds.get_mut("rk1") {
            n.push(NamedRefund {
                id: Uuid::now_v7(),
                ..first
            });
        }
        assert_eq!(invariants(&e), ["R2"]);
        let (mut e, _) = good();
        if let Some(n) = e.told[0].refunds.get_mut("rk1") {
            n[0].requested = Some(300);
        }
        assert_eq!(invariants(&e), ["R2"]);
        let (mut e, _) = good();
        let named = e.told[0].refunds.remove("rk1").unwrap_or_default();
        e.told[0].refunds.insert("rk2".into(), named);
        assert_eq!(invariants(&e), ["R2"], "told under another key");
    }

    #[test]
    fn r3_a_refund_pending_or_disagreeing_with_stripe() {
        let (mut e, _) = good();
        e.refunds[0].status = "pending".into();
        e.refunds[0].history.pop();
        e.ours[0].amount_refunded = 0;
        e.their_refunds[0].status = "pending".into();
        e.refunds_published.clear();
        assert_eq!(invariants(&e), ["R3"], "pending, unflagged");
        e.refunds[0].attention = Some("unknown_stripe_status".into());
        assert_eq!(check(&e), [], "flagged for an operator");
        let (mut e, _) = good();
        e.their_refunds[0].status = "failed".into();
        assert_eq!(invariants(&e), ["R3"], "Stripe failed it, we say succeeded");
        e.refunds[0].status = "failed".into();
        e.refunds[0].attention = Some("refund_failed_after_success".into());
        e.refunds[0].history.push(h(Some("succeeded"), "failed"));
        e.ours[0].amount_refunded = 0;
        e.refunds_published
            .values_mut()
            .for_each(|p| p.push("failed".into()));
        assert_eq!(check(&e), [], "failed after success, freed and flagged");
        e.refunds_published.clear();
        assert_eq!(invariants(&e), ["R3"], "never published");
        let (mut e, _) = good();
        e.refunds[0].history.push(h(Some("succeeded"), "canceled"));
        assert_eq!(invariants(&e), ["R3"], "illegal history");
    }

    #[test]
    fn r3_refunded_and_captured_sums_against_stripe() {
        let (mut e, _) = good();
        e.ours[0].amount_refunded = 0;
        assert_eq!(invariants(&e), ["R3"]);
        let (mut e, _) = good();
        e.ours[0].amount_captured = Some(1000);
        assert_eq!(invariants(&e), ["R3"], "{:?}", check(&e));
        let (mut e, _) = good();
        e.told[0].captures[0].captured = 700;
        assert_eq!(invariants(&e), ["R3"]);
        let (mut e, _) = good();
        e.told[0].captures[0].requested = Some(500);
        assert_eq!(invariants(&e), ["R3"], "captured other than asked");
    }

    #[test]
    fn r4_refund_and_capture_answers_are_documented() {
        let at = |what, at_ms, status, code: Option<&str>| Answer {
            at_ms,
            status,
            code: code.map(str::to_owned),
            what,
        };
        for (a, want) in [
            (at("refund", 12_000, 500, None), vec!["I5", "R4"]),
            (at("capture", 1_500, 500, None), vec!["I5", "R4"]),
            (
                at("refund", 12_000, 400, Some("amount_invalid")),
                vec!["R4"],
            ),
            (
                at("capture", 12_000, 404, Some("payment_not_found")),
                vec!["R4"],
            ),
            (
                at("refund", 12_000, 409, Some("payment_not_capturable")),
                vec!["R4"],
            ),
            (at("refund", 12_000, 502, None), vec!["I5", "R4"]),
            (at("refund", 1_500, 502, None), vec![]),
            (
                at("refund", 12_000, 202, Some("processor_unavailable")),
                vec![],
            ),
            (
                at("refund", 12_000, 422, Some("refund_exceeds_remaining")),
                vec![],
            ),
            (
                at("capture", 12_000, 503, Some("processor_unavailable")),
                vec![],
            ),
            (
                at("capture", 12_000, 409, Some("payment_not_capturable")),
                vec![],
            ),
        ] {
            let (mut e, _) = good();
            e.answers.push(a.clone());
            assert_eq!(invariants(&e), want, "{a:?}");
        }
    }
}
