//! Every read served by a replica: reports, analytics, the reconciler's recovery and key
//! checks that must not load the primary. Nothing here writes; `Replica` can do nothing
//! else.

pub mod analytics;

use paystream_core::{ClientId, PaymentId, RefundId};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::{TryStreamExt, pin_mut};
use paystream_core::PaymentStatus;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::keys::{self, Principal};
use crate::payments::{Attention, Source};
use crate::{DbError, Replica, WalPosition};

/// A payment as a reconciliation report compares it with Stripe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRow {
    pub id: PaymentId,
    pub intent: Option<String>,
    pub status: PaymentStatus,
    pub amount: i64,
    /// What Stripe took, once captured (less than `amount` after a partial capture).
    pub amount_captured: Option<i64>,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolution_source: Option<Source>,
    /// Why it waits for an operator, if it does.
    pub attention: Option<Attention>,
    /// Its last change (a report's grace counts from it).
    pub updated_at: DateTime<Utc>,
}

const PAYMENT_ROW: &str =
    "SELECT id, stripe_payment_intent_id, status, amount, currency, created_at,
        resolved_at, resolution_source, attention, updated_at, amount_captured FROM payments";

fn payment_row(r: &Row) -> Result<PaymentRow, DbError> {
    Ok(PaymentRow {
        id: PaymentId::from_uuid(r.try_get(0)?),
        intent: r.try_get(1)?,
        status: crate::payments::parse_status(r.try_get(2)?)?,
        amount: r.try_get(3)?,
        currency: r.try_get(4)?,
        created_at: r.try_get(5)?,
        resolved_at: r.try_get(6)?,
        resolution_source: r
            .try_get::<_, Option<&str>>(7)?
            .map(crate::payments::parse_source)
            .transpose()?,
        attention: r
            .try_get::<_, Option<&str>>(8)?
            .map(crate::payments::parse_attention)
            .transpose()?,
        updated_at: r.try_get(9)?,
        amount_captured: r.try_get(10)?,
    })
}

/// Payments created in `[since, until)`, oldest first, and the replica's last replayed
/// commit (what the answer is as fresh as).
pub async fn payments_created(
    replica: &Replica,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<(Vec<PaymentRow>, Option<DateTime<Utc>>), DbError> {
    let client = replica.client().await?;
    let rows = client
        .query(
            &format!(
                "{PAYMENT_ROW} WHERE created_at >= $1 AND created_at < $2 ORDER BY created_at"
            ),
            &[&since, &until],
        )
        .await?;
    let payments = rows.iter().map(payment_row).collect::<Result<_, _>>()?;
    let as_of: Option<DateTime<Utc>> = client
        .query_one("SELECT pg_last_xact_replay_timestamp()", &[])
        .await?
        .try_get(0)?;
    Ok((payments, as_of))
}

/// Payments created in `[since, until)`, streamed to `each` in no particular order (a
/// window of a million payments is never held whole), and the replica's last replayed
/// commit, read in the same snapshot-free session just before.
pub async fn each_payment_created(
    replica: &Replica,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    mut each: impl FnMut(PaymentRow),
) -> Result<(u64, Option<DateTime<Utc>>), DbError> {
    let client = replica.client().await?;
    let as_of: Option<DateTime<Utc>> = client
        .query_one("SELECT pg_last_xact_replay_timestamp()", &[])
        .await?
        .try_get(0)?;
    let rows = client
        .query_raw(
            &format!("{PAYMENT_ROW} WHERE created_at >= $1 AND created_at < $2"),
            [&since, &until],
        )
        .await?;
    pin_mut!(rows);
    let mut n = 0;
    while let Some(r) = rows.try_next().await? {
        each(payment_row(&r)?);
        n += 1;
    }
    Ok((n, as_of))
}

/// How many payments were created in `[since, until)`.
pub async fn count_created(
    replica: &Replica,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<u64, DbError> {
    let n: i64 = replica
        .client()
        .await?
        .query_one(
            "SELECT count(*) FROM payments WHERE created_at >= $1 AND created_at < $2",
            &[&since, &until],
        )
        .await?
        .try_get(0)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The payments of `ids` (any window), streamed to `each`.
pub async fn each_payment_of(
    replica: &Replica,
    ids: &[Uuid],
    mut each: impl FnMut(PaymentRow),
) -> Result<(), DbError> {
    let client = replica.client().await?;
    for chunk in ids.chunks(10_000) {
        let rows = client
            .query(&format!("{PAYMENT_ROW} WHERE id = ANY($1)"), &[&chunk])
            .await?;
        for r in &rows {
            each(payment_row(r)?);
        }
    }
    Ok(())
}

/// Payments flagged for an operator that were created outside `[since, until)`, oldest
/// flag first (at most 10,000).
pub async fn flagged_outside(
    replica: &Replica,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<PaymentRow>, DbError> {
    let client = replica.client().await?;
    let rows = client
        .query(
            &format!(
                "{PAYMENT_ROW} WHERE attention IS NOT NULL AND (created_at < $1 OR created_at >= $2)
                 ORDER BY attention_at LIMIT 10000"
            ),
            &[&since, &until],
        )
        .await?;
    rows.iter().map(payment_row).collect()
}

/// A webhook event that named a payment of ours and never matched one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanedEvent {
    pub id: String,
    pub kind: String,
    pub intent: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// The orphaned webhook events, newest first (at most 10,000).
pub async fn orphaned_events(replica: &Replica) -> Result<Vec<OrphanedEvent>, DbError> {
    let client = replica.client().await?;
    let rows = client
        .query(
            "SELECT id, type, payment_intent_id, received_at FROM stripe_events_orphaned
             ORDER BY received_at DESC LIMIT 10000",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(OrphanedEvent {
                id: r.try_get(0)?,
                kind: r.try_get(1)?,
                intent: r.try_get(2)?,
                received_at: r.try_get(3)?,
            })
        })
        .collect()
}

/// One line of the stored report runs' list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub id: Uuid,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub generated_at: DateTime<Utc>,
    pub discrepancies: i64,
}

