//! The guarded path: every statement that changes a payment's status, its PaymentIntent
//! or Stripe's status of it is here, and each first checks the row it changes (under a
//! lock, or in the UPDATE's own condition) against the core's transition table. The
//! `payments_guard` trigger (migration 0008) refuses anything else, whichever statement
//! tries. Nothing else in the crate UPDATEs `payments`.

use paystream_core::PaymentId;
use paystream_core::status::{Transition, transition};
use paystream_core::{IntentView, PaymentStatus};
use serde_json::Value;
use sqlx::PgConnection;

use super::{Attention, COLUMNS, Payment, Source, by_id_in};
use crate::{DbError, Primary};

/// What `attach_intent` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Attached {
    /// The payment is pending and now (or already) holds this intent: its client secret
    /// may be handed out.
    Attached(Payment),
    /// The payment is final, or holds another intent: this intent must not be handed out
    /// (and, if it is a stray, should be canceled at Stripe).
    Refused(Payment),
    NotFound,
}

/// Records the PaymentIntent created for a payment: only onto a pending payment, never
/// replacing a different one. The one UPDATE that sets an intent for a creator (the API,
/// a cancel, the reconciler); an observed intent is linked in `apply_locked`.
pub async fn attach_intent(
    db: &Primary,
    id: PaymentId,
    intent_id: &str,
    stripe_status: &str,
) -> Result<Attached, DbError> {
    attach_intent_in(
        &mut *db.pool().acquire().await?,
        id,
        intent_id,
        stripe_status,
    )
    .await
}

/// `attach_intent` inside the caller's transaction.
pub async fn attach_intent_in(
    conn: &mut PgConnection,
    id: PaymentId,
    intent_id: &str,
    stripe_status: &str,
) -> Result<Attached, DbError> {
    let attached: Option<Payment> = sqlx::query_as(&attach_sql())
        .bind(id.as_uuid())
        .bind(intent_id)
        .bind(stripe_status)
        .fetch_optional(&mut *conn)
        .await?;
    match attached {
        Some(p) => Ok(Attached::Attached(p)),
        None => not_attached(conn, id).await,
    }
}

/// The attach itself: links intent `$2` (Stripe's status of it `$3`) to payment `$1` if it
/// is pending and holds no other intent, and returns the linked row. Written once, so the
/// statement that also stores a create's answer (`idempotency::attach_and_complete`) links
/// exactly as `attach_intent` does.
pub(crate) fn attach_sql() -> String {
    format!(
        "UPDATE payments SET stripe_payment_intent_id = $2,
                stripe_status = CASE WHEN stripe_payment_intent_id IS NULL THEN $3 ELSE stripe_status END
         WHERE id = $1 AND status = 'pending'
           AND (stripe_payment_intent_id IS NULL OR stripe_payment_intent_id = $2)
         RETURNING {COLUMNS}"
    )
}

/// What `attach_sql` makes of `p`, if no other write comes between: the intent linked,
/// Stripe's status of it kept only if it is the first, and the version the trigger gives
/// the next update. Its `updated_at` is the trigger's to set, and left as it was.
pub(crate) fn as_attached(p: &Payment, intent_id: &str, stripe_status: &str) -> Payment {
    let mut next = p.clone();
    if next.stripe_payment_intent_id.is_none() {
        next.stripe_status = Some(stripe_status.to_owned());
    }
    next.stripe_payment_intent_id = Some(intent_id.to_owned());
    next.version += 1;
    next
}

/// Why an attach matched no row: the payment is final or holds another intent, or it is
/// not there.
pub(crate) async fn not_attached(
    conn: &mut PgConnection,
    id: PaymentId,
) -> Result<Attached, DbError> {
    Ok(match by_id_in(conn, id).await? {
        Some(p) => Attached::Refused(p),
        None => Attached::NotFound,
    })
}

/// Flags a pending payment for an operator; the reconciler stops polling it. Returns
/// whether this call set the flag.
pub async fn flag_attention(db: &Primary, id: PaymentId, why: Attention) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE payments SET attention = $2, attention_at = now()
         WHERE id = $1 AND status = 'pending' AND attention IS NULL",
    )
    .bind(id.as_uuid())
    .bind(why.as_str())
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// An operator has dealt with it: the flag goes, and a pending payment is polled again.
/// Returns the flag it had.
pub async fn clear_attention(db: &Primary, id: PaymentId) -> Result<Option<Attention>, DbError> {
    let had: Option<Option<String>> = sqlx::query_scalar(
        "UPDATE payments p SET attention = NULL, attention_at = NULL
         FROM (SELECT id, attention FROM payments WHERE id = $1 FOR UPDATE) old
         WHERE p.id = old.id AND old.attention IS NOT NULL
         RETURNING old.attention",
    )
    .bind(id.as_uuid())
    .fetch_optional(db.pool())
    .await?;
    Ok(had.flatten().as_deref().and_then(Attention::parse))
}

