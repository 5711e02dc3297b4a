//! The invariants (docs/invariants.md), checked over everything a run left behind: our
//! rows and histories, Stripe's own state, the output topic, and what clients were told.
//! Pure: the collectors fetch, this judges. Each check is shown to fail on bad evidence
//! in the tests below.

use std::collections::{BTreeSet, HashMap, HashSet};
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
}

/// One PaymentIntent, from Stripe's (stripe-sim's) own state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Theirs {
    pub id: String,
    pub status: String,
    pub payment_id: Option<String>,
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
            .any(|(s, end)| at + FAULT_GRACE_MS >= *s && at <= end + FAULT_GRACE_MS)
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
    }
    v
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

    /// One payment that went right: paid, published, told one secret.
    fn good() -> (Evidence, Uuid) {
        let id = Uuid::now_v7();
        let e = Evidence {
            ours: vec![Ours {
                id,
                key: "k1".into(),
                status: "succeeded".into(),
                intent: Some("pi_1".into()),
                attention: None,
                history: vec![h(None, "pending"), h(Some("pending"), "succeeded")],
            }],
            theirs: vec![Theirs {
                id: "pi_1".into(),
                status: "succeeded".into(),
                payment_id: Some(id.to_string()),
            }],
            published: [(id, vec!["succeeded".into()])].into(),
            told: vec![Told {
                key: "k1".into(),
                payment_id: Some(id),
                secrets_for: ["pi_1".to_owned()].into(),
                canceled: false,
            }],
            answers: vec![Answer {
                at_ms: 10,
                status: 201,
                code: None,
                what: "create",
            }],
            fault_windows: vec![(1_000, 2_000)],
        };
        (e, id)
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
            (at(9_000, 502, None), false),
            (at(9_000, 0, None), false),
            (at(9_000, 503, Some("processor_unavailable")), true),
            (at(9_000, 503, Some("surprise")), false),
            (at(1_500, 500, None), false),
            (at(9_000, 429, Some("rate_limited")), true),
        ] {
            let (mut e, _) = good();
            e.answers.push(a.clone());
            assert_eq!(check(&e).is_empty(), ok, "{a:?}");
        }
    }
}
