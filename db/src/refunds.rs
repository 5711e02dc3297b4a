//! Refunds: money going back, in rows of their own beside the payments they refund.
//!
//! Invariant R1 (never over-refund): the refunds of a payment that hold money (pending
//! or succeeded) never add up to more than it captured. `begin` reserves the amount in
//! the transaction that commits the pending refund, under the payment's row lock, before
//! Stripe is called; the `refunds_guard` trigger (migration 0009) refuses any statement
//! that would break it. A refund that fails frees its amount again.
//!
//! Invariant R2 (one refund at Stripe per refund of ours): Stripe is called with
//! `refund_key(id)`, and a refund links to one Stripe refund, never another.

use chrono::{DateTime, Utc};
use paystream_core::refund::transition;
use paystream_core::status::Transition;
use paystream_core::{ClientId, PaymentId, RefundId};
use paystream_core::{PaymentStatus, RefundReason, RefundStatus, RefundView};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection, Row};
use std::time::Duration;
use uuid::Uuid;

use crate::idempotency::{self, Claim, Lease};
use crate::payments::{COLUMNS as PAYMENT_COLUMNS, Payment, Source, parse_source};
use crate::{DbError, Primary};

#[derive(Debug, Clone, PartialEq)]
pub struct Refund {
    pub id: RefundId,
    pub payment_id: PaymentId,
    /// Who asked for it: the payment's owner or an operator.
    pub requested_by: ClientId,
    pub idempotency_key: String,
    pub amount: i64,
    pub currency: String,
    pub reason: Option<RefundReason>,
    pub metadata: Value,
    pub status: RefundStatus,
    pub stripe_refund_id: Option<String>,
    pub stripe_status: Option<String>,
    pub failure_reason: Option<String>,
    pub resolution_source: Option<Source>,
    pub attention: Option<RefundAttention>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// Why a refund needs an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundAttention {
    /// Stripe reported it failed after it had succeeded: the customer was told they got
    /// their money back and did not.
    FailedAfterSuccess,
    /// Stripe does not know the refund we hold.
    UnknownAtStripe,
    /// Stripe says a refund status this code does not know.
    UnknownStripeStatus,
}

impl RefundAttention {
    pub const ALL: [RefundAttention; 3] = [
        Self::FailedAfterSuccess,
        Self::UnknownAtStripe,
        Self::UnknownStripeStatus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailedAfterSuccess => "refund_failed_after_success",
            Self::UnknownAtStripe => "unknown_at_stripe",
            Self::UnknownStripeStatus => "unknown_stripe_status",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// What an operator should do about it (shown in reports).
    pub fn action(self) -> &'static str {
        match self {
            Self::FailedAfterSuccess => {
                "Stripe could not return the money after reporting the refund succeeded: contact the customer, then refund again or pay them another way"
            }
            Self::UnknownAtStripe => {
                "Stripe does not know this refund: check the account and key, then refund again if the customer is still owed"
            }
            Self::UnknownStripeStatus => {
                "Stripe answered a refund status this version does not know: upgrade"
            }
        }
    }
}

pub(crate) const COLUMNS: &str = "id, payment_id, requested_by, idempotency_key, amount, currency, reason, metadata, \
     status, stripe_refund_id, stripe_status, failure_reason, resolution_source, attention, version, \
     created_at, updated_at, resolved_at";

impl FromRow<'_, PgRow> for Refund {
    fn from_row(r: &PgRow) -> Result<Self, sqlx::Error> {
        let corrupt = |e: DbError| sqlx::Error::Decode(e.to_string().into());
        Ok(Refund {
            id: RefundId::from_uuid(r.try_get("id")?),
            payment_id: PaymentId::from_uuid(r.try_get("payment_id")?),
            requested_by: ClientId::from_uuid(r.try_get("requested_by")?),
            idempotency_key: r.try_get("idempotency_key")?,
            amount: r.try_get("amount")?,
            currency: r.try_get("currency")?,
            reason: r
                .try_get::<Option<&str>, _>("reason")?
                .map(|s| {
                    RefundReason::parse(s).ok_or_else(|| DbError::Corrupt(format!("reason {s:?}")))
                })
                .transpose()
                .map_err(corrupt)?,
            metadata: r.try_get("metadata")?,
            status: parse_status(r.try_get("status")?).map_err(corrupt)?,
            stripe_refund_id: r.try_get("stripe_refund_id")?,
            stripe_status: r.try_get("stripe_status")?,
            failure_reason: r.try_get("failure_reason")?,
            resolution_source: r
                .try_get::<Option<&str>, _>("resolution_source")?
                .map(parse_source)
                .transpose()
                .map_err(corrupt)?,
            attention: r
                .try_get::<Option<&str>, _>("attention")?
                .map(parse_attention)
                .transpose()
                .map_err(corrupt)?,
            version: r.try_get("version")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            resolved_at: r.try_get("resolved_at")?,
        })
    }
}

