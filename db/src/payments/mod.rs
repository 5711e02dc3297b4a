//! Payments and their status history.

use chrono::{DateTime, Utc};
use paystream_core::{CaptureMethod, Money, PaymentStatus};
use paystream_core::{ClientId, PaymentId};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection, Row};

use crate::{DbError, Primary};

mod guarded;

pub use guarded::{
    Applied, Attached, Locked, Observation, apply_locked, apply_status, apply_status_in,
    attach_intent, attach_intent_in, clear_attention, flag_attention, lock_for_intent,
};
pub(crate) use guarded::{as_attached, attach_sql, not_attached};

#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    pub id: PaymentId,
    pub client_id: ClientId,
    pub idempotency_key: String,
    pub amount: i64,
    pub currency: String,
    pub status: PaymentStatus,
    pub stripe_payment_intent_id: Option<String>,
    pub stripe_status: Option<String>,
    pub last_error: Option<String>,
    pub description: Option<String>,
    pub customer_email: Option<String>,
    pub metadata: Value,
    pub resolution_source: Option<Source>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// Why an operator must look at it, if they must.
    pub attention: Option<Attention>,
    pub capture_method: CaptureMethod,
    /// What Stripe took, once succeeded (less than `amount` after a partial capture).
    pub amount_captured: Option<i64>,
    /// The sum of its succeeded refunds.
    pub amount_refunded: i64,
}

impl Payment {
    /// What Stripe took: nothing until it succeeded; then the captured amount (rows that
    /// succeeded before captures were recorded took their whole amount).
    pub fn captured(&self) -> i64 {
        if self.status == PaymentStatus::Succeeded {
            self.amount_captured.unwrap_or(self.amount)
        } else {
            0
        }
    }
}

impl FromRow<'_, PgRow> for Payment {
    fn from_row(r: &PgRow) -> Result<Self, sqlx::Error> {
        let corrupt = |e: DbError| sqlx::Error::Decode(e.to_string().into());
        Ok(Payment {
            id: PaymentId::from_uuid(r.try_get("id")?),
            client_id: ClientId::from_uuid(r.try_get("client_id")?),
            idempotency_key: r.try_get("idempotency_key")?,
            amount: r.try_get("amount")?,
            currency: r.try_get("currency")?,
            status: parse_status(r.try_get("status")?).map_err(corrupt)?,
            stripe_payment_intent_id: r.try_get("stripe_payment_intent_id")?,
            stripe_status: r.try_get("stripe_status")?,
            last_error: r.try_get("last_error")?,
            description: r.try_get("description")?,
            customer_email: r.try_get("customer_email")?,
            metadata: r.try_get("metadata")?,
            resolution_source: r
                .try_get::<Option<&str>, _>("resolution_source")?
                .map(parse_source)
                .transpose()
                .map_err(corrupt)?,
            version: r.try_get("version")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            resolved_at: r.try_get("resolved_at")?,
            attention: r
                .try_get::<Option<&str>, _>("attention")?
                .map(parse_attention)
                .transpose()
                .map_err(corrupt)?,
            capture_method: parse_capture_method(r.try_get("capture_method")?).map_err(corrupt)?,
            amount_captured: r.try_get("amount_captured")?,
            amount_refunded: r.try_get("amount_refunded")?,
        })
    }
}

pub(crate) fn parse_capture_method(s: &str) -> Result<CaptureMethod, DbError> {
    CaptureMethod::parse(s).ok_or_else(|| DbError::Corrupt(format!("capture method {s:?}")))
}

pub(crate) fn parse_status(s: &str) -> Result<PaymentStatus, DbError> {
    s.parse()
        .map_err(|e: paystream_core::StatusError| DbError::Corrupt(e.to_string()))
}

pub(crate) fn parse_attention(s: &str) -> Result<Attention, DbError> {
    Attention::parse(s).ok_or_else(|| DbError::Corrupt(format!("attention {s}")))
}

pub(crate) fn parse_source(s: &str) -> Result<Source, DbError> {
    Source::parse(s).ok_or_else(|| DbError::Corrupt(format!("unknown status source {s:?}")))
}

/// Who changed a payment's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Api,
    Webhook,
    Poll,
    Expiry,
    Operator,
}

impl Source {
    pub const ALL: [Source; 5] = [
        Source::Api,
        Source::Webhook,
        Source::Poll,
        Source::Expiry,
        Source::Operator,
    ];

