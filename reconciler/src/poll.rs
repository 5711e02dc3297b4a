//! One poll of one pending payment: ask Stripe, and when Stripe's answer is final (or the
//! payment is past its age limit) apply it through the core's single status function.
//! The state is never changed here: the DB change comes back through CDC and removes it.

use chrono::{DateTime, Utc};
use paystream_core::gateway::{GatewayError, IntentView, NewIntent, StripeGateway, intent_key};
use paystream_core::{Currency, Money, PaymentStatus};
use paystream_db::DbError;
use paystream_db::payments::{self, Applied, Observation, Source};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::schedule::Schedule;

/// What a poll needs to know of a pending payment.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: Uuid,
    pub intent: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Our status changed to Stripe's final one (source `poll` or `expiry`).
    Resolved { to: PaymentStatus, source: Source },
    /// Stripe still says pending; polled again on schedule.
    Pending,
    /// Our row was already final (the CDC change that removes it is on its way).
    AlreadyFinal,
    /// Our row is final and Stripe says another final status: nothing written, logged loud.
    Conflict { ours: String, stripe: String },
    /// Our PaymentIntent id is unknown to Stripe (a report's `missing_at_stripe`).
    NotFound,
    /// A status this code does not know; never guessed.
    UnknownStatus(String),
    /// The payment row is gone.
    NoRow,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Resolved {
                source: Source::Expiry,
                ..
            } => "expired",
            Outcome::Resolved { .. } => "resolved",
            Outcome::Pending => "pending",
            Outcome::AlreadyFinal => "already_final",
            Outcome::Conflict { .. } => "conflict",
            Outcome::NotFound => "not_found",
            Outcome::UnknownStatus(_) => "unknown_status",
            Outcome::NoRow => "no_row",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Stripe(#[from] GatewayError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl PollError {
    pub fn label(&self) -> &'static str {
        match self {
            PollError::Stripe(GatewayError::RateLimited) => "rate_limited",
            PollError::Stripe(GatewayError::Rejected { .. }) => "rejected",
            PollError::Stripe(_) => "stripe_unavailable",
            PollError::Db(_) => "db_error",
        }
    }
}

/// Settings of a poll beyond the schedule.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub schedule: Schedule,
    /// A payment without a PaymentIntent this old is one the API gave up creating: the
    /// poll creates it (same idempotency key) or finds it by `metadata.payment_id`.
    pub create_after: chrono::Duration,
}

/// Stripe's cancellation reason for payments we expire.
const EXPIRY_REASON: &str = "abandoned";

