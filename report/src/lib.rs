//! Reconciliation reports for operators: our payments of a window (from a replica)
//! against Stripe's PaymentIntents, and our refunds against Stripe's refunds, each put in
//! one class, with how each final payment was resolved and how long it took.

pub mod bulk;
pub mod classify;
pub mod html;
pub mod render;
pub mod repair;
pub mod runs;
pub mod source;
pub mod window;

use chrono::{DateTime, Utc};
use paystream_core::StripeGateway;
use paystream_core::gateway::StripeReporting;
use paystream_db::Replica;
use paystream_db::replica::{self, OrphanedEvent};
use serde::{Deserialize, Serialize};

pub use classify::{Class, Classified, Finding, Ours, OursRefund, classify, classify_refunds};
pub use source::SourceError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub generated_at: DateTime<Utc>,
    /// The replica's last replayed commit: the report is as fresh as this.
    pub data_as_of: Option<DateTime<Utc>>,
    pub stuck_after_secs: i64,
    /// How long a payment that just changed may lag behind Stripe (`in_flight`).
    #[serde(default)]
    pub grace_secs: i64,
    pub payments: usize,
    /// Where Stripe's side came from: `list` (its PaymentIntents, page by page) or
    /// `report_run` (one Reporting API file of the balance changes; see `bulk`).
    #[serde(default = "list_source")]
    pub stripe_source: String,
    /// Stripe's intents compared (`list`), or its payments with a capture (`report_run`,
    /// plus the intents listed for the window's tail past the report's data).
    pub stripe_intents: usize,
    /// Balance changes read from the report file (`report_run`).
    #[serde(default)]
    pub balance_changes: u64,
    /// Our refunds checked: those made in the window, every other refund of their
    /// payments, those Stripe's refunds of the window name, and the flagged ones.
    #[serde(default)]
    pub refunds: usize,
    /// Stripe's refunds compared with them.
    #[serde(default)]
    pub stripe_refunds: usize,
    #[serde(flatten)]
    pub classified: Classified,
    /// Payments created and resolved per slice of the window (24 slices).
    #[serde(default)]
    pub timeline: Vec<classify::Bucket>,
}

/// How far a report run has got: its phase, and the items of it done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub phase: &'static str,
    pub done: usize,
}

fn list_source() -> String {
    "list".into()
}

impl Report {
    /// What Stripe's side was, for the report's heading.
    pub fn stripe_side(&self) -> String {
        match self.stripe_source.as_str() {
            "report_run" => format!(
                "{} payments charged at Stripe ({} balance changes, one report run)",
                self.stripe_intents, self.balance_changes
            ),
            _ => format!("{} Stripe intents", self.stripe_intents),
        }
    }
}

pub struct Settings {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub stuck_after: chrono::Duration,
    /// A payment pending here and final at Stripe that changed within this is
    /// `in_flight` (its webhook is on its way), not a `status_mismatch`.
    pub grace: chrono::Duration,
    /// Stripe calls per second (Stripe allows 25 in test mode, 100 live).
    pub stripe_rate: u32,
    /// Windows with at least this many payments of ours compare with a Reporting API
    /// file instead of the PaymentIntent list (`bulk`).
    pub bulk_from: u64,
}

/// The window size from which a report run beats the list walk. The walk costs a call
/// per 100 intents at the report's rate (5 calls/s by default: 20,000 payments in 40 s,
/// a million in over half an hour); a run costs a few calls plus Stripe's time to make the file, a
/// minute or more on real Stripe. Below this, the walk also checks statuses, which the
/// file (money only) cannot.
pub const BULK_FROM: u64 = 20_000;

pub async fn run<G: StripeGateway + StripeReporting>(
    replica: &Replica,
    stripe: &G,
    s: &Settings,
    mut progress: impl FnMut(Progress),
) -> Result<Report, SourceError> {
    let step = |phase| Progress { phase, done: 0 };
    progress(step("counting the window's payments (replica)"));
    if replica::count_created(replica, s.since, s.until).await? >= s.bulk_from
        && {
            progress(step("waiting for Stripe's report run (Reporting API)"));
            true
        }
        && let Some((captures, covered_until)) = bulk::captures(
            stripe,
            s.since,
            s.until,
            std::time::Duration::from_millis(500),
            std::time::Duration::from_secs(30 * 60),
        )
        .await?
    {
        return run_bulk(replica, stripe, s, (captures, covered_until), progress).await;
    }
    progress(step("reading our payments (replica)"));
    let (ours, data_as_of) = replica::payments_created(replica, s.since, s.until).await?;
    let theirs = source::stripe_intents(stripe, s.since, s.until, &ours, s.stripe_rate, |done| {
        progress(Progress {
            phase: "listing Stripe's PaymentIntents",
            done,
        })
    })
    .await?;
    let now = Utc::now();
    let classified = classify(
        &ours,
        &theirs,
        classify::Rules {
            now,
            stuck_after: s.stuck_after,
            grace: s.grace,
        },
    );
    let payments = Payments {
        data_as_of,
        count: ours.len(),
        stripe_source: list_source(),
        stripe_intents: theirs.len(),
        balance_changes: 0,
        timeline: classify::timeline(&ours, s.since, s.until, 24),
    };
    finish(replica, stripe, s, now, classified, payments, progress).await
}

