//! One poll of one pending payment: ask Stripe, and when Stripe's answer is final (or the
//! payment is past its age limit) apply it through the core's single status function.
//! The state is never changed here: the DB change comes back through CDC and removes it.

use chrono::{DateTime, Utc};
use paystream_core::PaymentId;
use paystream_core::gateway::{
    GatewayError, IntentView, NewIntent, StripeGateway, attempt_key, intent_key,
};
use paystream_core::{Currency, Money, PaymentStatus};
use paystream_db::DbError;
use paystream_db::Primary;
use paystream_db::payments::{self, Applied, Attached, Attention, Observation, Source};
use uuid::Uuid;

use crate::schedule::Schedule;

/// What a poll needs to know of a pending payment.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: Uuid,
    pub intent: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Polls in a row whose answer could not be used (see `Rules::misses_before_attention`).
    pub misses: u8,
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
    /// Unusable answers too many times in a row: the payment now waits for an operator
    /// (I4: nothing is polled forever).
    Flagged(Attention),
}

impl Outcome {
    /// Whether Stripe's answer told us something (a miss counts towards `Flagged`).
    pub fn usable(&self) -> bool {
        !matches!(self, Outcome::NotFound | Outcome::UnknownStatus(_))
    }
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
            Outcome::Flagged(_) => "flagged",
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
            PollError::Stripe(e) => e.label(),
            PollError::Db(_) => "db_error",
        }
    }
}

/// Settings of a poll beyond the schedule.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub schedule: Schedule,
    /// A payment without a PaymentIntent this old is one the API gave up creating: the
    /// poll finds it by `metadata.payment_id` or creates it (same idempotency key).
    pub create_after: chrono::Duration,
    /// Unusable answers in a row (unknown intent, unknown status) before the payment is
    /// flagged for an operator and no longer polled...
    pub misses_before_attention: u8,
    /// ...once it is at least this old: a young payment's misses may be a Stripe blip.
    pub attention_after: chrono::Duration,
}