/// What someone (Stripe through a webhook or a poll, the API, an operator) says a
/// payment's status is.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    pub status: PaymentStatus,
    /// The PaymentIntent observed. A payment that holds none yet is linked to it here,
    /// under the row's lock (the API may have died before storing the id it created).
    pub intent: Option<&'a str>,
    pub stripe_status: Option<&'a str>,
    pub error: Option<&'a str>,
    pub source: Source,
    pub detail: Option<Value>,
    /// What Stripe took, when the observation is of a succeeded intent.
    pub amount_received: Option<i64>,
}

impl<'a> Observation<'a> {
    /// What Stripe says of one of our PaymentIntents: `status` (its status, as ours), its
    /// own finer status and last error, and the intent in the history's detail.
    pub fn of_intent(status: PaymentStatus, intent: &'a IntentView, source: Source) -> Self {
        Observation {
            status,
            intent: Some(&intent.id),
            stripe_status: Some(&intent.stripe_status),
            error: intent.last_error.as_deref(),
            source,
            detail: Some(
                serde_json::json!({"payment_intent": intent.id, "stripe_status": intent.stripe_status}),
            ),
            // Stripe's amount_received is 0 until the money moves; a peer that omits it
            // (localstripe) took the whole amount.
            amount_received: (intent.amount_received > 0).then_some(intent.amount_received),
        }
    }

    /// An outcome only our side knows: no PaymentIntent exists for the payment (Stripe
    /// refused to make one, or it expired before one existed, or was canceled first).
    pub fn without_intent(status: PaymentStatus, why: Option<&'a str>, source: Source) -> Self {
        Observation {
            status,
            intent: None,
            stripe_status: None,
            error: why,
            source,
            detail: None,
            amount_received: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The status changed (and a history row was written).
    Changed(Payment),
    /// Already in that status; Stripe's finer status and error may have been refreshed.
    Unchanged(Payment),
    /// The payment is final and the observation disagrees: no status written (an intent
    /// the payment held none of is linked all the same: it is this payment's).
    Conflict(Payment),
    /// The observation is about another PaymentIntent than the one the payment holds (it
    /// was attached meanwhile): nothing written. Whoever sent it may try again later.
    ForeignIntent(Payment),
    /// Stripe took the money after we said canceled or failed: now `succeeded`, flagged
    /// `charged_after_cancel` (see `Transition::Overturn`).
    Overturned(Payment),
    NotFound,
}

impl Applied {
    /// The payment after the observation, if it exists.
    pub fn payment(self) -> Option<Payment> {
        match self {
            Applied::Changed(p)
            | Applied::Unchanged(p)
            | Applied::Conflict(p)
            | Applied::ForeignIntent(p)
            | Applied::Overturned(p) => Some(p),
            Applied::NotFound => None,
        }
    }
}

/// The one function that changes a payment's status, in its own transaction.
pub async fn apply_status(
    db: &Primary,
    id: PaymentId,
    obs: &Observation<'_>,
) -> Result<Applied, DbError> {
    let mut tx = db.pool().begin().await?;
    let applied = apply_status_in(&mut tx, id, obs).await?;
    tx.commit().await?;
    Ok(applied)
}

/// The same inside the caller's transaction (e.g. with a webhook's dedupe insert): locks
/// the row, then `apply_locked`.
pub async fn apply_status_in(
    tx: &mut PgConnection,
    id: PaymentId,
    obs: &Observation<'_>,
) -> Result<Applied, DbError> {
    let locked: Option<Payment> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE id = $1 FOR UPDATE"
    ))
    .bind(id.as_uuid())
    .fetch_optional(&mut *tx)
    .await?;
    match locked {
        Some(row) => apply_locked(tx, Locked(row), obs).await,
        None => Ok(Applied::NotFound),
    }
}

/// A payment row as the caller's transaction locked it (`FOR UPDATE`): what
/// `apply_locked` decides from, so no status is decided on a row another transaction may
/// be changing. Only this module's locking reads make one.
#[derive(Debug)]
pub struct Locked(Payment);

impl Locked {
    pub fn payment(&self) -> &Payment {
        &self.0
    }
}

/// Our payment for a PaymentIntent Stripe told us about (a signed event), locked: by the
/// intent id we stored, else by the `metadata.payment_id` Stripe echoes if that payment
/// holds no intent yet (the API may have died before storing it; `apply_locked` links
/// it). The lookup and the lock are one statement, one round trip for every event. Only
/// locks: every write of a payment goes through `apply_locked` or `attach_intent`.
pub async fn lock_for_intent(
    tx: &mut PgConnection,
    intent_id: &str,
    payment_id: Option<PaymentId>,
) -> Result<Option<Locked>, DbError> {
    // The lookup runs once, before the lock; a row changed meanwhile is locked as it is
    // after that change (`apply_locked` then finds whether it took another intent).
    let found: Option<Payment> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE id = (
             SELECT id FROM (
                 SELECT payment_id AS id, 1 AS pref FROM payment_intents WHERE intent_id = $1
                 UNION ALL
                 SELECT id, 2 FROM payments WHERE id = $2 AND stripe_payment_intent_id IS NULL
             ) found ORDER BY pref LIMIT 1
         ) FOR UPDATE"
    ))
    .bind(intent_id)
    .bind(payment_id.map(PaymentId::as_uuid))
    .fetch_optional(&mut *tx)
    .await?;
    Ok(found.map(Locked))
}

