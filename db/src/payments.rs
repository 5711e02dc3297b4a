//! Payments and their status history.

use chrono::{DateTime, Utc};
use paystream_core::status::{Transition, transition};
use paystream_core::{IntentView, Money, PaymentStatus};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::DbError;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct Payment {
    pub id: Uuid,
    pub client_id: Uuid,
    pub idempotency_key: String,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub stripe_payment_intent_id: Option<String>,
    pub stripe_status: Option<String>,
    pub last_error: Option<String>,
    pub description: Option<String>,
    pub customer_email: Option<String>,
    pub metadata: Value,
    pub resolution_source: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// Why an operator must look at it (`Attention`), if they must.
    pub attention: Option<String>,
}

impl Payment {
    pub fn status(&self) -> Result<PaymentStatus, DbError> {
        self.status
            .parse()
            .map_err(|e: paystream_core::StatusError| DbError::Corrupt(e.to_string()))
    }
}

/// Who changed a payment's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Api,
    Webhook,
    Poll,
    Expiry,
    Operator,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Webhook => "webhook",
            Source::Poll => "poll",
            Source::Expiry => "expiry",
            Source::Operator => "operator",
        }
    }
}

pub struct NewPayment<'a> {
    pub client_id: Uuid,
    pub idempotency_key: &'a str,
    pub money: Money,
    pub description: Option<&'a str>,
    pub customer_email: Option<&'a str>,
    pub metadata: &'a Value,
}

/// Why a payment needs an operator: the cases that cannot converge on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attention {
    /// Stripe took the money after we said canceled or failed: now `succeeded`; someone
    /// must refund it or tell the customer.
    ChargedAfterCancel,
    /// Stripe does not know the PaymentIntent we hold (wrong account, data loss).
    UnknownAtStripe,
    /// Stripe says a PaymentIntent status this code does not know.
    UnknownStripeStatus,
}

impl Attention {
    pub const ALL: [Attention; 3] = [
        Attention::ChargedAfterCancel,
        Attention::UnknownAtStripe,
        Attention::UnknownStripeStatus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Attention::ChargedAfterCancel => "charged_after_cancel",
            Attention::UnknownAtStripe => "unknown_at_stripe",
            Attention::UnknownStripeStatus => "unknown_stripe_status",
        }
    }

    pub fn parse(s: &str) -> Option<Attention> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// What an operator should do about it (shown in reports).
    pub fn action(self) -> &'static str {
        match self {
            Attention::ChargedAfterCancel => {
                "the customer was charged for a payment we had canceled or failed: refund it at Stripe or fulfil it, then `paystream attention clear`"
            }
            Attention::UnknownAtStripe => {
                "Stripe does not know this PaymentIntent: check the account and key (test or live mode), then cancel the payment or `paystream attention clear` to poll again"
            }
            Attention::UnknownStripeStatus => {
                "Stripe answered a status this version does not know: upgrade, then `paystream attention clear` to poll again"
            }
        }
    }
}

// `version` and `updated_at` are owned by the `payments_bump_version` trigger: no UPDATE
// below sets them.
const COLUMNS: &str = "id, client_id, idempotency_key, amount, currency, status, stripe_payment_intent_id, \
     stripe_status, last_error, description, customer_email, metadata, resolution_source, version, \
     created_at, updated_at, resolved_at, attention";

