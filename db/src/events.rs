//! Stripe's events as we received them (`stripe_events`): each stored once by its id and
//! applied through the guarded status path in the same transaction.

use std::time::{Duration, Instant};

use paystream_core::{PaymentId, RefundId};
use serde_json::Value;
use sqlx::{Acquire, PgConnection};

use crate::payments::{self, Applied, Observation, Source};
use crate::refunds::{self, RefundApplied, RefundObservation};
use crate::{DbError, Primary};
use paystream_core::{PaymentStatus, RefundStatus};

/// What an event says, about one of our PaymentIntents or one of our refunds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    Intent(IntentReading),
    Refund(RefundReading),
}

/// What an event says about a PaymentIntent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentReading {
    pub intent_id: String,
    pub payment_id: Option<PaymentId>,
    pub stripe_status: String,
    pub status: PaymentStatus,
    pub error: Option<String>,
    /// What Stripe took (after a capture, possibly less than the amount).
    pub amount_received: Option<i64>,
}

/// What an event says about a Stripe refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundReading {
    pub stripe_refund_id: String,
    pub refund_id: Option<RefundId>,
    pub stripe_status: String,
    pub status: RefundStatus,
    pub failure_reason: Option<String>,
}

/// How an event reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Stripe delivered it to `/webhook/stripe`.
    Webhook,
    /// We listed it from `GET /v1/events` (Stripe could not deliver it).
    Catchup,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Webhook => "webhook",
            Via::Catchup => "catchup",
        }
    }
}

/// One event to store.
pub struct Received<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub payload: &'a Value,
    pub via: Via,
    /// Stripe's `created` (unix seconds).
    pub stripe_created: i64,
    /// What it says, if it is about a PaymentIntent.
    pub reading: Option<Reading>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Seen before (same event id): nothing done.
    Duplicate,
    /// Changed our payment's or refund's status.
    Applied,
    /// Our payment already said so (or only Stripe's finer status was refreshed).
    Unchanged,
    /// Our payment is final and this (late) event says otherwise: not written.
    Stale,
    /// Names a payment of ours we have no row for (yet): stored, retried with backoff,
    /// `orphaned` past a bounded age.
    Unmatched,
    /// Not about a PaymentIntent of ours (no `metadata.payment_id` and an intent we do not
    /// hold), or a status we do not know: acknowledged.
    Ignored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Duplicate => "duplicate",
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Stale => "stale",
            Outcome::Unmatched => "unmatched",
            Outcome::Ignored => "ignored",
        }
    }
}

/// Which of `ids` are stored already: a catch-up pass, which lists every undelivered
/// event of the last days again, reads a page's duplicates in one query instead of a
/// transaction each.
pub async fn stored(
    db: &Primary,
    ids: &[&str],
) -> Result<std::collections::HashSet<String>, DbError> {
    let found: Vec<String> = sqlx::query_scalar("SELECT id FROM stripe_events WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(db.pool())
        .await?;
    Ok(found.into_iter().collect())
}

/// Applies the event and stores it (dedupe by id), in one transaction.
///
/// The event is applied first and stored last, with its outcome, in one insert: a row
/// written once instead of inserted and then updated. A duplicate (its id stored
/// already) is found by that insert, and the transaction, apply and all, rolls back.
/// Two deliveries of one event at once queue on the payment's (or refund's) row lock,
/// or for an event that matches nothing on the id's unique index, so the second sees
/// what the first did. A duplicate's writes roll back, its log lines do not: one that
/// would overturn a payment logs that, and the retry that does it logs it again.
pub async fn process(db: &Primary, e: &Received<'_>) -> Result<Outcome, DbError> {
    Ok(process_timed(db, e).await?.0)
}

/// Where an event's time at the database went: waiting for one of the pool's
/// connections, then holding it from BEGIN to COMMIT (or to the duplicate's rollback).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    pub waiting: Duration,
    pub transaction: Duration,
}

