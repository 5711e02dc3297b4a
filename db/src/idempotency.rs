//! Idempotency of payment creation, the Stripe way: the key and the pending payment are
//! committed together; the first final response is stored and replayed to every repeat.
//!
//! A request works on a key under a lease: a token and a deadline. Whoever holds the
//! token may store the key's response or release it; a request whose lease ran out (and
//! was taken over by a retry) can do neither, so it never overwrites the holder's work.
//! A cancel takes the same lease, so it never runs beside a create of its payment.

use chrono::{DateTime, Utc};
use paystream_core::{ClientId, PaymentId, RefundId};
use sqlx::{FromRow, PgConnection, Row};
use std::sync::LazyLock;
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::payments::{self, Attached, NewPayment, Payment};
use crate::{DbError, Primary};

/// A request's hold on an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub client_id: ClientId,
    pub key: String,
    pub token: Uuid,
}

#[derive(Debug)]
pub enum Begin {
    /// A new key: the pending payment and the key were committed together.
    Created(Payment, Lease),
    /// The first request with this key finished: replay its response.
    Replay { status: u16, body: Value },
    /// The first request stopped before a final outcome (Stripe was unreachable, or its
    /// process died): this request holds the key now. The payment may have gone final
    /// meanwhile (canceled, expired): the caller must not create anything for it then.
    Resume(Payment, Lease),
    /// The same key came with a different request.
    Mismatch,
    /// Another request is working on this key right now.
    InFlight,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    request_hash: Vec<u8>,
    payment_id: Option<Uuid>,
    refund_id: Option<Uuid>,
    locked: bool,
    response_status: Option<i16>,
    response_body: Option<Value>,
}