    pub fn parse(s: &str) -> Option<Source> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

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
    pub client_id: ClientId,
    pub idempotency_key: &'a str,
    pub money: Money,
    pub description: Option<&'a str>,
    pub customer_email: Option<&'a str>,
    pub metadata: &'a Value,
    pub capture_method: CaptureMethod,
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
pub(crate) const COLUMNS: &str = "id, client_id, idempotency_key, amount, currency, status, stripe_payment_intent_id, \
     stripe_status, last_error, description, customer_email, metadata, resolution_source, version, \
     created_at, updated_at, resolved_at, attention, capture_method, amount_captured, amount_refunded";

/// Commits a `pending` payment and its first history row, as the API does before it calls
/// Stripe (without an idempotency record: for tools and tests that stand in for the API).
pub async fn create_pending(
    db: &Primary,
    id: PaymentId,
    new: &NewPayment<'_>,
) -> Result<Payment, DbError> {
    insert_pending(&mut *db.pool().acquire().await?, id, new).await
}

/// Inserts a `pending` payment and its first history row, inside the caller's transaction.
pub(crate) async fn insert_pending(
    conn: &mut PgConnection,
    id: PaymentId,
    new: &NewPayment<'_>,
) -> Result<Payment, DbError> {
    Ok(
        bind_pending(sqlx::query_as(&insert_pending_sql(None)), id, new)
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// The one statement that inserts a pending payment ($1-$9) and its first history row.
/// With `claim`, a CTE that inserts the row's idempotency key first: the payment is
/// inserted only if the key was new, so a statement that returns no row created nothing.
/// One statement is one round trip and, outside a transaction, one commit.
pub(crate) fn insert_pending_sql(claim: Option<&str>) -> String {
    let (claim, from) = match claim {
        Some(cte) => (format!("claimed AS ({cte}), "), " FROM claimed"),
        None => (String::new(), ""),
    };
    format!(
        "WITH {claim}payment AS (
             INSERT INTO payments (id, client_id, idempotency_key, amount, currency, description, customer_email, metadata, capture_method)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9{from}
             RETURNING {COLUMNS}
         ), history AS (
             INSERT INTO payment_status_history (payment_id, to_status, source)
             SELECT id, 'pending', 'api' FROM payment
         )
         SELECT {COLUMNS} FROM payment"
    )
}

/// Binds a new payment to `insert_pending_sql`'s first nine parameters.
pub(crate) fn bind_pending<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    id: PaymentId,
    new: &NewPayment<'q>,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(id.as_uuid())
        .bind(new.client_id.as_uuid())
        .bind(new.idempotency_key)
        .bind(new.money.amount())
        .bind(new.money.currency().code())
        .bind(new.description)
        .bind(new.customer_email)
        .bind(new.metadata)
        .bind(new.capture_method.as_str())
}

/// Payments that need an operator, oldest flag first.
pub async fn needing_attention(db: &Primary, limit: i64) -> Result<Vec<Payment>, DbError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE attention IS NOT NULL ORDER BY attention_at LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(db.pool())
    .await?)
}

/// A client's payment.
pub async fn get(
    db: &Primary,
    client_id: ClientId,
    id: PaymentId,
) -> Result<Option<Payment>, DbError> {
    get_in(db.pool(), client_id, id).await
}

pub(crate) async fn get_in<'e, E: sqlx::PgExecutor<'e>>(
    db: E,
    client_id: ClientId,
    id: PaymentId,
) -> Result<Option<Payment>, DbError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE id = $1 AND client_id = $2"
    ))
    .bind(id.as_uuid())
    .bind(client_id.as_uuid())
    .fetch_optional(db)
    .await?)
}

/// A payment whoever owns it (for the services, never for clients).
pub async fn by_id(db: &Primary, id: PaymentId) -> Result<Option<Payment>, DbError> {
    by_id_in(db.pool(), id).await
}

pub(crate) async fn by_id_in<'e, E: sqlx::PgExecutor<'e>>(
    db: E,
    id: PaymentId,
) -> Result<Option<Payment>, DbError> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM payments WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(db)
            .await?,
    )
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<PaymentStatus>,
    pub created_gte: Option<DateTime<Utc>>,
    pub created_lt: Option<DateTime<Utc>>,
    pub starting_after: Option<PaymentId>,
    pub limit: i64,
}

/// Newest first; `starting_after` is the last id of the previous page (keyset pagination
/// on (created_at, id), so pages stay stable while payments are added).
pub async fn list(
    db: &Primary,
    client_id: ClientId,
    f: &ListFilter,
) -> Result<Vec<Payment>, DbError> {
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
    .bind(client_id.as_uuid())
    .bind(f.status.map(PaymentStatus::as_str))
    .bind(f.created_gte)
    .bind(f.created_lt)
    .bind(f.starting_after.map(PaymentId::as_uuid))
    .bind(f.limit)
    .fetch_all(db.pool())
    .await?)
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryEntry {
    pub from_status: Option<PaymentStatus>,
    pub to_status: PaymentStatus,
    pub source: Source,
    pub detail: Option<Value>,
    pub created_at: DateTime<Utc>,
}

impl FromRow<'_, PgRow> for HistoryEntry {
    fn from_row(r: &PgRow) -> Result<Self, sqlx::Error> {
        let corrupt = |e: DbError| sqlx::Error::Decode(e.to_string().into());
        Ok(HistoryEntry {
            from_status: r
                .try_get::<Option<&str>, _>("from_status")?
                .map(parse_status)
                .transpose()
                .map_err(corrupt)?,
            to_status: parse_status(r.try_get("to_status")?).map_err(corrupt)?,
            source: parse_source(r.try_get("source")?).map_err(corrupt)?,
            detail: r.try_get("detail")?,
            created_at: r.try_get("created_at")?,
        })
    }
}

/// The payment's status history, oldest first; `None` if the client has no such payment.
pub async fn history(
    db: &Primary,
    client_id: ClientId,
    id: PaymentId,
) -> Result<Option<Vec<HistoryEntry>>, DbError> {
    if get(db, client_id, id).await?.is_none() {
        return Ok(None);
    }
    let rows = sqlx::query_as(
        "SELECT from_status, to_status, source, detail, created_at FROM payment_status_history
         WHERE payment_id = $1 ORDER BY id",
    )
    .bind(id.as_uuid())
    .fetch_all(db.pool())
    .await?;
    Ok(Some(rows))
}
