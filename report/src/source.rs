//! Where a report's two sides come from: our payments from a read replica (through a
//! deadpool-postgres pool, never the primary) and Stripe's intents from its list,
//! paginated and rate-limited.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use paystream_core::{GatewayError, IntentView, StripeGateway, TokenBucket};

use crate::classify::Ours;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("replica: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("replica: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("stripe: {0}")]
    Stripe(#[from] GatewayError),
}

/// Our payments created in `[since, until)`, as the replica has them, and the replica's
/// last replay time (what the report is as fresh as).
pub async fn our_payments(
    replica: &deadpool_postgres::Pool,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<(Vec<Ours>, Option<DateTime<Utc>>), SourceError> {
    let client = replica.get().await?;
    let rows = client
        .query(
            &format!("{OURS_SQL} WHERE created_at >= $1 AND created_at < $2 ORDER BY created_at"),
            &[&since, &until],
        )
        .await?;
    let ours = rows.iter().map(ours_of).collect();
    let as_of: Option<DateTime<Utc>> = client
        .query_one("SELECT pg_last_xact_replay_timestamp()", &[])
        .await?
        .get(0);
    Ok((ours, as_of))
}

const OURS_SQL: &str = "SELECT id, stripe_payment_intent_id, status, amount, currency, created_at,
        resolved_at, resolution_source, attention FROM payments";

fn ours_of(r: &tokio_postgres::Row) -> Ours {
    Ours {
        id: r.get(0),
        intent: r.get(1),
        status: r.get(2),
        amount: r.get(3),
        currency: r.get(4),
        created_at: r.get(5),
        resolved_at: r.get(6),
        resolution_source: r.get(7),
        attention: r.get(8),
    }
}

/// Payments flagged for an operator that were created outside `[since, until)`: a report
/// lists every flagged payment until an operator clears it, whatever its window.
pub async fn flagged_outside(
    replica: &deadpool_postgres::Pool,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<Ours>, SourceError> {
    let client = replica.get().await?;
    let rows = client
        .query(
            &format!(
                "{OURS_SQL} WHERE attention IS NOT NULL AND (created_at < $1 OR created_at >= $2)
                 ORDER BY attention_at LIMIT 10000"
            ),
            &[&since, &until],
        )
        .await?;
    Ok(rows.iter().map(ours_of).collect())
}

/// A webhook event that named a payment of ours and never matched one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanedEvent {
    pub id: String,
    pub kind: String,
    pub intent: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// The orphaned webhook events (newest first, at most 10,000).
pub async fn orphaned_events(
    replica: &deadpool_postgres::Pool,
) -> Result<Vec<OrphanedEvent>, SourceError> {
    let client = replica.get().await?;
    let rows = client
        .query(
            "SELECT id, type, payment_intent_id, received_at FROM stripe_events_orphaned
             ORDER BY received_at DESC LIMIT 10000",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| OrphanedEvent {
            id: r.get(0),
            kind: r.get(1),
            intent: r.get(2),
            received_at: r.get(3),
        })
        .collect())
}

/// Calls to Stripe, paced by a token bucket (`rate` per second).
struct Paced {
    bucket: TokenBucket,
}

impl Paced {
    async fn wait(&mut self) {
        while let Err(wait) = self.bucket.take(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Stripe's intents created in the window, plus those of `ours` that fell outside it
/// (fetched one by one; an intent Stripe does not know is simply absent). `progress`
/// hears the count fetched so far.
pub async fn stripe_intents<G: StripeGateway>(
    stripe: &G,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    ours: &[Ours],
    rate_per_sec: u32,
    mut progress: impl FnMut(usize),
) -> Result<Vec<IntentView>, SourceError> {
    let mut paced = Paced {
        bucket: TokenBucket::new(rate_per_sec.max(1), rate_per_sec.max(1), Instant::now()),
    };
    let mut out: Vec<IntentView> = Vec::new();
    let mut after: Option<String> = None;
    // Stripe's `created` is in whole seconds: the window's end rounds up, or an intent
    // made in the last second (e.g. "until now") would be left out.
    let created_lt = until.timestamp() + i64::from(until.timestamp_subsec_nanos() > 0);
    loop {
        paced.wait().await;
        let page =
            retrying(|| stripe.list_intents(since.timestamp(), created_lt, after.as_deref()))
                .await?;
        out.extend(page.data);
        progress(out.len());
        match (page.has_more, out.last()) {
            (true, Some(last)) => after = Some(last.id.clone()),
            _ => break,
        }
    }
    let listed: HashSet<String> = out.iter().map(|i| i.id.clone()).collect();
    for pi in ours.iter().filter_map(|o| o.intent.as_deref()) {
        if listed.contains(pi) {
            continue;
        }
        paced.wait().await;
        match retrying(|| stripe.retrieve_intent(pi)).await {
            Ok(i) => out.push(i),
            Err(GatewayError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        progress(out.len());
    }
    Ok(out)
}

/// Retries what Stripe says is worth retrying (429, 409, 5xx), with backoff.
async fn retrying<T, F, Fut>(mut call: F) -> Result<T, GatewayError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, GatewayError>>,
{
    let mut backoff = Duration::from_millis(250);
    for _ in 0..6 {
        match call().await {
            Err(e) if e.is_retryable() => {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            other => return other,
        }
    }
    call().await
}