/// The newest stored report runs.
pub async fn runs(replica: &Replica, limit: i64) -> Result<Vec<RunSummary>, DbError> {
    let client = replica.client().await?;
    let rows = client
        .query(
            "SELECT id, since, until, generated_at, discrepancies FROM reconciliation_runs
             ORDER BY generated_at DESC LIMIT $1",
            &[&limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(RunSummary {
                id: r.try_get(0)?,
                since: r.try_get(1)?,
                until: r.try_get(2)?,
                generated_at: r.try_get(3)?,
                discrepancies: r.try_get(4)?,
            })
        })
        .collect()
}

/// A stored run's report, as the JSON it was stored as.
pub async fn run_report(replica: &Replica, id: Uuid) -> Result<Option<String>, DbError> {
    let client = replica.client().await?;
    let row = client
        .query_opt(
            "SELECT report::text FROM reconciliation_runs WHERE id = $1",
            &[&id],
        )
        .await?;
    row.map(|r| r.try_get(0)).transpose().map_err(Into::into)
}

/// The key check on a replica (the analytics routes keep this load off the primary). A
/// key created or revoked on the primary counts here once the replica has replayed it.
pub async fn authenticate(replica: &Replica, key: &str) -> Result<Option<Principal>, DbError> {
    let client = replica.client().await?;
    let row = client
        .query_opt(keys::AUTHENTICATE_SQL, &[&keys::hash(key)])
        .await?;
    row.map(|r| keys::principal(ClientId::from_uuid(r.try_get(0)?), r.try_get(1)?))
        .transpose()
}

/// A pending payment as the reconciler's state needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPayment {
    pub id: PaymentId,
    pub intent: Option<String>,
    pub created_at: DateTime<Utc>,
    pub version: i64,
}

/// Every pending, unflagged payment, streamed to `each`, once the replica has replayed at
/// least `position` (so the answer includes every commit made before it was taken).
/// One connection for the wait and the read: behind nginx, two connections may reach two
/// different replicas.
pub async fn pending_payments(
    replica: &Replica,
    position: &WalPosition,
    catch_up_limit: Duration,
    mut each: impl FnMut(PendingPayment),
) -> Result<u64, DbError> {
    let client = replica.client().await?;
    caught_up(&client, position, catch_up_limit).await?;
    let rows = client
        .query_raw(
            "SELECT id, stripe_payment_intent_id, created_at, version
             FROM payments WHERE status = 'pending' AND attention IS NULL",
            std::iter::empty::<&str>(),
        )
        .await?;
    pin_mut!(rows);
    let mut n = 0;
    while let Some(r) = rows.try_next().await? {
        each(PendingPayment {
            id: PaymentId::from_uuid(r.try_get(0)?),
            intent: r.try_get(1)?,
            created_at: r.try_get(2)?,
            version: r.try_get(3)?,
        });
        n += 1;
    }
    Ok(n)
}