pub(crate) fn parse_status(s: &str) -> Result<RefundStatus, DbError> {
    s.parse()
        .map_err(|e: paystream_core::StatusError| DbError::Corrupt(format!("refund {e}")))
}

pub(crate) fn parse_attention(s: &str) -> Result<RefundAttention, DbError> {
    RefundAttention::parse(s).ok_or_else(|| DbError::Corrupt(format!("refund attention {s}")))
}

/// Whose payments a requester may refund or read the refunds of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A client: its own payments only (another's are not found).
    Own(ClientId),
    /// An operator: any payment.
    Any,
}

impl Scope {
    fn owner(self) -> Option<Uuid> {
        match self {
            Scope::Own(c) => Some(c.as_uuid()),
            Scope::Any => None,
        }
    }
}

/// A refund to commit.
#[derive(Debug, Clone)]
pub struct NewRefund<'a> {
    pub payment_id: PaymentId,
    pub requested_by: ClientId,
    pub scope: Scope,
    pub idempotency_key: &'a str,
    /// `None`: everything left to refund.
    pub amount: Option<i64>,
    pub reason: Option<RefundReason>,
    pub metadata: &'a Value,
}

#[derive(Debug)]
pub enum BeginRefund {
    /// The key and the pending refund (its amount reserved) were committed together.
    Created(Refund, Lease),
    /// The first request with this key stopped before a final outcome: resume its refund.
    Resume(Refund, Lease),
    Replay {
        status: u16,
        body: Value,
    },
    Mismatch,
    InFlight,
    /// No such payment (for this requester). Nothing was committed.
    PaymentNotFound,
    /// The payment has not succeeded (nothing was taken). Nothing was committed.
    NotRefundable(Box<Payment>),
    /// The amount is more than what is left to refund. Nothing was committed.
    ExceedsRemaining {
        payment: Box<Payment>,
        remaining: i64,
    },
}

/// Claims the key and commits a pending refund with its amount reserved (R1), or
/// refuses and commits nothing.
pub async fn begin(
    db: &Primary,
    new: &NewRefund<'_>,
    request_hash: &[u8],
    lease: Duration,
) -> Result<BeginRefund, DbError> {
    let mut tx = db.pool().begin().await?;
    let claim = idempotency::claim_in(
        &mut tx,
        new.requested_by,
        new.idempotency_key,
        request_hash,
        lease,
    )
    .await?;
    let lease = match claim {
        Claim::New(lease) => lease,
        Claim::Replay { status, body } => return Ok(BeginRefund::Replay { status, body }),
        Claim::Mismatch => return Ok(BeginRefund::Mismatch),
        Claim::InFlight => return Ok(BeginRefund::InFlight),
        Claim::Resume {
            lease, refund_id, ..
        } => {
            let refund_id =
                refund_id.ok_or_else(|| DbError::Corrupt("refund key without refund".into()))?;
            let refund = by_id_in(&mut *tx, refund_id)
                .await?
                .ok_or_else(|| DbError::Corrupt("refund key points to a missing refund".into()))?;
            tx.commit().await?;
            return Ok(BeginRefund::Resume(refund, lease));
        }
    };
    // The payment's row lock queues every refund of it, on any API instance: what is
    // left is counted and reserved by one at a time.
    let payment: Option<Payment> = sqlx::query_as(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1 AND ($2::uuid IS NULL OR client_id = $2) FOR UPDATE"
    ))
    .bind(new.payment_id.as_uuid())
    .bind(new.scope.owner())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(payment) = payment else {
        return Ok(BeginRefund::PaymentNotFound);
    };
    if payment.status != PaymentStatus::Succeeded {
        return Ok(BeginRefund::NotRefundable(Box::new(payment)));
    }
    let held: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(amount), 0)::bigint FROM refunds
         WHERE payment_id = $1 AND status IN ('pending', 'succeeded')",
    )
    .bind(new.payment_id.as_uuid())
    .fetch_one(&mut *tx)
    .await?;
    let remaining = paystream_core::refund::refundable(payment.captured(), [held]).unwrap_or(0);
    let amount = new.amount.unwrap_or(remaining);
    if amount <= 0 || amount > remaining {
        return Ok(BeginRefund::ExceedsRemaining {
            payment: Box::new(payment),
            remaining,
        });
    }
    let id = RefundId::generate();
    let refund: Refund = sqlx::query_as(&format!(
        "INSERT INTO refunds (id, payment_id, requested_by, idempotency_key, amount, currency, reason, metadata)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
    ))
    .bind(id.as_uuid())
    .bind(new.payment_id.as_uuid())
    .bind(new.requested_by.as_uuid())
    .bind(new.idempotency_key)
    .bind(amount)
    .bind(&payment.currency)
    .bind(new.reason.map(RefundReason::as_str))
    .bind(new.metadata)
    .fetch_one(&mut *tx)
    .await?;
    history(
        &mut tx,
        &refund,
        None,
        RefundStatus::Pending,
        Source::Api,
        None,
    )
    .await?;
    idempotency::link_refund(&mut tx, &lease, id).await?;
    tx.commit().await?;
    Ok(BeginRefund::Created(refund, lease))
}

