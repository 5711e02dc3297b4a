//! Reconciliation reports for operators: our payments of a window (from a replica)
//! against Stripe's PaymentIntents, and our refunds against Stripe's refunds, each put in
//! one class, with how each final payment was resolved and how long it took.

pub mod classify;
pub mod html;
pub mod render;
pub mod repair;
pub mod runs;
pub mod source;
pub mod window;

use chrono::{DateTime, Utc};
use paystream_core::StripeGateway;
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
    pub stripe_intents: usize,
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

pub struct Settings {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub stuck_after: chrono::Duration,
    /// A payment pending here and final at Stripe that changed within this is
    /// `in_flight` (its webhook is on its way), not a `status_mismatch`.
    pub grace: chrono::Duration,
    /// Stripe calls per second (Stripe allows 25 in test mode, 100 live).
    pub stripe_rate: u32,
}

pub async fn run<G: StripeGateway>(
    replica: &Replica,
    stripe: &G,
    s: &Settings,
    progress: impl FnMut(usize),
) -> Result<Report, SourceError> {
    let (ours, data_as_of) = replica::payments_created(replica, s.since, s.until).await?;
    let theirs =
        source::stripe_intents(stripe, s.since, s.until, &ours, s.stripe_rate, progress).await?;
    let now = Utc::now();
    let mut classified = classify(
        &ours,
        &theirs,
        classify::Rules {
            now,
            stuck_after: s.stuck_after,
            grace: s.grace,
        },
    );
    let flagged = replica::flagged_outside(replica, s.since, s.until).await?;
    let orphaned = replica::orphaned_events(replica).await?;
    add_operator_items(&mut classified, &flagged, &orphaned);
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
        data_as_of,
        stuck_after_secs: s.stuck_after.num_seconds(),
        grace_secs: s.grace.num_seconds(),
        payments: ours.len(),
        stripe_intents: theirs.len(),
        refunds: refunds.ours.len(),
        stripe_refunds: refunds.theirs.len(),
        classified,
        timeline: classify::timeline(&ours, s.since, s.until, 24),
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
