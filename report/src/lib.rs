//! Reconciliation reports for operators: our payments of a window (from a replica)
//! against Stripe's PaymentIntents, each put in one class, with how each final payment
//! was resolved and how long it took.

pub mod classify;
pub mod html;
pub mod render;
pub mod repair;
pub mod runs;
pub mod source;
pub mod window;

use chrono::{DateTime, Utc};
use paystream_core::StripeGateway;
use serde::{Deserialize, Serialize};

pub use classify::{Class, Classified, Finding, Ours, classify};
pub use source::SourceError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub generated_at: DateTime<Utc>,
    /// The replica's last replayed commit: the report is as fresh as this.
    pub data_as_of: Option<DateTime<Utc>>,
    pub stuck_after_secs: i64,
    pub payments: usize,
    pub stripe_intents: usize,
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
    /// Stripe calls per second (Stripe allows 25 in test mode, 100 live).
    pub stripe_rate: u32,
}

pub async fn run<G: StripeGateway>(
    replica: &deadpool_postgres::Pool,
    stripe: &G,
    s: &Settings,
    progress: impl FnMut(usize),
) -> Result<Report, SourceError> {
    let (ours, data_as_of) = source::our_payments(replica, s.since, s.until).await?;
    let theirs =
        source::stripe_intents(stripe, s.since, s.until, &ours, s.stripe_rate, progress).await?;
    let now = Utc::now();
    Ok(Report {
        since: s.since,
        until: s.until,
        generated_at: now,
        data_as_of,
        stuck_after_secs: s.stuck_after.num_seconds(),
        payments: ours.len(),
        stripe_intents: theirs.len(),
        classified: classify(&ours, &theirs, now, s.stuck_after),
        timeline: classify::timeline(&ours, s.since, s.until, 24),
    })
}