async fn history(
    tx: &mut PgConnection,
    r: &Refund,
    from: Option<RefundStatus>,
    to: RefundStatus,
    source: Source,
    detail: Option<&Value>,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO refund_status_history (refund_id, payment_id, from_status, to_status, source, detail)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(r.id.as_uuid())
    .bind(r.payment_id.as_uuid())
    .bind(from.map(RefundStatus::as_str))
    .bind(to.as_str())
    .bind(source.as_str())
    .bind(detail)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A refund, if the requester may see it.
pub async fn get(db: &Primary, id: RefundId, scope: Scope) -> Result<Option<Refund>, DbError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM refunds r WHERE id = $1
           AND ($2::uuid IS NULL OR EXISTS (SELECT FROM payments p WHERE p.id = r.payment_id AND p.client_id = $2))"
    ))
    .bind(id.as_uuid())
    .bind(scope.owner())
    .fetch_optional(db.pool())
    .await?)
}

/// A refund whoever asked for it (for the services).
pub async fn by_id(db: &Primary, id: RefundId) -> Result<Option<Refund>, DbError> {
    by_id_in(db.pool(), id).await
}

async fn by_id_in<'e, E: sqlx::PgExecutor<'e>>(
    db: E,
    id: RefundId,
) -> Result<Option<Refund>, DbError> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM refunds WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(db)
            .await?,
    )
}

/// A payment's refunds, newest first, after `starting_after` (keyset pagination as for
/// payments); `None` if the requester has no such payment.
pub async fn list(
    db: &Primary,
    payment_id: PaymentId,
    scope: Scope,
    starting_after: Option<RefundId>,
    limit: i64,
) -> Result<Option<Vec<Refund>>, DbError> {
    let visible: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM payments WHERE id = $1 AND ($2::uuid IS NULL OR client_id = $2)",
    )
    .bind(payment_id.as_uuid())
    .bind(scope.owner())
    .fetch_optional(db.pool())
    .await?;
    if visible.is_none() {
        return Ok(None);
    }
    let rows = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM refunds
         WHERE payment_id = $1
           AND ($2::uuid IS NULL OR (created_at, id) < (SELECT created_at, id FROM refunds WHERE id = $2 AND payment_id = $1))
         ORDER BY created_at DESC, id DESC LIMIT $3"
    ))
    .bind(payment_id.as_uuid())
    .bind(starting_after.map(RefundId::as_uuid))
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    Ok(Some(rows))
}

/// One change of a refund's status, for the payment's history.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RefundHistoryEntry {
    pub refund_id: RefundId,
    pub from_status: Option<RefundStatus>,
    pub to_status: RefundStatus,
    pub source: Source,
    pub detail: Option<Value>,
    pub created_at: DateTime<Utc>,
}