fn millis(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

/// What claiming a key found, before anything is created for it.
#[derive(Debug)]
pub enum Claim {
    /// A new key: this request holds it (inside the caller's transaction).
    New(Lease),
    /// The first request with this key finished: replay its response.
    Replay { status: u16, body: Value },
    /// The first request stopped before a final outcome: this request holds the key now,
    /// and resumes the row it made (if it made one).
    Resume {
        lease: Lease,
        payment_id: Option<PaymentId>,
        refund_id: Option<RefundId>,
    },
    /// The same key came with a different request (or for another endpoint).
    Mismatch,
    /// Another request is working on this key right now.
    InFlight,
}

/// Inserts the key of a new payment ($1), the request's hash ($10) and its lease ($11 ms,
/// token $12), unless the client ($2) already used the key ($3).
const CLAIM_NEW: &str = "INSERT INTO idempotency_keys (client_id, idempotency_key, request_hash, locked_until, lease_token, payment_id)
     VALUES ($2, $3, $10, now() + $11::bigint * interval '1 millisecond', $12, $1)
     ON CONFLICT DO NOTHING RETURNING 1";

/// Claims `key` for a request whose identity is `request_hash`, for `lease` (a crashed
/// request frees it after that), inside the caller's transaction: the caller commits the
/// claim with whatever it creates, or rolls both back.
pub(crate) async fn claim_in(
    tx: &mut PgConnection,
    client_id: ClientId,
    key: &str,
    request_hash: &[u8],
    lease: Duration,
) -> Result<Claim, DbError> {
    let held = Lease {
        client_id,
        key: key.to_owned(),
        token: Uuid::now_v7(),
    };
    // Concurrent requests with one key queue on this insert; the losers see the winner's row.
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (client_id, idempotency_key, request_hash, locked_until, lease_token)
         VALUES ($1, $2, $3, now() + $4::bigint * interval '1 millisecond', $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(client_id.as_uuid())
    .bind(key)
    .bind(request_hash)
    .bind(millis(lease))
    .bind(held.token)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if claimed {
        return Ok(Claim::New(held));
    }
    let row: KeyRow = sqlx::query_as(
        "SELECT request_hash, payment_id, refund_id, coalesce(locked_until > now(), false) AS locked, response_status, response_body
         FROM idempotency_keys WHERE client_id = $1 AND idempotency_key = $2 FOR UPDATE",
    )
    .bind(client_id.as_uuid())
    .bind(key)
    .fetch_one(&mut *tx)
    .await?;
    if row.request_hash != request_hash {
        return Ok(Claim::Mismatch);
    }
    if let (Some(status), Some(body)) = (row.response_status, row.response_body) {
        let status = u16::try_from(status)
            .map_err(|_| DbError::Corrupt(format!("response status {status}")))?;
        return Ok(Claim::Replay { status, body });
    }
    if row.locked {
        return Ok(Claim::InFlight);
    }
    relock(&mut *tx, &held, lease).await?;
    Ok(Claim::Resume {
        lease: held,
        payment_id: row.payment_id.map(PaymentId::from_uuid),
        refund_id: row.refund_id.map(RefundId::from_uuid),
    })
}

/// Claims a key for a request that creates no row of its own (a capture), in its own
/// transaction.
pub async fn claim(
    db: &Primary,
    client_id: ClientId,
    key: &str,
    request_hash: &[u8],
    lease: Duration,
) -> Result<Claim, DbError> {
    let mut tx = db.pool().begin().await?;
    let claim = claim_in(&mut tx, client_id, key, request_hash, lease).await?;
    tx.commit().await?;
    Ok(claim)
}

/// Records the refund a key's request created, in the transaction that created it.
pub(crate) async fn link_refund(
    tx: &mut PgConnection,
    lease: &Lease,
    refund_id: RefundId,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE idempotency_keys SET refund_id = $3 WHERE client_id = $1 AND idempotency_key = $2",
    )
    .bind(lease.client_id.as_uuid())
    .bind(&lease.key)
    .bind(refund_id.as_uuid())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Claims `key` for a payment create (a crashed request frees it after `lease`): the key
/// and the pending payment are committed together.
pub async fn begin(
    db: &Primary,
    new: &NewPayment<'_>,
    request_hash: &[u8],
    lease: Duration,
) -> Result<Begin, DbError> {
    // A new key, the common case, is one statement: the key, the payment and its history
    // row in one commit. A key already there inserts nothing, and the transaction below
    // finds out what it holds.
    let id = PaymentId::generate();
    let held = Lease {
        client_id: new.client_id,
        key: new.idempotency_key.to_owned(),
        token: Uuid::now_v7(),
    };
    let created: Option<Payment> = payments::bind_pending(
        sqlx::query_as(&payments::insert_pending_sql(Some(CLAIM_NEW))),
        id,
        new,
    )
    .bind(request_hash)
    .bind(millis(lease))
    .bind(held.token)
    .fetch_optional(db.pool())
    .await?;
    if let Some(payment) = created {
        return Ok(Begin::Created(payment, held));
    }
    let mut tx = db.pool().begin().await?;
    let claim = claim_in(
        &mut tx,
        new.client_id,
        new.idempotency_key,
        request_hash,
        lease,
    )
    .await?;
    let begin = match claim {
        Claim::New(held) => {
            let id = PaymentId::generate();
            let payment = payments::insert_pending(&mut tx, id, new).await?;
            sqlx::query("UPDATE idempotency_keys SET payment_id = $3 WHERE client_id = $1 AND idempotency_key = $2")
                .bind(new.client_id.as_uuid())
                .bind(new.idempotency_key)
                .bind(id.as_uuid())
                .execute(&mut *tx)
                .await?;
            Begin::Created(payment, held)
        }
        Claim::Replay { status, body } => Begin::Replay { status, body },
        Claim::Mismatch => Begin::Mismatch,
        Claim::InFlight => Begin::InFlight,
        Claim::Resume {
            lease,
            payment_id,
            refund_id: _,
        } => {
            // A key that made a refund, not a payment, cannot have this payment request's
            // hash; this guards against a corrupt row all the same.
            let payment_id = payment_id
                .ok_or_else(|| DbError::Corrupt("idempotency key without payment".into()))?;
            let payment = payments::get_in(&mut *tx, new.client_id, payment_id)
                .await?
                .ok_or_else(|| {
                    DbError::Corrupt("idempotency key points to a missing payment".into())
                })?;
            Begin::Resume(payment, lease)
        }
    };
    tx.commit().await?;
    Ok(begin)
}

async fn relock(tx: &mut PgConnection, lease: &Lease, duration: Duration) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE idempotency_keys SET locked_until = now() + $3::bigint * interval '1 millisecond', lease_token = $4
         WHERE client_id = $1 AND idempotency_key = $2",
    )
    .bind(lease.client_id.as_uuid())
    .bind(&lease.key)
    .bind(millis(duration))
    .bind(lease.token)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What `take` found.
#[derive(Debug)]
pub enum Take {
    /// The key is this caller's until it releases it (or the lease runs out).
    Held(Lease),
    /// The key has its final response: no create can run on it any more.
    Completed,
    /// A request is working on the key right now.
    InFlight,
}

/// Takes the lease of a payment's key for work other than its create (a cancel), so the
/// two never run at once.
pub async fn take(
    db: &Primary,
    client_id: ClientId,
    key: &str,
    lease: Duration,
) -> Result<Take, DbError> {
    let mut tx = db.pool().begin().await?;
    let row: Option<(bool, bool)> = sqlx::query_as(
        "SELECT coalesce(locked_until > now(), false), response_status IS NOT NULL
         FROM idempotency_keys WHERE client_id = $1 AND idempotency_key = $2 FOR UPDATE",
    )
    .bind(client_id.as_uuid())
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?;
    let held = Lease {
        client_id,
        key: key.to_owned(),
        token: Uuid::now_v7(),
    };
    let take = match row {
        // A payment made outside the API (fixtures, tests) has no key to race with.
        None => Take::Completed,
        Some((_, true)) => Take::Completed,
        Some((true, false)) => Take::InFlight,
        Some((false, false)) => {
            relock(&mut tx, &held, lease).await?;
            Take::Held(held)
        }
    };
    tx.commit().await?;
    Ok(take)
}

/// Stores the final response for the key and frees it, if `lease` still holds it.
/// Returns whether it did: a lease that ran out and was taken over stores nothing.
pub async fn complete(
    db: &Primary,
    lease: &Lease,
    status: u16,
    body: &Value,
) -> Result<bool, DbError> {
    complete_in(db.pool(), lease, status, body).await
}

/// The link and the stored answer, one statement (`attach_and_complete`): `$1`-`$3` as in
/// `payments::attach_sql`, then the lease (`$4` client, `$5` key, `$6` token), the answer
/// (`$7` status, `$8` body) and the version the linked row must have (`$9`). Built once.
static ATTACH_AND_COMPLETE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH attached AS ({attach}),
         answered AS (
             UPDATE idempotency_keys k
                SET response_status = $7,
                    response_body = jsonb_set($8, '{{updated_at}}', to_jsonb({updated_at})),
                    locked_until = NULL, lease_token = NULL
               FROM attached a
              WHERE a.version = $9
                AND k.client_id = $4 AND k.idempotency_key = $5 AND k.lease_token = $6
                AND k.response_status IS NULL
             RETURNING k.response_body
         )
         SELECT attached.*, (SELECT response_body FROM answered) AS stored_answer FROM attached",
        attach = payments::attach_sql(),
        updated_at = json_time_sql("a.updated_at"),
    )
});

