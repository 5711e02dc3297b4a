//! Idempotency of payment creation, the Stripe way: the key and the pending payment are
//! committed together; the first final response is stored and replayed to every repeat.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::DbError;
use crate::payments::{self, NewPayment, Payment};

#[derive(Debug)]
pub enum Begin {
    /// A new key: the pending payment and the key were committed together.
    Created(Payment),
    /// The first request with this key finished: replay its response.
    Replay { status: u16, body: Value },
    /// The first request stopped before a final outcome (Stripe was unreachable, or its
    /// process died): this request holds the key now and resumes the same payment.
    Resume(Payment),
    /// The same key came with a different request.
    Mismatch,
    /// Another request is working on this key right now.
    InFlight,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    request_hash: Vec<u8>,
    payment_id: Option<Uuid>,
    locked: bool,
    response_status: Option<i16>,
    response_body: Option<Value>,
}

/// Claims `key` for this request for `lease` (a crashed request frees it after that).
pub async fn begin(
    db: &PgPool,
    new: &NewPayment<'_>,
    request_hash: &[u8],
    lease: Duration,
) -> Result<Begin, DbError> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let mut tx = db.begin().await?;
    // Concurrent requests with one key queue on this insert; the losers see the winner's row.
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (client_id, idempotency_key, request_hash, locked_until)
         VALUES ($1, $2, $3, now() + $4::bigint * interval '1 millisecond')
         ON CONFLICT DO NOTHING",
    )
    .bind(new.client_id)
    .bind(new.idempotency_key)
    .bind(request_hash)
    .bind(lease_ms)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if claimed {
        let id = Uuid::now_v7();
        let payment = payments::insert_pending(&mut tx, id, new).await?;
        sqlx::query("UPDATE idempotency_keys SET payment_id = $3 WHERE client_id = $1 AND idempotency_key = $2")
            .bind(new.client_id)
            .bind(new.idempotency_key)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok(Begin::Created(payment));
    }
    let row: KeyRow = sqlx::query_as(
        "SELECT request_hash, payment_id, coalesce(locked_until > now(), false) AS locked, response_status, response_body
         FROM idempotency_keys WHERE client_id = $1 AND idempotency_key = $2 FOR UPDATE",
    )
    .bind(new.client_id)
    .bind(new.idempotency_key)
    .fetch_one(&mut *tx)
    .await?;
    if row.request_hash != request_hash {
        return Ok(Begin::Mismatch);
    }
    if let (Some(status), Some(body)) = (row.response_status, row.response_body) {
        let status = u16::try_from(status)
            .map_err(|_| DbError::Corrupt(format!("response status {status}")))?;
        return Ok(Begin::Replay { status, body });
    }
    if row.locked {
        return Ok(Begin::InFlight);
    }
    let payment_id = row
        .payment_id
        .ok_or_else(|| DbError::Corrupt("idempotency key without payment".into()))?;
    sqlx::query(
        "UPDATE idempotency_keys SET locked_until = now() + $3::bigint * interval '1 millisecond'
         WHERE client_id = $1 AND idempotency_key = $2",
    )
    .bind(new.client_id)
    .bind(new.idempotency_key)
    .bind(lease_ms)
    .execute(&mut *tx)
    .await?;
    let payment = payments::get(&mut *tx, new.client_id, payment_id)
        .await?
        .ok_or_else(|| DbError::Corrupt("idempotency key points to a missing payment".into()))?;
    tx.commit().await?;
    Ok(Begin::Resume(payment))
}

/// Stores the final response for `key` and frees it.
pub async fn complete(
    db: &PgPool,
    client_id: Uuid,
    key: &str,
    status: u16,
    body: &Value,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE idempotency_keys SET response_status = $3, response_body = $4, locked_until = NULL
         WHERE client_id = $1 AND idempotency_key = $2",
    )
    .bind(client_id)
    .bind(key)
    .bind(i16::try_from(status).unwrap_or(500))
    .bind(body)
    .execute(db)
    .await?;
    Ok(())
}

/// Frees `key` without a final response, so a retry resumes the payment.
pub async fn release(db: &PgPool, client_id: Uuid, key: &str) -> Result<(), DbError> {
    sqlx::query("UPDATE idempotency_keys SET locked_until = NULL WHERE client_id = $1 AND idempotency_key = $2")
        .bind(client_id)
        .bind(key)
        .execute(db)
        .await?;
    Ok(())
}