/// [`process`], also answering where its time went: under load, a receiver's events wait
/// for the pool about as long as they then hold a connection, which no statement count
/// shows.
pub async fn process_timed(db: &Primary, e: &Received<'_>) -> Result<(Outcome, Spent), DbError> {
    let asked = Instant::now();
    let mut conn = db.pool().acquire().await?;
    let began = Instant::now();
    let spent = || Spent {
        waiting: began - asked,
        transaction: began.elapsed(),
    };
    let mut tx = conn.begin().await?;
    let decided = decide(&mut tx, e.id, e.kind, e.reading.as_ref()).await?;
    // The first try's backoff is `apply_stored`'s with no attempt before: 1 second.
    let stored = sqlx::query(
        "INSERT INTO stripe_events (id, type, payment_intent_id, payload, source, stripe_created,
                                    outcome, payment_id, refund_id, processed_at, attempts, next_attempt_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now(), ($7 = 'unmatched')::int,
                 CASE WHEN $7 = 'unmatched' THEN now() + interval '1 second' END)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(e.id)
    .bind(e.kind)
    .bind(match &e.reading {
        Some(Reading::Intent(r)) => Some(r.intent_id.as_str()),
        _ => None,
    })
    .bind(e.payload)
    .bind(e.via.as_str())
    .bind(e.stripe_created)
    .bind(decided.outcome.as_str())
    .bind(decided.payment_id.map(PaymentId::as_uuid))
    .bind(decided.refund_id.map(RefundId::as_uuid))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if stored == 0 {
        // Dropped without a commit: sqlx rolls the transaction back.
        return Ok((Outcome::Duplicate, spent()));
    }
    tx.commit().await?;
    Ok((decided.outcome, spent()))
}

/// What applying an event did, and to which of our rows.
struct Decided {
    outcome: Outcome,
    payment_id: Option<PaymentId>,
    refund_id: Option<RefundId>,
}

async fn decide(
    tx: &mut PgConnection,
    event_id: &str,
    kind: &str,
    reading: Option<&Reading>,
) -> Result<Decided, DbError> {
    let (outcome, payment_id, refund_id) = match reading {
        None => (Outcome::Ignored, None, None),
        Some(Reading::Intent(r)) => {
            let (o, p) = apply_intent(tx, event_id, kind, r).await?;
            (o, p, None)
        }
        Some(Reading::Refund(r)) => {
            let (o, refund) = apply_refund(tx, event_id, r).await?;
            (o, None, refund)
        }
    };
    Ok(Decided {
        outcome,
        payment_id,
        refund_id,
    })
}

/// Applies a stored event again and records the outcome on its row.
async fn apply_stored(
    tx: &mut PgConnection,
    event_id: &str,
    kind: &str,
    reading: Option<&Reading>,
) -> Result<Outcome, DbError> {
    let decided = decide(tx, event_id, kind, reading).await?;
    // An unmatched event is tried again after 1 s, 2 s, 4 s... at most MAX_BACKOFF apart:
    // events that will never match drift to the back of the line instead of pinning it.
    sqlx::query(
        "UPDATE stripe_events SET outcome = $2, payment_id = $3, refund_id = $5, processed_at = now(),
                attempts = attempts + ($2 = 'unmatched')::int,
                next_attempt_at = CASE WHEN $2 = 'unmatched'
                    THEN now() + least(interval '1 second' * power(2, least(attempts, 20)), $4::bigint * interval '1 second')
                END
         WHERE id = $1",
    )
    .bind(event_id)
    .bind(decided.outcome.as_str())
    .bind(decided.payment_id.map(PaymentId::as_uuid))
    .bind(MAX_BACKOFF_SECS)
    .bind(decided.refund_id.map(RefundId::as_uuid))
    .execute(&mut *tx)
    .await?;
    Ok(decided.outcome)
}

async fn apply_intent(
    tx: &mut PgConnection,
    event_id: &str,
    kind: &str,
    r: &IntentReading,
) -> Result<(Outcome, Option<PaymentId>), DbError> {
    let Some(locked) = payments::lock_for_intent(tx, &r.intent_id, r.payment_id).await? else {
        // Every intent we create carries our payment id: one without it is another
        // integration's on the same account, and will never match.
        let o = if r.payment_id.is_none() {
            Outcome::Ignored
        } else {
            Outcome::Unmatched
        };
        return Ok((o, None));
    };
    // `payment_intent.created` says what the intent was when it was made: nothing we did
    // not store from Stripe's answer to our create. The webhook service no longer stores
    // it (it can change nothing), but one stored before that may still be retried here as
    // unmatched, and it may land after the intent moved on (held for capture, say): its
    // status must not put ours back. It may still link the intent to a row that lacks it.
    let stripe_status = (kind != "payment_intent.created").then_some(r.stripe_status.as_str());
    let obs = Observation {
        status: r.status,
        intent: Some(&r.intent_id),
        stripe_status,
        error: r.error.as_deref(),
        source: Source::Webhook,
        detail: Some(serde_json::json!({"event": event_id})),
        amount_received: r.amount_received,
    };
    let pid = locked.payment().id;
    let o = match payments::apply_locked(tx, locked, &obs).await? {
        Applied::Changed(_) | Applied::Overturned(_) => Outcome::Applied,
        Applied::Unchanged(_) => Outcome::Unchanged,
        Applied::Conflict(_) => Outcome::Stale,
        // The payment took another intent between the lookup and the lock: retried like
        // an unmatched event, `orphaned` (and reported) if it never matches.
        // (`apply_locked` never answers NotFound: it is given the row.)
        Applied::ForeignIntent(_) | Applied::NotFound => Outcome::Unmatched,
    };
    Ok((o, Some(pid)))
}