/// Links a new payment to its PaymentIntent (`payments::attach_intent`) and, when `answer`
/// makes the final response from the linked row, stores it for the key held by `lease`:
/// both in one commit. Returns what the link did and the answer it made, if any (stored
/// unless the lease was lost, as in `complete`).
///
/// `pending` is the row as `begin` returned it. The common case is one statement, one
/// round trip: the answer is made in advance from the row the link will make
/// (`as_attached`), and the statement stores it only if the linked row is that row (its
/// version is the next one: no write came between), with the one field only the database
/// knows, `updated_at`, written in by `json_time_sql`. The answer returned is the stored
/// one, so a replay repeats it byte for byte. If another write came between, the answer is
/// made from the linked row and stored by a second statement.
pub async fn attach_and_complete(
    db: &Primary,
    lease: &Lease,
    pending: &Payment,
    intent_id: &str,
    stripe_status: &str,
    answer: impl Fn(&Payment) -> Option<(u16, Value)>,
) -> Result<(Attached, Option<(u16, Value)>), DbError> {
    let expected = payments::as_attached(pending, intent_id, stripe_status);
    let Some((status, body)) = answer(&expected) else {
        let attached = payments::attach_intent(db, pending.id, intent_id, stripe_status).await?;
        return Ok((attached, None));
    };
    let row = sqlx::query(&ATTACH_AND_COMPLETE)
        .bind(pending.id.as_uuid())
        .bind(intent_id)
        .bind(stripe_status)
        .bind(lease.client_id.as_uuid())
        .bind(&lease.key)
        .bind(lease.token)
        .bind(i16::try_from(status).unwrap_or(500))
        .bind(&body)
        .bind(expected.version)
        .fetch_optional(db.pool())
        .await?;
    let Some(row) = row else {
        let not = payments::not_attached(&mut *db.pool().acquire().await?, pending.id).await?;
        return Ok((not, None));
    };
    let linked = Payment::from_row(&row)?;
    if let Some(stored) = row.try_get::<Option<Value>, _>("stored_answer")? {
        return Ok((Attached::Attached(linked), Some((status, stored))));
    }
    // Another write came between `begin` and the link (a resumed create, a webhook), or the
    // lease was lost: make the answer from the row as linked, and store it if the lease
    // still holds.
    let answered = answer(&linked);
    if let Some((status, body)) = &answered {
        complete_in(db.pool(), lease, *status, body).await?;
    }
    Ok((Attached::Attached(linked), answered))
}