/// A large window: Stripe's captures from a report run, ours streamed (see `bulk`); the
/// window's tail past the file's data (Stripe's reports lag behind live activity) through
/// the PaymentIntent list; refunds, flagged payments and orphaned events as for any
/// window.
async fn run_bulk<G: StripeGateway>(
    replica: &Replica,
    stripe: &G,
    s: &Settings,
    (captures, covered_until): (bulk::Captures, DateTime<Utc>),
    mut progress: impl FnMut(Progress),
) -> Result<Report, SourceError> {
    let now = Utc::now();
    let rules = classify::Rules {
        now,
        stuck_after: s.stuck_after,
        grace: s.grace,
    };
    let mut tally = classify::Tally::default();
    let mut timeline = classify::Timeline::new(s.since, s.until, 24);
    let split = covered_until.min(s.until);
    let c = bulk::compare(
        replica,
        captures,
        (s.since, split),
        covered_until,
        rules,
        &mut tally,
        &mut timeline,
        |done| {
            progress(Progress {
                phase: "comparing our payments (replica) with Stripe's captures",
                done,
            })
        },
    )
    .await?;
    let mut payments = usize::try_from(c.payments).unwrap_or(usize::MAX);
    let mut stripe_intents = c.charged_payments;
    if split < s.until {
        progress(Progress {
            phase: "the window's tail past Stripe's report data: listing its PaymentIntents",
            done: 0,
        });
        let (tail, _) = replica::payments_created(replica, split, s.until).await?;
        let theirs =
            source::stripe_intents(stripe, split, s.until, &tail, s.stripe_rate, |_| {}).await?;
        classify::classify_into(&mut tally, &tail, &theirs, rules);
        for p in &tail {
            timeline.add(p);
        }
        payments += tail.len();
        stripe_intents += theirs.len();
    }
    let payments = Payments {
        data_as_of: c.data_as_of,
        count: payments,
        stripe_source: "report_run".into(),
        stripe_intents,
        balance_changes: c.rows,
        timeline: timeline.finish(),
    };
    finish(replica, stripe, s, now, tally.finish(), payments, progress).await
}

/// The payments' side of a report, however Stripe's was read.
struct Payments {
    data_as_of: Option<DateTime<Utc>>,
    count: usize,
    stripe_source: String,
    stripe_intents: usize,
    balance_changes: u64,
    timeline: Vec<classify::Bucket>,
}

/// What every report adds to its payments, whatever the window's size: flagged payments,
/// orphaned events and the refunds.
async fn finish<G: StripeGateway>(
    replica: &Replica,
    stripe: &G,
    s: &Settings,
    now: DateTime<Utc>,
    mut classified: Classified,
    payments: Payments,
    mut progress: impl FnMut(Progress),
) -> Result<Report, SourceError> {
    let flagged = replica::flagged_outside(replica, s.since, s.until).await?;
    let orphaned = replica::orphaned_events(replica).await?;
    add_operator_items(&mut classified, &flagged, &orphaned);
    progress(Progress {
        phase: "Stripe's refunds",
        done: 0,
    });
    let refunds = source::refunds(replica, stripe, s.since, s.until, s.stripe_rate).await?;
    classify_refunds(
        &mut classified,
        &refunds.ours,
        &refunds.theirs,
        &refunds.payments,
        now,
        s.stuck_after,
    );
    Ok(Report {
        since: s.since,
        until: s.until,
        generated_at: now,
        data_as_of: payments.data_as_of,
        stuck_after_secs: s.stuck_after.num_seconds(),
        grace_secs: s.grace.num_seconds(),
        payments: payments.count,
        stripe_source: payments.stripe_source,
        stripe_intents: payments.stripe_intents,
        balance_changes: payments.balance_changes,
        refunds: refunds.ours.len(),
        stripe_refunds: refunds.theirs.len(),
        classified,
        timeline: payments.timeline,
    })
}

/// What waits for an operator whatever the window: flagged payments created outside it,
/// and webhook events that never matched a payment. Each is a discrepancy until dealt with.
fn add_operator_items(c: &mut Classified, flagged: &[Ours], orphaned: &[OrphanedEvent]) {
    for p in flagged {
        let Some(attention) = p.attention else {
            continue;
        };
        let class = Class::of_attention(attention);
        *c.counts.entry(class).or_default() += 1;
        c.findings.push(Finding {
            class,
            payment_id: Some(p.id),
            intent_id: p.intent.clone(),
            ours: Some(p.status.as_str().to_owned()),
            stripe: None,
            created_at: Some(p.created_at),
            note: Some(attention.action().to_owned()),
            refund_id: None,
            stripe_refund_id: None,
        });
    }
    for e in orphaned {
        *c.counts.entry(Class::OrphanedEvent).or_default() += 1;
        c.findings.push(Finding {
            class: Class::OrphanedEvent,
            payment_id: None,
            intent_id: e.intent.clone(),
            ours: Some(e.id.clone()),
            stripe: Some(e.kind.clone()),
            created_at: Some(e.received_at),
            note: Some("Stripe sent an event for a payment id we have no row for: another environment on the same Stripe account, or a lost row; check the intent's metadata at Stripe".into()),
            refund_id: None,
            stripe_refund_id: None,
        });
    }
    c.findings.sort_by_key(|f| (f.class, f.created_at));
}