pub async fn poll<G: StripeGateway>(
    stripe: &G,
    db: &PgPool,
    t: &Target,
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<Outcome, PollError> {
    let expired = rules.schedule.expired(t.created_at, now);
    let intent = match &t.intent {
        Some(pi) => match stripe.retrieve_intent(pi).await {
            Ok(v) => v,
            Err(GatewayError::NotFound) => return Ok(Outcome::NotFound),
            Err(e) => return Err(e.into()),
        },
        None if now - t.created_at < rules.create_after => return Ok(Outcome::Pending),
        None => match intent_of_orphan(stripe, db, t.id, expired).await? {
            Orphan::Intent(v) => v,
            Orphan::Done(outcome) => return Ok(outcome),
        },
    };
    let Some(status) = intent.status() else {
        return Ok(Outcome::UnknownStatus(intent.stripe_status));
    };
    if status.is_final() || !expired {
        return apply(db, t.id, status, &intent, Source::Poll).await;
    }
    // Past its age limit and still open at Stripe: cancel it there first, so Stripe and we
    // agree. Stripe may have moved on meanwhile (a success wins over our cancel).
    let key = format!("paystream-expire-{}", t.id);
    match stripe
        .cancel_intent(&intent.id, Some(EXPIRY_REASON), &key)
        .await
    {
        Ok(v) if v.status() == Some(PaymentStatus::Canceled) => {
            apply(db, t.id, PaymentStatus::Canceled, &v, Source::Expiry).await
        }
        Ok(v) => follow(db, t.id, &v).await,
        Err(GatewayError::Rejected { .. }) => {
            let v = stripe.retrieve_intent(&intent.id).await?;
            follow(db, t.id, &v).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Applies whatever Stripe now says about an intent, as a poll.
async fn follow(db: &PgPool, id: Uuid, v: &IntentView) -> Result<Outcome, PollError> {
    match v.status() {
        Some(status) => apply(db, id, status, v, Source::Poll).await,
        None => Ok(Outcome::UnknownStatus(v.stripe_status.clone())),
    }
}

async fn apply(
    db: &PgPool,
    id: Uuid,
    status: PaymentStatus,
    intent: &IntentView,
    source: Source,
) -> Result<Outcome, PollError> {
    let obs = Observation {
        status,
        stripe_status: Some(&intent.stripe_status),
        error: intent.last_error.as_deref(),
        source,
        detail: Some(json!({"payment_intent": intent.id, "stripe_status": intent.stripe_status})),
    };
    Ok(match payments::apply_status(db, id, &obs).await? {
        Applied::Changed(p) if p.status == status.as_str() && status.is_final() => {
            Outcome::Resolved { to: status, source }
        }
        Applied::Changed(_) | Applied::Unchanged(_) if !status.is_final() => Outcome::Pending,
        Applied::Changed(_) | Applied::Unchanged(_) => Outcome::AlreadyFinal,
        Applied::Conflict(p) => Outcome::Conflict {
            ours: p.status,
            stripe: intent.stripe_status.clone(),
        },
        Applied::NotFound => Outcome::NoRow,
    })
}

enum Orphan {
    Intent(IntentView),
    Done(Outcome),
}

/// A payment whose PaymentIntent id we never stored: the API died or Stripe was down
/// when it tried. Stripe may still have created it, so first the same idempotency key
/// (which replays the original), then a search by our payment id; an expired payment
/// with no intent anywhere is canceled on our side alone.
async fn intent_of_orphan<G: StripeGateway>(
    stripe: &G,
    db: &PgPool,
    id: Uuid,
    expired: bool,
) -> Result<Orphan, PollError> {
    let Some(row) = payments::by_id(db, id).await? else {
        return Ok(Orphan::Done(Outcome::NoRow));
    };
    if row.status != PaymentStatus::Pending.as_str() {
        return Ok(Orphan::Done(Outcome::AlreadyFinal));
    }
    if let Some(pi) = &row.stripe_payment_intent_id {
        // Attached since the state saw the row; its CDC change is on the way.
        return Ok(Orphan::Intent(stripe.retrieve_intent(pi).await?));
    }
    let payment_id = id.to_string();
    let found = if expired {
        stripe.find_by_payment_id(&payment_id).await?
    } else {
        let currency = Currency::parse(&row.currency)
            .map_err(|e| GatewayError::Unavailable(format!("stored currency is invalid: {e}")))?;
        let money = Money::new(row.amount, currency, i64::MAX)
            .map_err(|e| GatewayError::Unavailable(format!("stored amount is invalid: {e}")))?;
        let req = NewIntent {
            payment_id: &payment_id,
            money,
            description: row.description.as_deref(),
            receipt_email: row.customer_email.as_deref(),
            idempotency_key: &intent_key(&id),
        };
        match stripe.create_intent(&req).await {
            Ok(v) => Some(v),
            // Stripe forgot the key (older than 24 h) or the parameters differ: search.
            Err(GatewayError::Rejected { .. }) => stripe.find_by_payment_id(&payment_id).await?,
            Err(e) => return Err(e.into()),
        }
    };
    let Some(v) = found else {
        let obs = Observation {
            status: PaymentStatus::Canceled,
            stripe_status: None,
            error: Some("expired before any PaymentIntent existed"),
            source: Source::Expiry,
            detail: None,
        };
        return Ok(Orphan::Done(
            match payments::apply_status(db, id, &obs).await? {
                Applied::Changed(_) => Outcome::Resolved {
                    to: PaymentStatus::Canceled,
                    source: Source::Expiry,
                },
                Applied::NotFound => Outcome::NoRow,
                _ => Outcome::AlreadyFinal,
            },
        ));
    };
    if payments::attach_intent(db, id, &v.id, &v.stripe_status)
        .await?
        .is_none()
    {
        tracing::error!(payment_id = %id, intent = %v.id, "payment is linked to another PaymentIntent");
    }
    Ok(Orphan::Intent(v))
}