/// The status changes of a payment's refunds, oldest first.
pub async fn history_of_payment(
    db: &Primary,
    payment_id: PaymentId,
) -> Result<Vec<RefundHistoryEntry>, DbError> {
    let rows: Vec<PgRow> = sqlx::query(
        "SELECT refund_id, from_status, to_status, source, detail, created_at FROM refund_status_history
         WHERE payment_id = $1 ORDER BY id",
    )
    .bind(payment_id.as_uuid())
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(RefundHistoryEntry {
                refund_id: RefundId::from_uuid(r.try_get("refund_id")?),
                from_status: r
                    .try_get::<Option<&str>, _>("from_status")?
                    .map(parse_status)
                    .transpose()?,
                to_status: parse_status(r.try_get("to_status")?)?,
                source: parse_source(r.try_get("source")?)?,
                detail: r.try_get("detail")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

/// What someone (Stripe through a webhook or a poll, the API) says a refund's status is.
#[derive(Debug, Clone)]
pub struct RefundObservation<'a> {
    pub status: RefundStatus,
    /// The Stripe refund observed; a refund that holds none yet is linked to it here,
    /// under the row's lock (the API may have died before storing the id).
    pub stripe_refund: Option<&'a str>,
    pub stripe_status: Option<&'a str>,
    pub failure_reason: Option<&'a str>,
    pub source: Source,
    pub detail: Option<Value>,
}

impl<'a> RefundObservation<'a> {
    /// What Stripe says of one of our refunds.
    pub fn of_stripe(status: RefundStatus, r: &'a RefundView, source: Source) -> Self {
        RefundObservation {
            status,
            stripe_refund: Some(&r.id),
            stripe_status: Some(&r.stripe_status),
            failure_reason: r.failure_reason.as_deref(),
            source,
            detail: Some(serde_json::json!({"refund": r.id, "stripe_status": r.stripe_status})),
        }
    }

    /// An outcome only our side knows: Stripe refused to create the refund.
    pub fn without_stripe(status: RefundStatus, why: &'a str, source: Source) -> Self {
        RefundObservation {
            status,
            stripe_refund: None,
            stripe_status: None,
            failure_reason: Some(why),
            source,
            detail: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RefundApplied {
    /// The status changed (a history row was written; the payment's `amount_refunded`
    /// follows).
    Changed(Refund),
    /// Already in that status (Stripe's finer status may have been refreshed).
    Unchanged(Refund),
    /// Final and the observation disagrees: nothing written.
    Conflict(Refund),
    /// About another Stripe refund than the one it holds: nothing written.
    ForeignRefund(Refund),
    /// Stripe reported it failed after it succeeded: now `failed`, flagged.
    Overturned(Refund),
    NotFound,
}

impl RefundApplied {
    pub fn refund(self) -> Option<Refund> {
        match self {
            Self::Changed(r)
            | Self::Unchanged(r)
            | Self::Conflict(r)
            | Self::ForeignRefund(r)
            | Self::Overturned(r) => Some(r),
            Self::NotFound => None,
        }
    }
}

/// The one function that changes a refund's status, in its own transaction.
pub async fn apply_status(
    db: &Primary,
    id: RefundId,
    obs: &RefundObservation<'_>,
) -> Result<RefundApplied, DbError> {
    let mut tx = db.pool().begin().await?;
    let applied = apply_status_in(&mut tx, id, obs).await?;
    tx.commit().await?;
    Ok(applied)
}

/// The same inside the caller's transaction: locks the payment and the refund, asks the core's refund
/// transition table, writes the change, its history row and the payment's refunded sum.
pub async fn apply_status_in(
    tx: &mut PgConnection,
    id: RefundId,
    obs: &RefundObservation<'_>,
) -> Result<RefundApplied, DbError> {
    // The payment's row lock first, as `begin` takes it: refunds of one payment change
    // one at a time, so each recount of `amount_refunded` sees the one before it (under
    // read committed, two concurrent recounts would each miss the other's refund).
    let payment: Option<Uuid> = sqlx::query_scalar(
        "SELECT p.id FROM payments p JOIN refunds r ON r.payment_id = p.id WHERE r.id = $1
         FOR UPDATE OF p",
    )
    .bind(id.as_uuid())
    .fetch_optional(&mut *tx)
    .await?;
    if payment.is_none() {
        return Ok(RefundApplied::NotFound);
    }
    let current: Option<Refund> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM refunds WHERE id = $1 FOR UPDATE"
    ))
    .bind(id.as_uuid())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(mut current) = current else {
        return Ok(RefundApplied::NotFound);
    };
    if let (Some(held), Some(seen)) = (&current.stripe_refund_id, obs.stripe_refund)
        && held != seen
    {
        return Ok(RefundApplied::ForeignRefund(current));
    }
    if let (None, Some(seen)) = (&current.stripe_refund_id, obs.stripe_refund) {
        current = sqlx::query_as(&format!(
            "UPDATE refunds SET stripe_refund_id = $2 WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .bind(id.as_uuid())
        .bind(seen)
        .fetch_one(&mut *tx)
        .await?;
    }
    let from = current.status;
    let step = transition(from, obs.status);
    Ok(match step {
        Transition::Conflict => RefundApplied::Conflict(current),
        Transition::Unchanged => {
            let refreshed = obs
                .stripe_status
                .is_some_and(|s| current.stripe_status.as_deref() != Some(s))
                || obs
                    .failure_reason
                    .is_some_and(|e| current.failure_reason.as_deref() != Some(e));
            if !refreshed {
                return Ok(RefundApplied::Unchanged(current));
            }
            RefundApplied::Unchanged(
                sqlx::query_as(&format!(
                    "UPDATE refunds SET stripe_status = coalesce($2, stripe_status), failure_reason = coalesce($3, failure_reason)
                     WHERE id = $1 RETURNING {COLUMNS}"
                ))
                .bind(id.as_uuid())
                .bind(obs.stripe_status)
                .bind(obs.failure_reason)
                .fetch_one(&mut *tx)
                .await?,
            )
        }
        Transition::Apply | Transition::Overturn => {
            let overturn = step == Transition::Overturn;
            let attention = overturn.then_some(RefundAttention::FailedAfterSuccess.as_str());
            let r: Refund = sqlx::query_as(&format!(
                "UPDATE refunds SET status = $2, stripe_status = coalesce($3, stripe_status),
                        failure_reason = coalesce($4, failure_reason), resolution_source = $5,
                        resolved_at = coalesce(resolved_at, now()),
                        attention = coalesce($6, attention),
                        attention_at = CASE WHEN $6 IS NULL THEN attention_at ELSE now() END
                 WHERE id = $1 RETURNING {COLUMNS}"
            ))
            .bind(id.as_uuid())
            .bind(obs.status.as_str())
            .bind(obs.stripe_status)
            .bind(obs.failure_reason)
            .bind(obs.source.as_str())
            .bind(attention)
            .fetch_one(&mut *tx)
            .await?;
            let detail = if overturn {
                tracing::error!(refund_id = %id, payment_id = %r.payment_id, "Stripe reported a succeeded refund failed: the customer did not get the money back; flagged for an operator");
                let mut d = obs
                    .detail
                    .clone()
                    .unwrap_or_else(|| Value::Object(Default::default()));
                if let Value::Object(m) = &mut d {
                    m.insert("overturned".into(), Value::String(from.as_str().into()));
                    m.insert(
                        "attention".into(),
                        Value::String(RefundAttention::FailedAfterSuccess.as_str().into()),
                    );
                }
                Some(d)
            } else {
                obs.detail.clone()
            };
            history(tx, &r, Some(from), obs.status, obs.source, detail.as_ref()).await?;
            if from == RefundStatus::Succeeded || obs.status == RefundStatus::Succeeded {
                // The payment says what went back: the sum of its succeeded refunds,
                // recounted (never incremented) so a replay cannot count one twice.
                sqlx::query(
                    "UPDATE payments SET amount_refunded = (
                        SELECT coalesce(sum(amount), 0) FROM refunds WHERE payment_id = $1 AND status = 'succeeded')
                     WHERE id = $1",
                )
                .bind(r.payment_id.as_uuid())
                .execute(&mut *tx)
                .await?;
            }
            if overturn {
                RefundApplied::Overturned(r)
            } else {
                RefundApplied::Changed(r)
            }
        }
    })
}

/// Our refund for a Stripe refund a signed event told us about: by the Stripe id we
/// stored, else by the `metadata.refund_id` Stripe echoes if that refund holds none yet.
pub async fn find_for_stripe_refund(
    tx: &mut PgConnection,
    stripe_refund_id: &str,
    refund_id: Option<RefundId>,
) -> Result<Option<RefundId>, DbError> {
    let found: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM (
            SELECT id, 1 AS pref FROM refunds WHERE stripe_refund_id = $1
            UNION ALL
            SELECT id, 2 FROM refunds WHERE id = $2 AND stripe_refund_id IS NULL
         ) found ORDER BY pref LIMIT 1",
    )
    .bind(stripe_refund_id)
    .bind(refund_id.map(RefundId::as_uuid))
    .fetch_optional(&mut *tx)
    .await?;
    Ok(found.map(RefundId::from_uuid))
}

/// Flags a pending refund for an operator; the reconciler stops polling it. Returns
/// whether this call set the flag.
pub async fn flag_attention(
    db: &Primary,
    id: RefundId,
    why: RefundAttention,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE refunds SET attention = $2, attention_at = now()
         WHERE id = $1 AND status = 'pending' AND attention IS NULL",
    )
    .bind(id.as_uuid())
    .bind(why.as_str())
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}