impl Rules {
    /// Whether a poll's answer is the last miss allowed: unusable, the bound of misses in
    /// a row reached, and the payment (or refund) old enough that it is no Stripe blip.
    /// Then it goes to an operator and is polled no more.
    pub fn gives_up(
        &self,
        usable: bool,
        misses_before: u8,
        created_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> bool {
        !usable
            && misses_before.saturating_add(1) >= self.misses_before_attention
            && now - created_at >= self.attention_after
    }
}

/// Stripe's cancellation reason for payments we expire.
const EXPIRY_REASON: &str = "abandoned";

pub async fn poll<G: StripeGateway>(
    stripe: &G,
    db: &Primary,
    t: &Target,
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<Outcome, PollError> {
    let outcome = poll_once(stripe, db, t, rules, now).await?;
    if !rules.gives_up(outcome.usable(), t.misses, t.created_at, now) {
        return Ok(outcome);
    }
    let why = match outcome {
        Outcome::UnknownStatus(_) => Attention::UnknownStripeStatus,
        _ => Attention::UnknownAtStripe,
    };
    tracing::error!(payment_id = %t.id, attention = why.as_str(), misses = t.misses + 1, "payment flagged for an operator; no longer polled");
    payments::flag_attention(db, PaymentId::from_uuid(t.id), why).await?;
    Ok(Outcome::Flagged(why))
}

async fn poll_once<G: StripeGateway>(
    stripe: &G,
    db: &Primary,
    t: &Target,
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<Outcome, PollError> {
    let id = PaymentId::from_uuid(t.id);
    let expired = rules.schedule.expired(t.created_at, now);
    let intent = match &t.intent {
        Some(pi) => match stripe.retrieve_intent(pi).await {
            Ok(v) => v,
            Err(GatewayError::NotFound) => return Ok(Outcome::NotFound),
            Err(e) => return Err(e.into()),
        },
        None if now - t.created_at < rules.create_after => return Ok(Outcome::Pending),
        None => match intent_of_orphan(stripe, db, id, expired).await? {
            Orphan::Intent(v) => v,
            Orphan::Done(outcome) => return Ok(outcome),
        },
    };
    let Some(status) = intent.status() else {
        return Ok(Outcome::UnknownStatus(intent.stripe_status));
    };
    // An authorization the customer gave waits for our capture for as long as Stripe
    // holds it (7 days for cards, then Stripe cancels it): our own age limit is for
    // payments nobody paid, never for money waiting to be captured.
    let awaiting_capture = intent.stripe_status == "requires_capture";
    if status.is_final() || !expired || awaiting_capture {
        return apply(db, id, status, &intent, Source::Poll).await;
    }
    // Past its age limit and still open at Stripe: cancel it there first, so Stripe and we
    // agree. Stripe may have moved on meanwhile (a success wins over our cancel). A fresh
    // key per attempt: a fixed one would replay a first refusal (the intent was
    // `processing` then) for 24 hours.
    let key = attempt_key("expire", &id, &Uuid::now_v7());
    match stripe
        .cancel_intent(&intent.id, Some(EXPIRY_REASON), &key)
        .await
    {
        Ok(v) if v.status() == Some(PaymentStatus::Canceled) => {
            apply(db, id, PaymentStatus::Canceled, &v, Source::Expiry).await
        }
        Ok(v) => follow(db, id, &v).await,
        Err(GatewayError::Rejected { .. }) => {
            let v = stripe.retrieve_intent(&intent.id).await?;
            follow(db, id, &v).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Applies a final status the event sweep read for a payment's intent (the event's
/// rendering of it: a final status is final, so no retrieve is needed to trust it), as a
/// poll would; its history row names the event.
pub async fn apply_swept(
    db: &Primary,
    id: Uuid,
    event: &str,
    intent: &IntentView,
) -> Result<Outcome, PollError> {
    let Some(status) = intent.status() else {
        return Ok(Outcome::UnknownStatus(intent.stripe_status.clone()));
    };
    let mut obs = Observation::of_intent(status, intent, Source::Poll);
    obs.detail = Some(serde_json::json!({
        "payment_intent": intent.id,
        "stripe_status": intent.stripe_status,
        "via": "event_sweep",
        "event": event,
    }));
    outcome(
        db,
        PaymentId::from_uuid(id),
        status,
        intent,
        Source::Poll,
        &obs,
    )
    .await
}

/// Applies whatever Stripe now says about an intent, as a poll.
async fn follow(db: &Primary, id: PaymentId, v: &IntentView) -> Result<Outcome, PollError> {
    match v.status() {
        Some(status) => apply(db, id, status, v, Source::Poll).await,
        None => Ok(Outcome::UnknownStatus(v.stripe_status.clone())),
    }
}

async fn apply(
    db: &Primary,
    id: PaymentId,
    status: PaymentStatus,
    intent: &IntentView,
    source: Source,
) -> Result<Outcome, PollError> {
    let obs = Observation::of_intent(status, intent, source);
    outcome(db, id, status, intent, source, &obs).await
}

/// Applies `obs` and says what became of it.
async fn outcome(
    db: &Primary,
    id: PaymentId,
    status: PaymentStatus,
    intent: &IntentView,
    source: Source,
    obs: &Observation<'_>,
) -> Result<Outcome, PollError> {
    Ok(match payments::apply_status(db, id, obs).await? {
        Applied::Changed(p) | Applied::Overturned(p) if p.status == status && status.is_final() => {
            Outcome::Resolved { to: status, source }
        }
        Applied::Changed(_) | Applied::Unchanged(_) if !status.is_final() => Outcome::Pending,
        Applied::Changed(_) | Applied::Unchanged(_) | Applied::Overturned(_) => {
            Outcome::AlreadyFinal
        }
        Applied::Conflict(p) => Outcome::Conflict {
            ours: p.status.as_str().to_owned(),
            stripe: intent.stripe_status.clone(),
        },
        // A poll reads the intent the payment holds; another one attached meanwhile is
        // polled next time.
        Applied::ForeignIntent(_) => Outcome::Pending,
        Applied::NotFound => Outcome::NoRow,
    })
}

enum Orphan {
    Intent(IntentView),
    Done(Outcome),
}

/// A payment whose PaymentIntent id we never stored: the API died or Stripe was down
/// when it tried. Stripe may still have made it, so first a search by our payment id,
/// then (not yet expired) the same idempotency key, which replays the original within
/// Stripe's 24 hours; past those, the search is authoritative. An expired payment with no
/// intent anywhere is canceled on our side alone.
async fn intent_of_orphan<G: StripeGateway>(
    stripe: &G,
    db: &Primary,
    id: PaymentId,
    expired: bool,
) -> Result<Orphan, PollError> {
    let Some(row) = payments::by_id(db, id).await? else {
        return Ok(Orphan::Done(Outcome::NoRow));
    };
    if row.status != PaymentStatus::Pending {
        return Ok(Orphan::Done(Outcome::AlreadyFinal));
    }
    if let Some(pi) = &row.stripe_payment_intent_id {
        // Attached since the state saw the row; its CDC change is on the way.
        return Ok(Orphan::Intent(stripe.retrieve_intent(pi).await?));
    }
    let payment_id = id.to_string();
    let found = match stripe.find_by_payment_id(&payment_id).await {
        Ok(found) => found,
        // A Stripe without search (localstripe): the key alone guards.
        Err(GatewayError::Unsupported(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let found = match found {
        Some(v) => Some(v),
        None if expired => None,
        None => {
            let currency = Currency::parse(&row.currency).map_err(|e| {
                GatewayError::Unavailable(format!("stored currency is invalid: {e}"))
            })?;
            let money = Money::new(row.amount, currency, i64::MAX)
                .map_err(|e| GatewayError::Unavailable(format!("stored amount is invalid: {e}")))?;
            let req = NewIntent {
                payment_id: &payment_id,
                money,
                description: row.description.as_deref(),
                receipt_email: row.customer_email.as_deref(),
                capture_method: row.capture_method,
                idempotency_key: &intent_key(&id),
            };
            match stripe.create_intent(&req).await {
                Ok(v) => Some(v),
                // Stripe refuses to make it (as it would have refused the API): the
                // payment fails, as it would have there.
                Err(GatewayError::Rejected { code, message, .. }) => {
                    let reason = format!("{code}: {message}");
                    return intentless(db, id, PaymentStatus::Failed, &reason, Source::Poll).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let Some(v) = found else {
        let why = "expired before any PaymentIntent existed";
        return intentless(db, id, PaymentStatus::Canceled, why, Source::Expiry).await;
    };
    match payments::attach_intent(db, id, &v.id, &v.stripe_status).await? {
        Attached::Attached(_) => Ok(Orphan::Intent(v)),
        Attached::NotFound => Ok(Orphan::Done(Outcome::NoRow)),
        Attached::Refused(p) if p.stripe_payment_intent_id.as_deref() == Some(v.id.as_str()) => {
            Ok(Orphan::Intent(v))
        }
        Attached::Refused(p) => {
            // Went final (a cancel, under the create key's lease) while we looked. The
            // intent must never be paid: nobody has its secret, and it is canceled here.
            if !v.status().is_some_and(PaymentStatus::is_final) {
                let key = attempt_key("stray", &id, &Uuid::now_v7());
                if let Err(e) = stripe.cancel_intent(&v.id, Some(EXPIRY_REASON), &key).await {
                    tracing::error!(payment_id = %id, intent = %v.id, error = %e, "could not cancel a stray PaymentIntent");
                }
            }
            match p.stripe_payment_intent_id {
                Some(theirs) if p.status == PaymentStatus::Pending => {
                    Ok(Orphan::Intent(stripe.retrieve_intent(&theirs).await?))
                }
                _ => Ok(Orphan::Done(Outcome::AlreadyFinal)),
            }
        }
    }
}

/// Ends a payment that has no PaymentIntent anywhere (Stripe refused to make one, or it
/// expired before one existed): only our side knows of it.
async fn intentless(
    db: &Primary,
    id: PaymentId,
    to: PaymentStatus,
    why: &str,
    source: Source,
) -> Result<Orphan, PollError> {
    let obs = Observation::without_intent(to, Some(why), source);
    Ok(Orphan::Done(
        match payments::apply_status(db, id, &obs).await? {
            Applied::Changed(_) => Outcome::Resolved { to, source },
            Applied::NotFound => Outcome::NoRow,
            _ => Outcome::AlreadyFinal,
        },
    ))
}
