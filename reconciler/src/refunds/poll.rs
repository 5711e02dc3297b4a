//! One poll of one pending refund: ask Stripe and apply its answer through the one refund
//! status function. A refund the API never managed to send (Stripe down, the process
//! killed) is found at Stripe by our refund id, or sent now with the same idempotency
//! key. The state is never changed here: the DB change comes back through CDC.

use chrono::{DateTime, Utc};
use paystream_core::gateway::{
    GatewayError, NewRefund, RefundView, StripeGateway, find_refund, refund_key,
};
use paystream_core::{RefundId, RefundStatus};
use paystream_db::Primary;
use paystream_db::payments::{self, Source};
use paystream_db::refunds::{self, RefundApplied, RefundAttention, RefundObservation};

use crate::poll::{PollError, Rules};
use tracing::Instrument;

/// What a poll needs to know of a pending refund.
#[derive(Debug, Clone)]
pub struct RefundTarget {
    pub id: RefundId,
    pub created_at: DateTime<Utc>,
    pub misses: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    /// Our status changed to Stripe's (source `poll`).
    Resolved(RefundStatus),
    /// Stripe still says pending (or it was just sent).
    Pending,
    /// Our row was already final (the CDC change that removes it is on its way).
    AlreadyFinal,
    /// Our row is final and Stripe says otherwise: nothing written.
    Conflict,
    /// Stripe does not know the refund we hold.
    NotFound,
    /// A status this code does not know; never guessed.
    UnknownStatus(String),
    NoRow,
    /// Unusable answers too many times in a row: now waits for an operator.
    Flagged(RefundAttention),
}

impl RefundOutcome {
    pub fn usable(&self) -> bool {
        !matches!(self, Self::NotFound | Self::UnknownStatus(_))
    }

    pub fn label(&self) -> &'static str {
        match self {
            Self::Resolved(_) => "resolved",
            Self::Pending => "pending",
            Self::AlreadyFinal => "already_final",
            Self::Conflict => "conflict",
            Self::NotFound => "not_found",
            Self::UnknownStatus(_) => "unknown_status",
            Self::NoRow => "no_row",
            Self::Flagged(_) => "flagged",
        }
    }
}

pub async fn poll<G: StripeGateway>(
    stripe: &G,
    db: &Primary,
    t: &RefundTarget,
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<RefundOutcome, PollError> {
    // The refund's payment is known once its row is read: the span carries both ids to
    // the poll's one line.
    let span = tracing::info_span!(
        "refund_poll",
        refund_id = %t.id,
        payment_id = tracing::field::Empty
    );
    let outcome = poll_once(stripe, db, t, rules, now)
        .instrument(span.clone())
        .await;
    span.in_scope(|| match &outcome {
        Ok(o) => tracing::info!(outcome = o.label(), "refund polled"),
        Err(e) => tracing::info!(outcome = e.label(), "refund polled"),
    });
    let outcome = outcome?;
    if !rules.gives_up(outcome.usable(), t.misses, t.created_at, now) {
        return Ok(outcome);
    }
    let why = match outcome {
        RefundOutcome::UnknownStatus(_) => RefundAttention::UnknownStripeStatus,
        _ => RefundAttention::UnknownAtStripe,
    };
    span.in_scope(|| tracing::error!(refund_id = %t.id, attention = why.as_str(), "refund flagged for an operator; no longer polled"));
    refunds::flag_attention(db, t.id, why).await?;
    Ok(RefundOutcome::Flagged(why))
}

async fn poll_once<G: StripeGateway>(
    stripe: &G,
    db: &Primary,
    t: &RefundTarget,
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<RefundOutcome, PollError> {
    // The row, not the state: the API may have linked the Stripe refund since.
    let Some(row) = refunds::by_id(db, t.id).await? else {
        return Ok(RefundOutcome::NoRow);
    };
    tracing::Span::current().record("payment_id", tracing::field::display(row.payment_id));
    if row.status.is_final() {
        return Ok(RefundOutcome::AlreadyFinal);
    }
    let view = match &row.stripe_refund_id {
        Some(re) => match stripe.retrieve_refund(re).await {
            Ok(v) => v,
            Err(GatewayError::NotFound) => return Ok(RefundOutcome::NotFound),
            Err(e) => return Err(e.into()),
        },
        // The API may still be sending it.
        None if now - row.created_at < rules.create_after => return Ok(RefundOutcome::Pending),
        None => match send(stripe, db, &row).await? {
            Sent::Refund(v) => v,
            Sent::Done(outcome) => return Ok(outcome),
        },
    };
    let Some(status) = view.status() else {
        return Ok(RefundOutcome::UnknownStatus(view.stripe_status));
    };
    let obs = RefundObservation::of_stripe(status, &view, Source::Poll);
    Ok(outcome_of(
        refunds::apply_status(db, t.id, &obs).await?,
        status,
    ))
}

fn outcome_of(applied: RefundApplied, status: RefundStatus) -> RefundOutcome {
    match applied {
        RefundApplied::Changed(_) | RefundApplied::Overturned(_) => RefundOutcome::Resolved(status),
        RefundApplied::Unchanged(r) if r.status.is_final() => RefundOutcome::AlreadyFinal,
        RefundApplied::Unchanged(_) | RefundApplied::ForeignRefund(_) => RefundOutcome::Pending,
        RefundApplied::Conflict(_) => RefundOutcome::Conflict,
        RefundApplied::NotFound => RefundOutcome::NoRow,
    }
}

enum Sent {
    Refund(RefundView),
    Done(RefundOutcome),
}

/// A refund whose Stripe id we never stored: found at Stripe by our refund id (an
/// earlier attempt made it and died), else created with its own key (R2: never twice).
async fn send<G: StripeGateway>(
    stripe: &G,
    db: &Primary,
    row: &refunds::Refund,
) -> Result<Sent, PollError> {
    let payment = payments::by_id(db, row.payment_id).await?;
    let Some(intent) = payment.and_then(|p| p.stripe_payment_intent_id) else {
        return fail(db, row.id, "the payment has no PaymentIntent").await;
    };
    let ours = row.id.to_string();
    let found = match find_refund(stripe, &intent, &ours).await {
        Ok(found) => found,
        Err(GatewayError::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(v) = found {
        return Ok(Sent::Refund(v));
    }
    let created = stripe
        .create_refund(&NewRefund {
            refund_id: &ours,
            payment_intent: &intent,
            amount: row.amount,
            reason: row.reason,
            idempotency_key: &refund_key(&row.id),
        })
        .await;
    match created {
        Ok(v) => Ok(Sent::Refund(v)),
        // Stripe refuses to make it: it never will; its amount is free again.
        Err(GatewayError::Rejected { code, message, .. }) => {
            fail(db, row.id, &format!("{code}: {message}")).await
        }
        Err(e) => Err(e.into()),
    }
}

async fn fail(db: &Primary, id: RefundId, why: &str) -> Result<Sent, PollError> {
    let obs = RefundObservation::without_stripe(RefundStatus::Failed, why, Source::Poll);
    Ok(Sent::Done(outcome_of(
        refunds::apply_status(db, id, &obs).await?,
        RefundStatus::Failed,
    )))
}