/// Inserts a `pending` payment and its first history row, inside the caller's transaction.
pub async fn insert_pending(
    conn: &mut PgConnection,
    id: Uuid,
    new: &NewPayment<'_>,
) -> Result<Payment, DbError> {
    let payment: Payment = sqlx::query_as(&format!(
        "INSERT INTO payments (id, client_id, idempotency_key, amount, currency, description, customer_email, metadata)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(new.client_id)
    .bind(new.idempotency_key)
    .bind(new.money.amount())
    .bind(new.money.currency().code())
    .bind(new.description)
    .bind(new.customer_email)
    .bind(new.metadata)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO payment_status_history (payment_id, from_status, to_status, source) VALUES ($1, NULL, 'pending', 'api')")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(payment)
}

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
/// a cancel, the reconciler); webhooks link intents through `find_for_intent`.
pub async fn attach_intent(
    db: &PgPool,
    id: Uuid,
    intent_id: &str,
    stripe_status: &str,
) -> Result<Attached, DbError> {
    let attached: Option<Payment> = sqlx::query_as(&format!(
        "UPDATE payments SET stripe_payment_intent_id = $2,
                stripe_status = CASE WHEN stripe_payment_intent_id IS NULL THEN $3 ELSE stripe_status END
         WHERE id = $1 AND status = 'pending'
           AND (stripe_payment_intent_id IS NULL OR stripe_payment_intent_id = $2)
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(intent_id)
    .bind(stripe_status)
    .fetch_optional(db)
    .await?;
    if let Some(p) = attached {
        return Ok(Attached::Attached(p));
    }
    Ok(match by_id(db, id).await? {
        Some(p) => Attached::Refused(p),
        None => Attached::NotFound,
    })
}

/// Flags a pending payment for an operator; the reconciler stops polling it. Returns
/// whether this call set the flag.
pub async fn flag_attention(db: &PgPool, id: Uuid, why: Attention) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE payments SET attention = $2, attention_at = now()
         WHERE id = $1 AND status = 'pending' AND attention IS NULL",
    )
    .bind(id)
    .bind(why.as_str())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// An operator has dealt with it: the flag goes, and a pending payment is polled again.
/// Returns the flag it had.
pub async fn clear_attention(db: &PgPool, id: Uuid) -> Result<Option<Attention>, DbError> {
    let had: Option<Option<String>> = sqlx::query_scalar(
        "UPDATE payments p SET attention = NULL, attention_at = NULL
         FROM (SELECT id, attention FROM payments WHERE id = $1 FOR UPDATE) old
         WHERE p.id = old.id AND old.attention IS NOT NULL
         RETURNING old.attention",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(had.flatten().as_deref().and_then(Attention::parse))
}

/// Payments that need an operator, oldest flag first.
pub async fn needing_attention(db: &PgPool, limit: i64) -> Result<Vec<Payment>, DbError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE attention IS NOT NULL ORDER BY attention_at LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(db)
    .await?)
}

pub async fn get<'e, E: sqlx::PgExecutor<'e>>(
    db: E,
    client_id: Uuid,
    id: Uuid,
) -> Result<Option<Payment>, DbError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE id = $1 AND client_id = $2"
    ))
    .bind(id)
    .bind(client_id)
    .fetch_optional(db)
    .await?)
}

/// A payment whoever owns it (for the services, never for clients).
pub async fn by_id<'e, E: sqlx::PgExecutor<'e>>(
    db: E,
    id: Uuid,
) -> Result<Option<Payment>, DbError> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM payments WHERE id = $1"))
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<PaymentStatus>,
    pub created_gte: Option<DateTime<Utc>>,
    pub created_lt: Option<DateTime<Utc>>,
    pub starting_after: Option<Uuid>,
    pub limit: i64,
}

/// Newest first; `starting_after` is the last id of the previous page (keyset pagination
/// on (created_at, id), so pages stay stable while payments are added).
pub async fn list(db: &PgPool, client_id: Uuid, f: &ListFilter) -> Result<Vec<Payment>, DbError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments p
         WHERE client_id = $1
           AND ($2::text IS NULL OR status = $2)
           AND ($3::timestamptz IS NULL OR created_at >= $3)
           AND ($4::timestamptz IS NULL OR created_at < $4)
           AND ($5::uuid IS NULL OR (created_at, id) < (SELECT created_at, id FROM payments WHERE id = $5 AND client_id = $1))
         ORDER BY created_at DESC, id DESC
         LIMIT $6"
    ))
    .bind(client_id)
    .bind(f.status.map(PaymentStatus::as_str))
    .bind(f.created_gte)
    .bind(f.created_lt)
    .bind(f.starting_after)
    .bind(f.limit)
    .fetch_all(db)
    .await?)
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct HistoryEntry {
    pub from_status: Option<String>,
    pub to_status: String,
    pub source: String,
    pub detail: Option<Value>,
    pub created_at: DateTime<Utc>,
}

/// The payment's status history, oldest first; `None` if the client has no such payment.
pub async fn history(
    db: &PgPool,
    client_id: Uuid,
    id: Uuid,
) -> Result<Option<Vec<HistoryEntry>>, DbError> {
    if get(db, client_id, id).await?.is_none() {
        return Ok(None);
    }
    let rows = sqlx::query_as(
        "SELECT from_status, to_status, source, detail, created_at FROM payment_status_history
         WHERE payment_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    Ok(Some(rows))
}

/// What someone (Stripe through a webhook or a poll, the API, an operator) says a
/// payment's status is.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    pub status: PaymentStatus,
    pub stripe_status: Option<&'a str>,
    pub error: Option<&'a str>,
    pub source: Source,
    pub detail: Option<Value>,
}