async fn apply_refund(
    tx: &mut PgConnection,
    event_id: &str,
    r: &RefundReading,
) -> Result<(Outcome, Option<RefundId>), DbError> {
    let Some(id) = refunds::find_for_stripe_refund(tx, &r.stripe_refund_id, r.refund_id).await?
    else {
        // Every refund we create carries our refund id: one without it was made in
        // Stripe's dashboard or by another integration.
        let o = if r.refund_id.is_none() {
            Outcome::Ignored
        } else {
            Outcome::Unmatched
        };
        return Ok((o, None));
    };
    let obs = RefundObservation {
        status: r.status,
        stripe_refund: Some(&r.stripe_refund_id),
        stripe_status: Some(&r.stripe_status),
        failure_reason: r.failure_reason.as_deref(),
        source: Source::Webhook,
        detail: Some(serde_json::json!({"event": event_id})),
    };
    let o = match refunds::apply_status_in(tx, id, &obs).await? {
        RefundApplied::Changed(_) | RefundApplied::Overturned(_) => Outcome::Applied,
        RefundApplied::Unchanged(_) => Outcome::Unchanged,
        RefundApplied::Conflict(_) => Outcome::Stale,
        RefundApplied::ForeignRefund(_) | RefundApplied::NotFound => Outcome::Unmatched,
    };
    Ok((o, Some(id)))
}

/// The longest wait between two tries of an unmatched event.
const MAX_BACKOFF_SECS: i64 = 300;

/// What one `retry_unmatched` pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retried {
    /// Now matched a payment.
    pub matched: usize,
    /// Unmatched for longer than the age bound: `orphaned`, for the report and an operator.
    pub orphaned: u64,
}

/// Retries the unmatched events that are due (at most `batch`, soonest due first), read
/// again from their stored payload by `read`, and gives up on those older than
/// `orphan_after`.
///
/// Each event is retried in a transaction of its own, which holds its row and then the
/// payment's (or refund's). A pass holding many events' rows would lock payments while
/// holding the rows of events already retried, and a redelivery of one of those, which
/// locks the payment before storing the event (`process`), would wait for the pass
/// while the pass waits for it: a deadlock.
pub async fn retry_unmatched(
    db: &Primary,
    batch: i64,
    orphan_after: std::time::Duration,
    read: fn(&Value) -> Option<Reading>,
) -> Result<Retried, DbError> {
    let orphaned = sqlx::query(
        "UPDATE stripe_events SET outcome = 'orphaned', next_attempt_at = NULL, processed_at = now()
         WHERE outcome = 'unmatched' AND received_at < now() - $1::bigint * interval '1 millisecond'",
    )
    .bind(i64::try_from(orphan_after.as_millis()).unwrap_or(i64::MAX))
    .execute(db.pool())
    .await?
    .rows_affected();
    let due: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM stripe_events WHERE outcome = 'unmatched' AND next_attempt_at <= now()
         ORDER BY next_attempt_at LIMIT $1",
    )
    .bind(batch)
    .fetch_all(db.pool())
    .await?;
    let mut matched = 0;
    for id in due {
        let mut tx = db.pool().begin().await?;
        // Skipped if another pass (or instance) holds it, or it was settled meanwhile.
        let event: Option<(String, Value)> = sqlx::query_as(
            "SELECT type, payload FROM stripe_events WHERE id = $1 AND outcome = 'unmatched'
             FOR UPDATE SKIP LOCKED",
        )
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((kind, payload)) = event else {
            continue;
        };
        if apply_stored(&mut tx, &id, &kind, read(&payload).as_ref()).await? != Outcome::Unmatched {
            matched += 1;
        }
        tx.commit().await?;
    }
    if orphaned > 0 {
        tracing::warn!(
            orphaned,
            "webhook events matched no payment within the age bound: orphaned, listed by the report"
        );
    }
    Ok(Retried { matched, orphaned })
}