/// A `timestamptz` expression as a JSON string exactly as the API writes one (chrono's
/// serde: RFC 3339 in UTC with a `Z`, and as many fraction digits as needed, 0, 3 or 6,
/// since PostgreSQL keeps microseconds). `json_times` runs it, for the tests that hold
/// it to chrono's.
fn json_time_sql(at: &str) -> String {
    format!(
        "(SELECT to_char(t, 'YYYY-MM-DD\"T\"HH24:MI:SS')
                 || CASE WHEN to_char(t, 'US') = '000000' THEN ''
                         WHEN to_char(t, 'US') LIKE '%000' THEN '.' || to_char(t, 'MS')
                         ELSE '.' || to_char(t, 'US') END
                 || 'Z'
            FROM (SELECT ({at}) AT TIME ZONE 'UTC' AS t) utc)"
    )
}

/// Each of `at` written as a stored answer writes its `updated_at` (`json_time_sql`).
pub async fn json_times(db: &Primary, at: &[DateTime<Utc>]) -> Result<Vec<String>, DbError> {
    let sql = format!(
        "SELECT {} FROM unnest($1::timestamptz[]) WITH ORDINALITY AS x(at, n) ORDER BY n",
        json_time_sql("x.at")
    );
    Ok(sqlx::query_scalar(&sql)
        .bind(at)
        .fetch_all(db.pool())
        .await?)
}

async fn complete_in<'e, E: sqlx::PgExecutor<'e>>(
    db: E,
    lease: &Lease,
    status: u16,
    body: &Value,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE idempotency_keys SET response_status = $3, response_body = $4, locked_until = NULL, lease_token = NULL
         WHERE client_id = $1 AND idempotency_key = $2 AND lease_token = $5 AND response_status IS NULL",
    )
    .bind(lease.client_id.as_uuid())
    .bind(&lease.key)
    .bind(i16::try_from(status).unwrap_or(500))
    .bind(body)
    .bind(lease.token)
    .execute(db)
    .await?;
    let held = done.rows_affected() == 1;
    if !held {
        tracing::warn!(client_id = %lease.client_id, "idempotency lease lost before the response was stored; the holder's stands");
    }
    Ok(held)
}

/// Frees the key without a final response, so a retry resumes the payment, if `lease`
/// still holds it. Returns whether it did.
pub async fn release(db: &Primary, lease: &Lease) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE idempotency_keys SET locked_until = NULL, lease_token = NULL
         WHERE client_id = $1 AND idempotency_key = $2 AND lease_token = $3",
    )
    .bind(lease.client_id.as_uuid())
    .bind(&lease.key)
    .bind(lease.token)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}