impl<'a> Observation<'a> {
    /// What Stripe says of one of our PaymentIntents: `status` (its status, as ours), its
    /// own finer status and last error, and the intent in the history's detail.
    pub fn of_intent(status: PaymentStatus, intent: &'a IntentView, source: Source) -> Self {
        Observation {
            status,
            stripe_status: Some(&intent.stripe_status),
            error: intent.last_error.as_deref(),
            source,
            detail: Some(
                serde_json::json!({"payment_intent": intent.id, "stripe_status": intent.stripe_status}),
            ),
        }
    }

    /// An outcome only our side knows: no PaymentIntent exists for the payment (Stripe
    /// refused to make one, or it expired before one existed, or was canceled first).
    pub fn without_intent(status: PaymentStatus, why: Option<&'a str>, source: Source) -> Self {
        Observation {
            status,
            stripe_status: None,
            error: why,
            source,
            detail: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The status changed (and a history row was written).
    Changed(Payment),
    /// Already in that status; Stripe's finer status and error may have been refreshed.
    Unchanged(Payment),
    /// The payment is final and the observation disagrees: nothing written.
    Conflict(Payment),
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
            | Applied::Overturned(p) => Some(p),
            Applied::NotFound => None,
        }
    }
}

/// The one function that changes a payment's status, in its own transaction.
pub async fn apply_status(
    db: &PgPool,
    id: Uuid,
    obs: &Observation<'_>,
) -> Result<Applied, DbError> {
    let mut tx = db.begin().await?;
    let applied = apply_status_in(&mut tx, id, obs).await?;
    tx.commit().await?;
    Ok(applied)
}

/// The same inside the caller's transaction (e.g. with a webhook's dedupe insert): locks
/// the row, asks the core's transition table, writes the change and its history row.
pub async fn apply_status_in(
    tx: &mut PgConnection,
    id: Uuid,
    obs: &Observation<'_>,
) -> Result<Applied, DbError> {
    let current: Option<Payment> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(current) = current else {
        return Ok(Applied::NotFound);
    };
    let from = current.status()?;
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
                .bind(id)
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
            let p: Payment = sqlx::query_as(&format!(
                "UPDATE payments SET status = $2, stripe_status = coalesce($3, stripe_status),
                        last_error = coalesce($4, last_error), resolution_source = $5,
                        resolved_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END,
                        attention = coalesce($6, attention),
                        attention_at = CASE WHEN $6 IS NULL THEN attention_at ELSE now() END
                 WHERE id = $1 RETURNING {COLUMNS}"
            ))
            .bind(id)
            .bind(obs.status.as_str())
            .bind(obs.stripe_status)
            .bind(obs.error)
            .bind(obs.source.as_str())
            .bind(attention)
            .fetch_one(&mut *tx)
            .await?;
            let detail = if overturn {
                tracing::error!(payment_id = %id, from = from.as_str(), source = obs.source.as_str(), "stripe took the money after we said otherwise: now succeeded, flagged for an operator");
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
            sqlx::query(
                "INSERT INTO payment_status_history (payment_id, from_status, to_status, source, detail)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(from.as_str())
            .bind(obs.status.as_str())
            .bind(obs.source.as_str())
            .bind(&detail)
            .execute(&mut *tx)
            .await?;
            if overturn {
                Applied::Overturned(p)
            } else {
                Applied::Changed(p)
            }
        }
    };
    Ok(applied)
}

/// Our payment for a PaymentIntent Stripe told us about (a signed event): by the intent
/// id we stored, else by the `metadata.payment_id` Stripe echoes. The API may have died
/// before storing the id, which is then stored now; so is an intent of a payment that went
/// final without one, because whatever that intent says (Stripe took the money, say) is
/// about this payment.
pub async fn find_for_intent(
    tx: &mut PgConnection,
    intent_id: &str,
    payment_id: Option<Uuid>,
) -> Result<Option<Uuid>, DbError> {
    let by_intent: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM payments WHERE stripe_payment_intent_id = $1")
            .bind(intent_id)
            .fetch_optional(&mut *tx)
            .await?;
    if by_intent.is_some() {
        return Ok(by_intent);
    }
    let Some(pid) = payment_id else {
        return Ok(None);
    };
    Ok(sqlx::query_scalar(
        "UPDATE payments SET stripe_payment_intent_id = $2
         WHERE id = $1 AND stripe_payment_intent_id IS NULL RETURNING id",
    )
    .bind(pid)
    .bind(intent_id)
    .fetch_optional(&mut *tx)
    .await?)
}
