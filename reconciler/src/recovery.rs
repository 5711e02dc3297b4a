//! Rebuilding the pending state of newly assigned partitions from a read replica.
//!
//! Why this and not a checkpoint of the state: the database already is a durable, exact
//! copy of the pending set, kept by the very writes the state mirrors; a checkpoint
//! would be a second copy to write, version and keep consistent with its offsets. The
//! one care needed is freshness: the replica must have replayed every commit that the
//! committed offsets cover, or a payment resolved before the offset could come back as
//! pending with no change left to remove it. So the primary's current WAL position is
//! read first and the replica is waited for until it has replayed that far; then the
//! snapshot is at least as new as anything before the committed offsets, and replaying
//! from them only repeats changes the version check recognises.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::PgPool;
use uuid::Uuid;

use crate::envelope::{Change, PaymentRow};
use crate::partition::partition_for;
use crate::schedule::Schedule;
use crate::state::PendingState;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the replica did not replay up to the primary's {lsn} within {waited:?}")]
    ReplicaBehind { lsn: String, waited: Duration },
}

/// How long to wait for the replica to catch up before giving up (and retrying later).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);

#[derive(sqlx::FromRow)]
struct PendingRow {
    id: Uuid,
    stripe_payment_intent_id: Option<String>,
    idempotency_key: String,
    amount: i64,
    currency: String,
    created_at: DateTime<Utc>,
    version: i64,
}

/// The pending state of each of `partitions` (out of `total`), as of now.
pub async fn load(
    primary: &PgPool,
    replica: &PgPool,
    partitions: &[i32],
    total: i32,
    schedule: &Schedule,
) -> Result<HashMap<i32, PendingState>, RecoveryError> {
    let mut states: HashMap<i32, PendingState> = partitions
        .iter()
        .map(|p| (*p, PendingState::default()))
        .collect();
    if partitions.is_empty() {
        return Ok(states);
    }
    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(primary)
        .await?;
    // One connection for the wait and the read: behind nginx, two connections may reach
    // two different replicas.
    let mut conn = replica.acquire().await?;
    let started = Instant::now();
    loop {
        // On a primary (no replay position) the answer is true: a dev setup may point
        // the replica setting at the primary.
        let caught_up: bool =
            sqlx::query_scalar("SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, true)")
                .bind(&lsn)
                .fetch_one(&mut *conn)
                .await?;
        if caught_up {
            break;
        }
        if started.elapsed() > CATCH_UP_LIMIT {
            return Err(RecoveryError::ReplicaBehind {
                lsn,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut rows = sqlx::query_as::<_, PendingRow>(
        "SELECT id, stripe_payment_intent_id, idempotency_key, amount, currency, created_at, version
         FROM payments WHERE status = 'pending' AND attention IS NULL",
    )
    .fetch(&mut *conn);
    while let Some(r) = rows.try_next().await? {
        let Some(state) = states.get_mut(&partition_for(r.id, total)) else {
            continue;
        };
        let row = PaymentRow {
            id: r.id,
            status: "pending".into(),
            stripe_payment_intent_id: r.stripe_payment_intent_id,
            idempotency_key: r.idempotency_key,
            amount: r.amount,
            currency: r.currency,
            created_at: r.created_at,
            version: r.version,
            resolution_source: None,
            flagged: false,
        };
        state.apply(
            &Change::Upsert {
                row,
                before_status: None,
                snapshot: true,
                lsn: 0,
                commit_ts_ms: 0,
            },
            schedule,
        );
    }
    Ok(states)
}