/// Waits until the replica behind `client` has replayed at least `position`.
async fn caught_up(
    client: &deadpool_postgres::Object,
    position: &WalPosition,
    catch_up_limit: Duration,
) -> Result<(), DbError> {
    let started = Instant::now();
    loop {
        // On a primary (no replay position) the answer is true: a dev setup may point the
        // replica setting at the primary.
        let caught_up: bool = client
            .query_one(
                "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, true)",
                &[&position.0],
            )
            .await?
            .try_get(0)?;
        if caught_up {
            return Ok(());
        }
        if started.elapsed() > catch_up_limit {
            return Err(DbError::ReplicaBehind {
                lsn: position.0.clone(),
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pending refund as the reconciler's state needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRefund {
    pub id: RefundId,
    pub payment_id: PaymentId,
    pub stripe_refund_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub version: i64,
}

/// Every pending, unflagged refund, streamed to `each`, once the replica has replayed at
/// least `position` (as `pending_payments`).
pub async fn pending_refunds(
    replica: &Replica,
    position: &WalPosition,
    catch_up_limit: Duration,
    mut each: impl FnMut(PendingRefund),
) -> Result<u64, DbError> {
    let client = replica.client().await?;
    caught_up(&client, position, catch_up_limit).await?;
    let rows = client
        .query_raw(
            "SELECT id, payment_id, stripe_refund_id, created_at, version
             FROM refunds WHERE status = 'pending' AND attention IS NULL",
            std::iter::empty::<&str>(),
        )
        .await?;
    pin_mut!(rows);
    let mut n = 0;
    while let Some(r) = rows.try_next().await? {
        each(PendingRefund {
            id: RefundId::from_uuid(r.try_get(0)?),
            payment_id: PaymentId::from_uuid(r.try_get(1)?),
            stripe_refund_id: r.try_get(2)?,
            created_at: r.try_get(3)?,
            version: r.try_get(4)?,
        });
        n += 1;
    }
    Ok(n)
}

/// A refund as a reconciliation report compares it with Stripe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRow {
    pub id: RefundId,
    pub payment_id: PaymentId,
    /// Its payment's PaymentIntent, which Stripe's refund names.
    pub intent: Option<String>,
    pub stripe_refund_id: Option<String>,
    pub status: paystream_core::RefundStatus,
    pub amount: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolution_source: Option<Source>,
    /// Why it waits for an operator, if it does.
    pub attention: Option<crate::refunds::RefundAttention>,
}

/// A payment whose refunds a report checks: what it says went back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundedPayment {
    pub id: PaymentId,
    pub intent: Option<String>,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    /// The sum of its succeeded refunds, as the payment row keeps it.
    pub amount_refunded: i64,
}

/// What a report reads of our refunds, in one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefundBooks {
    /// Every refund of `payments`, and the flagged ones, oldest first.
    pub refunds: Vec<RefundRow>,
    pub payments: Vec<RefundedPayment>,
}

/// What a report compares with Stripe's refunds. The payments checked are those with a
/// refund created in `[since, until)`, holding one of `stripe_refund_ids`, being one of
/// `refund_ids` (what Stripe's refunds of the window name) or flagged for an operator
/// (the 10,000 oldest flags), and those holding one of `intents`; the answer has every
/// refund of each (a payment's refunds are checked together against what Stripe says
/// went back). One repeatable-read snapshot: behind nginx, two statements may otherwise
/// reach two replicas.
pub async fn refund_books(
    replica: &Replica,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    stripe_refund_ids: &[String],
    refund_ids: &[Uuid],
    intents: &[String],
) -> Result<RefundBooks, DbError> {
    let mut client = replica.client().await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let checked: Vec<Uuid> = tx
        .query(
            "SELECT payment_id FROM refunds WHERE created_at >= $1 AND created_at < $2
             UNION SELECT payment_id FROM refunds WHERE stripe_refund_id = ANY($3)
             UNION SELECT payment_id FROM refunds WHERE id = ANY($4)
             UNION (SELECT payment_id FROM refunds WHERE attention IS NOT NULL
                    ORDER BY attention_at LIMIT 10000)
             UNION SELECT payment_id FROM payment_intents WHERE intent_id = ANY($5)",
            &[&since, &until, &stripe_refund_ids, &refund_ids, &intents],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let rows = tx
        .query(
            "SELECT r.id, r.payment_id, p.stripe_payment_intent_id, r.stripe_refund_id, r.status,
                    r.amount, r.currency, r.created_at, r.resolved_at, r.resolution_source, r.attention
             FROM refunds r JOIN payments p ON p.id = r.payment_id
             WHERE r.payment_id = ANY($1)
             ORDER BY r.created_at, r.id",
            &[&checked],
        )
        .await?;
    let refunds = rows
        .iter()
        .map(|r| {
            Ok(RefundRow {
                id: RefundId::from_uuid(r.try_get(0)?),
                payment_id: PaymentId::from_uuid(r.try_get(1)?),
                intent: r.try_get(2)?,
                stripe_refund_id: r.try_get(3)?,
                status: crate::refunds::parse_status(r.try_get(4)?)?,
                amount: r.try_get(5)?,
                currency: r.try_get(6)?,
                created_at: r.try_get(7)?,
                resolved_at: r.try_get(8)?,
                resolution_source: r
                    .try_get::<_, Option<&str>>(9)?
                    .map(crate::payments::parse_source)
                    .transpose()?,
                attention: r
                    .try_get::<_, Option<&str>>(10)?
                    .map(crate::refunds::parse_attention)
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    let rows = tx
        .query(
            "SELECT id, stripe_payment_intent_id, currency, created_at, amount_refunded
             FROM payments WHERE id = ANY($1) ORDER BY created_at, id",
            &[&checked],
        )
        .await?;
    let payments = rows
        .iter()
        .map(|r| {
            Ok(RefundedPayment {
                id: PaymentId::from_uuid(r.try_get(0)?),
                intent: r.try_get(1)?,
                currency: r.try_get(2)?,
                created_at: r.try_get(3)?,
                amount_refunded: r.try_get(4)?,
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    tx.commit().await?;
    Ok(RefundBooks { refunds, payments })
}

/// The pending backlog of one table (payments or refunds), as `paystream exporter`
/// shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Age of the oldest pending row not flagged for an operator; `None` when there is
    /// none.
    pub oldest_pending: Option<Duration>,
    /// Pending, unflagged rows older than the `stuck_after` asked for.
    pub stuck: u64,
    /// Rows flagged for an operator, whatever their status: a flag such as
    /// `charged_after_cancel` sits on a final row, and it waits all the same.
    pub needing_attention: u64,
}

/// The payments' and refunds' backlogs, in one statement (one snapshot, one replica even
/// behind nginx). Ages are by the replica's clock against the primary's `created_at`.
pub async fn backlogs(
    replica: &Replica,
    stuck_after: Duration,
) -> Result<(Backlog, Backlog), DbError> {
    let client = replica.client().await?;
    let row = client
        .query_one(
            "SELECT
               (SELECT extract(epoch FROM now() - min(created_at))::float8 FROM payments
                WHERE status = 'pending' AND attention IS NULL),
               (SELECT count(*) FROM payments WHERE status = 'pending' AND attention IS NULL
                AND created_at < now() - $1::float8 * interval '1 second'),
               (SELECT count(*) FROM payments WHERE attention IS NOT NULL),
               (SELECT extract(epoch FROM now() - min(created_at))::float8 FROM refunds
                WHERE status = 'pending' AND attention IS NULL),
               (SELECT count(*) FROM refunds WHERE status = 'pending' AND attention IS NULL
                AND created_at < now() - $1::float8 * interval '1 second'),
               (SELECT count(*) FROM refunds WHERE attention IS NOT NULL)",
            &[&stuck_after.as_secs_f64()],
        )
        .await?;
    let backlog = |at: usize| -> Result<Backlog, DbError> {
        let count = |i: usize| -> Result<u64, DbError> {
            Ok(u64::try_from(row.try_get::<_, i64>(i)?).unwrap_or(0))
        };
        Ok(Backlog {
            // A clock step between primary and replica can make a fresh row look unborn.
            oldest_pending: row
                .try_get::<_, Option<f64>>(at)?
                .map(|s| Duration::try_from_secs_f64(s).unwrap_or_default()),
            stuck: count(at + 1)?,
            needing_attention: count(at + 2)?,
        })
    };
    Ok((backlog(0)?, backlog(3)?))
}