/// Asks the core's transition table about a locked payment and writes the change with its
/// history row: the one place a payment's status changes.
pub async fn apply_locked(
    tx: &mut PgConnection,
    locked: Locked,
    obs: &Observation<'_>,
) -> Result<Applied, DbError> {
    let Locked(mut current) = locked;
    let id = current.id;
    if let (Some(held), Some(seen)) = (&current.stripe_payment_intent_id, obs.intent)
        && held != seen
    {
        // About another PaymentIntent than the one this payment holds: never ours to
        // write, whatever it says.
        return Ok(Applied::ForeignIntent(current));
    }
    if let (None, Some(intent)) = (&current.stripe_payment_intent_id, obs.intent) {
        // Whatever this intent says (Stripe took the money, say) is about this payment,
        // final or not: it is linked before the transition is decided.
        current = sqlx::query_as(&format!(
            "UPDATE payments SET stripe_payment_intent_id = $2 WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .bind(id.as_uuid())
        .bind(intent)
        .fetch_one(&mut *tx)
        .await?;
    }
    let from = current.status;
    let applied = match transition(from, obs.status) {
        Transition::Conflict => Applied::Conflict(current),
        Transition::Unchanged => {
            let refreshed = obs
                .stripe_status
                .is_some_and(|s| current.stripe_status.as_deref() != Some(s))
                || obs
                    .error
                    .is_some_and(|e| current.last_error.as_deref() != Some(e));
            if refreshed && !from.is_final() {
                let p: Payment = sqlx::query_as(&format!(
                    "UPDATE payments SET stripe_status = coalesce($2, stripe_status), last_error = coalesce($3, last_error)
                     WHERE id = $1 RETURNING {COLUMNS}"
                ))
                .bind(id.as_uuid())
                .bind(obs.stripe_status)
                .bind(obs.error)
                .fetch_one(&mut *tx)
                .await?;
                Applied::Unchanged(p)
            } else {
                Applied::Unchanged(current)
            }
        }
        Transition::Apply | Transition::Overturn => {
            let overturn = matches!(transition(from, obs.status), Transition::Overturn);
            let attention = overturn.then_some(Attention::ChargedAfterCancel.as_str());
            let detail = if overturn {
                let mut d = obs
                    .detail
                    .clone()
                    .unwrap_or_else(|| Value::Object(Default::default()));
                if let Value::Object(m) = &mut d {
                    m.insert("overturned".into(), Value::String(from.as_str().into()));
                    m.insert(
                        "attention".into(),
                        Value::String(Attention::ChargedAfterCancel.as_str().into()),
                    );
                }
                Some(d)
            } else {
                obs.detail.clone()
            };
            // The change and its history row in one statement: one round trip, for every
            // status change (webhooks, polls, the API's own).
            let p: Payment = sqlx::query_as(&format!(
                "WITH changed AS (
                     UPDATE payments SET status = $2, stripe_status = coalesce($3, stripe_status),
                            last_error = coalesce($4, last_error), resolution_source = $5,
                            resolved_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END,
                            attention = coalesce($6, attention),
                            attention_at = CASE WHEN $6 IS NULL THEN attention_at ELSE now() END,
                            amount_captured = CASE WHEN $2 = 'succeeded' THEN least(coalesce($7, amount), amount) END
                     WHERE id = $1 RETURNING {COLUMNS}
                 ), history AS (
                     INSERT INTO payment_status_history (payment_id, from_status, to_status, source, detail)
                     SELECT id, $8, $2, $5, $9 FROM changed
                 )
                 SELECT {COLUMNS} FROM changed"
            ))
            .bind(id.as_uuid())
            .bind(obs.status.as_str())
            .bind(obs.stripe_status)
            .bind(obs.error)
            .bind(obs.source.as_str())
            .bind(attention)
            .bind(obs.amount_received)
            .bind(from.as_str())
            .bind(&detail)
            .fetch_one(&mut *tx)
            .await?;
            if overturn {
                tracing::error!(payment_id = %id, from = from.as_str(), source = obs.source.as_str(), "stripe took the money after we said otherwise: now succeeded, flagged for an operator");
                Applied::Overturned(p)
            } else {
                Applied::Changed(p)
            }
        }
    };
    Ok(applied)
}
